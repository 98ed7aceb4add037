//! A throwaway PostgreSQL cluster started from the installed binaries, for tools that run
//! several nodes on one database by hand or in a measurement: `cargo xtask cluster`,
//! `concord demo --cluster` and `concord-cluster` (the tests keep their own shared cluster,
//! `crates/concord-server/tests/support/postgres.rs`). It listens on 127.0.0.1 at the port
//! given, runs as the `postgres` user when started as root (PostgreSQL refuses root), has
//! one database, `concord`, owned by the superuser `concord` (trust authentication), and
//! keeps PostgreSQL's default durability. Dropping it stops it.
//!
//! It also decides what a test that needs PostgreSQL does when it is not installed
//! ([`bin_dir_or_skip`]): skip, saying so, unless under CI, where it fails.
//!
//! Only std and anyhow: xtask includes this file as it is.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// A running cluster, stopped when dropped.
#[derive(Debug)]
pub struct ThrowawayPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    stopped: bool,
}

impl ThrowawayPostgres {
    /// A new cluster in `dir/pg` (its log in `dir/postgres.log`), listening on `port` (0: a
    /// free one), with the database `concord`. A clear error when PostgreSQL is not
    /// installed.
    pub fn start(dir: &Path, port: u16) -> anyhow::Result<ThrowawayPostgres> {
        let bin = bin_dir().context(
            "PostgreSQL was not found: install it (Debian: apt-get install postgresql) or point \
             CONCORD_POSTGRES_BIN at its bin directory",
        )?;
        let any_port = port == 0;
        let port = if any_port { free_port()? } else { port };
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        std::fs::create_dir_all(dir)?;
        let mut postgres =
            ThrowawayPostgres { bin, dir: dir.to_path_buf(), port, as_postgres, stopped: true };
        if as_postgres {
            checked(Command::new("chown").arg("postgres").arg(dir), "chown")?;
        }
        let mut initdb = postgres.command("initdb");
        initdb.args(["-A", "trust", "-U", "concord", "--no-sync", "-E", "UTF8", "-D"]);
        checked(initdb.arg(dir.join("pg")), "initdb")?;
        // When any port will do, a port taken before PostgreSQL bound it is retried.
        let mut attempts = if any_port { START_ATTEMPTS } else { 1 };
        while let Err(error) = postgres.pg_ctl("start") {
            attempts -= 1;
            if attempts == 0 {
                return Err(error);
            }
            postgres.port = free_port()?;
        }
        postgres.stopped = false;
        let mut psql = postgres.command("psql");
        psql.args(["-h", "127.0.0.1", "-U", "concord", "-d", "postgres", "-c"])
            .arg("CREATE DATABASE concord")
            .arg("-p")
            .arg(postgres.port.to_string());
        checked(&mut psql, "CREATE DATABASE")?;
        Ok(postgres)
    }

    /// The store URL of the `concord` database, for `concord serve --store`.
    pub fn url(&self) -> String {
        format!("postgres://concord@127.0.0.1:{}/concord", self.port)
    }

    /// Runs `sql` in the `concord` database; what it printed, unaligned, trimmed.
    pub fn sql(&self, sql: &str) -> anyhow::Result<String> {
        let output = self
            .command("psql")
            .args(["-h", "127.0.0.1", "-U", "concord", "-d", "concord", "-tA", "-p"])
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .output()
            .context("running psql")?;
        if !output.status.success() {
            bail!("{sql}: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the cluster (fast: sessions end, what was committed stays).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if std::mem::replace(&mut self.stopped, true) {
            return Ok(());
        }
        self.pg_ctl("stop")
    }

    /// Starts the cluster again after [`stop`](Self::stop), on the same port, with what it
    /// had committed.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if !self.stopped {
            return Ok(());
        }
        self.pg_ctl("start")?;
        self.stopped = false;
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(self.bin.join(program));
            command
        } else {
            Command::new(self.bin.join(program))
        }
    }

    fn pg_ctl(&self, action: &str) -> anyhow::Result<()> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .args(["-w", "-t", "60", "-m", "fast", "-o", &options, "-l"])
            .arg(self.dir.join("postgres.log"))
            .arg("-D")
            .arg(self.dir.join("pg"))
            .arg(action);
        checked(&mut pg_ctl, &format!("pg_ctl {action}")).map_err(|error| {
            let tail = log_tail(&self.dir.join("postgres.log"));
            error.context(format!("the end of PostgreSQL's log:\n{tail}"))
        })
    }
}

/// How many free ports a cluster that may listen on any port tries: a port read as free
/// may be taken by another process (any outgoing loopback connection takes one from the
/// same range) before PostgreSQL binds it, and PostgreSQL then exits at once.
pub const START_ATTEMPTS: usize = 5;

/// A free loopback port: bound, read, released (PostgreSQL binds it a moment later).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The last lines of PostgreSQL's log at `path`, for a failure to say why.
pub fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"));
    let mut tail: Vec<&str> = log.lines().rev().take(20).collect();
    tail.reverse();
    tail.join("\n")
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn checked(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// True under CI (`CI` set to anything but empty, `0` or `false`), where a check that
/// cannot run must fail rather than pass unseen.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// PostgreSQL's bin directory for a test that needs it ([`bin_dir`]). When PostgreSQL is
/// not installed: `None` after a `skipped: …` line on stderr, or, under CI ([`in_ci`]), a
/// panic saying how to install it, so that CI never passes without running the test.
pub fn bin_dir_or_skip() -> Option<PathBuf> {
    if let Some(bin) = bin_dir() {
        return Some(bin);
    }
    let thread = std::thread::current();
    let test = thread.name().filter(|name| *name != "main").unwrap_or("this test");
    let fix = "install it (Debian: apt-get install postgresql) or point CONCORD_POSTGRES_BIN \
               at its bin directory";
    if in_ci() {
        panic!("{test} needs PostgreSQL, which was not found (CI is set, so it fails): {fix}");
    }
    eprintln!("skipped: {test}: PostgreSQL was not found (under CI=true this fails): {fix}");
    None
}

/// PostgreSQL's bin directory: `CONCORD_POSTGRES_BIN`, `pg_config --bindir`, or the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn bin_dir() -> Option<PathBuf> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("CONCORD_POSTGRES_BIN") {
        return Some(PathBuf::from(dir)).filter(|d| has_initdb(d));
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_initdb(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let version = path.file_name()?.to_string_lossy().parse().ok()?;
            Some((version, path.join("bin")))
        })
        .filter(|(_, dir)| has_initdb(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}
