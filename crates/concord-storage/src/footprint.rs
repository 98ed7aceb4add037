//! What each operation of `store.rs` touches: the tables its transaction must cover (its
//! scope) and the reads worth fetching before it runs (hints), for backends that name a
//! transaction's tables up front and read asynchronously (IndexedDB, through
//! [`overlay`](crate::overlay)).
//!
//! The scope is a promise: the overlay refuses any access outside it with an internal
//! error, and the contract suite runs through the overlay natively, so a mutation that
//! starts touching a new table fails tests until it is listed here. The hints are only an
//! optimisation: a read they miss costs one more round of requests, never a wrong result.
//! Keep both in step with `store::apply_one` and the read functions.

use concord_protocol::ModelId;

use crate::batch::{Batch, Mutation};
use crate::encoding::{
    META_FORMAT, META_REPLICA_ID, META_STORE_KEY, Table, model_key, numbered_key, numbered_range,
};
use crate::overlay::{Need, Scope, Span};

/// A transaction's tables and the reads to fetch first.
#[derive(Debug, Clone)]
pub(crate) struct Footprint {
    pub(crate) scope: Scope,
    pub(crate) hints: Vec<Need>,
}

impl Footprint {
    fn new(tables: impl IntoIterator<Item = Table>) -> Footprint {
        Footprint { scope: Scope::of(tables), hints: Vec::new() }
    }

    fn hint(&mut self, need: Need) {
        if !self.hints.contains(&need) {
            self.hints.push(need);
        }
    }
}

fn numbered(table: Table, model: &ModelId, through: Option<u64>) -> Need {
    let (start, end) = numbered_range(model, through);
    Need::Keys(table, Span::new(&start, &end))
}

fn numbered_rows(table: Table, model: &ModelId) -> Need {
    let (start, end) = numbered_range(model, None);
    Need::Rows(table, Span::new(&start, &end))
}

/// Opening: every table (a new store is checked for emptiness, a migration may rewrite
/// anything); the format version and store key are always read.
pub(crate) fn prepare() -> Footprint {
    let mut footprint = Footprint::new(Table::ALL);
    footprint.hint(Need::Value(Table::Meta, META_FORMAT.to_vec()));
    footprint.hint(Need::Value(Table::Meta, META_STORE_KEY.to_vec()));
    footprint
}

/// `store::apply` of `batches`.
pub(crate) fn apply(batches: &[Batch]) -> Footprint {
    // Summaries are read and written back for every model a mutation names.
    let mut footprint = Footprint::new([Table::Models]);
    for mutation in batches.iter().flat_map(|batch| &batch.mutations) {
        if let Some(model) = mutation.model() {
            footprint.hint(Need::Value(Table::Models, model_key(model).to_vec()));
        }
        let tables: &[Table] = match mutation {
            Mutation::PutModel(_)
            | Mutation::SetInFlight { .. }
            | Mutation::AdvanceElementCounter { .. } => &[],
            Mutation::DeleteModel(model) => {
                footprint.hint(numbered(Table::ServerOperations, model, None));
                footprint.hint(numbered(Table::Pending, model, None));
                &[Table::Snapshots, Table::ServerOperations, Table::Pending, Table::Creations]
            }
            Mutation::PutSnapshot { model, snapshot } => {
                footprint.hint(numbered(Table::ServerOperations, model, Some(snapshot.version)));
                &[Table::Snapshots, Table::ServerOperations]
            }
            Mutation::AppendServerOperations { .. } => &[Table::ServerOperations],
            Mutation::ReplacePending { model, .. } => {
                footprint.hint(numbered(Table::Pending, model, None));
                &[Table::Pending]
            }
            Mutation::UpdatePending { model, operations } => {
                for op in operations {
                    let start = numbered_key(model, op.seq);
                    let end = numbered_range(model, Some(op.through)).1;
                    footprint.hint(Need::Rows(Table::Pending, Span::new(&start, &end)));
                }
                &[Table::Pending]
            }
            Mutation::AppendPending { .. } => &[Table::Pending],
            Mutation::RemovePendingThrough { model, through_seq } => {
                let (start, end) = numbered_range(model, Some(*through_seq));
                footprint.hint(Need::Rows(Table::Pending, Span::new(&start, &end)));
                &[Table::Pending]
            }
            Mutation::PutCreation { .. } | Mutation::DeleteCreation(_) => &[Table::Creations],
            Mutation::SetSubscriptions(_) | Mutation::Subscribe(_) | Mutation::Unsubscribe(_) => {
                &[Table::Subscriptions]
            }
            Mutation::PutSessions(_) | Mutation::RemoveSessions(_) => &[Table::Sessions],
            Mutation::PutUsers(_) => &[Table::Users],
            Mutation::PutIdentities(_) => &[Table::Identities],
            Mutation::SetReplicaId(_) => {
                footprint.hint(Need::Value(Table::Meta, META_REPLICA_ID.to_vec()));
                &[Table::Meta]
            }
        };
        for &table in tables {
            footprint.scope.add(table);
        }
    }
    footprint
}

