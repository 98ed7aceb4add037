//! The registry of model tasks: it starts a task the first time a model is asked for and
//! forgets it when the task unloads. It holds no model state itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use concord_sync::host::{ConnId, HostConfig};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::ServerConfig;
use crate::model::ModelCommand;
use crate::store::{ModelKey, Store, StoreError, Writer};
use concord_sync::host::Loaded;

/// A model's task as the registry knows it.
#[derive(Debug)]
enum Entry {
    Running(mpsc::Sender<ModelCommand>),
    /// Stopping: senders wait for the gate, then look again.
    Unloading(Arc<Notify>),
}

/// Commands queued for one model before senders wait.
const MODEL_QUEUE: usize = 1_024;

#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) config: ServerConfig,
    /// What every model host is told (shared, not copied per model).
    pub(crate) host_config: Arc<HostConfig>,
    pub(crate) auth: Authenticator,
    pub(crate) store: Store,
    pub(crate) writer: Writer,
    models: Mutex<HashMap<ModelKey, Entry>>,
    next_conn: AtomicU64,
    /// Cancelled when the server starts shutting down: connections close.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled once every connection has closed: model tasks store a snapshot and stop.
    pub(crate) stop_models: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// The store writer's thread, joined at shutdown.
    pub(crate) writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Hub {
    pub(crate) fn new(
        config: ServerConfig,
        auth: Authenticator,
        store: Store,
        writer: Writer,
        shutdown: CancellationToken,
    ) -> Hub {
        Hub {
            host_config: Arc::new(config.host_config()),
            config,
            auth,
            store,
            writer,
            models: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            shutdown,
            stop_models: CancellationToken::new(),
            tasks: TaskTracker::new(),
            writer_thread: Mutex::new(None),
        }
    }

    pub(crate) fn next_conn(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn models(&self) -> std::sync::MutexGuard<'_, HashMap<ModelKey, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.models.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands `command` to the model's task, starting one if none runs.
    pub(crate) async fn send(self: &Arc<Self>, key: &ModelKey, mut command: ModelCommand) {
        loop {
            let found = {
                let mut models = self.models();
                match models.get(key) {
                    Some(Entry::Running(sender)) => Ok(sender.clone()),
                    // Made before the lock is released, so the wake-up cannot be missed.
                    Some(Entry::Unloading(gate)) => Err(gate.clone().notified_owned()),
                    None => {
                        let (sender, receiver) = mpsc::channel(MODEL_QUEUE);
                        models.insert(key.clone(), Entry::Running(sender.clone()));
                        self.tasks.spawn(crate::model::run(key.clone(), self.clone(), receiver));
                        Ok(sender)
                    }
                }
            };
            let sender = match found {
                Ok(sender) => sender,
                Err(woken) => {
                    woken.await;
                    continue;
                }
            };
            match sender.send(command).await {
                Ok(()) => return,
                // The task stopped between lookup and send: ask again.
                Err(mpsc::error::SendError(returned)) => {
                    command = returned;
                    let mut models = self.models();
                    if matches!(models.get(key), Some(Entry::Running(s)) if s.same_channel(&sender))
                    {
                        models.remove(key);
                    }
                }
            }
        }
    }

    /// Called by an idle task whose writes are durable: `Ok(())` if it may stop now, or the
    /// commands that reached it while it was stopping (it keeps running, on `commands`
    /// replaced by a fresh queue). Senders wait meanwhile, so a model is never loaded twice
    /// and one connection's commands keep their order.
    pub(crate) fn unload(
        &self,
        key: &ModelKey,
        commands: &mut mpsc::Receiver<ModelCommand>,
    ) -> Result<(), Vec<ModelCommand>> {
        let gate = Arc::new(Notify::new());
        {
            let mut models = self.models();
            if !commands.is_empty() {
                return Err(Vec::new());
            }
            models.insert(key.clone(), Entry::Unloading(gate.clone()));
        }
        commands.close();
        let stragglers: Vec<_> = std::iter::from_fn(|| commands.try_recv().ok()).collect();
        let mut models = self.models();
        if stragglers.is_empty() {
            models.remove(key);
        } else {
            let (sender, receiver) = mpsc::channel(MODEL_QUEUE);
            models.insert(key.clone(), Entry::Running(sender));
            *commands = receiver;
        }
        drop(models);
        gate.notify_waiters();
        if stragglers.is_empty() { Ok(()) } else { Err(stragglers) }
    }

    pub(crate) async fn load(&self, key: &ModelKey) -> Result<Loaded, StoreError> {
        let store = self.store.clone();
        let key = key.clone();
        tokio::task::spawn_blocking(move || store.load(&key))
            .await
            .map_err(|e| StoreError::Backend(format!("the load task failed: {e}")))?
    }
}
