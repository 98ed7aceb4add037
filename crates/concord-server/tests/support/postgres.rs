//! A throwaway PostgreSQL for tests: a new cluster in a temporary directory, listening on a
//! free loopback port, run as a non-root user (`postgres` when the tests run as root, since
//! PostgreSQL refuses root), with the default durability (`fsync`, `synchronous_commit`).
//! One cluster per test process, shared by the tests running in it and stopped (its
//! directory removed) when the last of them lets go; each data dir a test uses gets its own
//! database.
//!
//! The binaries come from `CONCORD_POSTGRES_BIN`, `pg_config --bindir` or
//! `/usr/lib/postgresql/<version>/bin`. Without them a test says it was skipped and passes,
//! except under `CI=true`, where it fails (`concord_testkit::postgres::bin_dir_or_skip`;
//! `.ci/run` installs PostgreSQL).

#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, Weak};

use concord_testkit::postgres::{START_ATTEMPTS, free_port, log_tail};

/// A running throwaway cluster.
#[derive(Debug)]
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Run the binaries as the `postgres` user (the tests run as root).
    as_postgres: bool,
    databases: Mutex<HashSet<String>>,
}

/// The user the tests connect as (the cluster's superuser, trust authentication).
const ROLE: &str = "concord";

static SHARED: Mutex<Weak<TestPostgres>> = Mutex::new(Weak::new());

/// The cluster of this test process, started on first use; `None` when PostgreSQL is
/// absent and the test is skipped (a panic under CI).
pub fn shared() -> Option<Arc<TestPostgres>> {
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(running) = shared.upgrade() {
        return Some(running);
    }
    let bin = concord_testkit::postgres::bin_dir_or_skip()?;
    let started = Arc::new(TestPostgres::start(bin));
    *shared = Arc::downgrade(&started);
    Some(started)
}

