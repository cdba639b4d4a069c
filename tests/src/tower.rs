//! Runs the real `teosd` binary against a [`Bitcoind`] and talks to it as a Lightning client
//! would (over HTTP, with signed requests) and as its operator would (`teos-cli`). Progress is
//! asked of the tower itself wherever it answers (`get_appointment`, `teos-cli`), polled until it
//! holds or a deadline passes; the log is read only for what no API shows (start-up, shutdown,
//! timings). Never guessed with sleeps.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{Transaction, Txid};
use serde_json::{json, Value};
use teosd::protocol::{encrypt_penalty, sign_message, Appointment, Locator};

use crate::backend::{free_port, Bitcoind};

/// A regtest node with 101 blocks mined (mature coins to spend, in `funding`) and a tower with
/// `extra` options following it from a fresh data directory in `dir`.
#[derive(Debug)]
pub struct Fixture {
    pub bitcoind: Bitcoind,
    pub funding: crate::wallet::Funding,
    pub tower: TowerProcess,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub async fn start(extra: &[&str]) -> Fixture {
        let bitcoind = Bitcoind::start().await.expect("bitcoind");
        let mut funding = crate::wallet::Funding::new();
        funding.mine(&bitcoind, 101).await.expect("mining");
        let dir = tempfile::tempdir().expect("tempdir");
        let tower = TowerProcess::start(&bitcoind, &dir.path().join("teos"), extra);
        Fixture { bitcoind, funding, tower, dir }
    }
}

/// How long to wait for one expected log line.
pub const LOG_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding the workspace's binaries (`target/<profile>`), building `teosd` and
/// `teos-cli` first if a test runs before they exist.
pub fn binaries_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let parent = exe.parent().expect("executable directory");
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    let dir = if parent.ends_with("deps") { parent.parent().unwrap_or(parent) } else { parent }.to_path_buf();
    if !dir.join("teosd").exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "teosd", "-p", "teos-cli"])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building teosd failed");
    }
    dir
}

/// `teos-cli`, built first if a test runs before it exists.
pub fn teos_cli_path() -> PathBuf {
    let path = binaries_dir().join("teos-cli");
    if !path.exists() {
        let status =
            Command::new(env!("CARGO")).args(["build", "-p", "teos-cli"]).status().expect("running cargo build");
        assert!(status.success(), "building teos-cli failed");
    }
    path
}

/// Runs `teos-cli --datadir <datadir> --rpcport <port> <args>`.
pub async fn teos_cli(datadir: &Path, rpc_port: u16, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(teos_cli_path());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TEOS_")) {
        cmd.env_remove(key);
    }
    cmd.arg("--datadir").arg(datadir).args(["--rpcport", &rpc_port.to_string()]).args(args);
    cmd.stdin(Stdio::null()).output().await.expect("running teos-cli")
}

/// Stdout parsed as JSON, after checking the command succeeded quietly.
pub fn cli_json(output: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}: {stderr}", output.status.code());
    assert!(stderr.is_empty(), "{stderr}");
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

