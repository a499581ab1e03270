//! `ringzero job exec`: a command in a running task's context, through the node API of the
//! agent that runs it (`Node/Exec`, directly, as `job logs`). With `-t` the local terminal is
//! put in raw mode (rustix termios) and restored however the command ends, and window-size
//! changes are sent on. The exit status is the remote command's (128 + N for a signal).

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::anyhow;
use clap::Args;
use ringzero_proto::node::{ExecInput, ExecStart, WindowSize, exec_input, exec_output};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::logs::{connect, denied};
use super::{JobRef, parse_job_ref};
use crate::cli::GlobalArgs;
use crate::cmd::session::session;
use crate::failure::{Outcome, failed};

#[derive(Debug, Args)]
pub(crate) struct JobExecArgs {
    /// The job, as NAMESPACE/NAME.
    #[arg(value_name = "NS/NAME", value_parser = parse_job_ref)]
    pub(crate) job: JobRef,
    /// The allocation (needed when the job has several).
    #[arg(long, value_name = "ID")]
    pub(crate) alloc: Option<String>,
    /// Why (recorded in the audit log; 1-256 characters).
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason: String,
    /// Send this terminal's stdin to the command.
    #[arg(short = 'i', long)]
    pub(crate) interactive: bool,
    /// Give the command a pseudo-terminal (raw mode here while it runs).
    #[arg(short = 't', long)]
    pub(crate) tty: bool,
    /// The command and its arguments (after `--`). Never recorded in the audit log: only a
    /// SHA-256 of them is.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub(crate) argv: Vec<String>,
}

pub(crate) const EXEC_HELP: &str = "\
Needs debug:attach on ns/NS/NAME, checked by the agent of the allocation's node (and sched:read
on it to find the allocation). The command runs as the task's uid and gid, in its working
directory, environment and cgroup. The agent commits an exec.start audit record (you, your
token's revocation ids, the reason and a SHA-256 of the arguments, never the arguments) before
it starts anything, and refuses if it cannot; every byte in and out is recorded on the node and
an exec.end record carries the recording's length and SHA-256 (see `ringzero audit session`).
Sessions last at most 1 h. The built-in developer role does not hold debug:attach.

Examples:
  ringzero job exec shop/web --reason 'INC-42: inspect config' -- cat /etc/web.toml
  ringzero job exec shop/web --alloc k3j9x0c2m4n6p8q1 --reason 'INC-42' -it -- /bin/sh";

/// Restores the terminal's mode when dropped.
struct RawMode(rustix::termios::Termios);

impl RawMode {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.0,
        );
    }
}

fn window() -> Option<WindowSize> {
    let w = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    Some(WindowSize {
        rows: u32::from(w.ws_row),
        cols: u32::from(w.ws_col),
    })
}

pub(crate) async fn exec(global: &GlobalArgs, a: JobExecArgs) -> Outcome {
    let mut s = session(global)?;
    let (mut client, alloc) = connect(&mut s, &a.job, a.alloc.as_deref()).await?;
    let on = format!("node {} ({})", alloc.node, alloc.node_api);
    let (tx, rx) = mpsc::channel::<ExecInput>(8);
    let start = ExecStart {
        alloc_id: alloc.id.clone(),
        argv: a.argv.clone(),
        reason: a.reason.clone(),
        tty: a.tty,
        window: if a.tty { window() } else { None },
    };
    tx.send(ExecInput {
        input: Some(exec_input::Input::Start(start)),
    })
    .await
    .map_err(|_| failed(anyhow!("exec: the request stream closed")))?;
    let mut stream = client
        .exec(ReceiverStream::new(rx))
        .await
        .map_err(|st| denied(&st, &format!("exec in allocation {}", alloc.id), &on))?
        .into_inner();
    // Raw mode only once the agent accepted, restored when this returns (error or not).
    let _raw = (a.tty && rustix::termios::isatty(std::io::stdin())).then(RawMode::enter);
    if a.interactive {
        let stdin_tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            let mut stdin = std::io::stdin().lock();
            loop {
                let msg = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => exec_input::Input::Eof(true),
                    Ok(n) => exec_input::Input::Stdin(buf[..n].to_vec()),
                };
                let eof = matches!(msg, exec_input::Input::Eof(_));
                if stdin_tx
                    .blocking_send(ExecInput { input: Some(msg) })
                    .is_err()
                    || eof
                {
                    return;
                }
            }
        });
    }
    if a.tty {
        let resize_tx = tx.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut winch) = signal(SignalKind::window_change()) else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(w) = window() {
                    let msg = ExecInput {
                        input: Some(exec_input::Input::Resize(w)),
                    };
                    if resize_tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    // Without -i (or once stdin ends), only the helpers above hold a sender.
    drop(tx);
    loop {
        match stream.message().await {
            Ok(Some(out)) => match out.output {
                Some(exec_output::Output::Stdout(d)) => {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(&d).and_then(|()| o.flush());
                }
                Some(exec_output::Output::Stderr(d)) => {
                    let mut e = std::io::stderr().lock();
                    let _ = e.write_all(&d).and_then(|()| e.flush());
                }
                Some(exec_output::Output::Exit(x)) => {
                    if !x.ended_by.is_empty() {
                        eprintln!("ringzero: the agent ended the session: {}", x.ended_by);
                    }
                    let code = if x.signal > 0 { 128 + x.signal } else { x.code };
                    return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
                }
                Some(exec_output::Output::SessionId(id)) => {
                    tracing::debug!(session = %id, "exec session");
                }
                None => {}
            },
            Ok(None) => {
                return Err(failed(anyhow!(
                    "exec on {on}: the stream ended without an exit status"
                )));
            }
            Err(st) => {
                return Err(denied(
                    &st,
                    &format!("exec in allocation {}", alloc.id),
                    &on,
                ));
            }
        }
    }
}
