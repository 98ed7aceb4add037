//! `concord demo` runs its whole story and ends converged.

use std::process::Command;

#[test]
fn the_demo_converges() {
    let output = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["demo", "--models", "5"])
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("6/6"),
        "no sync progress to the end (5 notes and 1 creation):\n{stdout}"
    );
    assert!(stdout.trim_end().ends_with("Converged."), "{stdout}");
}

/// `concord demo --cluster` starts PostgreSQL and three nodes, and its two clients on
/// different nodes converge, also after the note's node stopped.
#[test]
fn the_cluster_demo_converges() {
    if concord_testkit::postgres::bin_dir_or_skip().is_none() {
        return;
    }
    let output = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["demo", "--cluster"])
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the cluster demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("node3: ws://127.0.0.1:"), "{stdout}");
    // Both clients' last lines show the same note: both concurrent edits once (in either
    // order), and the edits made after the handover.
    let last = |who: &str| {
        stdout
            .lines()
            .rfind(|l| l.starts_with(&format!("   {who}: ")))
            .map(|l| l.split_once(": ").map(|(_, text)| text.trim().to_owned()).unwrap_or_default())
    };
    let (alice, bob) = (last("alice").unwrap_or_default(), last("bob").unwrap_or_default());
    assert_eq!(alice, bob, "{stdout}");
    assert!(alice.starts_with("\"[moved] Agenda: ") && alice.ends_with(", demo\""), "{stdout}");
    assert_eq!(alice.matches("budget").count(), 1, "{stdout}");
    assert_eq!(alice.matches("hiring").count(), 1, "{stdout}");
    assert!(stdout.trim_end().ends_with("Converged."), "{stdout}");
}

/// Without PostgreSQL, `concord demo --cluster` says so and fails.
#[test]
fn the_cluster_demo_without_postgres_says_so() {
    let output = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["demo", "--cluster"])
        .env("CONCORD_POSTGRES_BIN", "/nonexistent")
        .output()
        .expect("the demo runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PostgreSQL was not found"), "{stderr}");
}