/// How often [`eventually`] asks again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Asks `check` until it answers `Some`, and returns that; panics naming `what` if it has not
/// after [`LOG_TIMEOUT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + LOG_TIMEOUT;
    loop {
        if let Some(answer) = check().await {
            return answer;
        }
        assert!(Instant::now() < deadline, "the tower never got to: {what}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A running `teosd`.
#[derive(Debug)]
pub struct TowerProcess {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// Its data directory.
    pub datadir: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub api_url: String,
    /// The admin gRPC port.
    pub rpc_port: u16,
    /// `http://127.0.0.1:<port>/metrics` (`None` if the test sets `--metricsaddr` itself).
    pub metrics_url: Option<String>,
    metrics_port: u16,
    api_port: u16,
    extra: Vec<String>,
    bitcoind_port: u16,
    cookie: PathBuf,
}

impl TowerProcess {
    /// Starts `teosd` on free ports with `datadir`, waiting for "Tower ready".
    pub fn start(bitcoind: &Bitcoind, datadir: &Path, extra: &[&str]) -> TowerProcess {
        let mut tower = TowerProcess::launch(bitcoind, datadir, extra);
        tower.wait_for("Tower ready");
        tower
    }

    /// Starts `teosd` without waiting for it to be ready.
    pub fn launch(bitcoind: &Bitcoind, datadir: &Path, extra: &[&str]) -> TowerProcess {
        let api_port = free_port().expect("free port");
        let rpc_port = free_port().expect("free port");
        let metrics_port = free_port().expect("free port");
        let own_metrics = extra.contains(&"--metricsaddr");
        let mut tower = TowerProcess {
            child: None,
            lines: mpsc::channel().1,
            seen: Vec::new(),
            datadir: datadir.to_path_buf(),
            api_url: format!("http://127.0.0.1:{api_port}"),
            rpc_port,
            metrics_url: (!own_metrics).then(|| format!("http://127.0.0.1:{metrics_port}/metrics")),
            metrics_port,
            api_port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            bitcoind_port: bitcoind.rpc_port(),
            cookie: bitcoind.cookie_path(),
        };
        tower.spawn();
        tower
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binaries_dir().join("teosd"));
        cmd.arg("--datadir").arg(&self.datadir);
        cmd.args(["--btcnetwork", "regtest", "--btcrpcconnect", "127.0.0.1"]);
        cmd.args(["--btcrpcport", &self.bitcoind_port.to_string(), "--btcrpccookie"]).arg(&self.cookie);
        cmd.args(["--apiport", &self.api_port.to_string(), "--rpcport", &self.rpc_port.to_string()]);
        // Each tower its own metrics port (the default one would be shared by parallel tests).
        if self.metrics_url.is_some() {
            cmd.args(["--metricsaddr", &format!("127.0.0.1:{}", self.metrics_port)]);
        }
        // Poll every second unless the test sets its own pace.
        if !self.extra.iter().any(|arg| arg == "--pollingdelta") {
            cmd.args(["--pollingdelta", "1"]);
        }
        cmd.args(&self.extra);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TEOS_")) {
            cmd.env_remove(key);
        }
        cmd.env("RUST_LOG", "warn,teosd=debug").stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning teosd");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("TEOS_TEST_ECHO").is_some() {
                    eprintln!("teosd| {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.child = Some(child);
        self.lines = rx;
    }

    /// Waits for a log line containing `needle` (after the ones already consumed) and returns it.
    /// Inside a multi-threaded tokio runtime the wait leaves the other workers running (the
    /// in-process regtest node keeps serving).
    pub fn wait_for(&mut self, needle: &str) -> String {
        if tokio::runtime::Handle::try_current().is_ok() {
            return tokio::task::block_in_place(|| self.wait_for_blocking(needle));
        }
        self.wait_for_blocking(needle)
    }

    fn wait_for_blocking(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LOG_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("teosd never logged `{needle}`; last lines:\n{}", self.tail()),
            }
        }
    }

    /// The last log lines, for failure messages.
    pub fn tail(&self) -> String {
        let start = self.seen.len().saturating_sub(40);
        self.seen[start..].join("\n")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("teosd is running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
        assert!(status.success());
        let status = child.wait().expect("waiting for teosd");
        self.seen.extend(self.lines.try_iter());
        status
    }

    /// Waits for it to exit by itself (within [`LOG_TIMEOUT`]) and returns its status.
    pub fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("teosd is running");
        let deadline = Instant::now() + LOG_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for teosd") {
                self.seen.extend(self.lines.try_iter());
                return status;
            }
            assert!(Instant::now() < deadline, "teosd did not exit; last lines:\n{}", self.tail());
            // Draining the log meanwhile; a line arriving ends the wait early.
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(line);
            }
        }
    }

    /// Kills it with SIGKILL, as a crash or power cut would.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("teosd is running");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    /// Starts it again with the same data directory, ports and options; waits for readiness.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_for("Tower ready");
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Every log line read so far.
    pub fn tail_all(&mut self) -> &[String] {
        self.seen.extend(self.lines.try_iter());
        &self.seen
    }

    /// `teos-cli <args>` against this tower, which must succeed; its JSON output.
    pub async fn cli(&self, args: &[&str]) -> Value {
        cli_json(&teos_cli(&self.datadir, self.rpc_port, args).await)
    }

    /// `teos-cli gettowerinfo`.
    pub async fn info(&self) -> Value {
        self.cli(&["gettowerinfo"]).await
    }

    /// `GET /health`: the status code and the report.
    pub async fn health(&self) -> (u16, Value) {
        let response = reqwest::get(format!("{}/health", self.api_url)).await.expect("tower answers /health");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the tower has processed the block at `height`.
    pub async fn wait_for_height(&self, height: u32) {
        eventually(&format!("height {height}"), || async {
            (self.info().await["tip_height"].as_u64() >= Some(u64::from(height))).then_some(())
        })
        .await
    }

    /// Waits until `teos-cli gettowerinfo` reports bitcoind as `reachable`.
    pub async fn wait_for_bitcoind_reachable(&self, reachable: bool) {
        eventually(&format!("bitcoind_reachable = {reachable}"), || async {
            (self.info().await["bitcoind_reachable"] == reachable).then_some(())
        })
        .await
    }

    /// The tracker of `user_id` at the locator of `dispute_txid`, as `teos-cli getappointments`
    /// shows it (`status`, `status_height`, ...), if the appointment was triggered.
    pub async fn tracker(&self, dispute_txid: &Txid, user_id: &str) -> Option<Value> {
        let locator = Locator::from_txid(dispute_txid).to_string();
        let listed = self.cli(&["getappointments", &locator]).await;
        let entries = listed["appointments"].as_array().cloned().unwrap_or_default();
        entries.into_iter().find(|e| e["user_id"] == user_id && e.get("penalty_txid").is_some())
    }

    /// Waits until that tracker's status is `status` (`broadcast` or `confirmed`); returns it.
    pub async fn wait_for_tracker(&self, dispute_txid: &Txid, user_id: &str, status: &str) -> Value {
        eventually(&format!("tracker of {dispute_txid} {status}"), || async {
            self.tracker(dispute_txid, user_id).await.filter(|t| t["status"] == status)
        })
        .await
    }

    /// Whether the log so far contains `needle`.
    pub fn logged(&mut self, needle: &str) -> bool {
        self.seen.extend(self.lines.try_iter());
        self.seen.iter().any(|l| l.contains(needle))
    }
}

