//! `cargo xtask cluster`: a throwaway PostgreSQL and three `concord serve --cluster` nodes on
//! loopback, to try several nodes by hand (`docs/cluster.md`). Everything lives under
//! `target/cluster/` and is started afresh each time; Enter stops it all.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{cargo, root, run};

/// The throwaway cluster of the test kit, as a file of std and anyhow only: xtask does not
/// build the workspace's crates to run.
#[allow(dead_code, unreachable_pub)]
#[path = "../../crates/concord-testkit/src/postgres.rs"]
pub(super) mod postgres;

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
    let mut postgres = postgres::ThrowawayPostgres::start(&dir, POSTGRES_PORT)?;
    let store = postgres.url();
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
