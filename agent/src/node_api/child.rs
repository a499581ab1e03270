//! The process of an exec session, in its task's context: the task's uid and gid (no
//! supplementary groups, as tasks), working directory, environment (the spec's, plus
//! `SPIFFE_ENDPOINT_SOCKET`) and cgroup when it has one. It gets its own process group (its own
//! session with a terminal), never the task's, so that ending the session ends exactly its
//! processes and a task stop does not race it.
//!
//! Without a terminal: pipes. With one: a pseudo-terminal from rustix (`openpt`, `grantpt`,
//! `unlockpt`), the child's stdin, stdout and stderr on its replica side; the child is started
//! through `setsid --ctty` (util-linux) to be a session leader with it as its controlling
//! terminal, since std offers no `setsid` and this crate writes no `unsafe`. Without `setsid`
//! on the node the command runs on the terminal but without controlling it.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use rustix::process::{Pid, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::tasks::{ExecContext, TaskSpec};

/// At most this much per chunk of output.
pub(super) const CHUNK: usize = 64 * 1024;
const SETSID: &str = "/usr/bin/setsid";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Out {
    Stdout,
    Stderr,
}

/// The command's output, chunk by chunk.
pub(super) type Output = mpsc::Receiver<(Out, Vec<u8>)>;

/// What goes to the command's stdin.
#[derive(Debug)]
pub(super) enum In {
    Data(Vec<u8>),
    Eof,
}

/// A running exec process.
#[derive(Debug)]
pub(super) struct Running {
    child: Child,
    pgid: Option<Pid>,
    pub stdin: mpsc::Sender<In>,
    /// The terminal's controller side, for resizes.
    pty: Option<OwnedFd>,
}

fn io_err(e: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from(e)
}

impl Running {
    /// Starts `argv` in the task's context; its output comes on the receiver.
    pub(super) fn spawn(
        spec: &TaskSpec,
        ctx: &ExecContext,
        argv: &[String],
        tty: Option<(u16, u16)>,
    ) -> std::io::Result<(Self, Output)> {
        let (first, rest) = argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty argv"))?;
        let use_setsid = tty.is_some() && Path::new(SETSID).exists();
        let mut command = if use_setsid {
            let mut c = Command::new(SETSID);
            c.arg("--ctty").arg("--").arg(first);
            c
        } else {
            Command::new(first)
        };
        command
            .args(rest)
            .env_clear()
            .envs(&spec.env)
            .current_dir(spec.workdir.as_deref().unwrap_or(Path::new("/")))
            .uid(spec.uid)
            .gid(spec.gid)
            .kill_on_drop(true);
        if !use_setsid {
            // `setsid` makes its own group; it must not lead one already, or it forks.
            command.process_group(0);
        }
        if let Some(socket) = &ctx.spiffe_endpoint_socket {
            command.env("SPIFFE_ENDPOINT_SOCKET", socket);
        }
        let (stdin_tx, stdin_rx) = mpsc::channel::<In>(4);
        let (out_tx, output) = mpsc::channel(8);
        let (child, pty) = match tty {
            None => {
                command
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut child = command.spawn()?;
                let stdin = child.stdin.take();
                let stdout = child.stdout.take();
                let stderr = child.stderr.take();
                if let Some(stdin) = stdin {
                    tokio::spawn(write_pipe(stdin, stdin_rx));
                }
                if let Some(out) = stdout {
                    tokio::spawn(read_pipe(out, Out::Stdout, out_tx.clone()));
                }
                if let Some(err) = stderr {
                    tokio::spawn(read_pipe(err, Out::Stderr, out_tx));
                }
                (child, None)
            }
            Some((rows, cols)) => {
                use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
                let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
                    .map_err(io_err)?;
                grantpt(&master).map_err(io_err)?;
                unlockpt(&master).map_err(io_err)?;
                let name = ptsname(&master, Vec::new()).map_err(io_err)?;
                let _ = rustix::termios::tcsetwinsize(&master, winsize(rows, cols));
                let replica = std::fs::OpenOptions::new().read(true).write(true).open(
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.to_bytes()),
                )?;
                // The replica must become the child's own (a pts is owned by whoever opened it).
                rustix::fs::fchown(
                    &replica,
                    Some(rustix::process::Uid::from_raw(spec.uid)),
                    Some(rustix::process::Gid::from_raw(spec.gid)),
                )
                .map_err(io_err)?;
                command
                    .stdin(replica.try_clone()?)
                    .stdout(replica.try_clone()?)
                    .stderr(replica);
                let child = command.spawn()?;
                // `command` (and its copies of the replica) goes now: reads end with the child.
                drop(command);
                let reader = std::fs::File::from(master.try_clone()?);
                let writer = std::fs::File::from(master.try_clone()?);
                std::thread::spawn(move || read_pty(reader, &out_tx));
                std::thread::spawn(move || write_pty(writer, stdin_rx));
                (child, Some(master))
            }
        };
        let pgid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .and_then(Pid::from_raw);
        let running = Self {
            child,
            pgid,
            stdin: stdin_tx,
            pty,
        };
        if let (Some(procs), Some(pid)) = (&ctx.cgroup_procs, running.pgid) {
            // As the supervisor does for tasks (the leader, then what it already forked); a
            // command outside its task's limits would be a way around them, so failing to move
            // it ends its whole group, not only the leader `kill_on_drop` reaches.
            let leader = pid.as_raw_nonzero().get().unsigned_abs();
            if let Err(e) = crate::tasks::move_group_into(procs, leader) {
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                return Err(e);
            }
        }
        Ok((running, output))
    }

    pub(super) fn resize(&self, rows: u16, cols: u16) {
        if let Some(pty) = &self.pty {
            let _ = rustix::termios::tcsetwinsize(pty, winsize(rows, cols));
        }
    }

    pub(super) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGKILL to its process group.
    pub(super) fn kill(&mut self) {
        if let Some(pgid) = self.pgid {
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        }
        let _ = self.child.start_kill();
    }
}

fn winsize(rows: u16, cols: u16) -> rustix::termios::Winsize {
    rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

async fn write_pipe(mut stdin: tokio::process::ChildStdin, mut rx: mpsc::Receiver<In>) {
    while let Some(i) = rx.recv().await {
        match i {
            In::Data(d) => {
                if stdin.write_all(&d).await.is_err() {
                    return;
                }
            }
            In::Eof => return,
        }
    }
}

async fn read_pipe(
    mut r: impl tokio::io::AsyncRead + Unpin,
    which: Out,
    tx: mpsc::Sender<(Out, Vec<u8>)>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send((which, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Until the terminal's last replica is closed (`EIO`).
fn read_pty(mut r: std::fs::File, tx: &mpsc::Sender<(Out, Vec<u8>)>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.blocking_send((Out::Stdout, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
}

fn write_pty(mut w: std::fs::File, mut rx: mpsc::Receiver<In>) {
    while let Some(i) = rx.blocking_recv() {
        let bytes = match &i {
            In::Data(d) => d.as_slice(),
            // ^D: the line discipline's end of file.
            In::Eof => &[4u8][..],
        };
        if w.write_all(bytes).is_err() {
            return;
        }
    }
}
