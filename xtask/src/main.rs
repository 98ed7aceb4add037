//! `xtask` is Concord's automation, run as `cargo xtask <command>` (an alias in
//! `.cargo/config.toml`).
//!
//! - `ci` runs every check CI runs, in order, stopping at the first failure: formatting,
//!   clippy, the test suite, the layering check, `concord-server` without PostgreSQL (it
//!   checks, and its tree has no tokio-postgres), the wasm32 build of the browser crates
//!   (skipped with a message if the target cannot be installed), the browser tests (see
//!   `browser-test`; when their tools are missing: a failure under `CI=true`, a skip with a
//!   message elsewhere), the fuzz crate (its targets built on stable, its saved findings
//!   replayed) and the build of the benchmarks. `.ci/run` and the GitHub workflow call
//!   exactly this.
//! - `browser-test` runs the wasm32 tests in headless Chromium (wasm-bindgen-test through
//!   chromedriver), installing what is missing first: the wasm32 target and the
//!   wasm-bindgen-cli of exactly the wasm-bindgen version in Cargo.lock. Chromium and
//!   chromedriver come from the system (`apt-get install chromium chromium-driver`).
//!   It then builds the demo page (`web`) and drives it in Chromium with playwright-core
//!   against a real server (`crates/concord-web/tests/browser.rs`).
//!   `browser-tools` only installs and checks those tools; `web` builds the browser bundle
//!   and the demo page into `target/web`, lays the bundle out as an npm-style package in
//!   `target/web/pkg`, refuses declarations that type the public API as `any`, and compiles
//!   the TypeScript example app with `tsc --strict` (TypeScript pinned, installed from npm
//!   into `target/typescript`).
//! - `fuzz` runs the cargo-fuzz targets in `fuzz/` for a wall-clock time or a CPU budget
//!   each, on nightly or on stable with `RUSTC_BOOTSTRAP=1` (see `fuzz.rs`), once or round
//!   after round, the corpus and logs where asked.
//! - `bench` runs the criterion benchmarks.
//! - `cluster` starts PostgreSQL and three `concord serve --cluster` nodes on loopback.
//! - `soak` runs the seeded multi-client and multi-node (lease) simulations over many
//!   seeds, in release.
//!
//! It is not a build system: every step is a plain cargo command, printed before it runs,
//! so a failure can be reproduced by hand. It depends on nothing but anyhow.

mod cluster;
mod fuzz;
#[cfg(test)]
mod tidy;
mod web;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci                               formatting, clippy, tests, layering check,
                                   the server without PostgreSQL, wasm32 build,
                                   browser tests, fuzz and bench builds (what CI runs)
  browser-test                     the wasm32 tests in headless Chromium, after
                                   installing the wasm32 target and wasm-bindgen-cli
  browser-tools                    only install and check what browser-test needs
  web                              build the browser bundle, the demo page and the package
                                   into target/web
  fuzz [--seconds N] [--cpu-seconds N] [--corpus DIR] [--logs DIR] [--repeat]
       [--rounds N] [--toolchain nightly|stable] [TARGET]
                                   run every fuzz target (or TARGET) for N seconds
                                   (default 60) or N CPU seconds each, on nightly (when
                                   installed) or on stable with RUSTC_BOOTSTRAP=1; the corpus in
                                   DIR/<target> (default fuzz/corpus), the output in
                                   DIR/<target>.log; --repeat: round after round; --rounds N:
                                   N rounds, each a fresh process
  bench                            run the benchmarks
  cluster                          start PostgreSQL and three cluster nodes on loopback
                                   (ports 55432 and 7701-7703), print their URLs,
                                   stop them all on Enter
  soak [--seeds N] [--from S]      run the sync simulations over N seeds per
                                   scenario from seed S, in release (default 10000
                                   from 0; a new S sweeps seeds no run has met)
  help                             print this message";

/// The crates that must stay free of I/O, so that they build and run anywhere (wasm32
/// included) and are driven with simulated time (`docs/architecture.md`); the check skips
/// those that do not exist yet.
const PURE_CRATES: [&str; 4] = ["concord-ot", "concord-protocol", "concord-sync", "concord-query"];

