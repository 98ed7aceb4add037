//! `cargo xtask cluster`: a throwaway PostgreSQL and three `concord serve --cluster` nodes on
//! loopback, to try several nodes by hand (`docs/cluster.md`). Everything lives under
//! `target/cluster/` and is started afresh each time; Enter stops it all.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{cargo, root, run};

/// PostgreSQL's port and the nodes' ports.
const POSTGRES_PORT: u16 = 55_432;
const NODE_PORTS: [u16; 3] = [7701, 7702, 7703];

pub(crate) fn cluster() -> anyhow::Result<()> {
    run(cargo(&["build", "-p", "concord"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let concord = target.join("debug").join("concord");
    let dir = target.join("cluster");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let postgres = Postgres::start(&dir)?;
    let store = format!("postgres://concord@127.0.0.1:{POSTGRES_PORT}/concord");
    let data = dir.join("data");
    let mut nodes = Vec::new();
    for (index, port) in NODE_PORTS.iter().enumerate() {
        let name = format!("node{}", index + 1);
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new(&concord)
            .args(["serve", "--cluster", "--store", &store, "--node-name", &name])
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", concord.display()))?;
        // One at a time: the first node creates the data dir's secret, the others read it.
        wait_ready(&dir.join(format!("{name}.log")))?;
        nodes.push(Node { name, port: *port, child });
    }
    let token = Command::new(&concord)
        .args(["token", "--user", "alice", "--data-dir"])
        .arg(&data)
        .output()?;
    println!("\nPostgreSQL: {store}");
    for node in &nodes {
        let log = dir.join(format!("{}.log", node.name));
        println!(
            "{}: ws://127.0.0.1:{}/<namespace>/<domain>  (log: {})",
            node.name,
            node.port,
            log.display()
        );
    }
    println!("a token for alice: {}", String::from_utf8_lossy(&token.stdout).trim());
    println!("\nPress Enter to stop the nodes and PostgreSQL.");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    for node in &mut nodes {
        let _ = Command::new("kill").arg("-TERM").arg(node.child.id().to_string()).status();
    }
    for node in &mut nodes {
        let _ = node.child.wait();
    }
    postgres.stop()
}

struct Node {
    name: String,
    port: u16,
    child: Child,
}

/// Waits until the node logging to `log` is ready.
fn wait_ready(log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("concord server ready") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the node never got ready; its log ({}):\n{text}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
}

impl Postgres {
    fn start(dir: &Path) -> anyhow::Result<Postgres> {
        let bin = postgres_bin().context(
            "PostgreSQL was not found: install it (Debian: apt-get install postgresql) or point \
             CONCORD_POSTGRES_BIN at its bin directory",
        )?;
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let postgres = Postgres { bin, dir: dir.to_path_buf(), as_postgres };
        if as_postgres {
            // PostgreSQL refuses to run as root.
            run(command_of(Command::new("chown").arg("postgres").arg(dir)))?;
        }
        let mut initdb = postgres.command("initdb");
        initdb.args(["-A", "trust", "-U", "concord", "--no-sync", "-E", "UTF8", "-D"]);
        run(command_of(initdb.arg(dir.join("pg"))))?;
        postgres.pg_ctl("start")?;
        let mut psql = postgres.command("psql");
        psql.args(["-h", "127.0.0.1", "-U", "concord", "-d", "postgres", "-c"])
            .arg("CREATE DATABASE concord")
            .arg("-p")
            .arg(POSTGRES_PORT.to_string());
        run(command_of(&mut psql))?;
        Ok(postgres)
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
        let options =
            format!("-c listen_addresses=127.0.0.1 -p {POSTGRES_PORT} -k {}", self.dir.display());
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .args(["-w", "-t", "60", "-m", "fast", "-o", &options, "-l"])
            .arg(self.dir.join("postgres.log"))
            .arg("-D")
            .arg(self.dir.join("pg"))
            .arg(action);
        run(command_of(&mut pg_ctl))
    }

    fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl("stop")
    }
}

/// `command` taken out of its builder borrow.
fn command_of(command: &mut Command) -> Command {
    let mut owned = Command::new(command.get_program());
    owned.args(command.get_args());
    owned
}

/// PostgreSQL's bin directory: `CONCORD_POSTGRES_BIN`, `pg_config --bindir`, or the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn postgres_bin() -> Option<PathBuf> {
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
