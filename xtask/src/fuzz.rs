//! `cargo xtask fuzz`: builds the cargo-fuzz targets in `fuzz/` and runs them, each for a
//! wall-clock time or a CPU-time budget, optionally round after round with every target's
//! output in a log file (for long unattended runs on a shared machine).
//!
//! The toolchain: cargo-fuzz passes `-Z` flags to rustc (the sanitizer-coverage passes), so it
//! needs a nightly compiler. When rustup has a nightly toolchain it is used (unless
//! `--toolchain stable` says otherwise); otherwise the stable compiler is told to accept the
//! flags with `RUSTC_BOOTSTRAP=1`: the same LLVM coverage instrumentation, only the
//! compiler's gate lifted, which keeps coverage-guided fuzzing available where no nightly
//! can be installed (and reuses the stable build's dependencies).
//!
//! The targets are built without a sanitizer (`-s none`) and with debug assertions: the code
//! under test is safe Rust, where AddressSanitizer finds nothing a panic does not, and costs
//! about half the executions; debug assertions turn a silent integer overflow into a finding.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::{FUZZ_MANIFEST, USAGE, display, fuzz_cargo, root, run};

const DEFAULT_SECONDS: u64 = 60;

/// libFuzzer's exit status when it stops on SIGINT (`-interrupted_exitcode`).
const INTERRUPTED: i32 = 72;

/// How long a fuzzer interrupted at its CPU budget gets to exit before it is killed.
/// libFuzzer's SIGINT handler prints its statistics and then calls into malloc (it removes a
/// temporary directory), so an interrupt that lands while the fuzzer holds malloc's lock
/// deadlocks it; seen about once in a dozen two-minute rounds of `server_store_log`.
const EXIT_GRACE: Duration = Duration::from_secs(20);

/// A single input that runs this long (wall time) is a hang, which is a finding. Generous:
/// under `nice` on a busy machine the fuzzer may wait long for a CPU.
const INPUT_TIMEOUT_SECONDS: u64 = 300;

/// What `cargo xtask fuzz` was asked to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FuzzArgs {
    /// Wall-clock seconds per target and round (libFuzzer's `-max_total_time`).
    pub(crate) seconds: Option<u64>,
    /// CPU seconds per target and round, measured on the fuzzing process: on a busy
    /// machine (or under `nice`) wall time says little about how much fuzzing was done.
    pub(crate) cpu_seconds: Option<u64>,
    /// The corpus root: each target keeps its corpus in `<corpus>/<target>`.
    pub(crate) corpus: Option<PathBuf>,
    /// Where each target's output goes (`<logs>/<target>.log`, appended), with its
    /// findings in `<logs>/artifacts/<target>/`; without it, the terminal and
    /// `fuzz/artifacts/<target>/`.
    pub(crate) logs: Option<PathBuf>,
    /// Round after round over the targets until stopped, instead of once.
    pub(crate) repeat: bool,
    /// This many rounds (stopping after one with a finding), each a fresh fuzzing process:
    /// a target whose code under test keeps what it cannot safely free (a store file a panic
    /// damaged) gets its hours in bounded pieces.
    pub(crate) rounds: Option<u64>,
    /// `Some(true)`: nightly; `Some(false)`: stable with `RUSTC_BOOTSTRAP=1`; `None`:
    /// nightly when rustup has it.
    pub(crate) nightly: Option<bool>,
    pub(crate) target: Option<String>,
}

