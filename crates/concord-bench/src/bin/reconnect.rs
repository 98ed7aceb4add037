//! `reconnect`: one model edited on both sides of a partition, then reconnected (target P3
//! in `docs/benchmarks.md`).
//!
//! What it is: for each N, a fresh `concord serve` with its defaults (a child process on
//! 127.0.0.1, a temporary redb data directory; the binary `concord` beside this one unless
//! `--concord` names it) and clients with redb stores, each phase in a child process of this
//! binary so that its peak resident set is its own:
//! 1. `seed`: alice, online, creates the model `{ "text": "s" }` and waits until the server
//!    acknowledged it; her store keeps it.
//! 2. `offline`: alice, offline, appends N characters `a`, one operation each, and waits
//!    until her store holds them all.
//! 3. `online`: bob, online, prepends N characters `b`, one operation each, and waits until
//!    the server acknowledged them all.
//! 4. `sync`: alice opens the model from her store, connects, and is timed until every one
//!    of her operations is acknowledged and her copy holds bob's N too; her peak RSS is
//!    read then. The server's peak RSS is reset just before this phase and read after it.
//! 5. `check`: carol, with a fresh store, opens the model online; her copy must equal
//!    alice's (the same text, N `a`s after N `b`s around the seed).
//!
//! What it is not: a test (the checks make a wrong run fail, but nothing is timed in a
//! test), or a model of real typing (one character per operation, nothing else on the
//! connection).
//!
//! ```sh
//! cargo build --release -p concord -p concord-bench --bin concord --bin reconnect
//! target/release/reconnect --ops 10000,100000
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::{Parser, Subcommand};
use concord_bench::process::{phase, reset_peak_rss, status_kib, token};
use concord_client::{Change, CollectionId, Domain, ModelId, RealTimeModel, RedbAdapter};
use concord_testkit::process::ServeProcess;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "One model edited on both sides of a partition: reconnect time and memory")]
struct Cli {
    #[command(subcommand)]
    phase: Option<Phase>,
    /// The `concord` binary whose `serve` command runs the server [default: `concord` in
    /// this tool's directory]
    #[arg(long, env = "CONCORD_BIN", value_name = "PATH")]
    concord: Option<PathBuf>,
    /// Operations made on each side, one run each.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    ops: Vec<usize>,
    /// Extra arguments for `concord serve` (e.g. `--messages-per-second=100000`).
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    serve_args: Vec<String>,
}

/// The client phases, each run in its own process by the tool itself.
#[derive(Debug, Subcommand)]
enum Phase {
    Seed { url: String, store: PathBuf, token: String },
    Offline { url: String, store: PathBuf, ops: usize },
    Online { url: String, store: PathBuf, token: String, ops: usize },
    Sync { url: String, store: PathBuf, token: String, ops: usize },
    Check { url: String, store: PathBuf, token: String },
}

const MODEL: &str = "doc";
const SEED: &str = "s";
/// How long any one phase may wait for the server.
const PATIENCE: Duration = Duration::from_secs(900);

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = match cli.phase {
        Some(Phase::Seed { url, store, token }) => runtime.block_on(seed(&url, &store, &token))?,
        Some(Phase::Offline { url, store, ops }) => {
            runtime.block_on(edit_offline(&url, &store, ops))?
        }
        Some(Phase::Online { url, store, token, ops }) => {
            runtime.block_on(edit_online(&url, &store, &token, ops))?
        }
        Some(Phase::Sync { url, store, token, ops }) => {
            serde_json::to_string(&runtime.block_on(sync(&url, &store, &token, ops))?)?
        }
        Some(Phase::Check { url, store, token }) => {
            runtime.block_on(check(&url, &store, &token))?
        }
        None => {
            let concord = match &cli.concord {
                Some(path) => path.clone(),
                None => std::env::current_exe()?.with_file_name("concord"),
            };
            ensure!(concord.is_file(), "no concord binary at {}", concord.display());
            let mut runs = Vec::new();
            for &ops in &cli.ops {
                let run = run(&concord, ops, &cli)?;
                eprintln!("{}", serde_json::to_string_pretty(&run)?);
                runs.push(run);
            }
            table(&runs)
        }
    };
    println!("{report}");
    Ok(())
}

fn model_id() -> ModelId {
    ModelId::new(MODEL).expect("a valid id")
}

fn domain(url: &str, store: &Path) -> Domain {
    Domain::builder(url).storage(RedbAdapter::new(store)).build()
}

/// The model's text element.
async fn text(model: &RealTimeModel) -> Result<concord_client::RealTimeString> {
    model.root().get("text").await?.context("no text")?.as_string().map_err(Into::into)
}

/// Waits until the server acknowledged every change made on `model` so far.
async fn all_acknowledged(model: &RealTimeModel) -> Result<()> {
    let last = Change { seq: model.watermarks().last };
    tokio::time::timeout(PATIENCE, model.acknowledged(last))
        .await
        .context("changes not acknowledged in time")??;
    Ok(())
}

async fn seed(url: &str, store: &Path, token: &str) -> Result<String> {
    let domain = domain(url, store);
    domain.connect_with_jwt(token).await?;
    let collection = CollectionId::new("docs")?;
    domain.models().create_with_id(&model_id(), &collection, json!({ "text": "" })).await?;
    let model = domain.models().open(&model_id()).await?;
    text(&model).await?.insert(0, SEED).await?;
    all_acknowledged(&model).await?;
    drop(model);
    domain.close().await?;
    Ok(String::new())
}

