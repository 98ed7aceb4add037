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
