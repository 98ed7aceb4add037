//! RedbStore access for Concord's benchmarks: open a store with indexes, write the hosts'
//! writes in one transaction, answer a query as the server does. Not part of the crate's
//! API: it changes with the store.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use concord_protocol::{CollectionId, ServerMessage};
use concord_sync::host::{HostConfig, QueryLimits, QueryRead, Write};

use super::{DomainWrites, RedbStore, StoreError};

/// A server store opened for a benchmark.
#[derive(Debug)]
pub struct BenchStore {
    store: RedbStore,
}

impl BenchStore {
    /// Opens (or creates) the store in `dir` with `indexes` declared.
    pub fn open(
        dir: &Path,
        indexes: &BTreeMap<CollectionId, Vec<concord_query::Path>>,
    ) -> Result<BenchStore, StoreError> {
        Ok(BenchStore { store: RedbStore::open_indexed(dir, indexes)? })
    }

    /// Makes `writes` in `domain` durable in one transaction, as the writer thread does.
    pub fn write(&self, domain: &str, writes: Vec<Write>) -> Result<(), StoreError> {
        self.store.commit_logged(&[DomainWrites { domain: Arc::from(domain), writes }])
    }

    /// A backup of the store into `dir`, as `Backups::write` makes it.
    pub fn back_up(&self, dir: &Path) -> Result<super::Backup, StoreError> {
        self.store.back_up(dir)
    }

    /// The server's answer to a query in `domain`.
    pub fn query(
        &self,
        domain: &str,
        read: &QueryRead,
        config: &HostConfig,
        limits: &QueryLimits,
    ) -> ServerMessage {
        self.store.query(domain, read, config, limits)
    }
}
