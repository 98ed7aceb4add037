//! `offline-sync`: many models changed offline, then synced (targets P4 and P6 in
//! `docs/benchmarks.md`).
//!
//! What it is: for each N, a fresh `concord serve` with its defaults (a child process on
//! 127.0.0.1, a temporary redb data directory; the binary `concord` beside this one unless
//! `--concord` names it) and a Rust client with a redb store, in three child processes of
//! this binary so that each phase's peak resident set is its own:
//! 1. `prepare`: offline, creates N models `{ "n": 0 }` in one collection and sets `n` to 1
//!    in each, every change awaited as stored; the handles are closed.
//! 2. `sync`: a fresh process (as after a restart) opens the store, connects, and waits
//!    until background sync reports every model done; then checks the store holds nothing
//!    unacknowledged. It reports models per second (from connecting to the last model
//!    done) and its peak RSS (`VmHWM`).
//! 3. `handles`: offline, opens every model and holds the handles: the RSS they add,
//!    divided by N, is what an open model handle costs.
//!
//! The server's RSS is sampled as it started (cold), before the sync (after a warm-up: a
//! second client store syncs `--warmup` models and the server unloads them), at its peak (`VmHWM`), and after the models
//! were unloaded (the server unloads a model idle for 30 s by default; the tool waits
//! `--after` seconds after the sync), with what the server logged when it gave its
//! allocator's free memory back to the system (`malloc_trim`, with `mallinfo2` figures).
//!
//! What it is not: a test (the checks make a wrong run fail, but nothing is timed in a
//! test), or a model of real use (one tiny edit per model, nothing else on the connection).
//!
//! ```sh
//! cargo build --release -p concord -p concord-bench --bin concord --bin offline-sync
//! target/release/offline-sync --models 1000,10000
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use concord_bench::process::{phase, status_kib, token};
use concord_client::{CollectionId, Domain, DomainEvent, EngineConfig, ModelId, RedbAdapter};
use concord_testkit::process::ServeProcess;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Models changed offline, then synced: rate, client and server memory")]
struct Cli {
    #[command(subcommand)]
    phase: Option<Phase>,
    /// The `concord` binary whose `serve` command runs the server [default: `concord` in
    /// this tool's directory]
    #[arg(long, env = "CONCORD_BIN", value_name = "PATH")]
    concord: Option<PathBuf>,
    /// Numbers of models, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    models: Vec<usize>,
    /// Seconds to wait after the sync before sampling the server's RSS (its models unload
    /// after 30 s idle by default).
    #[arg(long, default_value_t = 45)]
    after: u64,
    /// Models synced (by another client store) and unloaded before the "before" sample, so
    /// that it is a server that has served this kind of traffic once: its code paged in, its
    /// store cache filled, its threads started. 0 samples the server as it started.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Background sync's models in flight (`EngineConfig::sync_concurrency`) [default: the
    /// engine's]
    #[arg(long)]
    sync_concurrency: Option<usize>,
    /// Extra arguments for `concord serve` (e.g. `--messages-per-second=100000`).
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    serve_args: Vec<String>,
}

/// The client phases, each run in its own process by the tool itself.
#[derive(Debug, Subcommand)]
enum Phase {
    Prepare {
        url: String,
        store: PathBuf,
        models: usize,
        /// The models' ids start with this.
        #[arg(long, default_value = "note")]
        prefix: String,
    },
    Sync {
        url: String,
        store: PathBuf,
        token: String,
        #[arg(long)]
        concurrency: Option<usize>,
    },
    Handles {
        url: String,
        store: PathBuf,
        models: usize,
    },
}

