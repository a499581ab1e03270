//! Proposing commands: one at a time ([`propose`]) or grouped ([`Proposer`]).
//!
//! Group commit: concurrent proposals on one node become one Raft entry, so one log append and
//! one fsync per node carry many commands. openraft 0.9 appends (and fsyncs) every
//! `client_write` on its own; without grouping, throughput is bounded by fsyncs, not by work.

use crate::{NodeId, Raft, command};

/// Why a proposal did not produce a response.
#[derive(Debug, thiserror::Error)]
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

type Reply = tokio::sync::oneshot::Sender<Result<command::Response, ProposeError>>;

/// Group commit: concurrent proposals on this node become one Raft entry, so one log append and
/// one fsync per node carry many commands. openraft 0.9 appends (and fsyncs) every
/// `client_write` on its own; without this, throughput is bounded by fsyncs, not by work.
///
/// Cloning shares the batching task, which ends when the last clone is dropped.
#[derive(Clone)]
pub struct Proposer {
    raft: Raft,
    tx: tokio::sync::mpsc::Sender<(command::Command, Reply)>,
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
        self.tx
            .send((cmd, reply))
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }
}

async fn run_batches(raft: Raft, mut rx: tokio::sync::mpsc::Receiver<(command::Command, Reply)>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut cmds = vec![first.0];
        let mut replies = vec![first.1];
        while cmds.len() < command::MAX_BATCH {
            match rx.try_recv() {
                Ok((cmd, reply)) => {
                    cmds.push(cmd);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (n, started) = (cmds.len(), std::time::Instant::now());
            let written = raft.client_write(command::Batch::new(cmds)).await;
            crate::metrics::metrics().batch(n, started.elapsed().as_secs_f64(), written.is_ok());
            match written {
                Ok(resp) => {
                    let mut responses = resp.data.into_iter();
                    for reply in replies {
                        let r = responses.next().ok_or(ProposeError::NoResponse);
                        let _ = reply.send(r);
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(ProposeError::Raft(e.clone())));
                    }
                }
            }
        });
    }
}
