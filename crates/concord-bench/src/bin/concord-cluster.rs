//! `concord-cluster`: measures several `concord serve --cluster` nodes on one throwaway
//! PostgreSQL (`docs/cluster.md`), with the Rust client (`concord-client`, memory store)
//! given every node's URL.
//!
//! * `takeover`: three nodes; one client edits a model without pause; the node owning it
//!   (by its lease in PostgreSQL) is SIGKILLed, again and again (restarted after each
//!   takeover). Prints the time from each kill to the acknowledgement of the client's first
//!   change made after it (through another node), and their p50 / max.
//! * `load`: C clients in a closed loop (one operation in flight each, every one durable
//!   before its acknowledgement) over M models, against one node and against three: acked
//!   operations per second and the latency percentiles. With M models each model's clients
//!   start at the node that first opens it, so they are on its owner; `--hot` puts every
//!   client on one model, spread over every node (what needs forwarding between nodes;
//!   without it, a client that starts at a node that does not own the model follows the
//!   owner redirect).
//!
//! Release build: `cargo build --release -p concord -p concord-bench --bin concord --bin
//! concord-cluster`, then `target/release/concord-cluster takeover` (or `load`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use concord_client::{CollectionId, Domain, ModelId, RealTimeModel, RealTimeString};
use concord_testkit::postgres::ThrowawayPostgres;
use concord_testkit::process::ServeProcess;

#[derive(Debug, Parser)]
#[command(about = "Measures Concord cluster nodes on one PostgreSQL: takeover time, load")]
struct Cli {
    /// The `concord` binary (default: beside this one)
    #[arg(long, global = true)]
    concord: Option<PathBuf>,
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// SIGKILL the owner of a model a client edits, `kills` times
    Takeover {
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// The nodes' lease time (the server's default: 4000)
        #[arg(long, default_value_t = 4000)]
        lease_millis: u64,
    },
    /// C clients over M models against 1 and 3 nodes
    Load {
        /// Node counts to run, one run each
        #[arg(long, value_delimiter = ',', default_value = "1,3")]
        nodes: Vec<usize>,
        #[arg(long, default_value_t = 50)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        models: usize,
        /// Every client on one model, spread over the nodes
        #[arg(long)]
        hot: bool,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 2)]
        warmup: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let concord = match &cli.concord {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("concord"),
    };
    if !concord.is_file() {
        bail!("no concord binary at {}: build it or pass --concord", concord.display());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Mode::Takeover { kills, lease_millis } => {
            runtime.block_on(takeover(&concord, kills, lease_millis))
        }
        Mode::Load { nodes, clients, models, hot, seconds, warmup } => {
            let models = if hot { 1 } else { models };
            println!("| nodes | C | models | acked ops/s | p50 ms | p99 ms | max ms |");
            println!("|---:|---:|---:|---:|---:|---:|---:|");
            for count in nodes {
                let load = Load { clients, models, seconds, warmup };
                let row = runtime.block_on(load.run(&concord, count))?;
                println!("{row}");
            }
            Ok(())
        }
    }
}

/// PostgreSQL and `count` nodes on it, each started after the previous is ready (the first
/// creates the data dir's secret).
struct Cluster {
    _dir: tempfile::TempDir,
    postgres: ThrowawayPostgres,
    nodes: Vec<ServeProcess>,
}

impl Cluster {
    fn start(concord: &Path, count: usize, lease_millis: u64) -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("concord-cluster-").tempdir()?;
        let postgres = ThrowawayPostgres::start(&dir.path().join("postgres"), 0)?;
        let store = postgres.url();
        let lease = lease_millis.to_string();
        let args = [
            "--store",
            &store,
            "--cluster",
            "--lease-millis",
            &lease,
            "--allow-anonymous",
            "--log",
            "warn",
            "--messages-per-second",
            "1000000",
            "--burst",
            "1000000",
            "--max-connections-per-address",
            "100000",
        ];
        let data = dir.path().join("data");
        let nodes = (0..count)
            .map(|_| ServeProcess::start(concord, &data, &args))
            .collect::<Result<Vec<_>>>()?;
        Ok(Cluster { _dir: dir, postgres, nodes })
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.url("bench", "cluster")).collect()
    }

    /// The node holding `model`'s lease, by PostgreSQL.
    fn owner(&self, model: &ModelId) -> Result<Option<usize>> {
        let url = self.postgres.sql(&format!(
            "SELECT n.url FROM concord_leases l JOIN concord_nodes n ON n.id = l.node \
             WHERE l.model = '{model}' AND l.expires_at > now()"
        ))?;
        Ok(self.nodes.iter().position(|node| url == format!("ws://{}", node.addr())))
    }
}

/// A client on `urls` (in this order), connected anonymously.
async fn client(urls: &[String]) -> Result<Domain> {
    let domain = Domain::builder(urls[0].clone())
        .fallback_urls(urls[1..].iter().cloned())
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .request_timeout(Duration::from_secs(30))
        .build();
    domain.connect_anonymously(None).await?;
    Ok(domain)
}

