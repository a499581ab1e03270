//! Proposing commands: one at a time ([`propose`]) or grouped ([`Proposer`]).
//!
//! Group commit: concurrent proposals on one node become one Raft entry, so one log append and
//! one fsync per node carry many commands. openraft 0.9 appends (and fsyncs) every
//! `client_write` on its own; without grouping, throughput is bounded by fsyncs, not by work.

use crate::{NodeId, Raft, command};

/// Why a proposal did not produce a response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// The command is malformed; it was not proposed.
    #[error("invalid command: {0}")]
    Invalid(#[from] command::Invalid),
    /// Raft did not commit it (not the leader, no quorum, shutting down…).
    #[error("raft: {0}")]
    Raft(
        #[from]
        openraft::error::RaftError<
            NodeId,
            openraft::error::ClientWriteError<NodeId, openraft::BasicNode>,
        >,
    ),
    /// The entry was applied without a response for this command (a bug, never expected).
    #[error("no response for the command")]
    NoResponse,
    /// This node's proposer has stopped (shutting down).
    #[error("the node is shutting down")]
    Stopped,
}

/// Confirms that this node leads a quorum (openraft's `ensure_linearizable`: one heartbeat
/// round, answered within one heartbeat interval), trying again every 50 ms for up to `within`
/// while this node still takes itself for the leader. One round missed on a busy machine (the
/// answers are due within one heartbeat) is not a lost quorum; a node that is not the leader,
/// or a quorum that stays silent for `within`, is.
pub(crate) async fn confirm_leader(raft: &Raft, within: std::time::Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match raft.ensure_linearizable().await {
            Ok(_) => return Ok(()),
            Err(e) => {
                let m = raft.metrics().borrow().clone();
                if m.current_leader != Some(m.id) || tokio::time::Instant::now() >= deadline {
                    return Err(e.to_string());
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Validates `cmd`, proposes it alone in one entry, and waits until it is committed and
/// applied. Nothing malformed reaches the log from this node (apply validates again, for
/// entries from anywhere else). Services use a [`Proposer`], which groups concurrent commands.
pub async fn propose(
    raft: &Raft,
    cmd: command::Command,
) -> Result<command::Response, ProposeError> {
    cmd.validate()?;
    let responses = raft.client_write(command::Batch::one(cmd)).await?.data;
    responses.into_iter().next().ok_or(ProposeError::NoResponse)
}

/// How many batches one node has in Raft at once. While they commit, new commands queue and
/// form the next batch, so the batch size follows the load: one command when idle, up to
/// [`command::MAX_BATCH`] under pressure.
const BATCHES_IN_FLIGHT: usize = 2;

/// Where the responses of one proposal go.
enum Reply {
    /// A single command's.
    One(tokio::sync::oneshot::Sender<Result<command::Response, ProposeError>>),
    /// A group's, in the group's order ([`Proposer::propose_all`]).
    Group(tokio::sync::oneshot::Sender<Result<Vec<command::Response>, ProposeError>>),
}

impl Reply {
    /// Answers with this proposal's share (`n` responses) of its batch's, taken in order.
    fn answer(self, responses: &mut impl Iterator<Item = command::Response>, n: usize) {
        match self {
            Self::One(tx) => {
                let _ = tx.send(responses.next().ok_or(ProposeError::NoResponse));
            }
            Self::Group(tx) => {
                let got: Vec<_> = responses.take(n).collect();
                let _ = tx.send(if got.len() == n {
                    Ok(got)
                } else {
                    Err(ProposeError::NoResponse)
                });
            }
        }
    }

    fn fail(self, e: ProposeError) {
        match self {
            Self::One(tx) => {
                let _ = tx.send(Err(e));
            }
            Self::Group(tx) => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

/// One proposal waiting for a batch: a command, or a group that goes into one batch together.
struct Pending {
    cmds: Vec<command::Command>,
    reply: Reply,
}

/// Group commit: concurrent proposals on this node become one Raft entry, so one log append and
/// one fsync per node carry many commands. openraft 0.9 appends (and fsyncs) every
/// `client_write` on its own; without this, throughput is bounded by fsyncs, not by work.
///
/// Cloning shares the batching task, which ends when the last clone is dropped.
#[derive(Clone)]
pub struct Proposer {
    raft: Raft,
    tx: tokio::sync::mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer").finish_non_exhaustive()
    }
}

impl Proposer {
    /// Starts the batching task of `raft` (on the current tokio runtime).
    pub fn new(raft: Raft) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(4 * command::MAX_BATCH);
        tokio::spawn(run_batches(raft.clone(), rx));
        Self { raft, tx }
    }

    /// The Raft handle proposals go to.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Validates `cmd`, proposes it in the next batch, and waits until it is committed and
    /// applied.
    pub async fn propose(&self, cmd: command::Command) -> Result<command::Response, ProposeError> {
        cmd.validate()?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Pending {
            cmds: vec![cmd],
            reply: Reply::One(reply),
        })
        .await?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Validates each of `cmds`, proposes the valid ones together (in one batch, in this
    /// order, for up to [`command::MAX_BATCH`]; more are split), and waits until they are
    /// committed and applied. One result per command, in order: a command that is invalid
    /// gets its own error and does not hold back the others.
    ///
    /// One hand-off for the group, not one per command: a call that records many commands
    /// (an agent's batch of SVIDs) costs the batching task one message.
    pub async fn propose_all(
        &self,
        cmds: Vec<command::Command>,
    ) -> Vec<Result<command::Response, ProposeError>> {
        let mut results: Vec<Option<Result<command::Response, ProposeError>>> =
            Vec::with_capacity(cmds.len());
        let mut valid = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            match cmd.validate() {
                Ok(()) => {
                    results.push(None);
                    valid.push(cmd);
                }
                Err(e) => results.push(Some(Err(e.into()))),
            }
        }
        let mut committed = Vec::with_capacity(valid.len());
        let mut rest = valid;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(command::MAX_BATCH));
            let n = rest.len();
            let (reply, rx) = tokio::sync::oneshot::channel();
            let sent = self
                .send(Pending {
                    cmds: rest,
                    reply: Reply::Group(reply),
                })
                .await;
            let outcome = match sent {
                Ok(()) => rx.await.unwrap_or(Err(ProposeError::Stopped)),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(responses) if responses.len() == n => {
                    for r in responses {
                        committed.push(Ok(r));
                    }
                }
                Ok(_) => {
                    for _ in 0..n {
                        committed.push(Err(ProposeError::NoResponse));
                    }
                }
                Err(e) => {
                    for _ in 0..n {
                        committed.push(Err(e.clone()));
                    }
                }
            }
            rest = tail;
        }
        let mut committed = committed.into_iter();
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            out.push(match r {
                Some(r) => r,
                None => committed.next().unwrap_or(Err(ProposeError::NoResponse)),
            });
        }
        out
    }

    async fn send(&self, pending: Pending) -> Result<(), ProposeError> {
        self.tx
            .send(pending)
            .await
            .map_err(|_| ProposeError::Stopped)
    }
}

async fn run_batches(raft: Raft, mut rx: tokio::sync::mpsc::Receiver<Pending>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    // A group that did not fit in the batch before; it starts the next one.
    let mut carried: Option<Pending> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut size = first.cmds.len();
        let mut group = vec![first];
        while size < command::MAX_BATCH {
            match rx.try_recv() {
                Ok(p) if size + p.cmds.len() > command::MAX_BATCH => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    size += p.cmds.len();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut cmds = Vec::with_capacity(size);
            let mut replies = Vec::with_capacity(group.len());
            for p in group {
                replies.push((p.cmds.len(), p.reply));
                cmds.extend(p.cmds);
            }
            let started = std::time::Instant::now();
            let written = raft.client_write(command::Batch::new(cmds)).await;
            crate::metrics::metrics().batch(size, started.elapsed().as_secs_f64(), written.is_ok());
            match written {
                Ok(resp) => {
                    let mut responses = resp.data.into_iter();
                    for (n, reply) in replies {
                        reply.answer(&mut responses, n);
                    }
                }
                Err(e) => {
                    for (_, reply) in replies {
                        reply.fail(ProposeError::Raft(e.clone()));
                    }
                }
            }
        });
    }
}
