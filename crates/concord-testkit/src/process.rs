//! `concord serve` as a child process (feature `process`), for tests and tools that must
//! kill the server outright (SIGKILL durability checks) or measure it apart from their own
//! process. A server that may live in the test's own process is simpler:
//! `concord_server::Server::spawn`.
//!
//! The caller names the `concord` binary (a test of the `concord` crate has it as
//! `env!("CARGO_BIN_EXE_concord")`). Each start passes `serve --bind 127.0.0.1:0` (a free
//! port), waits for the ready line the command prints on stdout, and keeps what it logs on
//! stderr. The child never inherits the caller's `CONCORD_*` environment variables, so a
//! setting of the developer's shell cannot change what a test runs; it logs at `info`
//! unless the arguments say otherwise (`--log warn`).

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a server may take to say it is ready, or to exit when told to.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A running `concord serve`. Dropping it kills the process (SIGKILL); if the thread is
/// panicking (a failed test), the server's log is printed first.
#[derive(Debug)]
pub struct ServeProcess {
    bin: PathBuf,
    /// The arguments after `serve --bind ADDR`.
    args: Vec<OsString>,
    addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<String>>,
    log_thread: Option<thread::JoinHandle<()>>,
}

impl ServeProcess {
    /// Starts `bin serve --bind 127.0.0.1:0 --data-dir <data_dir> <args>` and waits for it
    /// to be ready.
    pub fn start(
        bin: impl AsRef<Path>,
        data_dir: &Path,
        args: &[&str],
    ) -> anyhow::Result<ServeProcess> {
        let mut all = vec![OsString::from("--data-dir"), data_dir.into()];
        all.extend(args.iter().map(OsString::from));
        ServeProcess::start_with_args(bin, all)
    }

    /// Starts `bin serve --bind 127.0.0.1:0 <args>` (the data dir comes from the arguments
    /// or a configuration file) and waits for it to be ready.
    pub fn start_with_args(
        bin: impl AsRef<Path>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> anyhow::Result<ServeProcess> {
        let bin = bin.as_ref().to_path_buf();
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let launched = launch(&bin, &args, any_port)?;
        Ok(ServeProcess {
            bin,
            args,
            addr: launched.addr,
            child: launched.child,
            log: launched.log,
            log_thread: Some(launched.log_thread),
        })
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The WebSocket URL of `namespace/domain`.
    pub fn url(&self, namespace: &str, domain: &str) -> String {
        format!("ws://{}/{namespace}/{domain}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What this process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until the log contains `needle` (stderr is read by another thread, so a line
    /// logged before the ready line may arrive after it); returns the log.
    pub fn wait_for_log(&self, needle: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return Ok(log);
            }
            if Instant::now() >= deadline {
                bail!("the server never logged {needle:?}; its log:\n{log}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends the signal `name` (`TERM`, `INT`, ...) without waiting.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{name} {} failed", self.child.id());
        }
        Ok(())
    }

    /// Kills the process with SIGKILL (no shutdown, no flush) and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill().context("killing the server")?;
        }
        self.child.wait().context("reaping the server")?;
        self.join_log();
        Ok(())
    }

    /// Asks the server to shut down (SIGTERM) and waits up to [`PATIENCE`] for it to exit;
    /// fails, with its log, unless it exited successfully.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.signal("TERM")?;
        }
        match self.wait(PATIENCE)? {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("the server exited with {status}; its log:\n{}", self.log()),
            None => {
                self.kill()?;
                bail!("the server did not stop within {PATIENCE:?}; its log:\n{}", self.log())
            }
        }
    }

    /// Waits up to `timeout` for the process to exit; then the whole log is in [`log`].
    ///
    /// [`log`]: ServeProcess::log
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let status = wait_for_exit(&mut self.child, timeout)?;
        if status.is_some() {
            self.join_log();
        }
        Ok(status)
    }

    /// Starts the same command again, on the same address and data, and waits for it to be
    /// ready. A process still running is killed first (SIGKILL), as in a crash; call
    /// [`stop`](ServeProcess::stop) before for a clean restart. The log starts afresh.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        let launched = launch(&self.bin, &self.args, self.addr)?;
        self.child = launched.child;
        self.log = launched.log;
        self.log_thread = Some(launched.log_thread);
        Ok(())
    }

    fn join_log(&mut self) {
        if let Some(thread) = self.log_thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- log of concord serve (pid {}) ---\n{}", self.child.id(), self.log());
        }
    }
}

/// A started process, ready.
struct Launched {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    log_thread: thread::JoinHandle<()>,
}

/// A command running `bin` (the `concord` binary) with none of the caller's `CONCORD_*`
/// environment variables, logging at `info`.
pub fn command(bin: impl AsRef<Path>) -> Command {
    let mut command = Command::new(bin.as_ref());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CONCORD_") {
            command.env_remove(name);
        }
    }
    command.env("CONCORD_LOG", "info");
    command
}

/// Runs `bin serve --bind <bind> <args>` with a clean environment and waits for its ready
/// line.
fn launch(bin: &Path, args: &[OsString], bind: SocketAddr) -> anyhow::Result<Launched> {
    let mut command = command(bin);
    command.arg("serve").arg("--bind").arg(bind.to_string()).args(args);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} serve", bin.display()))?;

    let log = Arc::new(Mutex::new(String::new()));
    let stderr = BufReader::new(child.stderr.take().context("no stderr pipe")?);
    let log_thread = {
        let log = log.clone();
        thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        })
    };
    let (first_line, ready) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().context("no stdout pipe")?);
    thread::spawn(move || {
        let mut lines = stdout.lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = first_line.send(line);
        }
        // Keep draining, so that the server never blocks on a full pipe.
        for _ in lines {}
    });
    let mut launched = Launched { child, addr: bind, log, log_thread };
    match ready.recv_timeout(PATIENCE) {
        Ok(line) => {
            launched.addr = parse_ready(&line)?;
            Ok(launched)
        }
        Err(_) => {
            let status = wait_for_exit(&mut launched.child, Duration::from_millis(500))?;
            let _ = launched.child.kill();
            let _ = launched.child.wait();
            let _ = launched.log_thread.join();
            let log = launched.log.lock().unwrap_or_else(|p| p.into_inner()).clone();
            bail!("concord serve printed no ready line (exit status {status:?}); its log:\n{log}")
        }
    }
}

/// The address in `concord ready on ws://ADDR/{namespace}/{domain}`.
fn parse_ready(line: &str) -> anyhow::Result<SocketAddr> {
    let rest = line
        .strip_prefix("concord ready on ws://")
        .with_context(|| format!("unexpected first line {line:?}"))?;
    let addr = rest.split('/').next().unwrap_or_default();
    addr.parse().with_context(|| format!("no address in {line:?}"))
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_for_exit(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_gives_the_address() {
        let addr = parse_ready("concord ready on ws://127.0.0.1:4321/{namespace}/{domain}");
        assert_eq!(addr.unwrap(), SocketAddr::from(([127, 0, 0, 1], 4321)));
        assert!(parse_ready("listening on 127.0.0.1:4321").is_err());
        assert!(parse_ready("concord ready on ws://nowhere/{namespace}/{domain}").is_err());
    }
}
