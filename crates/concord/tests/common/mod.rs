//! Runs the real `concord` binary: `concord serve` as a child process (the test kit's
//! `ServeProcess`), and short commands with a deadline.

#![allow(dead_code, unreachable_pub)]

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;

use anyhow::{Context, bail};
use concord_ot::{Document, IdGenerator, ReplicaId, Value};
use concord_protocol::{
    Auth, ClientRequest, CollectionId, CreationNonce, ModelId, OpenedModel, ServerResponse,
};
pub use concord_testkit::process::{self, PATIENCE, ServeProcess, wait_for_exit};
use concord_testkit::wire::WireClient;

pub const BIN: &str = env!("CARGO_BIN_EXE_concord");

/// A `concord` command with a clean environment: no `CONCORD_*` variable of the caller's
/// leaks in.
pub fn concord() -> Command {
    process::command(BIN)
}

/// Starts `concord serve` on a free loopback port with `data_dir` and `args`.
pub fn serve(data_dir: &Path, args: &[&str]) -> anyhow::Result<ServeProcess> {
    ServeProcess::start(BIN, data_dir, args)
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
