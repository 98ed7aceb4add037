//! The server process's front: binds the port, serves the WebSocket endpoint
//! `/<namespace>/<domain>`, `GET /health` and the web root's static files over the
//! connections `accept.rs` admits, and shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Extension, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::{Admission, Admitted, Http, accept_loop};
use crate::auth::{AuthError, Authenticator};
use crate::cluster::Cluster;
use crate::config::{ConfigError, ServerConfig};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::{
    Backup, RedbStore, ServerStore, Store, StoreError, backup_written_at, start_writer,
};
use crate::web_root::{self, WebRoot};

/// Why the server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("serving failed: {0}")]
    Serve(std::io::Error),
    #[error("a store write failed; the server stopped so as not to run ahead of its disk")]
    StoreFailed,
}

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    hub: Arc<Hub>,
    connections: TaskTracker,
    store_failed: CancellationToken,
    /// Stops the cluster node's lease keeper, once everything is durable.
    keeper: CancellationToken,
}

impl Server {
    /// Opens the store (creating the data dir) and binds the port. Fails if another process
    /// has the store open.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        config.check()?;
        let auth = Authenticator::new(&config.auth)?;
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|source| ServerError::Bind { addr: config.bind, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr: config.bind, source })?;
        let (store, cluster) = open_store(&config, local_addr).await?;
        let store_failed = CancellationToken::new();
        // Only PostgreSQL comes back after a failed commit; a failed redb write is a disk
        // fault, which stops the server.
        let retry_for = if config.store.is_some() { config.store_retry } else { Duration::ZERO };
        let metrics = Arc::new(Metrics::new());
        let (writer, writer_thread) =
            start_writer(store.clone(), store_failed.clone(), retry_for, metrics.clone())?;
        let keeper = CancellationToken::new();
        if let Some(cluster) = &cluster {
            tokio::spawn(cluster.clone().keep(keeper.clone()));
        }
        let shutdown = CancellationToken::new();
        let hub = Arc::new(Hub::new(config, auth, store, writer, cluster, shutdown, metrics));
        *hub.writer_thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer_thread);
        Ok(Server {
            listener,
            local_addr,
            hub,
            connections: TaskTracker::new(),
            store_failed,
            keeper,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where this server's store is backed up while it runs ([`Backups::write`]).
    pub fn backups(&self) -> Backups {
        Backups {
            store: Arc::downgrade(&self.hub.store),
            dir: self.hub.config.data_dir.join(BACKUP_DIR),
            metrics: self.hub.metrics.clone(),
        }
    }

    /// Binds (as [`bind`](Server::bind)) and runs the server as a task on the current tokio
    /// runtime, until [`RunningServer::stop`] or until the handle is dropped.
    pub async fn spawn(config: ServerConfig) -> Result<RunningServer, ServerError> {
        let server = Server::bind(config).await?;
        let addr = server.local_addr();
        let backups = server.backups();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone().cancelled_owned()));
        Ok(RunningServer { addr, backups, shutdown, task: Some(task) })
    }

    /// Serves until `shutdown` resolves (or a store write fails), then tells every session
    /// it is closing, lets the models write their snapshots, and waits until everything is
    /// durable.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server { listener, local_addr, hub, connections, store_failed, keeper } = self;
        let mut router = Router::new()
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/{namespace}/{domain}", get(upgrade))
            .with_state(Endpoint { hub: hub.clone(), connections: connections.clone() });
        // Static files live at one path segment (`/`, `/app.js`), so that they never meet
        // the two-segment WebSocket paths.
        if let Some(root) = &hub.config.web_root {
            let files = any(web_root::serve).with_state(WebRoot::new(root));
            router = router.fallback_service(files);
        }
        let config = &hub.config;
        let http = Http::new(router, config.limits.header_read_timeout);
        let admission = Admission::new(config.max_connections, config.max_connections_per_address);
        tracing::info!(%local_addr, "concord server ready");
        let stopping = {
            let (stop, failed) = (hub.shutdown.clone(), store_failed.clone());
            async move {
                tokio::select! {
                    () = shutdown => tracing::info!("shutting down"),
                    () = failed.cancelled() => tracing::error!("shutting down after a store failure"),
                }
                stop.cancel();
            }
        };
        tokio::join!(stopping, accept_loop(listener, &http, &admission, &hub.shutdown));
        // No more connections; HTTP ones finish the request they are in (upgraded ones are
        // sessions, closed below).
        http.closing.cancel();
        http.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), http.tasks.wait()).await.is_err() {
            tracing::warn!("some HTTP connections did not close in time");
        }
        drop(http);
        connections.close();
        if tokio::time::timeout(Duration::from_secs(10), connections.wait()).await.is_err() {
            tracing::warn!("some connections did not close in time");
        }
        hub.models.stop.cancel();
        hub.models.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), hub.models.tasks.wait()).await.is_err() {
            tracing::warn!("some models did not stop in time");
        }
        let flushed = hub.writer.flush().await;
        // Everything this node wrote is durable: its models go to other nodes at once.
        if let Some(cluster) = &hub.models.cluster {
            if flushed.is_ok() {
                cluster.leave().await;
            }
            keeper.cancel();
        }
        // Close the store, so that the data dir can be opened again as soon as this returns:
        // the last reference to the hub takes the writer's queue with it, ending its thread.
        let writer_thread = hub.writer_thread.lock().ok().and_then(|mut t| t.take());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&hub) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(hub);
        if let Some(thread) = writer_thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if store_failed.is_cancelled() {
            return Err(ServerError::StoreFailed);
        }
        flushed?;
        tracing::info!("stopped; everything acknowledged is on disk");
        Ok(())
    }
}

