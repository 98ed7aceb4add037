//! Runs the real `concord` binary: a server process that is killed if a test fails, and
//! short commands with a deadline.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use concord_ot::{Document, IdGenerator, ReplicaId, Value};
use concord_protocol::{
    Auth, ClientRequest, CollectionId, CreationNonce, ModelId, OpenedModel, ServerResponse,
};
use concord_testkit::wire::WireClient;

pub const BIN: &str = env!("CARGO_BIN_EXE_concord");

/// How long a server may take to say it is ready, or to exit when told to.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A `concord` command with a clean environment: no `CONCORD_*` variable of the caller's
/// leaks in.
pub fn concord() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CONCORD_") {
            command.env_remove(name);
        }
    }
    command.env("CONCORD_LOG", "info");
    command
}

/// Runs a short command to completion, failing if it takes longer than [`PATIENCE`].
pub fn run(command: &mut Command) -> anyhow::Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting concord")?;
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let status = match wait_for_exit(&mut child, PATIENCE)? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("concord did not finish within {PATIENCE:?}");
        }
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap().into_bytes(),
        stderr: stderr.join().unwrap().into_bytes(),
    })
}

/// Mints a token for `user` with the secret in `data_dir`.
pub fn token(data_dir: &Path, user: &str) -> anyhow::Result<String> {
    let output =
        run(concord().arg("token").arg("--data-dir").arg(data_dir).args(["--user", user]))?;
    if !output.status.success() {
        bail!("concord token failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// A running `concord serve`; killed (SIGKILL) when dropped, its log printed if the test
/// is failing.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    log_thread: Option<thread::JoinHandle<()>>,
}

impl ServerProcess {
    /// Starts `concord serve` on a free loopback port with `data_dir` and `args`, and waits
    /// for its ready line.
    pub fn start(data_dir: &Path, args: &[&str]) -> anyhow::Result<ServerProcess> {
        let mut command = concord();
        command.arg("serve").arg("--bind").arg("127.0.0.1:0").arg("--data-dir").arg(data_dir);
        command.args(args);
        ServerProcess::spawn(command)
    }

    pub fn spawn(mut command: Command) -> anyhow::Result<ServerProcess> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting concord serve")?;
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let log_thread = {
            let log = log.clone();
            thread::spawn(move || {
                for line in stderr.lines() {
                    let Ok(line) = line else { break };
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        };
        let (lines, ready) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = ServerProcess {
            child,
            addr: ([0, 0, 0, 0], 0).into(),
            log,
            log_thread: Some(log_thread),
        };
        let line = match ready.recv_timeout(PATIENCE) {
            Ok(line) => line,
            Err(_) => {
                let status = wait_for_exit(&mut server.child, Duration::from_millis(500))?;
                bail!(
                    "concord serve printed no ready line (exit status {status:?}); its log:\n{}",
                    server.log()
                );
            }
        };
        server.addr = parse_ready(&line)?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The WebSocket URL of `namespace/domain`.
    pub fn url(&self, namespace: &str, domain: &str) -> String {
        format!("ws://{}/{namespace}/{domain}", self.addr)
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
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

    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{name} failed");
        }
        Ok(())
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("killing the server")?;
        self.child.wait().context("reaping the server")?;
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; then the whole log is in [`log`].
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let status = wait_for_exit(&mut self.child, timeout)?;
        if status.is_some()
            && let Some(thread) = self.log_thread.take()
        {
            let _ = thread.join();
        }
        Ok(status)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- log of concord serve (pid {}) ---\n{}", self.child.id(), self.log());
        }
    }
}

/// The address in `concord ready on ws://ADDR/{namespace}/{domain}`.
pub fn parse_ready(line: &str) -> anyhow::Result<SocketAddr> {
    let rest = line
        .strip_prefix("concord ready on ws://")
        .with_context(|| format!("unexpected first line {line:?}"))?;
    let addr = rest.split('/').next().unwrap_or_default();
    addr.parse().with_context(|| format!("no address in {line:?}"))
}

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

fn drain(mut reader: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = reader.read_to_string(&mut text);
        text
    })
}

/// Connects to `url` as the holder of `token`.
pub async fn connect(url: &str, token: &str) -> anyhow::Result<WireClient> {
    let (client, _session) = WireClient::connect_as(url, Auth::Jwt(token.to_owned())).await?;
    Ok(client)
}

/// A document `{"text": ""}` whose ids come from `replica`.
pub fn text_document(replica: u64) -> Document {
    let mut ids = IdGenerator::new(ReplicaId(replica), 0);
    let value = Value::from_json(&serde_json::json!({ "text": "" }), &mut ids).unwrap();
    Document::new(value).unwrap()
}

pub async fn create_model(
    client: &mut WireClient,
    model: &ModelId,
    data: Document,
) -> anyhow::Result<u64> {
    let request = ClientRequest::CreateModel {
        model: model.clone(),
        collection: CollectionId::new("notes")?,
        data,
        nonce: CreationNonce([7; 16]),
        permissions: None,
    };
    match client.request(request).await? {
        Ok(ServerResponse::ModelCreated { version, .. }) => Ok(version),
        other => bail!("creating {model}: {other:?}"),
    }
}

pub async fn open_model(client: &mut WireClient, model: &ModelId) -> anyhow::Result<OpenedModel> {
    let request = ClientRequest::OpenModel { model: model.clone(), auto_create: false };
    match client.request(request).await? {
        Ok(ServerResponse::ModelOpened(opened)) => Ok(opened),
        other => bail!("opening {model}: {other:?}"),
    }
}
