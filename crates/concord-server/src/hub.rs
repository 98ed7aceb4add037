//! What every connection shares: the configuration, the authenticator, the store and its
//! writer, the model tasks, and every domain's presence and activities.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use concord_sync::host::ConnId;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::cluster::Cluster;
use crate::config::ServerConfig;
use crate::ephemeral::Ephemeral;
use crate::metrics::Metrics;
use crate::model::{ModelCommand, Models};
use crate::registry::Registry;
use crate::revocation::RevocationList;
use crate::store::{Store, Writer};
use crate::types::ModelKey;

#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) config: ServerConfig,
    pub(crate) auth: Authenticator,
    pub(crate) store: Store,
    pub(crate) writer: Writer,
    pub(crate) models: Models,
    /// What `/metrics` shows.
    pub(crate) metrics: Arc<Metrics>,
    /// Every domain's presence and activities.
    pub(crate) ephemeral: Ephemeral,
    next_conn: AtomicU64,
    /// Cancelled when the server starts shutting down: connections close.
    pub(crate) shutdown: CancellationToken,
    /// The store writer's thread, joined at shutdown.
    pub(crate) writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Hub {
    pub(crate) fn new(
        config: ServerConfig,
        auth: Authenticator,
        store: Store,
        writer: Writer,
        cluster: Option<Arc<Cluster>>,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Hub {
        let models = Models {
            store: store.clone(),
            writer: writer.clone(),
            config: Arc::new(config.host_config()),
            idle_unload: config.idle_unload,
            stop: CancellationToken::new(),
            registry: Arc::new(Registry::new()),
            tasks: TaskTracker::new(),
            owners: Arc::default(),
            cluster,
            metrics: metrics.clone(),
        };
        // Reconnect tokens revoked in the data dir's list (`concord revoke`) are refused.
        let auth = auth.with_revocations(RevocationList::in_data_dir(&config.data_dir));
        let ephemeral = Ephemeral::new(
            config.presence,
            config.activities.clone(),
            config.identities,
            config.admins.clone(),
            metrics.clone(),
        );
        Hub {
            ephemeral,
            config,
            auth,
            store,
            writer,
            models,
            metrics,
            next_conn: AtomicU64::new(1),
            shutdown,
            writer_thread: Mutex::new(None),
        }
    }

    /// Connection ids grow in the order connections are accepted, as the model hosts need.
    pub(crate) fn next_conn(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Hands `command` to the model's task, starting one if none runs.
    pub(crate) async fn send(&self, key: &ModelKey, command: ModelCommand) {
        self.models.send(key, command).await;
    }
}