pub(crate) fn parse_args(args: &[&str]) -> anyhow::Result<FuzzArgs> {
    let mut parsed = FuzzArgs::default();
    let mut args = args.iter();
    let number = |flag: &str, value: Option<&&str>| -> anyhow::Result<u64> {
        let value = value.with_context(|| format!("{flag} needs a number"))?;
        value.parse().with_context(|| format!("{flag} {value}: not a whole number"))
    };
    while let Some(arg) = args.next() {
        match *arg {
            "--seconds" => parsed.seconds = Some(number(arg, args.next())?),
            "--cpu-seconds" => parsed.cpu_seconds = Some(number(arg, args.next())?),
            "--corpus" => {
                parsed.corpus = Some(args.next().context("--corpus needs a directory")?.into())
            }
            "--logs" => parsed.logs = Some(args.next().context("--logs needs a directory")?.into()),
            "--repeat" => parsed.repeat = true,
            "--rounds" => parsed.rounds = Some(number(arg, args.next())?.max(1)),
            "--toolchain" => {
                parsed.nightly = match args.next().copied() {
                    Some("nightly") => Some(true),
                    Some("stable") => Some(false),
                    other => bail!("--toolchain needs `nightly` or `stable`, not {other:?}"),
                }
            }
            flag if flag.starts_with('-') => bail!("unknown fuzz option `{flag}`\n\n{USAGE}"),
            name if parsed.target.is_none() => parsed.target = Some(name.to_owned()),
            extra => bail!("more than one fuzz target given (`{extra}`)\n\n{USAGE}"),
        }
    }
    if parsed.seconds.is_none() && parsed.cpu_seconds.is_none() {
        parsed.seconds = Some(DEFAULT_SECONDS);
    }
    Ok(parsed)
}

/// The fuzz targets: the `[[bin]]` entries of `fuzz/Cargo.toml`.
pub(crate) fn fuzz_targets() -> anyhow::Result<Vec<String>> {
    let path = root().join(FUZZ_MANIFEST);
    let manifest =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let targets = bin_names(&manifest);
    if targets.is_empty() {
        bail!("{} declares no [[bin]] fuzz targets", path.display());
    }
    Ok(targets)
}

/// The `name`s of the `[[bin]]` tables of a manifest.
pub(crate) fn bin_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin
            && let Some(value) = line.strip_prefix("name")
            && let Some(value) = value.trim_start().strip_prefix('=')
        {
            names.push(value.trim().trim_matches('"').to_owned());
        }
    }
    names
}

/// Whether rustup has a nightly toolchain. Asked of rustup rather than tried with
/// `cargo +nightly`, which some rustup versions answer by installing one.
fn nightly_installed() -> bool {
    let Ok(output) = Command::new("rustup").args(["toolchain", "list"]).output() else {
        return false;
    };
    output.status.success()
        && String::from_utf8_lossy(&output.stdout).lines().any(|line| line.starts_with("nightly"))
}

/// `cargo fuzz <args>` on nightly when there is one, else on stable with the `-Z` gate lifted
/// (see the module's documentation).
fn cargo_fuzz(nightly: bool, args: &[&str]) -> Command {
    let mut command = if nightly {
        fuzz_cargo(&[&["+nightly", "fuzz"][..], args].concat())
    } else {
        let mut command = fuzz_cargo(&[&["fuzz"][..], args].concat());
        command.env("RUSTC_BOOTSTRAP", "1");
        command
    };
    command.env_remove("RUSTUP_TOOLCHAIN");
    command
}

