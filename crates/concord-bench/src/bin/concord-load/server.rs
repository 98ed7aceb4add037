//! The server under load, in a process of its own: the child side (`serve`, run by a hidden
//! subcommand of this binary) and the parent side ([`ServerProcess`], which starts it,
//! reads its figures from `/proc` and always ends it), plus the `/proc` readers.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use concord_server::{AuthConfig, Server, ServerConfig};

/// Sustained submissions per second allowed on one connection. The server's default (2,000)
/// is abuse protection and would cap a single client below P2's target; the load tool
/// measures the server's capacity, so it lifts the limit.
const RATE_LIMIT: u32 = 1_000_000;

/// Child side: runs a server on 127.0.0.1 (free port) storing in `data_dir`, prints the port
/// on stdout, and shuts down gracefully when stdin closes (the parent ended or went away).
pub(crate) fn serve(data_dir: &Path) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut reconnect_secret = vec![0u8; 32];
        getrandom::fill(&mut reconnect_secret).context("reading OS randomness")?;
        let auth = AuthConfig {
            jwt: None,
            allow_anonymous: true,
            reconnect_secret,
            reconnect_ttl: Duration::from_secs(3600),
        };
        let mut config = ServerConfig::new(([127, 0, 0, 1], 0).into(), data_dir, auth);
        config.limits.messages_per_second = RATE_LIMIT;
        config.limits.burst = RATE_LIMIT;
        let server = Server::bind(config).await?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "{}", server.local_addr().port())?;
        stdout.flush()?;

        let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            let _ = closed.send(());
        });
        server.run(async move { drop(stdin_closed.await) }).await?;
        Ok(())
    })
}

/// Parent side: a running server child. Dropping it kills the child.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    /// Closing it asks the child to shut down.
    stdin: Option<ChildStdin>,
    pub(crate) port: u16,
}

impl ServerProcess {
    /// Starts `<this binary> serve --data-dir <data_dir>` and waits (at most 30 s) for its port.
    pub(crate) fn start(data_dir: &Path) -> Result<ServerProcess> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the server process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut process = ServerProcess { child, stdin, port: 0 };

        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = line_tx.send(reader.read_line(&mut line).map(|_| line));
            // Keep draining so that the child never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = line_rx
            .recv_timeout(Duration::from_secs(30))
            .context("the server did not report its port within 30 s")?
            .context("reading the server's port")?;
        process.port = match line.trim().parse() {
            Ok(port) => port,
            Err(_) => bail!("the server process did not start (it printed {line:?})"),
        };
        Ok(process)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set (`VmHWM`) in KiB.
    pub(crate) fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/<pid>/status")
    }

    /// Asks the server to shut down and waits (at most 10 s) for it to exit cleanly.
    pub(crate) fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the server exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the server did not shut down within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) a process has used; `pid` is a number or `"self"`.
pub(crate) fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let after_name = stat.rsplit_once(") ").context("malformed /proc/<pid>/stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields.get(i).context("short /proc/<pid>/stat")?.parse::<u64>()? as f64)
    };
    // utime and stime are fields 14 and 15, that is 11 and 12 after the name.
    Ok((ticks(11)? + ticks(12)?) / USER_HZ)
}

/// CPU seconds the whole machine has spent busy (everything but idle and iowait).
pub(crate) fn machine_busy_seconds() -> Result<f64> {
    let mut first = String::new();
    BufReader::new(std::fs::File::open("/proc/stat")?).read_line(&mut first)?;
    let ticks: Vec<u64> =
        first.split_whitespace().skip(1).take(8).map(str::parse).collect::<Result<_, _>>()?;
    let total: u64 = ticks.iter().sum();
    Ok((total - ticks[3] - ticks[4]) as f64 / USER_HZ)
}

/// A line about the machine for the report: cores, CPU model, RAM, kernel.
pub(crate) fn machine() -> String {
    let read = |path: &str| {
        let mut text = String::new();
        let _ = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text));
        text
    };
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':'])))
        .unwrap_or("?");
    let ram_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "nproc {cores}, CPU \"{model}\", {:.0} GiB RAM, Linux {}",
        ram_kib as f64 / 1024.0 / 1024.0,
        read("/proc/sys/kernel/osrelease").trim()
    )
}