/// Opens the store `config` names: the embedded one in its data dir, or PostgreSQL (as a
/// cluster node when so configured).
#[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
async fn open_store(
    config: &ServerConfig,
    local_addr: SocketAddr,
) -> Result<(Store, Option<Arc<Cluster>>), StoreError> {
    #[cfg(feature = "postgres")]
    if let Some(url) = config.store.as_ref().map(|url| url.expose()) {
        use crate::store::postgres::PostgresStore;
        if let Some(cluster) = &config.cluster {
            let store = PostgresStore::connect_node(url, &config.indexes).await?;
            let (cluster, store) = Cluster::join(store, cluster.clone(), local_addr).await?;
            return Ok((Arc::new(store), Some(cluster)));
        }
        let store = PostgresStore::connect(url, &config.indexes).await?;
        return Ok((Arc::new(store), None));
    }
    let dir = config.data_dir.clone();
    let indexes = config.indexes.clone();
    let store = tokio::task::spawn_blocking(move || RedbStore::open_indexed(&dir, &indexes))
        .await
        .map_err(|e| StoreError::Backend(format!("opening the store failed: {e}")))??;
    Ok((Arc::new(store), None))
}

/// A server running as a task of this process (from [`Server::spawn`]).
///
/// Dropping it asks the server to shut down, as [`stop`](RunningServer::stop) does, but
/// cannot wait: the shutdown goes on in the background and the store is closed a moment
/// later (or when the runtime ends). Call `stop` to know when the data dir can be opened
/// again, and whether the run ended well.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    backups: Backups,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl RunningServer {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where this server's store is backed up while it runs ([`Backups::write`]).
    pub fn backups(&self) -> &Backups {
        &self.backups
    }

    /// The WebSocket URL of `namespace/domain` on this server.
    pub fn url(&self, namespace: &str, domain: &str) -> String {
        format!("ws://{}/{namespace}/{domain}", self.addr)
    }

    /// Shuts down gracefully (see [`Server::run`]) and waits until everything acknowledged
    /// is durable and the store is closed; returns how the run ended. A panic in the
    /// server's task is resumed here.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        let Some(task) = self.task.take() else { return Ok(()) };
        match task.await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(ServerError::Serve(std::io::Error::other(error))),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The data dir's directory of backups.
