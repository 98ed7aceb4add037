//! What only the file backend has: the lock against a second process, damaged files, and
//! durability across handles.

#![cfg(all(feature = "redb", not(target_arch = "wasm32")))]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use concord_storage::contract::{full_model_batch, key, model_id};
use concord_storage::{OfflineStore, RedbStore, StorageError};

/// Set in a child process: what the child should do.
const CHILD_ENV: &str = "CONCORD_STORAGE_TEST_CHILD";

/// The entry point of the child process (a no-op in a normal run): opens the store named by
/// the environment and prints the outcome.
#[test]
fn child_process_entry() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let outcome = match RedbStore::open(&path, &key()) {
        Ok(_) => "opened".to_string(),
        Err(StorageError::InUse { .. }) => "in-use".to_string(),
        Err(other) => format!("error: {other}"),
    };
    println!("child-outcome: {outcome}");
}

/// Runs the child on `path` and returns its outcome; fails if it takes more than 20 s.
fn child_open(path: &Path) -> String {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("the second process hung opening the store");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|line| line.split("child-outcome: ").nth(1))
        .unwrap_or_else(|| panic!("no outcome from the child: {stdout}"))
        .to_string()
}

#[test]
fn a_second_process_gets_in_use_and_the_store_stays_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = RedbStore::open(&path, &key()).unwrap();
    pollster::block_on(store.commit(full_model_batch(1))).unwrap();
    let before = pollster::block_on(store.load_model(&model_id(1))).unwrap();
    assert_eq!(child_open(&path), "in-use");
    // The first handle is unaffected, and sees the same data.
    pollster::block_on(store.commit(full_model_batch(2))).unwrap();
    assert_eq!(pollster::block_on(store.load_model(&model_id(1))).unwrap(), before);
    drop(store);
    // Once closed, another process opens it.
    assert_eq!(child_open(&path), "opened");
    let store = RedbStore::open(&path, &key()).unwrap();
    assert_eq!(pollster::block_on(store.models()).unwrap().len(), 2);
}

#[test]
fn a_second_handle_in_the_same_process_gets_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let _store = RedbStore::open(&path, &key()).unwrap();
    assert!(matches!(RedbStore::open(&path, &key()), Err(StorageError::InUse { .. })));
}

#[test]
fn garbage_opens_to_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for (i, len) in [1usize, 7, 64, 512, 4096, 100_000].into_iter().enumerate() {
        let path = dir.path().join(format!("garbage-{i}.redb"));
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        match RedbStore::open(&path, &key()) {
            Err(StorageError::Corrupt(e)) => eprintln!("{len} garbage bytes: corrupt: {e}"),
            other => panic!("{len} garbage bytes: expected Corrupt, got {other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file is left alone");
    }
}

#[test]
fn a_truncated_store_opens_to_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let store = RedbStore::open(&path, &key()).unwrap();
        for n in 0..20 {
            pollster::block_on(store.commit(full_model_batch(n))).unwrap();
        }
    }
    let whole = std::fs::read(&path).unwrap();
    for cut in [whole.len() / 2, whole.len() / 4, 4096, 100, 3] {
        std::fs::write(&path, &whole[..cut]).unwrap();
        match RedbStore::open(&path, &key()) {
            Err(StorageError::Corrupt(e)) => eprintln!("cut at {cut}: corrupt: {e}"),
            Ok(store) => {
                // Repair may succeed only if nothing committed was lost.
                let models = pollster::block_on(store.models());
                panic!("truncated to {cut} bytes of {}: opened, {models:?}", whole.len());
            }
            Err(other) => panic!("truncated to {cut}: unexpected {other:?}"),
        }
    }
}