/// A cluster of the caller's own, for tests that restart it or kill its connections;
/// `None` when PostgreSQL is absent and the test is skipped (a panic under CI).
pub fn private() -> Option<TestPostgres> {
    let bin = concord_testkit::postgres::bin_dir_or_skip()?;
    Some(TestPostgres::start(bin))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn checked(what: &str, output: std::io::Result<Output>) -> Output {
    let output = output.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl TestPostgres {
    fn start(bin: PathBuf) -> TestPostgres {
        let dir = tempfile::Builder::new().prefix("concord-pg-").tempdir().expect("a temp dir");
        let as_postgres = is_root();
        if as_postgres {
            checked(
                "chown of the cluster's directory",
                Command::new("chown").arg("postgres").arg(dir.path()).output(),
            );
        }
        let port = free_port().expect("a free port");
        let mut cluster = TestPostgres { dir, bin, port, as_postgres, databases: Mutex::default() };
        let data = cluster.dir.path().join("data");
        checked(
            "initdb",
            cluster
                .command("initdb")
                .args(["-A", "trust", "-U", ROLE, "--no-sync", "-E", "UTF8", "-D"])
                .arg(&data)
                .output(),
        );
        // A port taken before PostgreSQL bound it is retried (`START_ATTEMPTS`).
        for _ in 1..START_ATTEMPTS {
            match cluster.try_pg_ctl("start", &[]) {
                Ok(()) => return cluster,
                Err(failure) => {
                    eprintln!("PostgreSQL did not start on port {}: {failure}", cluster.port);
                    cluster.port = free_port().expect("a free port");
                }
            }
        }
        cluster.pg_ctl("start", &[]);
        cluster
    }

    /// Runs `pg_ctl <action>` on the cluster with its options, waiting until it is done;
    /// panics with PostgreSQL's log if it fails.
    fn pg_ctl(&self, action: &str, extra: &[&str]) {
        if let Err(failure) = self.try_pg_ctl(action, extra) {
            panic!("{failure}");
        }
    }

    fn try_pg_ctl(&self, action: &str, extra: &[&str]) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        let output = self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-o", &options, "-l"])
            .arg(&log)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(extra)
            .arg(action)
            .output()
            .map_err(|e| format!("pg_ctl {action}: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "pg_ctl {action} failed: {}{}\nthe end of PostgreSQL's log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            log_tail(&log)
        ))
    }

    /// Restarts the cluster (`pg_ctl restart -m fast`: sessions are ended at once, what was
    /// committed stays).
    pub fn restart(&self) {
        self.pg_ctl("restart", &["-m", "fast"]);
    }

    /// Stops the cluster (`-m fast`) until [`start_again`](Self::start_again).
    pub fn stop(&self) {
        self.pg_ctl("stop", &["-m", "fast"]);
    }

    pub fn start_again(&self) {
        self.pg_ctl("start", &[]);
    }

    /// Ends every session connected to `database` (`pg_terminate_backend`), as an
    /// administrator or a failing network would; returns how many there were.
    pub fn terminate_connections(&self, database: &str) -> usize {
        let sql = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        );
        self.sql(&sql).parse().unwrap_or(0)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    /// Makes the cluster take TCP connections over TLS only (`ssl = on` and `hostssl` in
    /// `pg_hba.conf`, reloaded), with `certificate` and its `key` (PEM); sessions of the
    /// database `certs` must also show a client certificate that `client_ca` (PEM) signed for
    /// the user's name.
    pub fn require_tls(&self, certificate: String, key: String, client_ca: String) {
        let data = self.dir.path().join("data");
        let hba = "local all all trust\n\
                   hostssl certs all 127.0.0.1/32 cert\n\
                   hostssl all all 127.0.0.1/32 trust\n";
        let files = [
            ("server.crt", certificate),
            ("server.key", key),
            ("client-ca.crt", client_ca),
            ("pg_hba.conf", hba.to_owned()),
        ];
        for (file, contents) in files {
            let path = data.join(file);
            std::fs::write(&path, contents).expect("a file in the cluster's directory");
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("its mode");
            if self.as_postgres {
                checked("chown", Command::new("chown").arg("postgres").arg(&path).output());
            }
        }
        self.sql("ALTER SYSTEM SET ssl_ca_file = 'client-ca.crt'");
        self.sql("ALTER SYSTEM SET ssl = on");
        self.sql("SELECT pg_reload_conf()");
        // The reload is asynchronous: wait until new sessions see it.
        for _ in 0..100 {
            if self.sql("SHOW ssl") == "on" {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("PostgreSQL did not turn TLS on");
    }

    /// The URL of `database` (created on first use).
    pub fn url(&self, database: &str) -> String {
        let mut databases = self.databases.lock().unwrap_or_else(|p| p.into_inner());
        if databases.insert(database.to_owned()) {
            self.sql(&format!("CREATE DATABASE \"{database}\""));
        }
        format!("postgres://{ROLE}@127.0.0.1:{}/{database}", self.port)
    }

    /// The URL of the database standing for the data dir `dir`: one per directory, so that
    /// a server restarted on the same directory finds what it stored.
    pub fn url_for_dir(&self, dir: &Path) -> String {
        self.url(&Self::database_for_dir(dir))
    }

    /// The name of the database standing for the data dir `dir`.
    pub fn database_for_dir(dir: &Path) -> String {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        dir.hash(&mut hasher);
        format!("d{:016x}", hasher.finish())
    }

    /// Runs `sql` in the `postgres` database; panics if it fails.
    pub fn sql(&self, sql: &str) -> String {
        let output = checked(
            sql,
            Command::new(self.bin.join("psql"))
                .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
                .args(["-p", &self.port.to_string(), "-U", ROLE, "-d", "postgres", "-c", sql])
                .output(),
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Runs `sql` in `database`; panics if it fails.
    pub fn sql_in(&self, database: &str, sql: &str) -> String {
        let output = checked(
            sql,
            Command::new(self.bin.join("psql"))
                .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
                .args(["-p", &self.port.to_string(), "-U", ROLE, "-d", database, "-c", sql])
                .output(),
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// How many databases were created so far.
    pub fn databases(&self) -> usize {
        self.databases.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command("pg_ctl")
            .args(["-m", "fast", "-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("stop")
            .output();
    }
}
