//! The commands: one module per subcommand, and the dispatcher.

mod agent;
mod audit;
mod authority;
mod blast;
mod dev;
mod entry;
mod keyfile;
mod keygen;
mod node;
mod role;
mod session;
mod token;
mod user;

use crate::cli::{Cli, Command, TokenCommand};
use crate::failure::Outcome;

/// Runs the command `cli` names.
pub(crate) fn run(cli: Cli) -> Outcome {
    match cli.command {
        Command::Keygen(a) => keygen::run(a),
        Command::Token(TokenCommand::Mint(a)) => token::mint(&cli.global, a),
        Command::Token(TokenCommand::Revoke(a)) => token::revoke(&cli.global, a),
        Command::Token(TokenCommand::Attenuate(a)) => token::attenuate(a),
        Command::Token(TokenCommand::Inspect(a)) => token::inspect(a),
        Command::Token(TokenCommand::Verify(a)) => token::verify(a),
        Command::Authority(c) => authority::run(&cli.global, c),
        Command::Bundle(c) => authority::bundle(&cli.global, c),
        Command::Node(c) => node::run(&cli.global, c),
        Command::Entry(c) => entry::run(&cli.global, c),
        Command::Agent(c) => agent::run(&cli.global, c),
        Command::Dev(a) => dev::run(&cli.global, a),
        Command::Audit(c) => audit::run(&cli.global, c),
        Command::User(c) => user::run(&cli.global, c),
        Command::Login(a) => user::login(&cli.global, a),
        Command::Role(c) => role::run(&cli.global, c),
        Command::BlastRadius(a) => blast::run(&cli.global, a),
    }
}
