//! Seeded multi-client scenarios against the real server hosts: concurrent edits,
//! disconnects with late and duplicated messages (an old connection's last messages may
//! arrive after the new one's first), client crashes and restarts from the store, server
//! crashes that lose what was not yet durable, idle models unloading, models created
//! offline (some under an id another client takes first) and deleted offline, and offline
//! subscriptions caught up and kept current; the engines keep their own time (heartbeats,
//! request timeouts, reconnection with backoff, attempts that fail); and more models than the
//! server lets one connection open, some held open by the application, the rest synced in
//! the background around them; and a server whose store is unreachable for a few reads at a
//! time. `CONCORD_SEEDS=N` runs N seeds, from `CONCORD_FIRST_SEED`
//! (0 unless set; `cargo xtask soak` sweeps many more).

use std::ops::Range;

use concord_testkit::sim::{Config, Stats, run, seeds};

fn sweep(config: Config, seeds: Range<u64>) -> Stats {
    let mut total = Stats::default();
    for seed in seeds {
        match run(seed, config) {
            Ok(stats) => total.add(&stats),
            Err(failure) => {
                panic!("{failure}\nreplay: concord_testkit::sim::run({seed}, {config:?})")
            }
        }
    }
    total
}

#[test]
fn replicas_converge_through_disconnects_and_crashes() {
    let total = sweep(Config::default(), seeds(200));
    // The scenarios exercised what they claim to.
    assert!(total.commits > 1000, "{total:?}");
    assert!(total.crashes > 50 && total.disconnects > 100, "{total:?}");
    assert!(total.models_created > 50 && total.creations_refused > 0, "{total:?}");
    assert!(total.models_deleted > 20, "{total:?}");
    // Some deletions named a client's own creation while another client's model held the
    // id; the server kept that model.
    assert!(total.deletions_of_other_creations > 0, "{total:?}");
    // References were shared, and at the end seen by others exactly as their owners held
    // them.
    assert!(total.reference_changes > 1000 && total.references_compared > 50, "{total:?}");
    assert!(total.subscriptions > 50 && total.downloads > 20, "{total:?}");
    assert!(total.server_crashes > 20 && total.unloads > 50, "{total:?}");
    // Snapshots and pages travelled in fragments, put back together by the clients.
    assert!(total.fragmented_messages > 40, "{total:?}");
    // The engines' own clock ran: requests timed out, reconnections backed off and failed.
    assert!(
        total.timeouts > 20 && total.reconnects > 200 && total.failed_connects > 20,
        "{total:?}"
    );
}

/// The server's store fails a few reads at a time: mostly unreachable (a database
/// restarting), and what needed them (a replica's owner, older history, a collection's
/// settings) is answered `unavailable`, the clients keeping their changes and asking again
/// until they go through; or as a store fault, answered `internal`, and a model the server
/// could not resync waits offline, still taking changes, for the next connection.
#[test]
fn replicas_converge_while_the_servers_store_fails_reads_at_times() {
    let config = Config { outage_percent: 4, ..Config::default() };
    let total = sweep(config, seeds(200));
    assert!(total.unavailable_reads > 300 && total.internal_reads > 300, "{total:?}");
    // Most failed reads were a submission's or a creation's, asked again after a backoff;
    // some were a resync's, a `ServerFault` until the next connection.
    assert!(total.server_faults > 5 && total.commits > 1000, "{total:?}");
    assert!(total.crashes > 50 && total.server_crashes > 20, "{total:?}");
}

/// A resubmission reaching the server after its commit is rare; the reference notices on
/// the wire shift which seeds meet one, so these seeds play without them.
#[test]
fn resubmissions_of_committed_changes_are_answered_once() {
    let config = Config { reference_percent: 0, ..Config::default() };
    let total = sweep(config, seeds(200));
    assert!(total.duplicates_answered > 0, "{total:?}");
}

#[test]
fn many_clients_with_large_batches_converge() {
    let config = Config::many_clients();
    let total = sweep(config, seeds(20));
    assert!(total.commits > 100, "{total:?}");
}

#[test]
fn more_models_than_the_server_allows_open_all_sync() {
    let config = Config::open_limit();
    let total = sweep(config, seeds(60));
    assert!(total.commits > 500 && total.models_created > 100, "{total:?}");
    // Engines that were not told the limit met the server's refusals and retried; the
    // scenario also restarted clients and dropped connections under it.
    assert!(total.overloaded > 20 && total.crashes > 100 && total.disconnects > 300, "{total:?}");
}
