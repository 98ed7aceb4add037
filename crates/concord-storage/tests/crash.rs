//! Crash consistency of the redb backend with real process deaths.
//!
//! A child process (this test binary, re-run with an environment variable) opens a store and
//! commits numbered batches in a loop, printing each number once its commit has returned.
//! The parent kills it with SIGKILL at a pseudo-random moment (seeded, so a failure
//! reproduces), reopens the store and checks that every printed batch is present, that the
//! batches present are exactly 1..=n for some n, and that no batch is partly present: each
//! batch writes rows in seven tables plus an operation in a shared log, all or nothing.

#![cfg(all(feature = "redb", unix))]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use concord_protocol::{ModelId, SessionId, User, UserId};
use concord_storage::contract::{
    collection, creation, key, pendings, record, server_operation, snapshot,
};
use concord_storage::{Batch, ModelRecord, Mutation, OfflineStore, RedbStore, StorageError};

const CHILD_ENV: &str = "CONCORD_STORAGE_CRASH_CHILD";
const KILLS: usize = 80;
const SEED: u64 = 0x5eed_0c0c_07d0_0001;

fn log_model() -> ModelId {
    ModelId::new("log").unwrap()
}

fn batch_model(n: u64) -> ModelId {
    ModelId::new(format!("batch-{n}")).unwrap()
}

fn session(n: u64) -> SessionId {
    SessionId(format!("session-{n}"))
}

fn user(n: u64) -> User {
    User {
        id: UserId(format!("user-{n}")),
        // Makes a batch span several pages.
        display_name: Some(format!("{n:x}").repeat(300 + (n % 7) as usize * 100)),
        anonymous: false,
    }
}

/// Batch `n` (from 1): a model `batch-n` with a snapshot, three pending operations and a
/// creation record, its subscription, a session and a user, and operation `n` of the log.
fn numbered_batch(n: u64) -> Batch {
    let model = batch_model(n);
    let mut batch = Batch::new();
    if n == 1 {
        batch.push(Mutation::PutModel(ModelRecord::new(log_model(), collection())));
        batch.push(Mutation::PutSnapshot { model: log_model(), snapshot: snapshot(0) });
    }
    batch
        .with(Mutation::PutModel(ModelRecord {
            id: model.clone(),
            next_element_counter: n,
            ..record(0)
        }))
        .with(Mutation::PutSnapshot { model: model.clone(), snapshot: snapshot(n) })
        .with(Mutation::AppendPending { model: model.clone(), operations: pendings(1..=3) })
        .with(Mutation::PutCreation { model: model.clone(), creation: creation(n) })
        .with(Mutation::Subscribe(vec![model]))
        .with(Mutation::PutSessions(vec![(session(n), user(n).id)]))
        .with(Mutation::PutUsers(vec![user(n)]))
        .with(Mutation::AppendServerOperations {
            model: log_model(),
            operations: vec![server_operation(n)],
        })
}

/// How many batches the store holds (the log's version), checking that it holds exactly
/// batches 1..=that, each whole.
fn check_store(store: &RedbStore) -> u64 {
    use pollster::block_on as block;
    let committed = match block(store.load_model(&log_model())).unwrap() {
        None => 0,
        Some(log) => log.summary.confirmed_version.unwrap(),
    };
    let models = block(store.models()).unwrap();
    let expected_models: BTreeSet<ModelId> =
        (1..=committed).map(batch_model).chain((committed > 0).then(log_model)).collect();
    let found: BTreeSet<ModelId> = models.iter().map(|m| m.record.id.clone()).collect();
    assert_eq!(found, expected_models, "models after {committed} batches");
    let expected_subscriptions: BTreeSet<ModelId> = (1..=committed).map(batch_model).collect();
    assert_eq!(block(store.subscriptions()).unwrap(), expected_subscriptions);
    let identities = block(store.identities()).unwrap();
    assert_eq!(identities.sessions.len() as u64, committed);
    assert_eq!(identities.users.len() as u64, committed);
    for n in 1..=committed {
        let state = block(store.load_model(&batch_model(n))).unwrap().unwrap();
        assert_eq!(state.summary.record.next_element_counter, n);
        assert_eq!(state.snapshot, Some(snapshot(n)));
        assert_eq!(state.pending, pendings(1..=3));
        assert_eq!(state.creation, Some(creation(n)));
        assert_eq!(identities.sessions[&session(n)], user(n).id);
        assert_eq!(identities.users[&user(n).id], user(n));
    }
    committed
}

/// The child: commits batches after those already stored, forever, printing each number
/// after its commit returns.
#[test]
fn crash_child_entry() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = RedbStore::open(&path, &key()).unwrap();
    let mut n = check_store(&store);
    println!("\nready");
    loop {
        n += 1;
        pollster::block_on(store.commit(numbered_batch(n))).unwrap();
        println!("committed {n}");
    }
}

/// xorshift64*: a tiny deterministic generator for kill delays.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn open_after_crash(path: &Path) -> RedbStore {
    // The killed process's lock dies with it; allow the OS a moment all the same.
    let started = Instant::now();
    loop {
        match RedbStore::open(path, &key()) {
            Err(StorageError::InUse { .. }) if started.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result.unwrap(),
        }
    }
}

#[test]
fn batches_survive_sigkill_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut rng = SEED;
    let mut committed = 0;
    let mut kills_mid_loop = 0;
    let started = Instant::now();
    for kill in 0..KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child_entry", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = lines.next().expect("child exited before it was ready").unwrap();
            if line.trim_end() == "ready" {
                break;
            }
        }
        // Between 0 and 50 ms of committing, at a microsecond granularity.
        let delay = Duration::from_micros(next(&mut rng) % 50_000);
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let printed: Vec<u64> = lines
            .map_while(Result::ok)
            .filter_map(|line| line.split("committed ").nth(1).and_then(|n| n.trim().parse().ok()))
            .collect();
        let store = open_after_crash(&path);
        let now = check_store(&store);
        if let Some(&last) = printed.last() {
            kills_mid_loop += 1;
            assert!(
                last <= now,
                "kill {kill}: batch {last} was reported committed, the store has {now}"
            );
        }
        assert!(now >= committed, "kill {kill}: batches went missing");
        committed = now;
    }
    eprintln!(
        "{KILLS} kills ({kills_mid_loop} while committing), {committed} batches, {:?}",
        started.elapsed()
    );
    assert!(
        kills_mid_loop >= KILLS / 2,
        "too few kills landed while the child was committing: {kills_mid_loop}"
    );
}
