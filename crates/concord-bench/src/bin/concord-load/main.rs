//! `concord-load`: Concord's server under load (target P2 in `docs/benchmarks.md`), with the
//! workload of the ShareDB peer benchmark so that the two compare.
//!
//! What it is: a closed-loop load generator and its report. Each run starts a fresh
//! `concord serve` in a separate process (the `concord` binary, found beside this one unless
//! `--concord` names it; on 127.0.0.1 with a temporary redb data directory, anonymous access
//! and the per-connection rate limit lifted), creates one model `{ "body": "" }` and opens
//! it from C clients, each its own WebSocket connection, as tasks of one multi-threaded
//! tokio runtime in this process. Each client inserts one character at a random position of
//! its local copy, submits it, waits for the ack, and repeats; it applies every remote
//! operation to its copy, transforming its in-flight operation. With `--cursors on`, each
//! client also shares a cursor and moves it on every keystroke (a reference `Set` at the
//! operation's base version, which the server moves forward and relays to the C - 1 others),
//! so that a run shows what references cost beside the same run without them (`off`). After a warm-up, a window of
//! T seconds is measured: acked operations per second, submit-to-ack latency, the server's
//! peak RSS and CPU, this process's CPU and the rest of the machine's, and the disks' mean
//! time per write and per flush (which on a virtual disk varies from run to run, and the
//! runs' rates with it). Then every run is
//! checked: all clients converge to one body, one character and one version per acked
//! operation, a fresh client sees the same, and so does one after the server is killed
//! (SIGKILL) and restarted on its data. The exit code is non-zero when any run fails a check.
//! Before the runs it measures what one client could reach at most on this machine,
//! `1 / (fdatasync + loopback round trip)` (`bound.rs`), and prints the C = 1 median
//! against it.
//!
//! What it is not: a client library (the clients speak the protocol directly, with no
//! offline store), a model of real editing (one model, one insert per round trip, no
//! deletes), or a test of the server's limits, authentication or permissions. Clients and
//! server share the machine's cores, so the figures describe both together, as ShareDB's do.
//!
//! ```sh
//! cargo build --release -p concord -p concord-bench --bin concord --bin concord-load
//! target/release/concord-load --clients 1,10,50 --seconds 10 --warmup 2 --reps 3 --json runs.json
//! target/release/concord-load --clients 10 --cursors off,on
//! ```

mod bound;
mod client;
mod run;
mod system;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Serialize;

use crate::bound::Bound;
use crate::run::{RunResult, run_once};
use crate::system::machine_busy_seconds;

#[derive(Debug, Parser)]
#[command(about = "Concord's server under load: C closed-loop editors on one model")]
struct Cli {
    /// The `concord` binary whose `serve` command runs the server under test [default:
    /// `concord` in this tool's directory]
    #[arg(long, env = "CONCORD_BIN", value_name = "PATH")]
    concord: Option<PathBuf>,
    /// Where the server stores: a PostgreSQL URL passed to `concord serve --store`, every run
    /// on a model of its own [default: a fresh embedded store per run]
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Numbers of clients, one series of runs each.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    clients: Vec<usize>,
    /// Length of the measured window (s).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Warm-up before the window (s).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Whether clients move a shared cursor on every keystroke: one series of runs per value
    /// (`off`, `on`).
    #[arg(long, value_delimiter = ',', default_value = "off")]
    cursors: Vec<CursorMode>,
    /// Sessions that only stay connected beside the editors (handshaken, answering
    /// heartbeats, no model open): the server's resident set per session is measured.
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Runs per number of clients; the table shows their median.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Writes every run's figures here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Before each run, wait at most this long (s) for the rest of the machine to go idle.
    #[arg(long, default_value_t = 300.0)]
    idle_wait: f64,
    /// Redo a run (at most 3 times) if the rest of the machine used more than this % of a
    /// core during its window.
    #[arg(long, default_value_t = 25.0)]
    max_other: f64,
}

/// Whether the clients of a run share and move cursors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum CursorMode {
    Off,
    On,
}

impl CursorMode {
    fn name(self) -> &'static str {
        match self {
            CursorMode::Off => "off",
            CursorMode::On => "on",
        }
    }
}

/// One run as reported: its figures, or why it failed.
#[derive(Debug, Serialize)]
struct Run {
    clients: usize,
    cursors: CursorMode,
    rep: usize,
    #[serde(flatten)]
    result: Option<RunResult>,
    failed: Option<String>,
}

