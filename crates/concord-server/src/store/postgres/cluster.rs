//! Leases of models among server nodes sharing one database (schema 4, `docs/cluster.md`).
//!
//! A node registers at start (`concord_nodes`) and owns a model by its lease in
//! `concord_leases`, granted with an epoch one above the last when the lease is free,
//! released, expired by the database's clock, or already the asker's. Every commit of a
//! node first reads the lease of each model it writes `FOR SHARE`, by node, epoch and
//! expiry: a grant to another node waits for that commit, and once the grant is committed
//! no commit under the old epoch finds its lease, so a node that lost a lease (paused,
//! partitioned, slow) never appends to the model again, whatever it believes. The node's
//! own view of its leases ([`Leases`]) only makes it step down before the database may
//! grant them elsewhere.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use concord_sync::Time;
use concord_sync::lease::{LeaseConfig, Leases};
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use concord_sync::host::{CollectionConfig, ModelRecord};

use super::{PostgresStore, collection_in, decode, pg};
use crate::store::{DomainWrites, StoreError, written_model};
use crate::types::ModelKey;

/// One node's leases, shared by the node's lease keeper and the store's commits.
#[derive(Debug)]
pub(crate) struct NodeLeases {
    /// This process's row in `concord_nodes`.
    pub(crate) node: i64,
    origin: Instant,
    leases: Mutex<Leases<ModelKey>>,
}

impl NodeLeases {
    pub(crate) fn new(node: i64, config: LeaseConfig) -> NodeLeases {
        NodeLeases { node, origin: Instant::now(), leases: Mutex::new(Leases::new(config)) }
    }

    /// The node's monotonic time, as the lease logic counts it.
    pub(crate) fn now(&self) -> Time {
        Time::from_millis(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Leases<ModelKey>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The epoch the node may write `key` under now.
    pub(crate) fn epoch(&self, key: &ModelKey) -> Option<u64> {
        let now = self.now();
        self.lock().epoch(key, now)
    }
}

/// The answer to a lease request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Acquired {
    Granted(u64),
    /// Another live node holds it.
    Held {
        node: i64,
        name: String,
        url: String,
    },
}

/// Whether a model exists, read before it is leased: a node leases only models that exist
/// or that a request may create, so naming model ids costs a client no lease rows.
#[derive(Debug, Clone)]
pub(crate) enum Presence {
    Missing,
    /// Deleted: its id is never used again, so it is never leased either.
    Deleted,
    /// With what decides who may read it (not its data).
    Exists {
        record: Box<ModelRecord>,
        collection: Option<CollectionConfig>,
    },
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

impl PostgresStore {
    /// Registers this process as a node; returns its id.
    pub(crate) async fn register_node(&self, name: &str, url: &str) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "INSERT INTO concord_nodes (name, url) VALUES ($1, $2) RETURNING id",
                &[&name, &url],
            )
            .await
            .map_err(pg)?;
        Ok(row.get(0))
    }

    /// Asks for `key`'s lease for `node`, for `ttl` by the database's clock.
    pub(crate) async fn acquire(
        &self,
        node: i64,
        key: &ModelKey,
        ttl: Duration,
    ) -> Result<Acquired, StoreError> {
        let client = self.client().await?;
        let (domain, model) = key.as_tuple();
        let ttl = seconds(ttl);
        // The upsert waits for any commit holding the lease FOR SHARE, so a grant is
        // committed only after the old holder's last append under it.
        let statement = client
            .prepare_cached(
                "INSERT INTO concord_leases AS l (domain, model, node, epoch, expires_at)
                 VALUES ($1, $2, $3, 1, clock_timestamp() + make_interval(secs => $4))
                 ON CONFLICT (domain, model) DO UPDATE
                     SET node = excluded.node, epoch = l.epoch + 1,
                         expires_at = excluded.expires_at
                     WHERE l.expires_at <= clock_timestamp() OR l.node = excluded.node
                 RETURNING epoch",
            )
            .await
            .map_err(pg)?;
        let params: [&(dyn ToSql + Sync); 4] = [&domain, &model, &node, &ttl];
        if let Some(row) = client.query_opt(&statement, &params).await.map_err(pg)? {
            let epoch: i64 = row.get(0);
            return Ok(Acquired::Granted(epoch as u64));
        }
        let row = client
            .query_opt(
                "SELECT l.node, n.name, n.url FROM concord_leases l
                 LEFT JOIN concord_nodes n ON n.id = l.node
                 WHERE l.domain = $1 AND l.model = $2",
                &[&domain, &model],
            )
            .await
            .map_err(pg)?;
        Ok(match row {
            Some(row) => Acquired::Held {
                node: row.get(0),
                name: row.get::<_, Option<String>>(1).unwrap_or_default(),
                url: row.get::<_, Option<String>>(2).unwrap_or_default(),
            },
            // Deleted meanwhile (it never is): ask again.
            None => Acquired::Held { node: 0, name: String::new(), url: String::new() },
        })
    }