/// Crates that do I/O (a runtime, a store, the browser, sockets): no pure crate may depend
/// on them.
const IO_CRATES: [&str; 4] = ["tokio", "redb", "web-sys", "tungstenite"];

const DEFAULT_SOAK_SEEDS: u64 = 10_000;

/// The fuzz crate is its own workspace (excluded from the main one).
const FUZZ_MANIFEST: &str = "fuzz/Cargo.toml";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["ci"] => ci(),
        ["browser-test"] => browser_test(Missing::Fail),
        ["browser-tools"] => browser_tools().map(|tools| eprintln!("browser tools: {tools:?}")),
        ["web"] => browser_tools().and_then(|tools| web(&tools)),
        ["fuzz", rest @ ..] => fuzz::parse_args(rest).and_then(|args| fuzz::fuzz(&args)),
        ["bench"] => bench(),
        ["cluster"] => cluster::cluster(),
        ["soak", rest @ ..] => soak_args(rest).and_then(|(first, seeds)| soak(first, seeds)),
        [] | ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            return if args.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
        [_, ..] => {
            eprintln!("xtask: unknown command or arguments `{}`\n", args.join(" "));
            eprintln!("{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: xtask's manifest directory is `<root>/xtask`.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// A `cargo` command run from the workspace root. Plain `cargo` (the rustup proxy) rather
/// than `$CARGO`, so that `+nightly` and the rustfmt/clippy subcommands resolve.
fn cargo(args: &[&str]) -> Command {
    let mut command = Command::new("cargo");
    command.args(args).current_dir(root());
    command
}

/// The fuzz workspace builds into its own `fuzz/target`, whatever the caller's target dir.
fn fuzz_cargo(args: &[&str]) -> Command {
    let mut command = cargo(args);
    command.env_remove("CARGO_TARGET_DIR");
    command
}

fn display(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Runs `command` with inherited output; fails when it exits non-zero.
fn run(mut command: Command) -> anyhow::Result<()> {
    let shown = display(&command);
    eprintln!("$ {shown}");
    let status = command.status().with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `command` and captures its output, whatever its exit status.
fn capture(mut command: Command) -> anyhow::Result<Output> {
    let shown = display(&command);
    command.output().with_context(|| format!("cannot start `{shown}`"))
}

/// Whether `command` starts and exits zero, its output discarded.
fn succeeds(mut command: Command) -> bool {
    command.output().is_ok_and(|output| output.status.success())
}

// ---------------------------------------------------------------------------------------
// ci

struct Steps {
    done: Vec<(&'static str, Duration)>,
}

impl Steps {
    fn run(
        &mut self,
        name: &'static str,
        step: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        eprintln!("\n==> {name}");
        let start = Instant::now();
        let result = step();
        let elapsed = start.elapsed();
        if let Err(error) = result {
            self.summary();
            eprintln!("xtask ci: step `{name}` FAILED after {}", seconds(elapsed));
            return Err(error.context(format!("step `{name}` failed")));
        }
        self.done.push((name, elapsed));
        Ok(())
    }

    fn summary(&self) {
        eprintln!("\nxtask ci summary:");
        for (name, elapsed) in &self.done {
            eprintln!("  ok    {name:<28} {:>8}", seconds(*elapsed));
        }
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

fn ci() -> anyhow::Result<()> {
    let start = Instant::now();
    let mut steps = Steps { done: Vec::new() };
    steps.run("format", || {
        run(cargo(&["fmt", "--all", "--", "--check"]))?;
        run(fuzz_cargo(&["fmt", "--manifest-path", FUZZ_MANIFEST, "--", "--check"]))
    })?;
    steps.run("clippy", || {
        let deny = ["--all-targets", "--", "-D", "warnings"];
        run(cargo(&[&["clippy", "--workspace"][..], &deny].concat()))?;
        run(fuzz_cargo(&[&["clippy", "--manifest-path", FUZZ_MANIFEST][..], &deny].concat()))
    })?;
    steps.run("tests", tests)?;
    steps.run("doc tests", || run(cargo(&["test", "--workspace", "--doc"])))?;
    steps.run("layering", layering)?;
    steps.run("server without PostgreSQL", server_without_postgres)?;
    steps.run("wasm32 build", wasm_build)?;
    steps.run("browser tests", || {
        browser_test(if in_ci() { Missing::Fail } else { Missing::Skip })
    })?;
    steps.run("fuzz targets", || {
        // Stable builds the targets without the sanitizer flags cargo-fuzz adds; the
        // crate's tests replay the saved findings.
        run(fuzz_cargo(&["build", "--manifest-path", FUZZ_MANIFEST, "--bins"]))?;
        run(fuzz_cargo(&["test", "--manifest-path", FUZZ_MANIFEST]))
    })?;
    steps.run("benches build", || run(cargo(&["bench", "--workspace", "--no-run"])))?;
    steps.summary();
    eprintln!("xtask ci: all {} steps passed in {}", steps.done.len(), seconds(start.elapsed()));
    Ok(())
}

/// `concord-server` without its `postgres` feature, as a library user who only wants the
/// embedded store takes it: it checks (no build, to stay cheap), and its normal dependency
/// tree has no PostgreSQL client.
fn server_without_postgres() -> anyhow::Result<()> {
    run(cargo(&["check", "-p", "concord-server", "--no-default-features"]))?;
    let tree = cargo(&[
        "tree",
        "-p",
        "concord-server",
        "-e",
        "normal",
        "--no-default-features",
        "-i",
        "tokio-postgres",
    ]);
    let shown = display(&tree);
    eprintln!("$ {shown}");
    let output = capture(tree)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Nothing printed: not in the tree; "did not match": not even in Cargo.lock.
    let absent = if output.status.success() {
        stdout.trim().is_empty()
    } else {
        stderr.contains("did not match")
    };
    if !absent {
        bail!(
            "concord-server without the postgres feature still depends on tokio-postgres \
             (`{shown}`):\n{stdout}{stderr}"
        );
    }
    eprintln!("tokio-postgres is not in concord-server's tree without the postgres feature");
    Ok(())
}

/// Crates that must build for the browser without their native-only features.
const WASM_CRATES: [&str; 3] = ["concord-storage", "concord-client", "concord-web"];

const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Installs the wasm32 target if it is missing.
fn wasm_target() -> anyhow::Result<()> {
    let mut list = Command::new("rustup");
    list.args(["target", "list", "--installed"]);
    let installed = capture(list)
        .map(|output| String::from_utf8_lossy(&output.stdout).lines().any(|l| l == WASM_TARGET))
        .unwrap_or(false);
    if !installed {
        let mut add = Command::new("rustup");
        add.args(["target", "add", WASM_TARGET]);
        run(add).context("cannot install the wasm32 target")?;
    }
    Ok(())
}

/// Builds `WASM_CRATES` for wasm32, installing the target first if it is missing; skipped,
/// with a message, when it cannot be installed.
fn wasm_build() -> anyhow::Result<()> {
    if let Err(error) = wasm_target() {
        eprintln!("SKIPPED: the {WASM_TARGET} build: {error:#}");
        return Ok(());
    }
    for krate in WASM_CRATES {
        run(cargo(&["build", "-p", krate, "--target", WASM_TARGET, "--no-default-features"]))?;
    }
    // The IndexedDB backend and the browser's client exist only on wasm32: the workspace
    // clippy never sees them. The storage crate's tests run in the browser too; the
    // client's and concord-web's tests are native.
    let deny = ["--", "-D", "warnings"];
    run(cargo(
        &[
            &["clippy", "-p", "concord-storage", "--target", WASM_TARGET][..],
            &["--features", "indexeddb", "--all-targets"],
            &deny,
        ]
        .concat(),
    ))?;
    run(cargo(
        &[
            &["clippy", "-p", "concord-client", "-p", "concord-web", "--target", WASM_TARGET][..],
            &deny,
        ]
        .concat(),
    ))
}

// ---------------------------------------------------------------------------------------
// browser tests

/// The wasm32 tests that run in the browser: a package and the cargo test arguments that
/// select them.
const BROWSER_TESTS: [(&str, &[&str]); 1] =
    [("concord-storage", &["--features", "indexeddb", "--lib", "--test", "indexeddb"])];

/// What to do when the browser tools are missing and cannot be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    Fail,
    Skip,
}

/// True under CI, where a check that cannot run must fail rather than pass unseen: the
/// rule the PostgreSQL tests follow too (`concord-testkit/src/postgres.rs`).
fn in_ci() -> bool {
    cluster::postgres::in_ci()
}

/// What the browser tests run with.
#[derive(Debug)]
struct BrowserTools {
    runner: PathBuf,
    chromedriver: PathBuf,
}

/// Runs `BROWSER_TESTS` in headless Chromium. Chromium's flags (headless, no sandbox as
/// root) are in each package's `webdriver.json`, which wasm-bindgen-test-runner reads.
fn browser_test(missing: Missing) -> anyhow::Result<()> {
    let tools = match browser_tools() {
        Ok(tools) => tools,
        Err(error) if missing == Missing::Skip => {
            eprintln!("SKIPPED: the browser tests (under CI=true this fails): {error:#}");
            return Ok(());
        }
        Err(error) => return Err(error.context("the browser tests cannot run")),
    };
    // The runner stops chromedriver without closing Chromium's session, which leaves the
    // browser's profile in the temporary directory: give it one of its own, removed after.
    let scratch = std::env::temp_dir().join(format!("concord-browser-test-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let wasm_tests = || -> anyhow::Result<()> {
        for (krate, selection) in BROWSER_TESTS {
            let mut command =
                cargo(&[&["test", "-p", krate, "--target", WASM_TARGET][..], selection].concat());
            command
                .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", &tools.runner)
                .env("CHROMEDRIVER", &tools.chromedriver)
                .env("TMPDIR", &scratch);
            eprintln!(
                "  with CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER={} CHROMEDRIVER={}",
                tools.runner.display(),
                tools.chromedriver.display()
            );
            run(command)?;
        }
        Ok(())
    };
    let tested = wasm_tests();
    let _ = std::fs::remove_dir_all(&scratch);
    tested?;
    web(&tools)?;
    // The demo page in Chromium, driven by playwright-core, against a real server.
    let driver = root().join("crates/concord-web/tests/browser");
    let mut npm = Command::new("npm");
    npm.args(["ci", "--no-audit", "--no-fund"]).current_dir(&driver);
    run(npm)?;
    let mut page = cargo(&["test", "-p", "concord-web", "--test", "browser", "--", "--ignored"]);
    page.env("CONCORD_WEB_ROOT", web_root());
    run(page)
}

/// Where `cargo xtask web` puts the browser bundle and the demo page.
fn web_root() -> PathBuf {
    root().join("target/web")
}

/// Builds the browser bundle (`concord_web.js`, its wasm and TypeScript declarations) with
/// wasm-bindgen, and copies the demo page beside it, into `target/web`.
fn web(tools: &BrowserTools) -> anyhow::Result<()> {
    run(cargo(&["build", "--release", "-p", "concord-web", "--target", WASM_TARGET]))?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let wasm = target_dir.join(WASM_TARGET).join("release/concord_web.wasm");
    let out = web_root();
    let mut bindgen = Command::new(tools.runner.with_file_name("wasm-bindgen"));
    bindgen.args(["--target", "web", "--out-dir"]).arg(&out).arg(&wasm);
    run(bindgen)?;
    let page = root().join("crates/concord-web/www");
    for entry in std::fs::read_dir(&page).with_context(|| format!("reading {}", page.display()))? {
        let entry = entry?;
        std::fs::copy(entry.path(), out.join(entry.file_name()))?;
    }
    let declarations = std::fs::read_to_string(out.join("concord_web.d.ts"))?;
    web::check_declarations(&declarations)?;
    web::check_declarations(&std::fs::read_to_string(out.join("concord_tabs.d.ts"))?)?;
    let pkg = web::package(&out)?;
    web::typescript_example(&pkg)?;
    eprintln!("the page is in {}: concord serve --web-root {}", out.display(), out.display());
    eprintln!("the package is in {}: npm install {}", pkg.display(), pkg.display());
    Ok(())
}

/// Installs what is missing (the wasm32 target; wasm-bindgen-cli at the version in
/// Cargo.lock, which takes 7-12 minutes to build) and finds chromedriver and Chromium.
fn browser_tools() -> anyhow::Result<BrowserTools> {
    wasm_target()?;
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).context("reading Cargo.lock")?;
    let wanted = locked_version(&lock, "wasm-bindgen")?;
    let cargo_bin = cargo_home().join("bin");
    let installed = |cargo_bin: &Path| {
        let runner = find_program("wasm-bindgen-test-runner", &[cargo_bin.to_path_buf()])?;
        let cli = runner.with_file_name("wasm-bindgen");
        let output = Command::new(&cli).arg("--version").output().ok()?;
        let version = String::from_utf8_lossy(&output.stdout).split_whitespace().nth(1)?.to_owned();
        Some((runner, version))
    };
    let runner = match installed(&cargo_bin) {
        Some((runner, version)) if version == wanted => runner,
        found => {
            let found = found.map_or_else(|| "none".to_owned(), |(_, version)| version);
            eprintln!(
                "wasm-bindgen-cli {wanted} is needed (Cargo.lock), {found} is installed: \
                 installing it (this builds from source: 7-12 minutes on 2 cores)"
            );
            // Not `--locked`: its lock file names a crate version the registry does not serve.
            run(cargo(&["install", "wasm-bindgen-cli", "--version", &wanted]))?;
            match installed(&cargo_bin) {
                Some((runner, version)) if version == wanted => runner,
                _ => bail!(
                    "wasm-bindgen-cli {wanted} was installed but is not found in PATH or {}",
                    cargo_bin.display()
                ),
            }
        }
    };
    let chromedriver = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .filter(|path| path.is_file())
        .or_else(|| find_program("chromedriver", &[PathBuf::from("/usr/bin")]))
        .context("chromedriver not found (apt-get install chromium-driver)")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| find_program(name, &[PathBuf::from("/usr/bin")]))
        .context("Chromium not found (apt-get install chromium)")?;
    Ok(BrowserTools { runner, chromedriver })
}

/// `$CARGO_HOME`, or `~/.cargo`: where `cargo install` puts binaries.
fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
    })
}

/// The first `name` in `PATH`, then in `extra`.
fn find_program(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The one version of `package` in a Cargo.lock.
fn locked_version(lock: &str, package: &str) -> anyhow::Result<String> {
    let name = format!("name = \"{package}\"");
    let versions: Vec<&str> = lock
        .split("[[package]]")
        .filter(|block| block.lines().any(|line| line.trim() == name))
        .filter_map(|block| {
            block
                .lines()
                .find_map(|line| line.trim().strip_prefix("version = \"")?.strip_suffix('"'))
        })
        .collect();
    match versions.as_slice() {
        [version] => Ok((*version).to_owned()),
        [] => bail!("{package} is not in Cargo.lock"),
        several => bail!("Cargo.lock has several versions of {package}: {}", several.join(", ")),
    }
}

fn tests() -> anyhow::Result<()> {
    if succeeds(cargo(&["nextest", "--version"])) {
        run(cargo(&["nextest", "run", "--workspace"]))
    } else {
        eprintln!("cargo-nextest is not installed: falling back to cargo test");
        run(cargo(&["test", "--workspace"]))
    }
}

/// What `cargo tree -e normal -i <io crate> -p <pure crate>` said.
#[derive(Debug, PartialEq, Eq)]
enum TreeVerdict {
    /// The I/O crate is not in the pure crate's normal dependency graph.
    Clean,
    /// It is: the printed dependency paths.
    Violation(String),
}

/// Reads the output of `cargo tree -i <io>`. It exits non-zero with "package ID
/// specification `<io>` did not match any packages" (older cargo: "package `<io>` not
/// found") when `<io>` is not in the graph at all: that is clean. Printed dependency paths
/// are a violation; any other failure is an error.
fn tree_verdict(
    io: &str,
    success: bool,
    stdout: &str,
    stderr: &str,
) -> anyhow::Result<TreeVerdict> {
    if success {
        return Ok(if stdout.trim().is_empty() {
            TreeVerdict::Clean
        } else {
            TreeVerdict::Violation(stdout.trim_end().to_owned())
        });
    }
    let named = format!("`{io}`");
    let missing = stderr.lines().any(|line| {
        line.contains(&named)
            && (line.contains("did not match any packages") || line.contains("not found"))
    });
    if missing {
        return Ok(TreeVerdict::Clean);
    }
    bail!("cargo tree failed: {}", stderr.trim_end())
}

fn tree_check(pure: &str, io: &str) -> anyhow::Result<TreeVerdict> {
    let output = capture(cargo(&[
        "tree", "--quiet", "-e", "normal", "--target", "all", "-p", pure, "-i", io,
    ]))?;
    tree_verdict(
        io,
        output.status.success(),
        &String::from_utf8_lossy(&output.stdout),
        &String::from_utf8_lossy(&output.stderr),
    )
    .with_context(|| format!("checking whether {pure} depends on {io}"))
}

/// The layering rule: the pure crates depend on no I/O crate, on any target.
/// Dev-dependencies are not counted (`-e normal`).
fn layering() -> anyhow::Result<()> {
    let root = root();
    let present: Vec<&str> = PURE_CRATES
        .into_iter()
        .filter(|name| root.join("crates").join(name).join("Cargo.toml").is_file())
        .collect();
    let mut violations = Vec::new();
    for pure in &present {
        for io in IO_CRATES {
            eprintln!("$ cargo tree -e normal --target all -p {pure} -i {io}");
            if let TreeVerdict::Violation(paths) = tree_check(pure, io)? {
                violations.push(format!("{pure} depends on {io}:\n{paths}"));
            }
        }
    }
    if !violations.is_empty() {
        bail!("layering violated (the pure crates must not do I/O):\n{}", violations.join("\n"));
    }
    let skipped: Vec<&str> =
        PURE_CRATES.into_iter().filter(|name| !present.contains(name)).collect();
    eprintln!(
        "layering: {} free of {}{}",
        present.join(", "),
        IO_CRATES.join(", "),
        if skipped.is_empty() {
            String::new()
        } else {
            format!(" (not in the workspace yet: {})", skipped.join(", "))
        }
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bench

fn bench() -> anyhow::Result<()> {
    run(cargo(&["bench", "--workspace"]))
}

// ---------------------------------------------------------------------------------------
// soak

/// `[--seeds N] [--from S]`, in any order: the first seed and how many.
fn soak_args(args: &[&str]) -> anyhow::Result<(u64, u64)> {
    let (mut first, mut seeds) = (0, DEFAULT_SOAK_SEEDS);
    let mut args = args.iter();
    while let Some(&flag) = args.next() {
        let target = match flag {
            "--seeds" => &mut seeds,
            "--from" => &mut first,
            _ => bail!("soak: unknown argument `{flag}`"),
        };
        let value = args.next().with_context(|| format!("{flag}: needs a number"))?;
        *target = value.parse().with_context(|| format!("{flag} {value}: not a whole number"))?;
    }
    Ok((first, seeds))
}

/// The simulation tests read the first seed from `CONCORD_FIRST_SEED` and the count from
/// `CONCORD_SEEDS`; a failure names its seed.
fn soak(first: u64, seeds: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut command = cargo(&[
        "test",
        "--release",
        "-p",
        "concord-testkit",
        "--test",
        "simulation",
        "--test",
        "lease_simulation",
    ]);
    command.env("CONCORD_FIRST_SEED", first.to_string()).env("CONCORD_SEEDS", seeds.to_string());
    run(command)?;
    let last = first + seeds.saturating_sub(1);
    eprintln!(
        "xtask soak: seeds {first}..={last} of each scenario passed in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soak_arguments_in_any_order() {
        assert_eq!(soak_args(&[]).unwrap(), (0, DEFAULT_SOAK_SEEDS));
        assert_eq!(soak_args(&["--from", "7", "--seeds", "3"]).unwrap(), (7, 3));
        assert_eq!(soak_args(&["--seeds", "3"]).unwrap(), (0, 3));
        assert!(soak_args(&["--seeds"]).is_err());
        assert!(soak_args(&["--from", "-1"]).is_err());
        assert!(soak_args(&["--rounds", "2"]).is_err());
    }

    #[test]
    fn tree_output_with_paths_is_a_violation() {
        let stdout = "tokio v1.54.1\n└── concord-ot v0.0.0 (/w/crates/concord-ot)\n";
        let verdict = tree_verdict("tokio", true, stdout, "").unwrap();
        assert!(matches!(verdict, TreeVerdict::Violation(paths) if paths.contains("concord-ot")));
    }

    #[test]
    fn package_missing_from_the_graph_is_clean() {
        let stderr = "error: package ID specification `tokio` did not match any packages\n";
        assert_eq!(tree_verdict("tokio", false, "", stderr).unwrap(), TreeVerdict::Clean);
        let stderr = "error: package `tokio` not found\n";
        assert_eq!(tree_verdict("tokio", false, "", stderr).unwrap(), TreeVerdict::Clean);
        assert_eq!(tree_verdict("tokio", true, "\n", "").unwrap(), TreeVerdict::Clean);
    }

    #[test]
    fn other_cargo_tree_failures_are_errors() {
        let stderr = "error: failed to parse manifest at `/w/Cargo.toml`\n";
        assert!(tree_verdict("tokio", false, "", stderr).is_err());
        // A missing package that is not the one asked about is not a clean result.
        let stderr = "error: package ID specification `concord-x` did not match any packages\n";
        assert!(tree_verdict("tokio", false, "", stderr).is_err());
    }

    /// Runs the real `cargo tree` both ways: concord-ot does depend on serde (so the check
    /// reports paths) and does not depend on tokio.
    #[test]
    fn tree_check_against_the_real_workspace() {
        let verdict = tree_check("concord-ot", "serde").unwrap();
        assert!(
            matches!(&verdict, TreeVerdict::Violation(paths) if paths.contains("concord-ot")),
            "{verdict:?}"
        );
        assert_eq!(tree_check("concord-ot", "tokio").unwrap(), TreeVerdict::Clean);
        assert_eq!(tree_check("concord-ot", "no-such-crate-anywhere").unwrap(), TreeVerdict::Clean);
    }

    #[test]
    fn locked_versions() {
        let lock = "version = 4\n\n[[package]]\nname = \"wasm-bindgen\"\nversion = \"0.2.1\"\n\
                    source = \"registry\"\n\n[[package]]\nname = \"wasm-bindgen-macro\"\n\
                    version = \"0.2.9\"\n";
        assert_eq!(locked_version(lock, "wasm-bindgen").unwrap(), "0.2.1");
        assert!(locked_version(lock, "web-sys").is_err());
        let twice = format!("{lock}\n[[package]]\nname = \"wasm-bindgen\"\nversion = \"0.2.2\"\n");
        assert!(locked_version(&twice, "wasm-bindgen").is_err());
    }

    /// The workspace pins wasm-bindgen with `=` to the version in Cargo.lock, which is the
    /// wasm-bindgen-cli that `browser-test` installs.
    #[test]
    fn wasm_bindgen_is_pinned_to_the_locked_version() {
        let lock = std::fs::read_to_string(root().join("Cargo.lock")).unwrap();
        let locked = locked_version(&lock, "wasm-bindgen").unwrap();
        let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
        let pin = format!("wasm-bindgen = \"={locked}\"");
        assert!(manifest.lines().any(|line| line.trim() == pin), "Cargo.toml lacks `{pin}`");
    }
}
