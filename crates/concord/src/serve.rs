//! `concord serve`: reads the configuration, prepares the data directory's secret, runs the
//! server until SIGINT or SIGTERM, then lets it close sessions and flush its store.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use concord_server::{AuthConfig, Backups, JwtKey, Server, ServerError};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::alloc;
use crate::config::{self, Config, Settings};
use crate::secret;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML configuration file: keys are the flags' names with `_` for `-`, plus
    /// `[collections.<id>]` tables; flags and environment variables override it
    #[arg(long, env = "CONCORD_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Print the merged configuration (in the file's format) and exit without starting
    #[arg(long)]
    pub(crate) print_config: bool,
    #[command(flatten)]
    pub(crate) settings: Settings,
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => config::read_file(path)?,
        None => Settings::default(),
    };
    let config = Config::resolve(args.settings, file)?;
    if args.print_config {
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    let filter = EnvFilter::try_new(&config.log)
        .with_context(|| format!("bad log filter {:?}", config.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    raise_open_file_limit(config.max_connections);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads())
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let data_dir = &config.data_dir;
    // Private (0700): it holds the server's secret and every model.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let secret_path = secret::data_dir_secret(data_dir);
    let (server_secret, created) = secret::load_or_create(&secret_path)?;
    if created {
        info!(path = %secret_path.display(), "created the server secret");
    } else if secret::readable_by_others(&secret_path) {
        warn!(path = %secret_path.display(), "the server secret is readable by other users; chmod 600 it");
    }

    let (key, token_hint) = match (&config.jwt_secret_file, &config.jwt_rs256_public_key) {
        (Some(path), _) => {
            let key = secret::read(path).context("reading the JWT secret")?;
            let hint = format!("concord token --secret-file {} --user alice", path.display());
            (JwtKey::Hs256(key), Some(hint))
        }
        (None, Some(path)) => {
            let pem = std::fs::read(path).with_context(|| {
                format!("cannot read the RS256 public key file {}", path.display())
            })?;
            (JwtKey::Rs256PublicPem(pem), None)
        }
        (None, None) => {
            let hint = format!("concord token --data-dir {} --user alice", data_dir.display());
            (JwtKey::Hs256(server_secret.clone()), Some(hint))
        }
    };
    let auth = AuthConfig {
        jwt: Some(config.jwt(key)),
        allow_anonymous: config.allow_anonymous,
        reconnect_secret: server_secret,
        reconnect_ttl: Duration::from_secs(config.reconnect_ttl_secs),
    };
    let server_config = config.server_config(auth)?;

    // Listen for signals before announcing readiness, so that none is missed.
    let shutdown = shutdown_signal().context("cannot listen for signals")?;
    let server = match Server::bind(server_config).await {
        Ok(server) => server,
        Err(error @ ServerError::Auth(_)) => {
            let key = config.jwt_rs256_public_key.as_ref().or(config.jwt_secret_file.as_ref());
            let key = key.map_or("the server secret".into(), |path| path.display().to_string());
            return Err(error).context(format!("cannot use the JWT key in {key}"));
        }
        Err(error) => {
            return Err(error)
                .context(format!("cannot start the server on {}", data_dir.display()));
        }
    };
    // Before readiness too: SIGUSR1 would otherwise end the process.
    let every =
        (config.backup_every_secs > 0).then(|| Duration::from_secs(config.backup_every_secs));
    let backups = back_up_when_asked(server.backups(), every, config.backup_keep);
    tokio::spawn(backups.context("cannot listen for SIGUSR1")?);
    let url = format!("ws://{}/{{namespace}}/{{domain}}", server.local_addr());
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    info!(%url, data_dir = %data_dir.display(), workers, "concord ready");
    match token_hint {
        Some(hint) => info!("mint a development token with: {hint}"),
        None => info!("client JWTs are verified with the RS256 public key"),
    }
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "concord ready on {url}").and_then(|()| stdout.flush()).ok();
    }
    // Unloaded models' memory goes back to the system, not only to the allocator.
    tokio::spawn(alloc::keep_returning_free_memory());
    server.run(shutdown).await.context("the server failed")?;
    info!("concord stopped");
    Ok(())
}

/// Descriptors the server needs beside its connections (the store, the runtime, logs),
/// with room to spare.
const FILES_BESIDE_CONNECTIONS: u64 = 64;

/// Raises this process's soft limit on open files to its hard limit (where the system
/// allows), so that `max_connections`, not a default soft limit of often 1024, bounds how
/// many clients the server holds; logs what it got. Past the limit the server still runs:
/// it accepts again as connections close.
fn raise_open_file_limit(max_connections: usize) {
    let before = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) => soft,
        Err(error) => {
            warn!(%error, "cannot read the open file limit");
            return;
        }
    };
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit > before => {
            info!(from = before, to = limit, "raised the open file limit");
            limit
        }
        Ok(limit) => {
            info!(limit, "the open file limit is at its hard limit");
            limit
        }
        Err(error) => {
            warn!(limit = before, %error, "cannot raise the open file limit");
            before
        }
    };
    let wanted = (max_connections as u64).saturating_add(FILES_BESIDE_CONNECTIONS);
    if limit < wanted {
        warn!(
            limit,
            max_connections,
            "the open file limit is below max_connections plus what the server needs for \
             itself; connections past it wait until others close (raise the hard limit, \
             for example `ulimit -Hn`)"
        );
    }
}

/// Writes a backup of the store at each SIGUSR1, and every `every` when set (`docs/server.md`,
/// "Backing up a running server"), one at a time, logging where it went; then keeps the newest
/// `keep` (all with 0).
fn back_up_when_asked(
    backups: Backups,
    every: Option<Duration>,
    keep: usize,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut asked = signal(SignalKind::user_defined1())?;
    Ok(async move {
        let mut ticks = every.map(|every| {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        loop {
            let why = tokio::select! {
                signal = asked.recv() => match signal {
                    Some(()) => "SIGUSR1",
                    None => return,
                },
                () = next_tick(ticks.as_mut()) => "scheduled",
            };
            match backups.write().await {
                Ok(backup) => info!(
                    path = %backup.path.display(),
                    bytes = backup.bytes,
                    millis = backup.took.as_millis() as u64,
                    "{why}: backed up the store"
                ),
                Err(error) => error!(%error, "{why}: the backup failed"),
            }
            if keep > 0 {
                match backups.prune(keep) {
                    Ok(deleted) if !deleted.is_empty() => {
                        info!(deleted = deleted.len(), keep, "deleted the oldest backups");
                    }
                    Ok(_) => {}
                    Err(error) => warn!(%error, "cannot delete the oldest backups"),
                }
            }
        }
    })
}

/// The next tick of a schedule; never without one.
async fn next_tick(ticks: Option<&mut tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Resolves at the first SIGINT or SIGTERM; a second one exits at once (acknowledged
/// operations are durable already, so nothing acknowledged is lost).
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        info!("{name}: shutting down (again to exit at once)");
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            };
            warn!("{name} again: exiting without finishing the shutdown");
            std::process::exit(130);
        });
    })
}
