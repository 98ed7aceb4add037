//! A server on a loopback port with its own data dir, and helpers to talk to it.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use concord_ot::{
    DiscreteOperation, Document, IdGenerator, Operation, OperationKind, PathSegment, ReplicaId,
    Value,
};
use concord_protocol::{
    Auth, ClientRequest, CollectionId, CreationNonce, ErrorReply, ModelId, ModelSnapshot,
    ServerResponse,
};
use concord_server::{RunningServer, Server, ServerConfig, mint_token};
use concord_testkit::wire::WireClient;

pub mod postgres;

pub const SECRET: &[u8] = b"the test suite's JWT secret";

tokio::task_local! {
    /// The PostgreSQL cluster the servers of this test store in, when the test runs on it.
    static POSTGRES: std::sync::Arc<postgres::TestPostgres>;
}

/// Runs a test case with every server it starts ([`start`]) storing in PostgreSQL, one
/// database per data dir. Without PostgreSQL it is skipped, saying so (a failure under CI).
pub async fn on_postgres(
    case: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let Some(cluster) = postgres::shared() else { return Ok(()) };
    POSTGRES.scope(cluster.clone(), case).await?;
    anyhow::ensure!(cluster.databases() > 0, "the case started no server on PostgreSQL");
    Ok(())
}

/// The PostgreSQL cluster of the [`on_postgres`] case running, if any.
pub fn postgres_cluster() -> Option<std::sync::Arc<postgres::TestPostgres>> {
    POSTGRES.try_with(|cluster| cluster.clone()).ok()
}

/// Runs the test case `name` (an `async fn name() -> anyhow::Result<()>` beside it) on each
/// store: as the tests `name::redb` and `name::postgres` (within [`on_postgres`]), so that
/// one body checks both backends.
#[allow(unused_macros)]
macro_rules! on_each_store {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redb() -> anyhow::Result<()> {
                super::$name().await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() -> anyhow::Result<()> {
                crate::support::on_postgres(super::$name()).await
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_each_store;

/// A development server on `dir` (anonymous handshakes accepted), changed by `tweak`; on
/// PostgreSQL within [`on_postgres`].
pub async fn start(
    dir: &Path,
    tweak: impl FnOnce(&mut ServerConfig),
) -> anyhow::Result<RunningServer> {
    let mut config = ServerConfig::development(dir, SECRET);
    config.auth.allow_anonymous = true;
    if let Ok(url) = POSTGRES.try_with(|cluster| cluster.url_for_dir(dir)) {
        config.store = Some(url.into());
    }
    tweak(&mut config);
    Ok(Server::spawn(config).await?)
}

/// The domain every test uses.
pub fn url(server: &RunningServer) -> String {
    server.url("test", "main")
}

/// A protocol client connected to [`url`] as `user`.
pub async fn connect(server: &RunningServer, user: &str) -> anyhow::Result<WireClient> {
    let (client, _) = WireClient::connect_as(&url(server), jwt(user)).await?;
    Ok(client)
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
