//! Without PostgreSQL support there are no cluster nodes: this stands in for `cluster.rs`,
//! and no value of it exists.

use tokio_util::sync::CancellationToken;

use crate::store::StoreError;
use crate::types::ModelKey;

#[derive(Debug)]
pub(crate) enum Cluster {}

#[derive(Debug, Clone)]
pub(crate) struct HeldElsewhere {
    pub(crate) name: String,
    pub(crate) url: String,
}

#[derive(Debug, Clone)]
#[allow(dead_code)] // never built: no value of `Cluster` exists here
pub(crate) enum Presence {
    Missing,
    Deleted,
    Exists {
        record: Box<concord_sync::host::ModelRecord>,
        collection: Option<concord_sync::host::CollectionConfig>,
    },
}

impl Cluster {
    pub(crate) fn lease_ttl(&self) -> std::time::Duration {
        match *self {}
    }

    pub(crate) async fn served_elsewhere(
        &self,
        _: &str,
        _: &[&concord_protocol::ModelId],
    ) -> Result<std::collections::HashMap<concord_protocol::ModelId, String>, StoreError> {
        match *self {}
    }

    pub(crate) async fn presence(&self, _: &ModelKey) -> Result<Presence, StoreError> {
        match *self {}
    }

    pub(crate) async fn acquire(
        &self,
        _: &ModelKey,
    ) -> Result<Result<CancellationToken, HeldElsewhere>, StoreError> {
        match *self {}
    }

    pub(crate) async fn release(&self, _: &ModelKey) {
        match *self {}
    }

    pub(crate) async fn leave(&self) {
        match *self {}
    }

    pub(crate) async fn keep(self: std::sync::Arc<Self>, _: CancellationToken) {
        match *self {}
    }
}