impl Run {
    fn correct(&self) -> bool {
        self.result.as_ref().is_some_and(|r| r.checks.all())
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let concord = concord_binary(cli.concord.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(wait_idle(Duration::from_secs_f64(cli.idle_wait)))?;
    let bound = bound::measure().context("measuring fdatasync and the loopback round trip")?;
    let (runs, discarded) = runtime.block_on(run_all(&cli, &concord))?;

    if let Some(path) = &cli.json {
        let raw = serde_json::json!({
            "machine": system::machine(),
            "options": { "clients": cli.clients, "cursors": cli.cursors, "idle": cli.idle,
                         "seconds": cli.seconds, "warmup": cli.warmup,
                         "reps": cli.reps, "max_other": cli.max_other },
            "bound": { "fdatasync_ms": bound.fdatasync_ms, "round_trip_ms": bound.round_trip_ms,
                       "ops_per_sec": bound.ops_per_sec() },
            "runs": runs,
            "discarded": discarded,
        });
        std::fs::write(path, serde_json::to_string_pretty(&raw)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}", table(&cli, &runs, discarded.len()));
    println!("\n{}", bound_line(&bound, &runs));
    if !runs.iter().all(Run::correct) {
        std::process::exit(1);
    }
    Ok(())
}

/// `explicit`, else `concord` in the directory of this executable (where cargo puts both).
fn concord_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe().context("locating this binary")?.with_file_name("concord"),
    };
    if !path.is_file() {
        bail!(
            "no concord binary at {}: build it (cargo build --release -p concord) or pass --concord",
            path.display()
        );
    }
    Ok(path)
}

/// Every (C, repetition), each after the machine went idle, redone when it was busy.
async fn run_all(cli: &Cli, concord: &Path) -> Result<(Vec<Run>, Vec<Run>)> {
    let warmup = Duration::from_secs_f64(cli.warmup);
    let window = Duration::from_secs_f64(cli.seconds);
    let run_timeout = warmup + window + Duration::from_secs(180);
    let (mut runs, mut discarded) = (Vec::new(), Vec::new());
    for &clients in &cli.clients {
        for &cursors in &cli.cursors {
            for rep in 1..=cli.reps {
                let mut attempt = 1;
                let run = loop {
                    wait_idle(Duration::from_secs_f64(cli.idle_wait)).await?;
                    let with_cursors = cursors == CursorMode::On;
                    let once = run_once(
                        concord,
                        cli.store.as_deref(),
                        clients,
                        cli.idle,
                        with_cursors,
                        warmup,
                        window,
                    );
                    let outcome =
                        tokio::time::timeout(run_timeout, once).await.unwrap_or_else(|_| {
                            Err(anyhow::anyhow!("the run took over {run_timeout:?}"))
                        });
                    let (result, failed) = match outcome {
                        Ok(result) => (Some(result), None),
                        Err(e) => (None, Some(format!("{e:#}"))),
                    };
                    let run = Run { clients, cursors, rep, result, failed };
                    let other = run.result.as_ref().map_or(0.0, |r| r.other_cpu_pct);
                    if other <= cli.max_other || attempt > 3 {
                        break run;
                    }
                    eprintln!(
                        "C={clients} cursors {} rep {rep}: discarded, other processes used \
                         {other:.0}% of a core",
                        cursors.name()
                    );
                    discarded.push(run);
                    attempt += 1;
                };
                eprintln!("{}", summary(&run));
                runs.push(run);
            }
        }
    }
    Ok((runs, discarded))
}

/// Waits until the rest of the machine uses under 10 % of a core over one second, or `limit`.
async fn wait_idle(limit: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let before = machine_busy_seconds()?;
        if tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if machine_busy_seconds()? - before < 0.1 {
            return Ok(());
        }
    }
}

fn summary(run: &Run) -> String {
    let prefix = format!("C={} cursors {} rep {}:", run.clients, run.cursors.name(), run.rep);
    match (&run.result, &run.failed) {
        (Some(r), _) => format!(
            "{prefix} {:.0} ops/s p50 {:.2} p99 {:.2} ms, server peak RSS {:.0} MiB, CPU server \
             {:.0}% clients {:.0}% other {:.0}%, disk {:.3} ms per write {:.3} per flush, {} idle \
             sessions at {:.1} KiB each, {} acked, body {} chars, converged in {:.0} ms, correct \
             {} {:?}",
            r.ops_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.server_peak_rss_mib,
            r.server_cpu_pct,
            r.clients_cpu_pct,
            r.other_cpu_pct,
            r.disk_write_ms,
            r.disk_flush_ms,
            r.idle_sessions,
            r.server_kib_per_idle_session,
            r.total_acked,
            r.body_chars,
            r.converge_ms,
            r.checks.all(),
            r.checks,
        ),
        (None, failed) => format!("{prefix} FAILED {}", failed.as_deref().unwrap_or("?")),
    }
}

