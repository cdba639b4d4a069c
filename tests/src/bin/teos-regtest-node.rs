//! A bitcoind-compatible regtest node, to run by hand:
//!
//! ```text
//! teos-regtest-node --port 18443 --datadir /tmp/regtest [--rpcuser u --rpcpassword p]
//!     [--zmqpubhashblock tcp://127.0.0.1:28332]
//! ```
//!
//! It prints its RPC URL and cookie path, serves until SIGINT, SIGTERM or the `stop` RPC, and
//! keeps its chain in `<datadir>/regtest/chain.log` (unless `--no-persist`).
//!
//! bitcoind's own spelling is understood too (`-datadir=<dir>`, `-rpcport=<port>`,
//! `-rpcuser=<u>`, `-rpcpassword=<p>`, `-zmqpubhashblock=<endpoint>`; other single-dash options such as `-regtest`, `-server`
//! or `-txindex=1` are accepted and ignored), so that the binary can stand in for bitcoind
//! wherever a bitcoind command line is built (`BITCOIND_EXE`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use teos_tests::regtest::{NodeOptions, RegtestNode};

#[derive(Debug, Parser)]
#[command(name = "teos-regtest-node", about = "A bitcoind-compatible regtest node for tests")]
struct Args {
    /// RPC port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 18443)]
    port: u16,
    /// Data directory; the cookie is written to <datadir>/regtest/.cookie. Defaults to a fresh
    /// temporary directory.
    #[arg(long)]
    datadir: Option<PathBuf>,
    /// Also accept this user (with --rpcpassword), besides the cookie.
    #[arg(long, requires = "rpcpassword")]
    rpcuser: Option<String>,
    #[arg(long, requires = "rpcuser")]
    rpcpassword: Option<String>,
    /// Do not keep the chain in the datadir (<datadir>/regtest/chain.log).
    #[arg(long)]
    no_persist: bool,
    /// Publish ZMQ hashblock, rawblock and rawtx notifications on this endpoint, as bitcoind's
    /// -zmqpubhashblock, -zmqpubrawblock and -zmqpubrawtx given the same one
    /// (tcp://127.0.0.1:<port>; port 0 picks a free one).
    #[arg(long, value_name = "ENDPOINT", value_parser = teos_tests::regtest::zmq::loopback_port)]
    zmqpubhashblock: Option<u16>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse_from(translate_bitcoind_args(std::env::args()));
    let datadir = match args.datadir {
        Some(dir) => dir,
        None => {
            tempfile::Builder::new().prefix("teos-regtest-").tempdir().context("creating a temporary datadir")?.keep()
        }
    };
    let node = RegtestNode::start(NodeOptions {
        port: Some(args.port),
        datadir: Some(datadir),
        rpc_user: args.rpcuser,
        rpc_password: args.rpcpassword,
        persist: !args.no_persist,
        zmq_hashblock_port: args.zmqpubhashblock,
    })
    .await
    .context("starting the node")?;
    let (height, tip) = node.tip();
    // The handlers are in place before the address is printed: whoever read it may signal at once.
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Whoever started us may stop reading: a closed stdout must not kill the node.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "rpc url: {}", node.rpc_url());
    let _ = writeln!(out, "cookie: {}", node.cookie_path().display());
    let _ = writeln!(out, "datadir: {}", node.datadir().display());
    if let Some(endpoint) = node.zmq_hashblock_endpoint() {
        let _ = writeln!(out, "zmqpubhashblock: {endpoint}");
    }
    let _ = writeln!(out, "tip: {height} {tip}");
    let _ = out.flush();
    drop(out);

    tokio::select! {
        _ = interrupt.recv() => tracing::info!("SIGINT"),
        _ = terminate.recv() => tracing::info!("SIGTERM"),
        _ = node.stopped() => tracing::info!("stop requested over RPC"),
    }
    node.go_down().await;
    Ok(())
}

/// Rewrites bitcoind-style options (`-name=value`) to ours; drops the ones without a meaning
/// here.
fn translate_bitcoind_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, arg) in args.into_iter().enumerate() {
        let bitcoind_style = i > 0 && arg.len() > 2 && arg.starts_with('-') && !arg.starts_with("--");
        if !bitcoind_style {
            out.push(arg);
            continue;
        }
        let (name, value) = arg[1..].split_once('=').unwrap_or((&arg[1..], ""));
        let ours = match name {
            "datadir" => "--datadir",
            "rpcport" => "--port",
            "rpcuser" => "--rpcuser",
            "rpcpassword" => "--rpcpassword",
            "zmqpubhashblock" => "--zmqpubhashblock",
            _ => {
                tracing::debug!(%arg, "ignoring a bitcoind option");
                continue;
            }
        };
        out.push(ours.to_string());
        out.push(value.to_string());
    }
    out
}
