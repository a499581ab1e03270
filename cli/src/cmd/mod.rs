//! The commands: one module per subcommand, owning its flags (clap types) and its code, and
//! the dispatcher. Shared helpers: [`session`] (profile, client, runtime, tables), [`profile`]
//! (writing user profiles), [`keyfile`] (root key files).

pub(crate) mod agent;
pub(crate) mod audit;
pub(crate) mod authority;
pub(crate) mod bench;
pub(crate) mod blast;
pub(crate) mod bundle;
pub(crate) mod dev;
pub(crate) mod entry;
pub(crate) mod job;
mod keyfile;
pub(crate) mod keygen;
pub(crate) mod login;
pub(crate) mod mesh;
pub(crate) mod node;
mod profile;
pub(crate) mod role;
pub(crate) mod sched;
mod session;
pub(crate) mod token;
pub(crate) mod user;

use crate::cli::{Cli, Command};
use crate::failure::Outcome;

/// Runs the command `cli` names.
pub(crate) fn run(cli: Cli) -> Outcome {
    let global = &cli.global;
    match cli.command {
        Command::Keygen(a) => keygen::run(a),
        Command::Token(c) => token::run(global, c),
        Command::Authority(c) => authority::run(global, c),
        Command::Bench(c) => bench::run(global, c),
        Command::Bundle(c) => bundle::run(global, c),
        Command::Node(c) => node::run(global, c),
        Command::Entry(c) => entry::run(global, c),
        Command::Job(c) => job::run(global, c),
        Command::Sched(c) => sched::run(global, c),
        Command::Agent(c) => agent::run(global, c),
        Command::Mesh(c) => mesh::run(global, c),
        Command::Dev(a) => dev::run(global, a),
        Command::Audit(c) => audit::run(global, c),
        Command::User(c) => user::run(global, c),
        Command::Login(a) => login::run(global, a),
        Command::Role(c) => role::run(global, c),
        Command::BlastRadius(a) => blast::run(global, a),
    }
}