/// Opens `model` (creating it if the server has none), again while a node that does not
/// own it refuses (the client then reconnects to the owner).
async fn open(domain: &Domain, model: &ModelId) -> Result<(RealTimeModel, RealTimeString)> {
    let collection = CollectionId::new("notes")?;
    let started = Instant::now();
    loop {
        let data = serde_json::json!({ "text": "" });
        match domain.models().open_auto_create(model, &collection, data).await {
            Ok(doc) => {
                let text = doc.root().get("text").await?.context("no text")?.as_string()?;
                return Ok((doc, text));
            }
            // `unavailable` from a node that does not own it (the client is on its way to the
            // owner), or offline while it reconnects.
            Err(_) if started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => bail!("{model} never opened: {error}"),
        }
    }
}

async fn takeover(concord: &Path, kills: usize, lease_millis: u64) -> Result<()> {
    let mut cluster = Cluster::start(concord, 3, lease_millis)?;
    let urls = cluster.urls();
    let domain = client(&urls).await?;
    let model = ModelId::new("takeover")?;
    let (doc, text) = open(&domain, &model).await?;
    // The client edits without pause, one change in flight; each change's submission and
    // acknowledgement times are noted.
    let acks: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let editor = {
        let acks = acks.clone();
        tokio::spawn(async move {
            loop {
                let sent = Instant::now();
                let change = text.insert(0, "x").await?;
                doc.acknowledged(change).await?;
                acks.lock().unwrap_or_else(|p| p.into_inner()).push((sent, Instant::now()));
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        })
    };
    let acked = || acks.lock().unwrap_or_else(|p| p.into_inner()).len();
    let mut took = Vec::new();
    for round in 1..=kills {
        // Steady editing on a known owner first.
        let before = acked();
        let deadline = Instant::now() + Duration::from_secs(60);
        let owner = loop {
            if acked() >= before + 20
                && let Some(owner) = cluster.owner(&model)?
            {
                break owner;
            }
            if Instant::now() > deadline || editor.is_finished() {
                bail!("the client stopped editing before kill {round}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let killed = Instant::now();
        cluster.nodes[owner].kill()?;
        let deadline = killed + Duration::from_secs(60);
        // The first change made after the kill: the one in flight at the kill may have been
        // acknowledged by the killed node just before (its answer read late on a loaded
        // machine), so it does not count. This adds at most one round trip on the new node.
        let next = loop {
            let first = acks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .rev()
                .take_while(|(sent, _)| *sent > killed)
                .last()
                .map(|(_, acked)| *acked);
            if let Some(at) = first {
                break at;
            }
            if Instant::now() > deadline || editor.is_finished() {
                bail!("no acknowledgement within a minute of kill {round}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let elapsed = next - killed;
        let now_owner = cluster.owner(&model)?;
        println!("kill {round:2}: node {owner} -> node {now_owner:?} in {:.0} ms", ms(elapsed));
        took.push(elapsed);
        cluster.nodes[owner].restart()?;
    }
    editor.abort();
    took.sort();
    let p50 = took[took.len() / 2];
    let (min, max) = (took[0], took[took.len() - 1]);
    println!(
        "takeover after SIGKILL, {} kills, lease {lease_millis} ms: p50 {:.0} ms, min {:.0} ms, max {:.0} ms",
        took.len(),
        ms(p50),
        ms(min),
        ms(max)
    );
    Ok(())
}

struct Load {
    clients: usize,
    models: usize,
    seconds: u64,
    warmup: u64,
}

impl Load {
    async fn run(&self, concord: &Path, nodes: usize) -> Result<String> {
        let cluster = Cluster::start(concord, nodes, 4000)?;
        let urls = cluster.urls();
        let mut editors = Vec::new();
        for index in 0..self.clients {
            let model = ModelId::new(format!("load-{}", index % self.models))?;
            // Each model's clients start at one node (the first to open it owns it); with one
            // model, the clients are spread over every node.
            let first = if self.models == 1 { index } else { index % self.models } % nodes;
            let order: Vec<String> = urls[first..].iter().chain(&urls[..first]).cloned().collect();
            let domain = client(&order).await?;
            let (doc, text) = open(&domain, &model).await?;
            editors.push((domain, doc, text));
        }
        let start = Instant::now();
        let measured_from = start + Duration::from_secs(self.warmup);
        let end = measured_from + Duration::from_secs(self.seconds);
        let mut tasks = Vec::new();
        for (domain, doc, text) in editors {
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < end {
                    let sent = Instant::now();
                    let change = text.insert(0, "x").await?;
                    doc.acknowledged(change).await?;
                    if sent >= measured_from && Instant::now() <= end {
                        latencies.push(sent.elapsed());
                    }
                }
                drop(domain);
                anyhow::Ok(latencies)
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await??);
        }
        latencies.sort();
        let at = |q: f64| {
            ms(latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)])
        };
        let rate = latencies.len() as f64 / self.seconds as f64;
        Ok(format!(
            "| {nodes} | {} | {} | {rate:.0} | {:.2} | {:.2} | {:.2} |",
            self.clients,
            self.models,
            at(0.5),
            at(0.99),
            at(1.0)
        ))
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
