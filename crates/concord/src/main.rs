//! `concord`, the command that runs a Concord server.
//!
//! * `concord serve` runs the server of the `concord-server` library: a WebSocket endpoint at
//!   `ws://HOST:PORT/<namespace>/<domain>` backed by an embedded store in a data directory.
//!   Settings come from flags, `CONCORD_*` environment variables and an optional TOML file,
//!   in that order of precedence. When it listens it prints one line to stdout,
//!   `concord ready on ws://ADDR/{namespace}/{domain}`; it logs to stderr, and stops cleanly
//!   on SIGINT or SIGTERM; SIGUSR1 backs up its store into the data directory.
//! * `concord token` mints an HS256 client JWT with the server's secret, for development.
//! * `concord revoke` refuses every reconnect token a user holds, through the revocation list
//!   in the data directory (the running server reads it at the next reconnect).
//! * `concord store check` names the models of a stopped server's store that a damaged record
//!   keeps from being served, and `concord store drop-model` deletes one of them.
//!
//! It is a thin shell around the library: it reads configuration, keeps the data
//! directory's secret, handles signals and sets up logs. It is not a client, an admin API, a
//! migration tool or an identity provider; Unix only (it relies on Unix signals and file
//! modes).

mod alloc;
mod config;
mod demo;
mod demo_cluster;
mod revoke;
mod secret;
mod serve;
mod store;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "concord", version, about = "Runs a Concord collaboration server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server until SIGINT or SIGTERM (SIGUSR1 backs up its store)
    Serve(Box<serve::ServeArgs>),
    /// Print a client JWT signed with the server's HS256 secret (development and tests)
    Token(token::TokenArgs),
    /// Refuse every reconnect token a user holds (they log in again with a JWT); works while
    /// the server runs
    Revoke(revoke::RevokeArgs),
    /// Check a stopped server's store for damaged models, or drop one that cannot be served
    Store(store::StoreArgs),
    /// Show live collaboration and offline work end to end: a server and two clients in this
    /// process, with temporary stores
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve(args) => serve::run(*args),
        Command::Token(args) => token::run(args),
        Command::Revoke(args) => revoke::run(args),
        Command::Store(args) => store::run(args),
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("concord: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