/// The Markdown report: per C, the median of the runs with min–max, as the ShareDB peer
/// benchmark prints it.
fn table(cli: &Cli, runs: &[Run], discarded: usize) -> String {
    // Never the URL itself: it may carry a password.
    let store = match &cli.store {
        Some(_) => "PostgreSQL, every operation committed with synchronous_commit on",
        None => "redb, every operation fsynced",
    };
    let mut out = vec![
        format!(
            "Concord (concord-server, {store} before its ack), one-character string inserts on \
             one model, {} idle sessions beside the editors, T={} s after {} s warm-up, {} runs \
             each: median (min–max).",
            cli.idle, cli.seconds, cli.warmup, cli.reps
        ),
        String::new(),
        format!("Machine: {}.  ", system::machine()),
        format!(
            "Runs redone because other processes used > {}% of a core: {discarded}.",
            cli.max_other
        ),
        String::new(),
        "| C | cursors | acked ops/s | p50 ms | p95 ms | p99 ms | server peak RSS MiB | \
         server CPU % | clients CPU % | other CPU % | disk ms per write | disk ms per flush | \
         server KiB per idle session | body chars at end | correct |"
            .into(),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".into(),
    ];
    type Column = (fn(&RunResult) -> f64, usize);
    let columns: [Column; 12] = [
        (|r| r.ops_per_sec, 0),
        (|r| r.p50_ms, 2),
        (|r| r.p95_ms, 2),
        (|r| r.p99_ms, 2),
        (|r| r.server_peak_rss_mib, 0),
        (|r| r.server_cpu_pct, 0),
        (|r| r.clients_cpu_pct, 0),
        (|r| r.other_cpu_pct, 0),
        (|r| r.disk_write_ms, 3),
        (|r| r.disk_flush_ms, 3),
        (|r| r.server_kib_per_idle_session, 1),
        (|r| r.body_chars as f64, 0),
    ];
    for &clients in &cli.clients {
        for &cursors in &cli.cursors {
            let mine: Vec<&Run> =
                runs.iter().filter(|r| r.clients == clients && r.cursors == cursors).collect();
            let measured: Vec<&RunResult> = mine.iter().filter_map(|r| r.result.as_ref()).collect();
            let cells: Vec<String> =
                columns.iter().map(|&(value, digits)| cell(&measured, value, digits)).collect();
            let correct = mine.iter().filter(|r| r.correct()).count();
            let cursors = cursors.name();
            let cells = cells.join(" | ");
            out.push(format!("| {clients} | {cursors} | {cells} | {correct}/{} |", mine.len()));
        }
    }
    out.join("\n")
}

/// What one client could reach at most on this machine, and the C = 1 median against it.
fn bound_line(bound: &Bound, runs: &[Run]) -> String {
    let mut line = format!(
        "Bound for one client, measured before the runs: fdatasync {:.3} ms + loopback round \
         trip {:.3} ms (medians) → 1 / (fdatasync + round trip) = {:.0} ops/s.",
        bound.fdatasync_ms,
        bound.round_trip_ms,
        bound.ops_per_sec()
    );
    let mut one: Vec<f64> = runs
        .iter()
        .filter(|r| r.clients == 1)
        .filter_map(|r| r.result.as_ref().map(|r| r.ops_per_sec))
        .collect();
    one.sort_by(f64::total_cmp);
    if let Some(&median) = one.get((one.len().max(1) - 1) / 2) {
        let share = 100.0 * median / bound.ops_per_sec();
        line.push_str(&format!(" C = 1 acked {median:.0} ops/s: {share:.0} % of it."));
    }
    line
}

/// `median (min–max)` of one figure over the runs (the lower median for an even count).
fn cell(runs: &[&RunResult], value: fn(&RunResult) -> f64, digits: usize) -> String {
    let mut xs: Vec<f64> = runs.iter().map(|r| value(r)).collect();
    xs.sort_by(f64::total_cmp);
    match xs.as_slice() {
        [] => "n/a".into(),
        [x] => format!("{x:.digits$}"),
        _ => format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            xs[(xs.len() - 1) / 2],
            xs[0],
            xs[xs.len() - 1]
        ),
    }
}