pub(crate) fn models() -> Footprint {
    let mut footprint = Footprint::new([Table::Models]);
    footprint.hint(Need::Rows(Table::Models, Span::all()));
    footprint
}

/// The summaries, and the creation records kept beside tombstones (few: only creations the
/// server has not confirmed).
pub(crate) fn unsynced() -> Footprint {
    let mut footprint = Footprint::new([Table::Models, Table::Creations]);
    footprint.hint(Need::Rows(Table::Models, Span::all()));
    footprint.hint(Need::Rows(Table::Creations, Span::all()));
    footprint
}

pub(crate) fn load_model(model: &ModelId) -> Footprint {
    let mut footprint = Footprint::new([
        Table::Models,
        Table::Snapshots,
        Table::ServerOperations,
        Table::Pending,
        Table::Creations,
    ]);
    let key = model_key(model).to_vec();
    footprint.hint(Need::Value(Table::Models, key.clone()));
    footprint.hint(Need::Value(Table::Snapshots, key.clone()));
    footprint.hint(numbered_rows(Table::ServerOperations, model));
    footprint.hint(numbered_rows(Table::Pending, model));
    footprint.hint(Need::Value(Table::Creations, key));
    footprint
}

/// `store::load_model_head`: no pending operation.
pub(crate) fn load_model_head(model: &ModelId) -> Footprint {
    let mut footprint = Footprint::new([
        Table::Models,
        Table::Snapshots,
        Table::ServerOperations,
        Table::Creations,
    ]);
    let key = model_key(model).to_vec();
    footprint.hint(Need::Value(Table::Models, key.clone()));
    footprint.hint(Need::Value(Table::Snapshots, key.clone()));
    footprint.hint(numbered_rows(Table::ServerOperations, model));
    footprint.hint(Need::Value(Table::Creations, key));
    footprint
}

/// A page of pending operations: read with bounded requests, not through the overlay.
#[cfg_attr(not(all(feature = "indexeddb", target_arch = "wasm32")), allow(dead_code))]
pub(crate) fn pending_page() -> Footprint {
    Footprint::new([Table::Pending])
}

pub(crate) fn subscriptions() -> Footprint {
    let mut footprint = Footprint::new([Table::Subscriptions]);
    footprint.hint(Need::Rows(Table::Subscriptions, Span::all()));
    footprint
}

pub(crate) fn replica_id() -> Footprint {
    let mut footprint = Footprint::new([Table::Meta]);
    footprint.hint(Need::Value(Table::Meta, META_REPLICA_ID.to_vec()));
    footprint
}

pub(crate) fn identities() -> Footprint {
    let mut footprint = Footprint::new([Table::Sessions, Table::Users, Table::Identities]);
    footprint.hint(Need::Rows(Table::Sessions, Span::all()));
    footprint.hint(Need::Rows(Table::Users, Span::all()));
    footprint.hint(Need::Rows(Table::Identities, Span::all()));
    footprint
}