impl Drop for TowerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Lightning user of the tower.
#[derive(Debug, Clone)]
pub struct TowerUser {
    secret: SecretKey,
    /// Hex of its compressed public key.
    pub user_id: String,
    http: reqwest::Client,
    api_url: String,
}

impl TowerUser {
    /// A user with the secret key `[seed; 32]`.
    pub fn new(seed: u8, api_url: &str) -> TowerUser {
        let secret = SecretKey::from_slice(&[seed; 32]).expect("valid key");
        let user_id = PublicKey::from_secret_key(&Secp256k1::new(), &secret).to_string();
        TowerUser { secret, user_id, http: reqwest::Client::new(), api_url: api_url.to_string() }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.try_post(path, body).await.expect("tower answers")
    }

    /// POSTs any JSON `body` to `path` (for requests no client would make).
    pub async fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        self.post(path, body).await
    }

    async fn try_post(&self, path: &str, body: Value) -> Result<(u16, Value), reqwest::Error> {
        let response = self.http.post(format!("{}{path}", self.api_url)).json(&body).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// `POST /register`.
    pub async fn register(&self) -> (u16, Value) {
        self.post("/register", json!({ "user_id": self.user_id })).await
    }

    /// `POST /add_appointment` for `penalty` of the dispute `dispute_txid`.
    pub async fn add_appointment(&self, dispute_txid: &Txid, penalty: &Transaction) -> (u16, Value) {
        self.try_add_appointment(dispute_txid, penalty).await.expect("tower answers")
    }

    /// Like [`TowerUser::add_appointment`], but a connection failure is returned, not a panic.
    pub async fn try_add_appointment(
        &self,
        dispute_txid: &Txid,
        penalty: &Transaction,
    ) -> Result<(u16, Value), reqwest::Error> {
        self.try_add_appointment_delayed(dispute_txid, penalty, 42).await
    }

    /// `POST /add_appointment` with this `to_self_delay` (CLN's plugin always says 42).
    pub async fn try_add_appointment_delayed(
        &self,
        dispute_txid: &Txid,
        penalty: &Transaction,
        to_self_delay: u32,
    ) -> Result<(u16, Value), reqwest::Error> {
        self.try_send(Appointment {
            locator: Locator::from_txid(dispute_txid),
            encrypted_blob: encrypt_penalty(penalty, dispute_txid),
            to_self_delay,
        })
        .await
    }

    /// `POST /add_appointment` of `blob` at `locator` (any bytes: the tower cannot tell until a
    /// dispute with that locator is mined).
    pub async fn try_add_blob(&self, locator: Locator, blob: Vec<u8>) -> Result<(u16, Value), reqwest::Error> {
        self.try_send(Appointment { locator, encrypted_blob: blob, to_self_delay: 42 }).await
    }

    /// `POST /add_appointment` of `appointment`, signed by this user.
    async fn try_send(&self, appointment: Appointment) -> Result<(u16, Value), reqwest::Error> {
        let signature = sign_message(&appointment.signed_bytes(), &self.secret);
        let body = json!({"appointment": {
            "locator": appointment.locator.to_string(),
            "encrypted_blob": hex::encode(&appointment.encrypted_blob),
            "to_self_delay": appointment.to_self_delay}, "signature": signature});
        self.try_post("/add_appointment", body).await
    }

    /// `POST /get_appointment` for the dispute `dispute_txid`.
    pub async fn get_appointment(&self, dispute_txid: &Txid) -> (u16, Value) {
        let locator = Locator::from_txid(dispute_txid).to_string();
        let signature = sign_message(format!("get appointment {locator}").as_bytes(), &self.secret);
        self.post("/get_appointment", json!({"locator": locator, "signature": signature})).await
    }

    /// Waits until `get_appointment` for `dispute_txid` answers `status` (HTTP 200); returns the
    /// body.
    pub async fn wait_for_status(&self, dispute_txid: &Txid, status: &str) -> Value {
        eventually(&format!("appointment of {dispute_txid} {status}"), || async {
            let (code, body) = self.get_appointment(dispute_txid).await;
            (code == 200 && body["status"] == status).then_some(body)
        })
        .await
    }

    /// Waits until `get_appointment` for `dispute_txid` answers 404 (the tracker completed).
    pub async fn wait_until_gone(&self, dispute_txid: &Txid) {
        eventually(&format!("appointment of {dispute_txid} gone"), || async {
            (self.get_appointment(dispute_txid).await.0 == 404).then_some(())
        })
        .await
    }

    /// `POST /get_subscription_info`.
    pub async fn subscription_info(&self) -> (u16, Value) {
        let signature = sign_message(b"get subscription info", &self.secret);
        self.post("/get_subscription_info", json!({ "signature": signature })).await
    }
}
