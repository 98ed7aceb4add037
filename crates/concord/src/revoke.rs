//! `concord revoke`: refuses every reconnect token a user holds, by adding the user to the
//! revocation list in the server's data directory. It works while the server runs (the
//! server reads the list again at the next reconnect) and when it is stopped; the user's
//! open sessions go on, and they can log in again with a client JWT.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use concord_protocol::UserId;
use concord_server::RevocationList;

use crate::config::{self, Config, Settings};

#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// The user whose reconnect tokens are refused from now on (their JWT `sub`, or an
    /// anonymous user's `anonymous:<id>`)
    #[arg(long)]
    pub(crate) user: String,
    /// The server's configuration file, to find its data directory
    #[arg(long, env = "CONCORD_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The server's data directory [default: ./concord-data]
    #[arg(long, env = "CONCORD_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

pub(crate) fn run(args: RevokeArgs) -> anyhow::Result<()> {
    if args.user.is_empty() {
        bail!("--user must not be empty");
    }
    let file = match &args.config {
        Some(path) => config::read_file(path)?,
        None => Settings::default(),
    };
    let flags = Settings { data_dir: args.data_dir, ..Settings::default() };
    let config = Config::resolve(flags, file)?;
    if !config.data_dir.is_dir() {
        bail!("{} is not a data directory (pass --data-dir)", config.data_dir.display());
    }
    let list = RevocationList::in_data_dir(&config.data_dir);
    list.revoke(&UserId(args.user.clone())).context("cannot revoke")?;
    println!(
        "{}'s reconnect tokens are revoked ({}); they must log in again with a JWT",
        args.user,
        list.path().display()
    );
    Ok(())
}
