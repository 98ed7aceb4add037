//! The contract suite (`concord_storage::contract`) against every native backend: one test
//! per check and backend.

// Native only: the browser runs the suite in tests/indexeddb.rs.
#![cfg(not(target_arch = "wasm32"))]

use concord_storage::contract::{CHECKS, Check};
use concord_storage::{MemoryAdapter, StorageAdapter};

fn check(name: &str) -> Check {
    *CHECKS.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check named {name}"))
}

fn run(name: &str, adapter: &dyn StorageAdapter) {
    pollster::block_on((check(name).run)(adapter));
}

macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        const LISTED: &[&str] = &[$(stringify!($name)),*];

        mod memory {
            $(
                #[test]
                fn $name() {
                    super::run(stringify!($name), &concord_storage::MemoryAdapter::new());
                }
            )*
        }

        #[cfg(feature = "redb")]
        mod redb {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let adapter = concord_storage::RedbAdapter::new(dir.path().join("stores"));
                    super::run(stringify!($name), &adapter);
                }
            )*
        }
    };
}

contract_tests!(
    new_store_is_empty,
    model_state_round_trips,
    unsynced_lists_only_what_the_server_has_not_confirmed,
    mutations_see_earlier_mutations_of_their_batch,
    rejected_batch_changes_nothing,
    group_commit_is_all_or_nothing,
    group_commit_applies_in_order,
    snapshot_compacts_server_operations,
    snapshot_may_not_open_a_gap,
    server_operations_must_be_contiguous,
    pending_sequence_numbers_are_never_reused,
    replace_and_remove_pending,
    update_pending_in_place,
    pending_runs_cover_their_seqs,
    pending_pages,
    in_flight_boundary,
    element_counter_never_decreases,
    put_model_keeps_data,
    delete_model_removes_everything,
    mutations_need_a_record,
    creation_records,
    subscriptions,
    identities,
    replica_id_is_set_once,
    reopen_keeps_everything,
    second_open_is_in_use,
    stores_are_separate_per_key,
    destroy_removes_the_store,
    empty_commits_are_no_ops,
    failed_commit_changes_nothing,
    in_doubt_commit_is_applied,
    crash_keeps_what_was_applied,
);

#[test]
fn every_check_is_listed() {
    let all: Vec<&str> = CHECKS.iter().map(|c| c.name).collect();
    assert_eq!(LISTED, all.as_slice(), "list every contract check above");
}

#[test]
fn adapters_are_usable_as_trait_objects() {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<dyn StorageAdapter>();
    assert_send_sync::<dyn concord_storage::OfflineStore>();
    let adapters: Vec<Box<dyn StorageAdapter>> = vec![Box::new(MemoryAdapter::new())];
    for adapter in &adapters {
        run("reopen_keeps_everything", adapter.as_ref());
    }
}
