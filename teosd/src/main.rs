//! The `teosd` binary: parse the configuration, set up logging, hook SIGINT/SIGTERM to the
//! shutdown token and run the tower.

use std::process::ExitCode;

use clap::Parser;
use teosd::config::{Cli, Config, LogConfig};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn init_tracing(log: &LogConfig) {
    let own = if log.debug { "debug" } else { "info" };
    let deps = if log.deps_debug { "debug" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("{deps},teosd={own}")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn wait_for_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
    shutdown.cancel();
}

/// Threads for blocking work (store access with its synced writes, and the signature checks
/// around them). Requests beyond this wait in the pool's queue: more threads than this only add
/// context switches on a small machine, while this many still share each WAL sync (docs/performance.md).
const BLOCKING_THREADS: usize = 16;

fn main() -> ExitCode {
    let config = match Config::load(&Cli::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("teosd: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(BLOCKING_THREADS).build();
    match runtime {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(e) => {
            eprintln!("teosd: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    init_tracing(&config.log);
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    match teosd::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