pub(crate) fn fuzz(args: &FuzzArgs) -> anyhow::Result<()> {
    let all = fuzz_targets()?;
    let targets: Vec<String> = match &args.target {
        Some(target) if all.contains(target) => vec![target.clone()],
        Some(target) => bail!("no fuzz target `{target}`; the targets are: {}", all.join(", ")),
        None => all,
    };
    if !crate::succeeds(crate::cargo(&["fuzz", "--version"])) {
        eprintln!("cargo-fuzz is not installed: installing it");
        if run(crate::cargo(&["install", "cargo-fuzz", "--locked"])).is_err() {
            eprintln!("installing with --locked failed: retrying without it");
            run(crate::cargo(&["install", "cargo-fuzz"])).context("cannot install cargo-fuzz")?;
        }
    }
    let nightly = args.nightly.unwrap_or_else(nightly_installed);
    eprintln!(
        "xtask fuzz: {}",
        if nightly {
            "on nightly"
        } else {
            "no nightly toolchain: on stable with RUSTC_BOOTSTRAP=1"
        }
    );
    // Built once, up front, and run from a copy when logging: a long run keeps fuzzing the
    // code it started with while the source tree changes under it.
    let mut binaries = Vec::new();
    for target in &targets {
        run(cargo_fuzz(nightly, &["build", "--fuzz-dir", "fuzz", "-s", "none", "-a", target]))?;
        let built = built_binary(target)?;
        let binary = match &args.logs {
            Some(logs) => {
                let copy = logs.join("bin").join(target);
                std::fs::create_dir_all(logs.join("bin"))?;
                // Replaced, not overwritten: a running copy keeps its inode.
                let _ = std::fs::remove_file(&copy);
                std::fs::copy(&built, &copy).with_context(|| {
                    format!("copying {} to {}", built.display(), copy.display())
                })?;
                copy
            }
            None => built,
        };
        binaries.push((target.clone(), binary));
    }
    let mut cpu_totals = vec![0.0_f64; binaries.len()];
    let mut round = 0_u64;
    loop {
        round += 1;
        let mut failed = Vec::new();
        for ((target, binary), total) in binaries.iter().zip(&mut cpu_totals) {
            let outcome = run_target(args, target, binary, round)?;
            *total += outcome.cpu_seconds;
            let summary = format!(
                "xtask fuzz: {target} round {round}: {} after {:.0} CPU seconds in {:.0}s \
                 (this runner's total for {target}: {:.0} CPU seconds)",
                if outcome.finding { "FINDING" } else { "no finding" },
                outcome.cpu_seconds,
                outcome.wall.as_secs_f64(),
                *total,
            );
            report(args, target, &summary)?;
            if outcome.finding {
                failed.push(target.as_str());
            }
        }
        if args.repeat {
            continue;
        }
        if !failed.is_empty() {
            let artifacts = match &args.logs {
                Some(logs) => logs.join("artifacts").display().to_string(),
                None => "fuzz/artifacts".to_owned(),
            };
            bail!(
                "fuzz targets failed: {} (inputs are in {artifacts}/<target>/; minimise \
                 one with `cargo fuzz tmin <target> <input>`)",
                failed.join(", ")
            );
        }
        if args.rounds.is_none_or(|rounds| round >= rounds) {
            eprintln!("xtask fuzz: {} ran without a finding", targets.join(", "));
            return Ok(());
        }
    }
}

/// Where `cargo fuzz build` leaves a target's binary.
fn built_binary(target: &str) -> anyhow::Result<PathBuf> {
    let dir = root().join("fuzz/target");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let candidate = entry?.path().join("release").join(target);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("cargo fuzz build left no binary for {target} under {}", dir.display())
}

/// Prints `line`, and appends it to `target`'s log when logging.
fn report(args: &FuzzArgs, target: &str, line: &str) -> anyhow::Result<()> {
    eprintln!("{line}");
    if let Some(logs) = &args.logs {
        writeln!(append(&log_path(logs, target))?, "{line}")?;
    }
    Ok(())
}

fn log_path(logs: &Path, target: &str) -> PathBuf {
    logs.join(format!("{target}.log"))
}

fn append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

struct Outcome {
    finding: bool,
    cpu_seconds: f64,
    wall: Duration,
}

