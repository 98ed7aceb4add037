//! The server as one node of several on one PostgreSQL (`docs/cluster.md`): it registers,
//! sequences a model only under the model's lease (`store/postgres/cluster.rs`), renews
//! every lease it holds in one statement, steps a model down as soon as its lease is lost
//! or runs out, and releases its leases when the model unloads or the server stops, so
//! another node takes over without waiting for them to expire.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_protocol::ModelId;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::store::StoreError;
use crate::store::postgres::PostgresStore;
pub(crate) use crate::store::postgres::cluster::Presence;
use crate::store::postgres::cluster::{Acquired, NodeLeases};
use crate::types::ModelKey;

/// How often, at most, the keeper looks at its leases when nothing is due sooner.
const KEEPER_PERIOD: Duration = Duration::from_millis(250);

/// This node's membership and leases.
#[derive(Debug)]
pub(crate) struct Cluster {
    store: PostgresStore,
    leases: Arc<NodeLeases>,
    config: ClusterConfig,
    /// The models this node serves, each with the token its task stops on when the lease
    /// is lost.
    serving: Mutex<HashMap<ModelKey, CancellationToken>>,
}

/// Another node serves the model.
#[derive(Debug, Clone)]
pub(crate) struct HeldElsewhere {
    pub(crate) name: String,
    pub(crate) url: String,
}

impl Cluster {
    /// Registers this process as a node of `store`'s database; returns the cluster and the
    /// store to serve with, whose every commit checks this node's leases.
    pub(crate) async fn join(
        store: PostgresStore,
        config: ClusterConfig,
        local_addr: SocketAddr,
    ) -> Result<(Arc<Cluster>, PostgresStore), StoreError> {
        let url = config.url.clone().unwrap_or_else(|| format!("ws://{local_addr}"));
        let name = config.name.clone().unwrap_or_else(|| url.clone());
        let node = store.register_node(&name, &url).await?;
        let leases = Arc::new(NodeLeases::new(node, config.lease));
        tracing::info!(node, %name, %url, "joined the cluster");
        let fenced = store.clone().with_leases(leases.clone());
        let cluster =
            Arc::new(Cluster { store, leases, config, serving: Mutex::new(HashMap::new()) });
        Ok((cluster, fenced))
    }

    fn serving(&self) -> std::sync::MutexGuard<'_, HashMap<ModelKey, CancellationToken>> {
        self.serving.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `key` exists, read before it is leased (`Presence`).
    pub(crate) async fn presence(&self, key: &ModelKey) -> Result<Presence, StoreError> {
        self.store.presence(key).await
    }

    /// How long a lease lasts: a node silent for longer has lost its models.
    pub(crate) fn lease_ttl(&self) -> Duration {
        self.config.lease.ttl
    }

    /// Which of `models` of `domain` live nodes other than this one hold leases on, with
    /// each one's URL: a client's requests for those models are forwarded there. One query.
    pub(crate) async fn served_elsewhere(
        &self,
        domain: &str,
        models: &[&ModelId],
    ) -> Result<HashMap<ModelId, String>, StoreError> {
        let names: Vec<&str> = models.iter().map(|model| model.as_str()).collect();
        let held = self.store.served_elsewhere(self.leases.node, domain, &names).await?;
        Ok(held
            .into_iter()
            .filter_map(|(model, url)| Some((ModelId::new(model).ok()?, url)))
            .collect())
    }

    /// Takes `key`'s lease for this node: the token the model's task stops on when it is
    /// lost, or which node has it.
    pub(crate) async fn acquire(
        &self,
        key: &ModelKey,
    ) -> Result<Result<CancellationToken, HeldElsewhere>, StoreError> {
        let sent_at = self.leases.now();
        match self.store.acquire(self.leases.node, key, self.config.lease.ttl).await? {
            Acquired::Granted(epoch) => {
                self.leases.lock().granted(key.clone(), epoch, sent_at);
                let token = CancellationToken::new();
                self.serving().insert(key.clone(), token.clone());
                tracing::debug!(model = %key.model, epoch, "leased");
                Ok(Ok(token))
            }
            Acquired::Held { name, url, .. } => Ok(Err(HeldElsewhere { name, url })),
        }
    }

    /// Gives `key`'s lease up (the model unloaded or stepped down, with everything it
    /// wrote durable).
    pub(crate) async fn release(&self, key: &ModelKey) {
        self.serving().remove(key);
        let Some(epoch) = self.leases.lock().drop_lease(key, None) else { return };
        if let Err(error) = self.store.release(self.leases.node, &[(key.clone(), epoch)]).await {
            // It expires on its own.
            tracing::warn!(model = %key.model, %error, "releasing a lease failed");
        }
    }

    fn lost(&self, key: &ModelKey) {
        tracing::warn!(model = %key.model, "the model's lease is lost; its sessions are closed");
        if let Some(token) = self.serving().remove(key) {
            token.cancel();
        }
    }

    /// Renews the leases in bulk and steps down models whose lease is lost or runs out,
    /// until `stop`.
    pub(crate) async fn keep(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let due = self.leases.lock().poll_timeout();
            let wait = due.map_or(KEEPER_PERIOD, |due| {
                due.saturating_duration_since(self.leases.now()).min(KEEPER_PERIOD)
            });
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let now = self.leases.now();
            let expired = self.leases.lock().expire(now);
            for (key, _) in expired {
                self.lost(&key);
            }
            let renewal = self.leases.lock().poll_renewal(now);
            if let Some(leases) = renewal {
                let ttl = self.config.lease.ttl;
                match self.store.renew(self.leases.node, &leases, ttl).await {
                    Ok(kept) => {
                        let lost = self.leases.lock().renewed(&kept);
                        for (key, _) in lost {
                            self.lost(&key);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "renewing the leases failed");
                        self.leases.lock().renewal_failed();
                    }
                }
            }
        }
    }

    /// At shutdown, once everything is durable: releases every lease left, and says the
    /// node stopped.
    pub(crate) async fn leave(&self) {
        let held = self.leases.lock().held();
        if !held.is_empty()
            && let Err(error) = self.store.release(self.leases.node, &held).await
        {
            tracing::warn!(%error, "releasing the leases at shutdown failed");
        }
        let _ = self.store.node_stopped(self.leases.node).await;
    }
}
