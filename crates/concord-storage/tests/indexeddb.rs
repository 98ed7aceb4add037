//! The IndexedDB backend in a real browser: the whole contract suite
//! (`concord_storage::contract::CHECKS`, one test per check) and what only IndexedDB has —
//! a database of a newer version refused, `versionchange` closing the handle, a blocked
//! deletion giving up, the Web Lock. Runs with `cargo xtask browser-test`
//! (wasm-bindgen-test in headless Chromium); native test runs compile it to nothing.

#![cfg(all(target_arch = "wasm32", feature = "indexeddb"))]

use concord_storage::contract::{self, CHECKS, Check};
use concord_storage::indexeddb::IdbAdapter;
use concord_storage::{
    Batch, FORMAT_VERSION, Mutation, OfflineStore, StorageAdapter, StorageError,
};
use js_sys::{Array, Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
use web_sys::{IdbDatabase, IdbFactory, IdbOpenDbRequest};

wasm_bindgen_test_configure!(run_in_browser);

/// An adapter whose databases no other test (or earlier run in the same profile) uses.
fn adapter(test: &str) -> IdbAdapter {
    IdbAdapter::with_prefix(format!("test-{test}-{}:", js_sys::Date::now()))
}

fn check(name: &str) -> Check {
    *CHECKS.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check named {name}"))
}

async fn run(name: &str) {
    (check(name).run)(&adapter(name)).await;
}

macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        const LISTED: &[&str] = &[$(stringify!($name)),*];

        $(
            #[wasm_bindgen_test]
            async fn $name() {
                run(stringify!($name)).await;
            }
        )*
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

#[wasm_bindgen_test]
fn every_check_is_listed() {
    let all: Vec<&str> = CHECKS.iter().map(|c| c.name).collect();
    assert_eq!(LISTED, all.as_slice(), "list every contract check above");
}

// Raw IndexedDB, as another tab or foreign code would use it.

fn factory() -> IdbFactory {
    Reflect::get(&js_sys::global(), &"indexedDB".into()).unwrap().dyn_into().unwrap()
}

/// Waits for `request` to succeed or fail.
async fn settled(request: &IdbOpenDbRequest) -> Result<JsValue, JsValue> {
    let promise = Promise::new(&mut |resolve, reject| {
        request.set_onsuccess(Some(&resolve));
        request.set_onerror(Some(&reject));
    });
    JsFuture::from(promise).await
}

/// Opens `name` (at `version`, creating no object store) and keeps the connection: it
/// ignores `versionchange`, like code that does not know about this store.
async fn raw_open(name: &str, version: Option<u32>) -> IdbDatabase {
    let request = match version {
        Some(version) => factory().open_with_u32(name, version),
        None => factory().open(name),
    }
    .unwrap();
    settled(&request).await.unwrap();
    request.result().unwrap().dyn_into().unwrap()
}

async fn raw_delete(name: &str) {
    settled(&factory().delete_database(name).unwrap()).await.unwrap();
}

async fn count(store: &dyn OfflineStore) -> usize {
    store.models().await.unwrap().len()
}

#[wasm_bindgen_test]
async fn a_newer_version_is_refused_and_left_alone() {
    let adapter = adapter("newer");
    let key = contract::key();
    let name = adapter.database_name(&key);
    raw_open(&name, Some(7)).await.close();
    match adapter.open(&key).await {
        Err(error @ StorageError::NewerFormat { found: 7, supported }) => {
            assert_eq!(supported, FORMAT_VERSION);
            assert_eq!(
                error.to_string(),
                format!("store format version 7 is newer than the supported version {supported}")
            );
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
    let database = raw_open(&name, None).await;
    assert_eq!(database.version(), 7.0);
    assert_eq!(database.object_store_names().length(), 0, "nothing was created");
    database.close();
    // The lock was released: a second attempt fails the same way, not with InUse.
    assert!(matches!(adapter.open(&key).await, Err(StorageError::NewerFormat { .. })));
}

#[wasm_bindgen_test]
async fn a_deletion_elsewhere_closes_the_handle() {
    let adapter = adapter("versionchange-delete");
    let key = contract::key();
    let store = adapter.open_store(&key).await.unwrap();
    store.commit(contract::full_model_batch(1)).await.unwrap();
    // Foreign code deletes the database: the handle closes itself, so this is not blocked.
    raw_delete(store.database_name()).await;
    assert!(store.is_closed());
    assert!(matches!(store.commit(contract::full_model_batch(2)).await, Err(StorageError::Closed)));
    assert!(matches!(store.models().await, Err(StorageError::Closed)));
    assert!(matches!(store.load_model(&contract::model_id(1)).await, Err(StorageError::Closed)));
    // The closed handle holds no lock: the store opens again, empty.
    let reopened = adapter.open(&key).await.unwrap();
    assert_eq!(count(&*reopened).await, 0);
    drop(store);
    assert_eq!(count(&*reopened).await, 0, "dropping the closed handle changes nothing");
}

#[wasm_bindgen_test]
async fn an_upgrade_elsewhere_closes_the_handle() {
    let adapter = adapter("versionchange-upgrade");
    let key = contract::key();
    let store = adapter.open_store(&key).await.unwrap();
    store.commit(contract::full_model_batch(1)).await.unwrap();
    // Newer code in another tab upgrades the database.
    let newer = raw_open(store.database_name(), Some(FORMAT_VERSION + 1)).await;
    assert!(store.is_closed());
    let error = store.commit(contract::full_model_batch(2)).await.unwrap_err();
    assert!(matches!(error, StorageError::Closed), "{error:?}");
    assert_eq!(error.to_string(), "store is closed");
    assert!(matches!(store.subscriptions().await, Err(StorageError::Closed)));
    newer.close();
    drop(store);
    assert!(matches!(
        adapter.open(&key).await,
        Err(StorageError::NewerFormat { found, supported: FORMAT_VERSION })
            if found == FORMAT_VERSION + 1
    ));
}

#[wasm_bindgen_test]
async fn a_rejected_batch_leaves_nothing_after_reopening() {
    let adapter = adapter("rejected");
    let key = contract::key();
    let store = adapter.open(&key).await.unwrap();
    store.commit(contract::full_model_batch(1)).await.unwrap();
    let before = store.load_model(&contract::model_id(1)).await.unwrap();
    // Valid writes to five tables, then a mutation that breaks the history.
    let bad = contract::full_model_batch(2)
        .with(Mutation::Subscribe(vec![contract::model_id(2)]))
        .with(Mutation::RemovePendingThrough { model: contract::model_id(1), through_seq: 2 })
        .with(Mutation::AppendPending {
            model: contract::model_id(1),
            operations: contract::pendings([1]),
        });
    let result = store.commit_group(vec![Batch::new(), bad]).await;
    assert!(
        matches!(result, Err(StorageError::InvalidBatch { batch: 1, mutation: 7, .. })),
        "{result:?}"
    );
    drop(store);
    let store = adapter.open(&key).await.unwrap();
    assert_eq!(count(&*store).await, 1);
    assert_eq!(store.load_model(&contract::model_id(1)).await.unwrap(), before);
    assert!(store.subscriptions().await.unwrap().is_empty());
}

#[wasm_bindgen_test]
async fn a_blocked_deletion_gives_up_with_in_use() {
    let adapter = adapter("blocked-destroy").blocked_timeout(std::time::Duration::from_millis(200));
    let key = contract::key();
    let store = adapter.open(&key).await.unwrap();
    store.commit(contract::full_model_batch(1)).await.unwrap();
    drop(store);
    let foreign = raw_open(&adapter.database_name(&key), None).await;
    match adapter.destroy(&key).await {
        Err(StorageError::InUse { store }) => assert!(store.contains("blocked"), "{store}"),
        other => panic!("expected InUse, got {other:?}"),
    }
    // The queued deletion happens once the foreign connection closes; an open waits for it.
    foreign.close();
    let store = adapter.open(&key).await.unwrap();
    assert_eq!(count(&*store).await, 0);
}

#[wasm_bindgen_test]
async fn an_open_store_holds_a_web_lock() {
    let adapter = adapter("lock");
    let key = contract::key();
    let locks = Reflect::get(
        &Reflect::get(&js_sys::global(), &"navigator".into()).unwrap(),
        &"locks".into(),
    )
    .unwrap();
    assert!(!locks.is_undefined(), "the browser has Web Locks");
    let held = || async {
        let query: js_sys::Function =
            Reflect::get(&locks, &"query".into()).unwrap().dyn_into().unwrap();
        let snapshot = JsFuture::from(query.call0(&locks).unwrap().dyn_into::<Promise>().unwrap())
            .await
            .unwrap();
        let held: Array = Reflect::get(&snapshot, &"held".into()).unwrap().dyn_into().unwrap();
        held.iter()
            .filter_map(|lock| Reflect::get(&lock, &"name".into()).ok()?.as_string())
            .collect::<Vec<String>>()
    };
    let name = format!("concord-storage {}", adapter.database_name(&key));
    let store = adapter.open(&key).await.unwrap();
    assert!(held().await.contains(&name));
    drop(store);
    // Released (asynchronously); a reopen waits for the release instead of failing.
    let store = adapter.open(&key).await.unwrap();
    assert!(held().await.contains(&name));
    drop(store);
    adapter.destroy(&key).await.unwrap();
}
