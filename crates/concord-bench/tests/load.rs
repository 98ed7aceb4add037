//! The load tool end to end, kept short: three clients for one second against a real server
//! process, without and with shared cursors, and the convergence and durability checks must
//! pass.

use std::path::Path;
use std::process::Command;

/// Makes sure the `concord` binary the load tool runs is where the tool looks for it, beside
/// the tool: a test of this package gets only this package's binaries built. A workspace run
/// (`cargo nextest run --workspace`, CI) has built it in the same build; when it is missing
/// (this package tested alone on a fresh target directory), cargo builds it. It is not
/// rebuilt when present, because a build with this package's features alone could differ
/// from the workspace's and replace the binary under the `concord` crate's running tests.
fn ensure_concord(tool: &Path) {
    if tool.with_file_name("concord").is_file() {
        return;
    }
    let profile_dir = tool.parent().expect("the tool is in a profile directory");
    let target_dir = profile_dir.parent().expect("the profile directory is in a target directory");
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => "dev",
        Some(name) => name,
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "concord", "--bin", "concord", "--profile", profile])
        .arg("--manifest-path")
        .arg(workspace)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("running cargo");
    assert!(status.success(), "building the concord binary failed");
    assert!(tool.with_file_name("concord").is_file(), "cargo put concord elsewhere");
}

#[test]
fn three_clients_for_one_second_converge() {
    let tool = Path::new(env!("CARGO_BIN_EXE_concord-load"));
    ensure_concord(tool);
    let output = Command::new(tool)
        .args(["--clients", "3", "--seconds", "1", "--warmup", "0", "--reps", "1"])
        .args(["--cursors", "off,on"])
        .args(["--idle-wait", "0", "--max-other", "10000"])
        .env_remove("CONCORD_BIN")
        .output()
        .expect("running concord-load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "concord-load failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    for cursors in ["off", "on"] {
        let prefix = format!("| 3 | {cursors} |");
        let row = stdout.lines().find(|l| l.starts_with(&prefix)).expect("a table row");
        assert!(row.ends_with("| 1/1 |"), "the run is not reported correct: {row}");
        let ops: f64 = row.split('|').nth(3).unwrap().trim().parse().expect("acked ops/s");
        assert!(ops > 0.0, "no operation acked: {row}");
    }
}
