//! Headless Chromium driven through `driver.mjs` (node and playwright-core, which `cargo xtask
//! browser-test` installs): one command per line, one answer per line. Shared by the browser
//! tests and the IndexedDB benchmark.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub(crate) struct Browser {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Browser {
    pub(crate) fn start() -> anyhow::Result<Browser> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/driver.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("running node (cargo xtask browser-test installs the driver)")?;
        let input = child.stdin.take().context("no stdin")?;
        let output = BufReader::new(child.stdout.take().context("no stdout")?);
        Ok(Browser { child, input, output })
    }

    /// Sends one command; its answer, or an error with the page's last console lines.
    pub(crate) fn run(&mut self, command: &str) -> anyhow::Result<String> {
        writeln!(self.input, "{command}")?;
        let mut line = String::new();
        self.output.read_line(&mut line)?;
        match line.trim().split_once(' ') {
            Some(("ok", answer)) => Ok(answer.to_owned()),
            _ => {
                writeln!(self.input, "logs")?;
                let mut logs = String::new();
                self.output.read_line(&mut logs)?;
                let shown: String = command.chars().take(200).collect();
                bail!("`{shown}` failed: {}\npage logs: {}", line.trim(), logs.trim())
            }
        }
    }

    /// Runs `body`, an async JS function body, in `tab` (opened with `api`); its result.
    pub(crate) fn evaluate(&mut self, tab: &str, body: &str) -> anyhow::Result<serde_json::Value> {
        let answer = self.run(&format!("evaluate {tab} {}", serde_json::to_string(body)?))?;
        Ok(serde_json::from_str(&answer)?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver closes Chromium on `quit`, which removes the browser's profile directory;
        // killing the driver first would leave that directory behind.
        let _ = writeln!(self.input, "quit");
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
