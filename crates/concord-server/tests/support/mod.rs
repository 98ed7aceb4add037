//! A server on a loopback port with its own data dir, and helpers to talk to it.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use concord_ot::{
    DiscreteOperation, Document, IdGenerator, Operation, OperationKind, PathSegment, ReplicaId,
    Value,
};
use concord_protocol::{
    Auth, ClientRequest, CollectionId, CreationNonce, ErrorReply, ModelId, ModelSnapshot,
    ServerResponse,
};
use concord_server::{
    AuthConfig, JwtConfig, JwtKey, Server, ServerConfig, ServerError, mint_token,
};
use concord_testkit::wire::WireClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SECRET: &[u8] = b"the test suite's JWT secret";

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

pub fn config(dir: &Path) -> ServerConfig {
    let auth = AuthConfig {
        jwt: Some(JwtConfig {
            key: JwtKey::Hs256(SECRET.to_vec()),
            audience: None,
            leeway: Duration::ZERO,
        }),
        allow_anonymous: true,
        reconnect_secret: b"the test server's own secret".to_vec(),
        reconnect_ttl: Duration::from_secs(3600),
    };
    ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir, auth)
}

impl TestServer {
    pub async fn start(tweak: impl FnOnce(&mut ServerConfig)) -> anyhow::Result<TestServer> {
        let temp = tempfile::tempdir()?;
        let dir = temp.path().to_path_buf();
        let mut server = TestServer::start_in(&dir, tweak).await?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// A server on an existing data dir (a restart); the caller keeps the dir.
    pub async fn start_in(
        dir: &Path,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> anyhow::Result<TestServer> {
        let mut config = config(dir);
        tweak(&mut config);
        let server = Server::bind(config).await?;
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Ok(TestServer {
            addr,
            dir: dir.to_path_buf(),
            _temp: None,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn url(&self) -> String {
        format!("ws://{}/test/main", self.addr)
    }

    pub async fn connect(&self, user: &str) -> anyhow::Result<WireClient> {
        let (client, _) = WireClient::connect_as(&self.url(), jwt(user)).await?;
        Ok(client)
    }

    /// Shuts down gracefully and checks that the server stopped cleanly; keeps the data
    /// dir alive in the returned guard.
    pub async fn stop(mut self) -> anyhow::Result<Option<tempfile::TempDir>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .context("the server did not stop")???;
        }
        Ok(self._temp.take())
    }
}

pub fn jwt(user: &str) -> Auth {
    Auth::Jwt(mint_token(SECRET, user, None, Duration::from_secs(3600)).unwrap())
}

pub fn model(id: &str) -> ModelId {
    ModelId::new(id).unwrap()
}

pub fn collection(id: &str) -> CollectionId {
    CollectionId::new(id).unwrap()
}

pub fn document(json: serde_json::Value) -> Document {
    let mut ids = IdGenerator::new(ReplicaId(0), 1);
    Document::new(Value::from_json(&json, &mut ids).unwrap()).unwrap()
}

/// Creates `id` in collection `notes` with `{ "body": body }`.
pub async fn create(client: &mut WireClient, id: &str, body: &str) -> anyhow::Result<()> {
    create_in(client, "notes", id, body).await
}

pub async fn create_in(
    client: &mut WireClient,
    collection_id: &str,
    id: &str,
    body: &str,
) -> anyhow::Result<()> {
    let request = ClientRequest::CreateModel {
        model: model(id),
        collection: collection(collection_id),
        data: document(serde_json::json!({ "body": body })),
        nonce: CreationNonce([7; 16]),
        permissions: None,
    };
    match client.request(request).await? {
        Ok(ServerResponse::ModelCreated { .. }) => Ok(()),
        other => bail!("creating {id}: {other:?}"),
    }
}

pub async fn try_open(
    client: &mut WireClient,
    id: &str,
) -> anyhow::Result<Result<ModelSnapshot, ErrorReply>> {
    match client.request(ClientRequest::OpenModel { model: model(id), auto_create: false }).await? {
        Ok(ServerResponse::ModelOpened(opened)) => Ok(Ok(opened.snapshot)),
        Ok(other) => bail!("opening {id}: {other:?}"),
        Err(error) => Ok(Err(error)),
    }
}

pub async fn open(client: &mut WireClient, id: &str) -> anyhow::Result<ModelSnapshot> {
    try_open(client, id).await?.map_err(|e| anyhow::anyhow!("opening {id}: {e:?}"))
}

/// The text of the document's `body`.
pub fn body(document: &Document) -> String {
    let id = document.element_at(&[PathSegment::Key("body".into())]).unwrap();
    document.text(id).unwrap()
}

/// Inserts `text` at `index` of the document's `body`.
pub fn insert(document: &Document, index: usize, text: &str) -> Operation {
    let id = document.element_at(&[PathSegment::Key("body".into())]).unwrap();
    let kind = OperationKind::StringSplice { index, delete_count: 0, insert: text.into() };
    DiscreteOperation::new(id, kind).into()
}

/// Submits `operation` through `editor` and waits for its ack, taking in every push that
/// comes first.
pub async fn commit(
    client: &mut concord_testkit::wire::WireClient,
    editor: &mut concord_testkit::wire::Editor,
    operation: Operation,
) -> anyhow::Result<u64> {
    let notice = editor.submit(operation)?;
    client.send(&concord_protocol::ClientMessage::Notice(notice)).await?;
    loop {
        let push = client.push(|p| Some(p.clone())).await?;
        if let concord_testkit::wire::Received::Ack { version, .. } = editor.receive(&push)? {
            return Ok(version);
        }
    }
}