/// Runs one target until its time or CPU budget is spent, or it finds something.
fn run_target(args: &FuzzArgs, target: &str, binary: &Path, round: u64) -> anyhow::Result<Outcome> {
    let corpus = args.corpus.clone().unwrap_or_else(|| root().join("fuzz/corpus")).join(target);
    let artifacts = match &args.logs {
        Some(logs) => logs.join("artifacts").join(target),
        None => root().join("fuzz/artifacts").join(target),
    };
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    if let Some(logs) = &args.logs {
        std::fs::create_dir_all(logs)?;
    }
    std::fs::create_dir_all(&artifacts)?;
    let mut command = Command::new(binary);
    command
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1");
    // Not the source tree when logging: a long run outlives a checkout that goes away.
    command.current_dir(args.logs.clone().unwrap_or_else(root));
    if let Some(seconds) = args.seconds {
        command.arg(format!("-max_total_time={seconds}"));
    }
    command.arg(&corpus);
    let started_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let header = format!(
        "==> xtask fuzz: {target} round {round} at unix time {started_at}: {} (corpus {})",
        display(&command),
        corpus.display()
    );
    eprintln!("{header}");
    if let Some(logs) = &args.logs {
        let mut log = append(&log_path(logs, target))?;
        writeln!(log, "{header}")?;
        command.stdout(log.try_clone()?).stderr(log);
    }
    let cpu_before = children_cpu_seconds()?;
    let start = Instant::now();
    let mut child =
        command.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
    let ended = watch(&mut child, args.cpu_seconds, EXIT_GRACE)?;
    let status = child.wait()?;
    // The CPU of the children this process has waited for: exactly the fuzzing process's.
    let cpu_seconds = children_cpu_seconds()? - cpu_before;
    let finding = match ended {
        Ended::Itself => !status.success(),
        Ended::Interrupted => status.code() != Some(INTERRUPTED),
        Ended::KilledAfterInterrupt => {
            let note = format!(
                "xtask fuzz: {target} round {round} did not exit within {}s of its interrupt \
                 (libFuzzer's handler deadlocked in malloc): killed, not a finding",
                EXIT_GRACE.as_secs()
            );
            report(args, target, &note)?;
            false
        }
    };
    Ok(Outcome { finding, cpu_seconds, wall: start.elapsed() })
}

/// How a fuzzing process came to an end.
enum Ended {
    /// By itself: its time was up, or it found something.
    Itself,
    /// Interrupted at its CPU budget (libFuzzer then prints its final statistics and exits).
    Interrupted,
    /// Interrupted, and killed when it did not exit in time after that.
    KilledAfterInterrupt,
}

