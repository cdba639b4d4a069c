//! The `teos-regtest-node` binary: prints its RPC URL and cookie, serves, stops on the `stop` RPC
//! or SIGTERM, and finds its chain again on the same datadir.

mod common;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use common::bounded;
use teos_tests::rpc_client::RpcClient;
use teos_tests::wallet;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

struct Running {
    child: Child,
    url: String,
    cookie: PathBuf,
}

/// Starts the binary on a free port and reads what it prints.
async fn spawn(datadir: &Path) -> anyhow::Result<Running> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_teos-regtest-node"))
        .args(["--port", "0", "--datadir"])
        .arg(datadir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut url, mut cookie) = (None, None);
    loop {
        let line =
            lines.next_line().await?.ok_or_else(|| anyhow::anyhow!("the node exited before printing its URL"))?;
        if let Some(u) = line.strip_prefix("rpc url: ") {
            url = Some(u.to_string());
        } else if let Some(c) = line.strip_prefix("cookie: ") {
            cookie = Some(PathBuf::from(c));
        } else if line.starts_with("tip: ") {
            break;
        }
    }
    let missing = || anyhow::anyhow!("the node did not print its URL and cookie");
    Ok(Running { child, url: url.ok_or_else(missing)?, cookie: cookie.ok_or_else(missing)? })
}

async fn wait(child: &mut Child) -> anyhow::Result<ExitStatus> {
    Ok(child.wait().await?)
}

#[tokio::test]
async fn the_binary_serves_stops_and_keeps_its_chain() -> anyhow::Result<()> {
    bounded(async {
        let datadir = tempfile::tempdir()?;
        let mut node = spawn(datadir.path()).await?;
        assert_eq!(node.cookie, datadir.path().join("regtest").join(".cookie"));
        assert!(node.url.starts_with("http://127.0.0.1:"));
        let rpc = RpcClient::with_cookie(&node.url, &node.cookie);
        let address = wallet::anyone_can_spend_address();
        let hashes = rpc.generate_to_address(3, &address).await?;
        // A reorg, which the restarted node must remember.
        rpc.invalidate_block(&hashes[2]).await?;
        let branch = rpc.generate_to_address(1, &address).await?;
        rpc.stop().await?;
        assert!(wait(&mut node.child).await?.success());
        assert!(!node.cookie.exists(), "the cookie is removed at stop");

        let mut node = spawn(datadir.path()).await?;
        let rpc = RpcClient::with_cookie(&node.url, &node.cookie);
        assert_eq!(rpc.get_block_count().await?, 3);
        assert_eq!(rpc.get_best_block_hash().await?, branch[0]);
        assert_eq!(rpc.get_block_header_info(&hashes[2]).await?["confirmations"], -1);
        let pid = node.child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
        let kill = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
        assert!(kill.success());
        assert!(wait(&mut node.child).await?.success());
        assert!(!node.cookie.exists());
        Ok(())
    })
    .await
}