const USER: &str = "alice";
/// Models prepared side by side (the store group-commits their writes).
const PREPARE_CONCURRENCY: usize = 64;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.phase {
        Some(Phase::Prepare { url, store, models, prefix }) => {
            runtime.block_on(prepare(&url, &store, models, &prefix))
        }
        Some(Phase::Sync { url, store, token, concurrency }) => {
            let report = runtime.block_on(sync(&url, &store, &token, concurrency))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Some(Phase::Handles { url, store, models }) => {
            let report = runtime.block_on(handles(&url, &store, models))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        None => {
            let concord = match &cli.concord {
                Some(path) => path.clone(),
                None => std::env::current_exe()?.with_file_name("concord"),
            };
            ensure!(concord.is_file(), "no concord binary at {}", concord.display());
            let mut runs = Vec::new();
            for &models in &cli.models {
                let run = run(&concord, models, &cli)?;
                eprintln!("{}", serde_json::to_string_pretty(&run)?);
                runs.push(run);
            }
            println!("{}", table(&runs));
            Ok(())
        }
    }
}

fn id(i: usize) -> ModelId {
    prefixed_id("note", i)
}

fn prefixed_id(prefix: &str, i: usize) -> ModelId {
    ModelId::new(format!("{prefix}-{i:05}")).expect("a valid id")
}

fn domain(url: &str, store: &Path) -> Domain {
    Domain::builder(url).storage(RedbAdapter::new(store)).build()
}

fn domain_with(url: &str, store: &Path, sync_concurrency: Option<usize>) -> Domain {
    let mut engine = EngineConfig::default();
    if let Some(concurrency) = sync_concurrency {
        engine.sync_concurrency = concurrency;
    }
    Domain::builder(url).storage(RedbAdapter::new(store)).engine(engine).build()
}

async fn prepare(url: &str, store: &Path, models: usize, prefix: &str) -> Result<()> {
    let domain = domain(url, store);
    domain.initialize_offline(USER).await?;
    let collection = CollectionId::new("notes")?;
    let mut work = futures_util::stream::iter(0..models)
        .map(|i| {
            let (domain, collection) = (domain.clone(), collection.clone());
            async move {
                let model = prefixed_id(prefix, i);
                domain.models().create_with_id(&model, &collection, json!({ "n": 0 })).await?;
                let handle = domain.models().open(&model).await?;
                let n = handle.root().get("n").await?.context("no n")?.as_number()?;
                let change = n.set(1.0).await?;
                handle.stored(change).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(PREPARE_CONCURRENCY);
    while let Some(done) = work.next().await {
        done?;
    }
    drop(work);
    domain.close().await?;
    Ok(())
}

/// What the sync phase measured.
#[derive(Debug, Serialize, Deserialize)]
struct SyncReport {
    models: usize,
    seconds: f64,
    models_per_sec: f64,
    /// RSS with the store open, before connecting (KiB).
    rss_before_kib: u64,
    peak_rss_kib: u64,
    progress_events: usize,
}

async fn sync(
    url: &str,
    store: &Path,
    token: &str,
    concurrency: Option<usize>,
) -> Result<SyncReport> {
    let domain = domain_with(url, store, concurrency);
    let mut events = domain.events();
    let rss_before_kib = status_kib("self", "VmRSS:")?;
    let start = Instant::now();
    domain.connect_with_jwt(token).await?;
    let deadline = start + Duration::from_secs(600);
    let mut progress_events = 0;
    let (done, total) = loop {
        let event = tokio::time::timeout_at(deadline.into(), events.next())
            .await
            .context("background sync did not finish in 10 minutes")?;
        match event {
            Some(DomainEvent::SyncProgress { done, failed, total }) => {
                progress_events += 1;
                ensure!(failed == 0, "{failed} models failed to sync");
                if done == total {
                    break (done, total);
                }
            }
            Some(DomainEvent::ProtocolViolation { model, error }) => {
                bail!("protocol violation on {model}: {error}")
            }
            Some(DomainEvent::ServerFault { model, error }) => {
                bail!("server fault on {model}: {error}")
            }
            Some(_) => {}
            None => bail!("the domain's events ended"),
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    let peak_rss_kib = status_kib("self", "VmHWM:")?;
    let stored = domain.models().stored_models().await?;
    let owed = stored.iter().filter(|m| m.has_pending_changes || m.created_locally).count();
    ensure!(owed == 0, "{owed} models still hold changes the server has not acknowledged");
    ensure!(done == stored.len(), "{done} of {total} synced, {} stored", stored.len());
    domain.close().await?;
    Ok(SyncReport {
        models: done,
        seconds,
        models_per_sec: done as f64 / seconds,
        rss_before_kib,
        peak_rss_kib,
        progress_events,
    })
}

/// What holding every model open costs.
#[derive(Debug, Serialize, Deserialize)]
struct HandlesReport {
    rss_before_kib: u64,
    rss_held_kib: u64,
    bytes_per_handle: f64,
}

async fn handles(url: &str, store: &Path, models: usize) -> Result<HandlesReport> {
    let domain = domain(url, store);
    domain.initialize_offline(USER).await?;
    // One open first, so that what every handle shares (the store's cache, the runtime's
    // buffers) is counted before.
    let first = domain.models().open(&id(0)).await?;
    let rss_before_kib = status_kib("self", "VmRSS:")?;
    let mut held = vec![first];
    for i in 1..models {
        let handle = domain.models().open(&id(i)).await?;
        ensure!(handle.value().await? == json!({ "n": 1.0 }), "model {i} lost its change");
        held.push(handle);
    }
    let rss_held_kib = status_kib("self", "VmRSS:")?;
    let bytes_per_handle =
        (rss_held_kib.saturating_sub(rss_before_kib) * 1024) as f64 / (models - 1) as f64;
    drop(held);
    domain.close().await?;
    Ok(HandlesReport { rss_before_kib, rss_held_kib, bytes_per_handle })
}

/// One N: the server, the three client phases, the server's RSS.
#[derive(Debug, Serialize)]
struct Run {
    models: usize,
    prepare_seconds: f64,
    sync: SyncReport,
    handles: HandlesReport,
    /// The server as it started, before any traffic.
    server_cold_rss_kib: u64,
    server_cold_anon_kib: u64,
    /// After the warm-up's models were synced and unloaded (the same as cold without one).
    server_rss_before_kib: u64,
    server_peak_rss_kib: u64,
    server_rss_after_kib: u64,
    /// The anonymous part of the server's RSS (what it allocated) before and after; the
    /// rest is file-backed: the binary's and libraries' pages, clean and shared.
    server_anon_before_kib: u64,
    server_anon_after_kib: u64,
    /// What the server logged when it returned its allocator's free memory to the system.
    server_trims: Vec<String>,
}

fn run(concord: &Path, models: usize, cli: &Cli) -> Result<Run> {
    let dir = tempfile::Builder::new().prefix("concord-offline-sync-").tempdir()?;
    let data = dir.path().join("server");
    let store = dir.path().join("client");
    // Warnings, and what the server's allocator returns to the system (its statistics).
    let mut args = vec!["--log", "warn,concord::alloc=info"];
    args.extend(cli.serve_args.iter().map(String::as_str).filter(|a| !a.is_empty()));
    let server = ServeProcess::start(concord, &data, &args)?;
    let url = server.url("bench", "main");
    let token = token(concord, &data, USER)?;
    let store_arg = store.to_string_lossy().into_owned();

    let started = Instant::now();
    phase(&["prepare", &url, &store_arg, &models.to_string()])?;
    let prepare_seconds = started.elapsed().as_secs_f64();

    let pid = server.pid().to_string();
    let server_cold_rss_kib = status_kib(&pid, "VmRSS:")?;
    let server_cold_anon_kib = status_kib(&pid, "RssAnon:")?;
    if cli.warmup > 0 {
        let warm_store = dir.path().join("warmup-client");
        let warm_store = warm_store.to_string_lossy();
        phase(&["prepare", &url, &warm_store, &cli.warmup.to_string(), "--prefix", "warmup"])?;
        let _: SyncReport = serde_json::from_str(&phase(&["sync", &url, &warm_store, &token])?)?;
        std::thread::sleep(Duration::from_secs(cli.after));
    }
    let server_rss_before_kib = status_kib(&pid, "VmRSS:")?;
    let server_anon_before_kib = status_kib(&pid, "RssAnon:")?;
    let concurrency = cli.sync_concurrency.map(|c| c.to_string());
    let mut sync_args = vec!["sync", &url, &store_arg, &token];
    if let Some(concurrency) = &concurrency {
        sync_args.extend(["--concurrency", concurrency]);
    }
    let sync: SyncReport = serde_json::from_str(&phase(&sync_args)?)?;
    ensure!(sync.models == models, "synced {} of {models}", sync.models);
    let server_peak_rss_kib = status_kib(&pid, "VmHWM:")?;
    std::thread::sleep(Duration::from_secs(cli.after));
    let server_rss_after_kib = status_kib(&pid, "VmRSS:")?;
    let server_anon_after_kib = status_kib(&pid, "RssAnon:")?;
    let server_trims =
        server.log().lines().filter(|l| l.contains("malloc_trim")).map(str::to_owned).collect();

    let handles =
        serde_json::from_str(&phase(&["handles", &url, &store_arg, &models.to_string()])?)?;
    drop(server);
    Ok(Run {
        models,
        prepare_seconds,
        sync,
        handles,
        server_cold_rss_kib,
        server_cold_anon_kib,
        server_rss_before_kib,
        server_peak_rss_kib,
        server_rss_after_kib,
        server_anon_before_kib,
        server_anon_after_kib,
        server_trims,
    })
}

fn table(runs: &[Run]) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut out = String::from(
        "| models | sync s | models/s | client RSS before / peak MiB | handle KiB | server RSS cold / before / peak / after MiB | server anon cold / before / after MiB |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        out.push_str(&format!(
            "| {} | {:.2} | {:.0} | {:.1} / {:.1} | {:.1} | {:.1} / {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} |\n",
            r.models,
            r.sync.seconds,
            r.sync.models_per_sec,
            mib(r.sync.rss_before_kib),
            mib(r.sync.peak_rss_kib),
            r.handles.bytes_per_handle / 1024.0,
            mib(r.server_cold_rss_kib),
            mib(r.server_rss_before_kib),
            mib(r.server_peak_rss_kib),
            mib(r.server_rss_after_kib),
            mib(r.server_cold_anon_kib),
            mib(r.server_anon_before_kib),
            mib(r.server_anon_after_kib),
        ));
    }
    out
}