/// Waits for `child`, interrupting it once it has used `cpu_budget` seconds of CPU, and
/// killing it if it does not exit within `grace` of that.
fn watch(child: &mut Child, cpu_budget: Option<u64>, grace: Duration) -> anyhow::Result<Ended> {
    loop {
        if child.try_wait()?.is_some() {
            return Ok(Ended::Itself);
        }
        std::thread::sleep(Duration::from_secs(2));
        let Some(budget) = cpu_budget else { continue };
        let used = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .ok()
            .and_then(|stat| cpu_seconds(&stat, 13));
        if used.is_some_and(|used| used >= budget as f64) {
            let status = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .stdout(Stdio::null())
                .status()?;
            if !status.success() {
                // It exited between the check and the signal.
                return Ok(Ended::Itself);
            }
            let interrupted_at = Instant::now();
            while child.try_wait()?.is_none() {
                if interrupted_at.elapsed() >= grace {
                    child.kill()?;
                    return Ok(Ended::KilledAfterInterrupt);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            return Ok(Ended::Interrupted);
        }
    }
}

/// The user and system CPU seconds of this process's waited-for children.
fn children_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    cpu_seconds(&stat, 15).context("/proc/self/stat has no children's CPU times")
}

/// The sum of two adjacent clock-tick fields of a `/proc/<pid>/stat` line, in seconds:
/// `first` is the 0-based index, after the command name, of utime (13: the process's own)
/// or cutime (15: its waited-for children's).
fn cpu_seconds(stat: &str, first: usize) -> Option<f64> {
    // The command name is in parentheses and may hold spaces: count fields after it.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `after_name` starts at the state, 0-based field 2.
    let user: u64 = fields.get(first - 2)?.parse().ok()?;
    let system: u64 = fields.get(first - 1)?.parse().ok()?;
    Some((user + system) as f64 / clock_ticks_per_second())
}

/// `sysconf(_SC_CLK_TCK)`, asked of `getconf` (xtask has no libc binding); 100 on Linux.
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell that reacts to SIGINT with `on_interrupt` (a trap action).
    fn shell_trapping_interrupt(on_interrupt: &str) -> Child {
        Command::new("sh")
            .args(["-c", &format!("trap '{on_interrupt}' INT; while :; do sleep 0.1; done")])
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_fuzzer_that_exits_on_its_interrupt_was_interrupted() {
        let mut child = shell_trapping_interrupt(&format!("exit {INTERRUPTED}"));
        let ended = watch(&mut child, Some(0), Duration::from_secs(30)).unwrap();
        assert!(matches!(ended, Ended::Interrupted));
        assert_eq!(child.wait().unwrap().code(), Some(INTERRUPTED));
    }

    #[test]
    fn a_fuzzer_stuck_after_its_interrupt_is_killed() {
        let mut child = shell_trapping_interrupt("");
        let ended = watch(&mut child, Some(0), Duration::from_secs(1)).unwrap();
        assert!(matches!(ended, Ended::KilledAfterInterrupt));
        assert_eq!(child.wait().unwrap().code(), None, "ended by a signal");
    }

    #[test]
    fn fuzz_targets_are_the_bins_of_the_fuzz_manifest() {
        let manifest = "[package]\nname = \"concord-fuzz\"\n\n[[bin]]\nname = \"ot_apply\"\n\
                        path = \"fuzz_targets/ot_apply.rs\"\n\n[[bin]]\nname=\"ot_tp1\"\n";
        assert_eq!(bin_names(manifest), ["ot_apply", "ot_tp1"]);
        assert!(fuzz_targets().unwrap().contains(&"ot_tp1".to_owned()));
    }

    /// The scheduled workflow's matrix names every target, so that each runs for an hour.
    #[test]
    fn the_fuzz_workflow_runs_every_target() {
        let workflow = std::fs::read_to_string(root().join(".github/workflows/fuzz.yml")).unwrap();
        let start = workflow.find("target: [").expect("a target matrix") + "target: [".len();
        let end = start + workflow[start..].find(']').expect("the matrix ends");
        let mut listed: Vec<&str> = workflow[start..end].split(',').map(str::trim).collect();
        let mut targets = fuzz_targets().unwrap();
        listed.sort_unstable();
        targets.sort_unstable();
        assert_eq!(listed, targets);
    }

    #[test]
    fn fuzz_arguments() {
        let parsed = parse_args(&[]).unwrap();
        assert_eq!(parsed, FuzzArgs { seconds: Some(60), ..FuzzArgs::default() });
        assert_eq!(
            parse_args(&["--seconds", "5", "ot_tp1"]).unwrap(),
            FuzzArgs { seconds: Some(5), target: Some("ot_tp1".to_owned()), ..FuzzArgs::default() }
        );
        assert_eq!(
            parse_args(&["--cpu-seconds", "900", "--corpus", "/c", "--logs", "/l", "--repeat"])
                .unwrap(),
            FuzzArgs {
                cpu_seconds: Some(900),
                corpus: Some("/c".into()),
                logs: Some("/l".into()),
                repeat: true,
                ..FuzzArgs::default()
            }
        );
        assert_eq!(parse_args(&["--rounds", "12"]).unwrap().rounds, Some(12));
        assert!(parse_args(&["--rounds"]).is_err());
        assert!(parse_args(&["--seconds"]).is_err());
        assert!(parse_args(&["--seconds", "x"]).is_err());
        assert!(parse_args(&["--corpus"]).is_err());
        assert_eq!(parse_args(&["--toolchain", "stable"]).unwrap().nightly, Some(false));
        assert!(parse_args(&["--toolchain", "beta"]).is_err());
        assert!(parse_args(&["--bogus"]).is_err());
        assert!(parse_args(&["a", "b"]).is_err());
    }

    #[test]
    fn cpu_seconds_from_proc_stat() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime ...
        let stat = "42 (fuzz (x) y) S 1 42 42 0 -1 4194304 10 0 0 0 250 50 700 100 20 0 1";
        let ticks = clock_ticks_per_second();
        assert_eq!(cpu_seconds(stat, 13), Some(300.0 / ticks));
        assert_eq!(cpu_seconds(stat, 15), Some(800.0 / ticks));
        assert_eq!(cpu_seconds("garbage", 13), None);
        // This process's own line parses.
        assert!(children_cpu_seconds().is_ok());
    }
}