const BACKUP_DIR: &str = "backups";

/// Backs up a running server's store: a handle that does not keep the store open once the
/// server stopped.
#[derive(Debug, Clone)]
pub struct Backups {
    store: std::sync::Weak<dyn ServerStore>,
    dir: PathBuf,
    metrics: Arc<Metrics>,
}

impl Backups {
    /// Writes a copy of the store as it stands after the last commit into the data dir's
    /// `backups/` directory, as a store file that opens on its own (restore it as
    /// `concord.redb`, without a log beside it); commits and reads go on while it is
    /// written. The embedded store only: PostgreSQL has its own tools
    /// ([`StoreError::NotSupported`]).
    pub async fn write(&self) -> Result<Backup, StoreError> {
        let Some(store) = self.store.upgrade() else {
            let stopped = "the server stopped; copy its concord.redb while it is stopped";
            return Err(StoreError::Unavailable(stopped.into()));
        };
        let backup = store.back_up(&self.dir).await;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let written_at = backup.as_ref().ok().map(|_| now.map_or(0, |now| now.as_secs()));
        self.metrics.backed_up(written_at);
        backup
    }

    /// Where the copies go.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Deletes the oldest backups [`write`](Backups::write) made beyond the newest `keep`
    /// (all of them with 0; nothing else in the directory); returns those deleted.
    pub fn prune(&self, keep: usize) -> std::io::Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if let Some(millis) = backup_written_at(name) {
                written.push((millis, path));
            }
        }
        written.sort_unstable();
        let old = written.len().saturating_sub(keep);
        let mut deleted = Vec::new();
        for (_, path) in written.into_iter().take(old) {
            std::fs::remove_file(&path)?;
            deleted.push(path);
        }
        Ok(deleted)
    }
}

#[derive(Debug, Clone)]
struct Endpoint {
    hub: Arc<Hub>,
    connections: TaskTracker,
}

async fn health() -> &'static str {
    "ok"
}

/// The server's figures in the Prometheus text format (`docs/server.md`, "Metrics"): counts
/// and durations only, nothing of anybody's data, so no authentication, as for `/health`.
async fn metrics(State(endpoint): State<Endpoint>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    let text = endpoint.hub.metrics.render();
    ([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response()
}

/// A namespace or domain name: 1–64 of `[A-Za-z0-9._-]`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Bytes read from a WebSocket at a time (see [`upgrade`]).
const READ_BUFFER_BYTES: usize = 8 * 1024;

async fn upgrade(
    State(endpoint): State<Endpoint>,
    Path((namespace, domain)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    Extension(admitted): Extension<Admitted>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !valid_name(&namespace) || !valid_name(&domain) {
        return (StatusCode::NOT_FOUND, "namespace and domain are 1-64 of [A-Za-z0-9._-]")
            .into_response();
    }
    if endpoint.hub.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let domain: Arc<str> = format!("{namespace}/{domain}").into();
    // Above the protocol's own limit, so that a frame just over it gets a typed error
    // rather than a dropped connection.
    let ceiling = endpoint.hub.config.limits.max_frame_bytes.saturating_mul(2);
    let Endpoint { hub, connections } = endpoint;
    let upgrade = upgrade.max_message_size(ceiling).max_frame_size(ceiling);
    // tungstenite's default read buffer is 128 KiB per connection, allocated up front: most
    // of what an idle session cost. Frames here are small; a larger one is read in chunks.
    upgrade.read_buffer_size(READ_BUFFER_BYTES).on_upgrade(move |socket| {
        // The session keeps the connection's place under the connection caps.
        // Another node's upstream session for one of its clients: never forwarded again.
        let forwarded = query.as_deref() == Some(crate::forward::FORWARDED_QUERY);
        let session = crate::connection::serve(socket, domain, hub, forwarded);
        connections.track_future(async move {
            session.await;
            drop(admitted);
        })
    })
}
