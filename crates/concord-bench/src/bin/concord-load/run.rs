//! One measured run: a fresh server process and data directory, C editors, warm-up and
//! window, then the convergence and durability checks.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use concord_ot::ReplicaId;
use concord_protocol::ModelId;
use serde::Serialize;
use tokio::time::Instant;

use concord_testkit::process::ServeProcess;

use crate::client::{self, Editor, IdleSession, LoopStats};
use crate::system::{DiskCounters, cpu_seconds, machine_busy_seconds, rss_kib};

/// Sustained submissions per second allowed on one connection. The server's default (2,000)
/// is abuse protection and would cap a single client below the target; the load tool
/// measures the server's capacity, so it lifts the limit.
const RATE_LIMIT: &str = "1000000";

/// Connections allowed from one address, above any `--clients` plus `--idle` used here.
const CONNECTIONS: &str = "10000";

/// What one run measured and whether it passed its checks.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunResult {
    pub clients: usize,
    /// Operations acked inside the measured window, and per second.
    pub window_ops: usize,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Operations acked over the whole run, warm-up included.
    pub total_acked: u64,
    pub final_version: u64,
    pub body_chars: usize,
    /// Time from the last client stopping to every client holding the last version.
    pub converge_ms: f64,
    pub server_peak_rss_mib: f64,
    /// Sessions that only stayed connected, and the server's resident set they added, per
    /// session (measured once the editors were open, before the loops started).
    pub idle_sessions: usize,
    pub server_kib_per_idle_session: f64,
    /// CPU used during the window, in % of one core.
    pub server_cpu_pct: f64,
    pub clients_cpu_pct: f64,
    pub other_cpu_pct: f64,
    /// The disks' mean time per write and per flush request during the window (ms, NaN
    /// where the kernel does not count them).
    pub disk_write_ms: f64,
    pub disk_flush_ms: f64,
    pub checks: Checks,
}

/// The end-of-run checks; a run is correct when all hold.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Checks {
    /// Every client reached the last version and holds the same body.
    pub clients_agree: bool,
    /// The body has exactly one character per acked operation.
    pub body_equals_acked: bool,
    /// The last version is the creation version plus the acked operations.
    pub one_version_per_op: bool,
    /// A client that opens the model afterwards gets the same body and version.
    pub fresh_client_agrees: bool,
    /// After the server is killed (SIGKILL) and restarted on its data, the model still
    /// holds every acked operation.
    pub survives_kill: bool,
}

impl Checks {
    pub(crate) fn all(&self) -> bool {
        self.clients_agree
            && self.body_equals_acked
            && self.one_version_per_op
            && self.fresh_client_agrees
            && self.survives_kill
    }
}

/// CPU and disk counters sampled at one instant.
#[derive(Debug, Clone, Copy)]
struct WindowSample {
    server: f64,
    clients: f64,
    machine: f64,
    disks: DiskCounters,
}

impl WindowSample {
    fn take(server_pid: u32) -> Result<WindowSample> {
        Ok(WindowSample {
            server: cpu_seconds(&server_pid.to_string())?,
            clients: cpu_seconds("self")?,
            machine: machine_busy_seconds()?,
            disks: DiskCounters::read(),
        })
    }
}

/// The model a run edits: `load-bench`, or on a shared store (PostgreSQL) one that no
/// earlier run used.
fn model_id(shared_store: bool) -> ModelId {
    let id = if shared_store {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("load-bench-{nanos}")
    } else {
        "load-bench".to_owned()
    };
    ModelId::new(&id).expect("a valid model id")
}

/// Starts `concord serve` (the binary `concord`) on 127.0.0.1 with `data_dir` (and `store`
/// if given), anonymous access, the rate limit and the connections per address lifted (every
/// client comes from 127.0.0.1) and only warnings logged.
fn start_server(concord: &Path, data_dir: &Path, store: Option<&str>) -> Result<ServeProcess> {
    let limits = [
        "--messages-per-second",
        RATE_LIMIT,
        "--burst",
        RATE_LIMIT,
        "--max-connections-per-address",
        CONNECTIONS,
    ];
    let mut args = [&["--allow-anonymous", "--log", "warn"][..], &limits].concat();
    if let Some(url) = store {
        args.extend(["--store", url]);
    }
    ServeProcess::start(concord, data_dir, &args)
}