    /// Whether `key` exists, and who may read it: its record and collection settings only,
    /// neither its data nor its lease.
    pub(crate) async fn presence(&self, key: &ModelKey) -> Result<Presence, StoreError> {
        let client = self.client().await?;
        let (domain, model) = (&*key.domain, &key.model);
        let statement = client
            .prepare_cached(
                "SELECT m.record, d.model IS NOT NULL FROM (SELECT 1) AS one
                 LEFT JOIN models m ON m.domain = $1 AND m.model = $2
                 LEFT JOIN deleted d ON d.domain = $1 AND d.model = $2",
            )
            .await
            .map_err(pg)?;
        let row = client.query_one(&statement, &[&domain, &model.as_str()]).await.map_err(pg)?;
        let Some(record) = row.get::<_, Option<&[u8]>>(0) else {
            return Ok(if row.get(1) { Presence::Deleted } else { Presence::Missing });
        };
        let record: ModelRecord = decode(record, domain, Some(model), || "its record".into())?;
        let collection = collection_in(&client, domain, &record.collection).await?;
        Ok(Presence::Exists { record: Box::new(record), collection })
    }

    /// Which of `models` of `domain` a live node other than `node` holds unexpired leases
    /// on: (model, that node's URL) for each.
    pub(crate) async fn served_elsewhere(
        &self,
        node: i64,
        domain: &str,
        models: &[&str],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT l.model, n.url FROM concord_leases l JOIN concord_nodes n ON n.id = l.node
                 WHERE l.domain = $1 AND l.model = ANY($2) AND l.node <> $3
                       AND l.expires_at > clock_timestamp() AND n.stopped_at IS NULL",
            )
            .await
            .map_err(pg)?;
        let params: [&(dyn ToSql + Sync); 3] = [&domain, &models, &node];
        let rows = client.query(&statement, &params).await.map_err(pg)?;
        Ok(rows.into_iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Renews `leases` of `node` in one statement (and records the node's heartbeat);
    /// returns those still held under the same epoch.
    pub(crate) async fn renew(
        &self,
        node: i64,
        leases: &[(ModelKey, u64)],
        ttl: Duration,
    ) -> Result<Vec<(ModelKey, u64)>, StoreError> {
        let client = self.client().await?;
        let (domains, models, epochs) = columns(leases);
        let ttl = seconds(ttl);
        let statement = client
            .prepare_cached(
                "WITH beat AS (UPDATE concord_nodes SET heartbeat_at = clock_timestamp()
                               WHERE id = $4)
                 UPDATE concord_leases l
                 SET expires_at = clock_timestamp() + make_interval(secs => $5)
                 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS r(domain, model, epoch)
                 WHERE l.domain = r.domain AND l.model = r.model AND l.epoch = r.epoch
                       AND l.node = $4 AND l.expires_at > '-infinity'
                 RETURNING l.domain, l.model, l.epoch",
            )
            .await
            .map_err(pg)?;
        let params: [&(dyn ToSql + Sync); 5] = [&domains, &models, &epochs, &node, &ttl];
        let rows = client.query(&statement, &params).await.map_err(pg)?;
        let kept: BTreeMap<(String, String), i64> =
            rows.iter().map(|row| ((row.get(0), row.get(1)), row.get(2))).collect();
        Ok(leases
            .iter()
            .filter(|(key, epoch)| {
                let (domain, model) = key.as_tuple();
                kept.get(&(domain.to_owned(), model.to_owned())) == Some(&(*epoch as i64))
            })
            .cloned()
            .collect())
    }

    /// Gives `leases` of `node` up at once, so that another node takes them over without
    /// waiting for them to expire.
    pub(crate) async fn release(
        &self,
        node: i64,
        leases: &[(ModelKey, u64)],
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let (domains, models, epochs) = columns(leases);
        client
            .execute(
                "UPDATE concord_leases l SET expires_at = '-infinity'
                 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS r(domain, model, epoch)
                 WHERE l.domain = r.domain AND l.model = r.model AND l.epoch = r.epoch
                       AND l.node = $4",
                &[&domains, &models, &epochs, &node],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    /// Records that `node` stopped gracefully.
    pub(crate) async fn node_stopped(&self, node: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE concord_nodes SET stopped_at = clock_timestamp() WHERE id = $1",
                &[&node],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }
}

fn columns(leases: &[(ModelKey, u64)]) -> (Vec<&str>, Vec<&str>, Vec<i64>) {
    let mut columns = (Vec::new(), Vec::new(), Vec::new());
    for (key, epoch) in leases {
        let (domain, model) = key.as_tuple();
        columns.0.push(domain);
        columns.1.push(model);
        columns.2.push(*epoch as i64);
    }
    columns
}

/// The leases of `(domain, model, epoch)` rows held by node `$4`, unexpired, locked until
/// the transaction ends.
pub(crate) const LEASE_CHECK: &str = "SELECT l.domain, l.model FROM concord_leases l
     JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS w(domain, model, epoch)
          ON l.domain = w.domain AND l.model = w.model AND l.epoch = w.epoch
     WHERE l.node = $4 AND l.expires_at > clock_timestamp()
     FOR SHARE OF l";

/// First statement of a node's commit: every model `batch` writes must be leased to the node
/// under the epoch it holds, unexpired; the leases are locked `FOR SHARE` until the commit
/// ends, so no grant to another node comes between. [`StoreError::LeaseLost`] otherwise.
pub(super) async fn check_leases(
    txn: &Transaction<'_>,
    leases: &NodeLeases,
    batch: &[DomainWrites],
) -> Result<(), StoreError> {
    let mut wanted: BTreeMap<ModelKey, u64> = BTreeMap::new();
    for DomainWrites { domain, writes } in batch {
        for model in writes.iter().filter_map(written_model) {
            let key = ModelKey { domain: domain.clone(), model: model.clone() };
            if wanted.contains_key(&key) {
                continue;
            }
            let Some(epoch) = leases.epoch(&key) else {
                return Err(lease_lost(&key));
            };
            wanted.insert(key, epoch);
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let wanted: Vec<(ModelKey, u64)> = wanted.into_iter().collect();
    let (domains, models, epochs) = columns(&wanted);
    let statement = txn.prepare_cached(LEASE_CHECK).await.map_err(pg)?;
    let params: [&(dyn ToSql + Sync); 4] = [&domains, &models, &epochs, &leases.node];
    let rows = txn.query(&statement, &params).await.map_err(pg)?;
    if rows.len() == wanted.len() {
        return Ok(());
    }
    let held: std::collections::BTreeSet<(String, String)> =
        rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let lost = wanted
        .iter()
        .find(|(key, _)| {
            let (domain, model) = key.as_tuple();
            !held.contains(&(domain.to_owned(), model.to_owned()))
        })
        .map(|(key, _)| key)
        .expect("fewer rows than leases asked for");
    Err(lease_lost(lost))
}

fn lease_lost(key: &ModelKey) -> StoreError {
    StoreError::LeaseLost { domain: key.domain.to_string(), model: key.model.clone() }
}