async fn edit_offline(url: &str, store: &Path, ops: usize) -> Result<String> {
    let domain = domain(url, store);
    domain.initialize_offline("alice").await?;
    let model = domain.models().open(&model_id()).await?;
    let text = text(&model).await?;
    let mut last = None;
    for i in 0..ops {
        last = Some(text.insert(SEED.len() + i, "a").await?);
    }
    if let Some(last) = last {
        model.stored(last).await?;
    }
    drop((text, model));
    domain.close().await?;
    Ok(String::new())
}

async fn edit_online(url: &str, store: &Path, token: &str, ops: usize) -> Result<String> {
    let domain = domain(url, store);
    domain.connect_with_jwt(token).await?;
    let model = domain.models().open(&model_id()).await?;
    let text = text(&model).await?;
    for _ in 0..ops {
        text.insert(0, "b").await?;
    }
    all_acknowledged(&model).await?;
    drop((text, model));
    domain.close().await?;
    Ok(String::new())
}

/// What the sync phase measured.
#[derive(Debug, Serialize, Deserialize)]
struct SyncReport {
    seconds: f64,
    /// RSS with the model open from the store, before connecting (KiB).
    rss_before_kib: u64,
    /// The peak up to then: opening the model read every pending operation from the store.
    peak_rss_open_kib: u64,
    peak_rss_kib: u64,
    version: u64,
    text_len: usize,
}

async fn sync(url: &str, store: &Path, token: &str, ops: usize) -> Result<SyncReport> {
    let domain = domain(url, store);
    domain.initialize_offline("alice").await?;
    let model = domain.models().open(&model_id()).await?;
    let text = text(&model).await?;
    let want = SEED.len() + 2 * ops;
    let rss_before_kib = status_kib("self", "VmRSS:")?;
    let peak_rss_open_kib = status_kib("self", "VmHWM:")?;
    let start = Instant::now();
    domain.connect_with_jwt(token).await?;
    all_acknowledged(&model).await?;
    let deadline = start + PATIENCE;
    while text.len().await? != want {
        ensure!(Instant::now() < deadline, "bob's operations did not all arrive in time");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let peak_rss_kib = status_kib("self", "VmHWM:")?;
    let value = text.value().await?;
    let expected = format!("{}{SEED}{}", "b".repeat(ops), "a".repeat(ops));
    ensure!(value == expected, "alice's text is not bob's {ops} b's, the seed, her {ops} a's");
    let version = model.version().await?;
    drop((text, model));
    domain.close().await?;
    let report = SyncReport {
        seconds,
        rss_before_kib,
        peak_rss_open_kib,
        peak_rss_kib,
        version,
        text_len: want,
    };
    Ok(report)
}

async fn check(url: &str, store: &Path, token: &str) -> Result<String> {
    let domain = domain(url, store);
    domain.connect_with_jwt(token).await?;
    let model = domain.models().open(&model_id()).await?;
    let value = text(&model).await?.value().await?;
    let version = model.version().await?;
    drop(model);
    domain.close().await?;
    Ok(serde_json::to_string(&(version, value))?)
}

/// One N: the server, the five client phases, the server's RSS.
#[derive(Debug, Serialize)]
struct Run {
    ops: usize,
    offline_seconds: f64,
    online_seconds: f64,
    sync: SyncReport,
    server_rss_before_kib: u64,
    server_peak_rss_kib: u64,
}

fn run(concord: &Path, ops: usize, cli: &Cli) -> Result<Run> {
    let dir = tempfile::Builder::new().prefix("concord-reconnect-").tempdir()?;
    let data = dir.path().join("server");
    let mut args = vec!["--log", "warn"];
    args.extend(cli.serve_args.iter().map(String::as_str).filter(|a| !a.is_empty()));
    let server = ServeProcess::start(concord, &data, &args)?;
    let url = server.url("bench", "main");
    let store = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (alice, bob, carol) = (store("alice"), store("bob"), store("carol"));
    let tokens = ["alice", "bob", "carol"].map(|user| token(concord, &data, user));
    let [alice_token, bob_token, carol_token] = tokens;
    let (alice_token, bob_token, carol_token) = (alice_token?, bob_token?, carol_token?);
    let n = ops.to_string();

    phase(&["seed", &url, &alice, &alice_token])?;
    let started = Instant::now();
    phase(&["offline", &url, &alice, &n])?;
    let offline_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    phase(&["online", &url, &bob, &bob_token, &n])?;
    let online_seconds = started.elapsed().as_secs_f64();

    let pid = server.pid().to_string();
    let server_rss_before_kib = status_kib(&pid, "VmRSS:")?;
    reset_peak_rss(&pid)?;
    let sync: SyncReport =
        serde_json::from_str(&phase(&["sync", &url, &alice, &alice_token, &n])?)?;
    let server_peak_rss_kib = status_kib(&pid, "VmHWM:")?;

    let (version, value): (u64, String) =
        serde_json::from_str(&phase(&["check", &url, &carol, &carol_token])?)?;
    ensure!(version == sync.version, "carol sees version {version}, alice {}", sync.version);
    let expected = format!("{}{SEED}{}", "b".repeat(ops), "a".repeat(ops));
    ensure!(value == expected, "carol's text differs from alice's");
    drop(server);
    Ok(Run {
        ops,
        offline_seconds,
        online_seconds,
        sync,
        server_rss_before_kib,
        server_peak_rss_kib,
    })
}

fn table(runs: &[Run]) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut out = String::from(
        "| ops each side | offline s | online s | reconnect s | client RSS before / peak at open / peak MiB | server RSS before / peak MiB |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} |\n",
            r.ops,
            r.offline_seconds,
            r.online_seconds,
            r.sync.seconds,
            mib(r.sync.rss_before_kib),
            mib(r.sync.peak_rss_open_kib),
            mib(r.sync.peak_rss_kib),
            mib(r.server_rss_before_kib),
            mib(r.server_peak_rss_kib),
        ));
    }
    out
}
