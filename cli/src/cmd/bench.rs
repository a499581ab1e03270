//! `ringzero bench …`: load generators that drive a real cluster through the profile, with the
//! caller's credentials and capability, like any other client.
//!
//! # Layout
//!
//! - this file: the subcommands and the dispatcher.
//! - [`write`]: `bench write`, closed-loop clients making gated, audited, replicated writes
//!   (the load shape and statistics are `ringzero_telemetry::load`'s, shared with the etcd
//!   client of `scripts/bench-vs-etcd.sh`).

mod write;

use clap::Subcommand;

use super::session::runtime;
use crate::cli::GlobalArgs;
use crate::failure::Outcome;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Closed-loop clients making real writes (agent join tokens of 1 s) for a duration: writes/s,
    /// p50/p99/p99.9/max latency, errors by gRPC code, and each local authority node's CPU time.
    #[command(after_help = write::HELP)]
    Write(write::WriteArgs),
}

pub(crate) fn run(global: &GlobalArgs, cmd: BenchCommand) -> Outcome {
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            BenchCommand::Write(a) => write::run(global, a).await,
        }
    })
}
