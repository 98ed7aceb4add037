//! The load tool end to end, kept short: three clients for one second against a real server
//! process, and the convergence and durability checks must pass.

use std::process::Command;

#[test]
fn three_clients_for_one_second_converge() {
    let output = Command::new(env!("CARGO_BIN_EXE_concord-load"))
        .args(["--clients", "3", "--seconds", "1", "--warmup", "0", "--reps", "1"])
        .args(["--idle-wait", "0", "--max-other", "10000"])
        .output()
        .expect("running concord-load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "concord-load failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let row = stdout.lines().find(|l| l.starts_with("| 3 |")).expect("a table row for C = 3");
    assert!(row.ends_with("| 1/1 |"), "the run is not reported correct: {row}");
    let ops: f64 = row.split('|').nth(2).unwrap().trim().parse().expect("acked ops/s");
    assert!(ops > 0.0, "no operation acked: {row}");
}
