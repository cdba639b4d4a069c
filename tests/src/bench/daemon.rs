//! A `teosd` process for the bench: its pid (for `/proc`), its log lines, the heights it has
//! processed, and how long it takes to answer `/ping`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::backend::{free_port, Bitcoind};

/// How long one expected log line or readiness may take.
const WAIT: Duration = Duration::from_secs(120);

/// A running `teosd`.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// The highest height of a `block connected` line seen so far.
    pub height: u32,
    /// Its data directory.
    pub datadir: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub api_url: String,
    /// When it was spawned.
    pub spawned: Instant,
    /// The admin API's port (gRPC, mutual TLS with the data directory's certificates).
    pub rpc_port: u16,
}

/// The `teosd` next to this executable (`target/release/teosd` when run by `scripts/bench`).
pub fn teosd_path() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().ok_or_else(|| anyhow!("no executable directory"))?.join("teosd");
    if !path.exists() {
        bail!("{} not found: build it first (cargo build --release -p teosd)", path.display());
    }
    Ok(path)
}

impl Daemon {
    /// Spawns `teosd` on `datadir` against `bitcoind`, with `extra` options, and does not wait.
    pub fn spawn(bitcoind: &Bitcoind, datadir: &Path, extra: &[&str]) -> Result<Daemon> {
        let api_port = free_port()?;
        let rpc_port = free_port()?;
        let mut cmd = Command::new(teosd_path()?);
        cmd.arg("--datadir").arg(datadir);
        cmd.args(["--btcnetwork", "regtest", "--btcrpcconnect", "127.0.0.1"]);
        cmd.args(["--btcrpcport", &bitcoind.rpc_port().to_string(), "--btcrpccookie"]).arg(bitcoind.cookie_path());
        cmd.args(["--apiport", &api_port.to_string(), "--rpcport", &rpc_port.to_string()]);
        if !extra.contains(&"--pollingdelta") {
            cmd.args(["--pollingdelta", "1"]);
        }
        // Its own metrics port: two towers of one run may be up at once.
        if !extra.contains(&"--metricsaddr") {
            cmd.args(["--metricsaddr", &format!("127.0.0.1:{}", free_port()?)]);
        }
        // The bench measures what the tower's work costs, from one client address: no per-source
        // limits, unless the caller sets its own (the attack runs).
        if !extra.contains(&"--httpmaxconnectionsperip") {
            cmd.args([
                "--httpmaxconnectionsperip",
                "0",
                "--appointmentspersecond",
                "0",
                "--registrationsperminute",
                "0",
            ]);
        }
        cmd.args(extra);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TEOS_")) {
            cmd.env_remove(key);
        }
        cmd.env("RUST_LOG", "warn,teosd=info,teosd::chain::mempool=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = cmd.spawn().context("spawning teosd")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("TEOS_BENCH_ECHO").is_some() {
                    eprintln!("teosd| {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Daemon {
            child: Some(child),
            lines,
            height: 0,
            datadir: datadir.to_path_buf(),
            api_url: format!("http://127.0.0.1:{api_port}"),
            spawned,
            rpc_port,
        })
    }

    /// Spawns it and waits until `/ping` answers.
    pub async fn start(bitcoind: &Bitcoind, datadir: &Path, extra: &[&str]) -> Result<Daemon> {
        let daemon = Daemon::spawn(bitcoind, datadir, extra)?;
        daemon.until_ping().await?;
        Ok(daemon)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Polls `/ping` every millisecond until it answers 200; returns the time since the spawn.
    pub async fn until_ping(&self) -> Result<Duration> {
        let http = reqwest::Client::new();
        let url = format!("{}/ping", self.api_url);
        loop {
            if let Ok(response) = http.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(self.spawned.elapsed());
                }
            }
            if self.spawned.elapsed() > WAIT {
                bail!("teosd did not answer /ping within {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn next_line(&mut self, deadline: Instant) -> Result<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = self.lines.recv_timeout(left).map_err(|_| anyhow!("teosd log: nothing new in time"))?;
        let tip_line = ["block connected", "Tower ready", "fresh start"].iter().any(|m| line.contains(m));
        if let Some(h) = field(&line, "height").filter(|_| tip_line) {
            self.height = self.height.max(h as u32);
        }
        Ok(line)
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for(&mut self, needle: &str) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        tokio::task::block_in_place(|| loop {
            let line = self.next_line(deadline).with_context(|| format!("waiting for `{needle}`"))?;
            if line.contains(needle) {
                return Ok(line);
            }
        })
    }

    /// Waits until it has processed the block at `height`.
    pub fn wait_height(&mut self, height: u32) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        tokio::task::block_in_place(|| {
            while self.height < height {
                self.next_line(deadline).with_context(|| format!("waiting for height {height}"))?;
            }
            Ok(())
        })
    }

    /// SIGTERM, then waits for it to exit.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
        if !killed.success() {
            bail!("kill -TERM {} failed", child.id());
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("teosd exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The numeric value of `name=` in a log line.
pub fn field(line: &str, name: &str) -> Option<f64> {
    let key = format!(" {name}=");
    let start = line.find(&key)? + key.len();
    let value: String = line[start..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    value.parse().ok()
}