/// One run with `clients` editors (moving a shared cursor on every keystroke when
/// `cursors`) against a server run by the binary `concord`: `warmup`, then `window` measured.
pub(crate) async fn run_once(
    concord: &Path,
    store: Option<&str>,
    clients: usize,
    idle: usize,
    cursors: bool,
    warmup: Duration,
    window: Duration,
) -> Result<RunResult> {
    let data_dir = tempfile::Builder::new().prefix("concord-load-").tempdir()?;
    let mut server = start_server(concord, data_dir.path(), store)?;
    // On a shared store (PostgreSQL) each run has a domain of its own: replica ids are
    // bound to users per domain, and every run's anonymous users are new.
    let model = model_id(store.is_some());
    let domain = if store.is_some() { format!("{model}") } else { "bench".to_owned() };
    let url = server.url("load", &domain);

    let created_version = client::create_model(&url, &model).await?;
    let mut editors = Vec::with_capacity(clients);
    for i in 0..clients {
        editors.push(Editor::open(&url, &model, ReplicaId(i as u64 + 1), cursors).await?);
    }

    // The idle sessions, connected one after the other, and what they added to the server.
    let pid = server.pid();
    let rss_before_idle = rss_kib(pid, "VmRSS:")?;
    let mut idlers = Vec::with_capacity(idle);
    for _ in 0..idle {
        idlers.push(IdleSession::connect(&url).await?);
    }
    let server_kib_per_idle_session = if idle == 0 {
        0.0
    } else {
        rss_kib(pid, "VmRSS:")?.saturating_sub(rss_before_idle) as f64 / idle as f64
    };

    // The closed loops, with CPU sampled at both ends of the window.
    let start = Instant::now();
    let (warm_end, end) = (start + warmup, start + warmup + window);
    let idlers: Vec<_> = idlers.into_iter().map(|s| tokio::spawn(s.hold(end))).collect();
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(warm_end).await;
        let first = WindowSample::take(pid)?;
        tokio::time::sleep_until(end).await;
        Ok::<_, anyhow::Error>((first, WindowSample::take(pid)?))
    });
    let loops: Vec<_> = editors
        .into_iter()
        .map(|mut editor| {
            tokio::spawn(async move {
                let stats = editor.run(warm_end, end).await?;
                Ok::<_, anyhow::Error>((editor, stats))
            })
        })
        .collect();
    let mut editors = Vec::with_capacity(clients);
    let mut latencies = Vec::new();
    let mut total_acked = 0;
    for handle in loops {
        let (editor, LoopStats { latencies: mine, acked }) = handle.await??;
        editors.push(editor);
        latencies.extend(mine);
        total_acked += acked;
    }
    let (first, last) = sampler.await??;
    for idler in idlers {
        idler.await??;
    }
    let stopped = Instant::now();

    // Every client catches up with the last version.
    let final_version = editors.iter().map(Editor::version).max().unwrap_or(created_version);
    let catch_ups: Vec<_> = editors
        .into_iter()
        .map(|mut editor| {
            tokio::spawn(async move {
                editor.catch_up(final_version).await?;
                Ok::<_, anyhow::Error>(editor)
            })
        })
        .collect();
    let mut editors = Vec::with_capacity(clients);
    for handle in catch_ups {
        editors.push(
            tokio::time::timeout(Duration::from_secs(60), handle)
                .await
                .context("clients did not catch up within 60 s")???,
        );
    }
    let converge_ms = stopped.elapsed().as_secs_f64() * 1e3;

    let body = editors.first().map(Editor::body).unwrap_or_default();
    let body_chars = body.chars().count();
    let mut checks = Checks {
        clients_agree: editors.iter().all(|e| e.version() == final_version && e.body() == body),
        body_equals_acked: body_chars as u64 == total_acked,
        one_version_per_op: final_version == created_version + total_acked,
        ..Checks::default()
    };
    let fresh = Editor::open(&url, &model, ReplicaId(clients as u64 + 1), false).await?;
    checks.fresh_client_agrees = fresh.version() == final_version && fresh.body() == body;
    let peak_rss_kib = rss_kib(server.pid(), "VmHWM:")?;
    drop((fresh, editors));

    // Durability: kill the server without warning, restart it on the same data, reopen.
    server.kill()?;
    server.restart()?;
    let url = server.url("load", &domain);
    let reopened = Editor::open(&url, &model, ReplicaId(clients as u64 + 2), false).await?;
    checks.survives_kill = reopened.version() == final_version && reopened.body() == body;
    drop(reopened);
    server.stop()?;

    ensure!(!latencies.is_empty(), "no operation was acked inside the measured window");
    latencies.sort();
    let quantile = |p: f64| {
        let i = ((p * latencies.len() as f64) as usize).min(latencies.len() - 1);
        latencies[i].as_secs_f64() * 1e3
    };
    let seconds = window.as_secs_f64();
    let pct = |f: fn(&WindowSample) -> f64| 100.0 * (f(&last) - f(&first)) / seconds;
    let (server_cpu_pct, clients_cpu_pct) = (pct(|s| s.server), pct(|s| s.clients));
    let (disk_write_ms, disk_flush_ms) = first.disks.mean_ms_until(&last.disks);
    Ok(RunResult {
        clients,
        window_ops: latencies.len(),
        ops_per_sec: latencies.len() as f64 / seconds,
        p50_ms: quantile(0.50),
        p95_ms: quantile(0.95),
        p99_ms: quantile(0.99),
        max_ms: quantile(1.0),
        total_acked,
        final_version,
        body_chars,
        converge_ms,
        server_peak_rss_mib: peak_rss_kib as f64 / 1024.0,
        idle_sessions: idle,
        server_kib_per_idle_session,
        server_cpu_pct,
        clients_cpu_pct,
        other_cpu_pct: pct(|s| s.machine) - server_cpu_pct - clients_cpu_pct,
        disk_write_ms,
        disk_flush_ms,
        checks,
    })
}
