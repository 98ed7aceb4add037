//! A model's history as the store holds it (checkpoints, operations and their users), read
//! for the host's history answers (`concord_sync::host::history_reply`) in one read
//! transaction, so that an answer sees one consistent state.

use concord_protocol::{CollectionId, ModelId};
use concord_protocol::{
    CommittedOperation, HistoryOperation, ModelSnapshot, ServerMessage, Timestamp,
};
use concord_sync::host::{
    CollectionConfig, HistoryRead, HistorySource, QueryEntry, QueryModelData, QuerySource,
    ReadFailure, history_reply,
};
use redb::{ReadTransaction, TableHandle};

use super::{
    CHECKPOINTS, OPERATIONS, RedbStore, StoreError, StoredCheckpoint, backend,
    read_operations_with_users, unseal,
};
use crate::types::ModelKey;

impl RedbStore {
    /// The answer to a history request the model host accepted.
    pub(crate) fn history(&self, key: &ModelKey, read: &HistoryRead) -> ServerMessage {
        let mut source = match self.begin_read() {
            Ok(txn) => StoredHistory { txn, key },
            Err(e) => return history_reply(read, &mut Failed(e.into())),
        };
        history_reply(read, &mut source)
    }
}

/// The newest checkpoint of `key` at or before `version`: its version, and the checkpoint or
/// the damage that keeps it from being read.
pub(super) fn checkpoint_at_or_before(
    txn: &ReadTransaction,
    key: &ModelKey,
    version: u64,
) -> Result<Option<StoredCheckpoint>, StoreError> {
    let (domain, model) = key.as_tuple();
    let table = txn.open_table(CHECKPOINTS).map_err(backend)?;
    let mut range = table.range((domain, model, 0)..=(domain, model, version)).map_err(backend)?;
    let Some(entry) = range.next_back() else { return Ok(None) };
    let (stored_key, bytes) = entry.map_err(backend)?;
    let at = stored_key.value().2;
    let checkpoint =
        unseal(CHECKPOINTS.name(), &stored_key.value(), bytes.value()).map_err(|damage| {
            super::corrupt(domain, Some(&key.model), format!("checkpoint {at}"), damage)
        });
    Ok(Some((at, checkpoint)))
}

struct StoredHistory<'a> {
    txn: ReadTransaction,
    key: &'a ModelKey,
}

fn message(error: impl Into<StoreError>) -> ReadFailure {
    error.into().into()
}

impl StoredHistory<'_> {
    fn versions(&self) -> std::ops::RangeInclusive<(&str, &str, u64)> {
        let (domain, model) = self.key.as_tuple();
        (domain, model, 0)..=(domain, model, u64::MAX)
    }

    fn damaged(&self, record: String, damage: super::record::Damage) -> ReadFailure {
        super::corrupt(&self.key.domain, Some(&self.key.model), record, damage).into()
    }
}

impl HistorySource for StoredHistory<'_> {
    fn oldest_checkpoint(&mut self) -> Result<Option<u64>, ReadFailure> {
        let table = self.txn.open_table(CHECKPOINTS).map_err(message)?;
        let mut range = table.range(self.versions()).map_err(|e| message(backend(e)))?;
        match range.next() {
            Some(entry) => Ok(Some(entry.map_err(|e| message(backend(e)))?.0.value().2)),
            None => Ok(None),
        }
    }

    fn checkpoint_at_or_before(
        &mut self,
        version: u64,
    ) -> Result<Option<ModelSnapshot>, ReadFailure> {
        match checkpoint_at_or_before(&self.txn, self.key, version)? {
            Some((_, checkpoint)) => Ok(Some(checkpoint?)),
            None => Ok(None),
        }
    }

    fn operations(
        &mut self,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<HistoryOperation>, ReadFailure> {
        read_operations_with_users(&self.txn, self.key, after, through, limit).map_err(message)
    }

    fn commit_time(&mut self, version: u64) -> Result<Option<Timestamp>, ReadFailure> {
        let (domain, model) = self.key.as_tuple();
        let table = self.txn.open_table(OPERATIONS).map_err(message)?;
        let k = (domain, model, version);
        match table.get(k).map_err(|e| message(backend(e)))? {
            Some(bytes) => unseal::<_, CommittedOperation>(OPERATIONS.name(), &k, bytes.value())
                .map(|operation| Some(operation.timestamp))
                .map_err(|damage| self.damaged(format!("operation {version}"), damage)),
            None => Ok(None),
        }
    }
}

/// A store that could not even start a read.
pub(super) struct Failed(pub(super) ReadFailure);

impl QuerySource for Failed {
    fn collection(&mut self, _: &CollectionId) -> Result<Option<CollectionConfig>, ReadFailure> {
        Err(self.0.clone())
    }
    fn scan(
        &mut self,
        _: &CollectionId,
        _: Option<&concord_query::IndexScan>,
        _: &mut dyn FnMut(&mut dyn QueryEntry) -> Result<bool, ReadFailure>,
    ) -> Result<(), ReadFailure> {
        Err(self.0.clone())
    }
    fn model(&mut self, _: &ModelId) -> Result<QueryModelData, ReadFailure> {
        Err(self.0.clone())
    }
}

impl HistorySource for Failed {
    fn oldest_checkpoint(&mut self) -> Result<Option<u64>, ReadFailure> {
        Err(self.0.clone())
    }
    fn checkpoint_at_or_before(&mut self, _: u64) -> Result<Option<ModelSnapshot>, ReadFailure> {
        Err(self.0.clone())
    }
    fn operations(
        &mut self,
        _: u64,
        _: u64,
        _: usize,
    ) -> Result<Vec<HistoryOperation>, ReadFailure> {
        Err(self.0.clone())
    }
    fn commit_time(&mut self, _: u64) -> Result<Option<Timestamp>, ReadFailure> {
        Err(self.0.clone())
    }
}
