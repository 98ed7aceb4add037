//! `concord store`: looks after a server's store while its server is stopped. `check` reads
//! every model whole and names those a damaged record keeps from being served;
//! `rebuild-snapshot` puts back a damaged snapshot from the model's checkpoints; `drop-model`
//! deletes a model that cannot be served, so that its collaborators are told it was deleted
//! rather than failing on it at every try (`docs/server.md`, "Store integrity and restore");
//! `copy` copies the embedded store into PostgreSQL.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use concord_protocol::{ModelId, Timestamp};
use concord_server::{
    Damage, StoreLocation, StoreUrl, check_store, copy_store, drop_damaged_model, rebuild_snapshot,
};

use crate::config::{self, Config, Settings};

#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Read every model whole and list those with a damaged record; exits with 1 if any
    Check(Target),
    /// Rebuild the damaged snapshot of one model from its newest whole checkpoint (stop the
    /// server first): it is served again as it was, with nothing lost
    RebuildSnapshot(OneModel),
    /// Delete one model that cannot be served because a record of it is damaged (stop the
    /// server first): its collaborators are told it was deleted
    DropModel(OneModel),
    /// Copy the embedded store of a data directory into an empty PostgreSQL database (stop
    /// the server first), to serve it from there (`--store`)
    Copy {
        /// The PostgreSQL URL to copy into (`postgres://user@host:port/database`)
        #[arg(long, value_name = "URL")]
        to: StoreUrl,
        #[command(flatten)]
        target: Target,
    },
}

/// One model of a server's store.
#[derive(Debug, Args)]
struct OneModel {
    /// Its domain, as `check` prints it (`<namespace>/<domain>`)
    #[arg(long)]
    domain: String,
    /// Its id
    #[arg(long)]
    model: String,
    #[command(flatten)]
    target: Target,
}

impl OneModel {
    fn resolve(self) -> anyhow::Result<(StoreLocation, String, ModelId)> {
        let model = ModelId::new(self.model).context("--model")?;
        Ok((self.target.location()?, self.domain, model))
    }
}

/// Which server's store: found as `concord serve` finds it.
#[derive(Debug, Args)]
struct Target {
    /// The server's configuration file (its data directory, store and indexes)
    #[arg(long, env = "CONCORD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The server's data directory [default: ./concord-data]
    #[arg(long, env = "CONCORD_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The server's PostgreSQL URL, when it stores there
    #[arg(long, env = "CONCORD_STORE", value_name = "URL")]
    store: Option<StoreUrl>,
}

impl Target {
    fn location(self) -> anyhow::Result<StoreLocation> {
        let file = match &self.config {
            Some(path) => config::read_file(path)?,
            None => Settings::default(),
        };
        let flags = Settings { data_dir: self.data_dir, store: self.store, ..Settings::default() };
        let config = Config::resolve(flags, file)?;
        Ok(StoreLocation {
            indexes: config.indexes()?,
            data_dir: config.data_dir,
            store: config.store,
        })
    }
}

pub(crate) fn run(args: StoreArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match args.command {
            StoreCommand::Check(target) => check(target.location()?).await,
            StoreCommand::RebuildSnapshot(one) => {
                let (location, domain, model) = one.resolve()?;
                let rebuilt = rebuild_snapshot(&location, &domain, &model).await?;
                for passed in &rebuilt.passed_over {
                    println!("passed over {passed}");
                }
                println!(
                    "{domain} {model} is served again: its snapshot is checkpoint {}, and {} \
                     operations after it are replayed at each load (it was damaged: {})",
                    rebuilt.checkpoint, rebuilt.replayed, rebuilt.damage
                );
                Ok(())
            }
            StoreCommand::Copy { to, target } => copy(target.location()?, &to).await,
            StoreCommand::DropModel(one) => {
                let (location, domain, model) = one.resolve()?;
                drop_model(location, &domain, &model).await
            }
        }
    })
}

async fn check(location: StoreLocation) -> anyhow::Result<()> {
    let terminal = std::io::stderr().is_terminal();
    let check = check_store(&location, |read| {
        if terminal {
            eprint!("\rread {read} models");
        }
    })
    .await?;
    if terminal {
        eprintln!();
    }
    for damaged in &check.damaged {
        let state = match damaged.kind {
            Damage::Model => "not served",
            Damage::Snapshot => "not served, its snapshot damaged (rebuild-snapshot)",
            Damage::History => "served, its history damaged",
            Damage::Collection => "not served, its collection's record damaged",
        };
        println!("{} {}: {state}: {}", damaged.domain, damaged.model, damaged.damage);
    }
    match check.damaged.len() {
        0 => {
            println!("{} models read whole, none damaged", check.models);
            Ok(())
        }
        damaged => bail!(
            "{damaged} of {} models are damaged; restore the store from a backup, or rebuild \
             each damaged snapshot with `concord store rebuild-snapshot` and drop each other \
             one not served with `concord store drop-model`",
            check.models
        ),
    }
}

async fn copy(from: StoreLocation, to: &StoreUrl) -> anyhow::Result<()> {
    let terminal = std::io::stderr().is_terminal();
    let copied = copy_store(&from, to, |copied| {
        if terminal {
            eprint!("\rcopied {copied} records");
        }
    })
    .await?;
    if terminal {
        eprintln!();
    }
    println!(
        "copied {copied} records from {} into {}; serve them with --store (the first start \
         builds the query indexes)",
        from.data_dir.display(),
        to.redacted()
    );
    Ok(())
}

async fn drop_model(location: StoreLocation, domain: &str, model: &ModelId) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let at = Timestamp(i64::try_from(now.as_millis()).unwrap_or(i64::MAX));
    let damage = drop_damaged_model(&location, domain, model, at).await?;
    println!("{domain} {model} is deleted (it was damaged: {damage})");
    Ok(())
}
