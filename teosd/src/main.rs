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

/// Threads for blocking work (registrations, reads, the operator's requests: store access and
/// synced writes; appointments go through the intake's own thread). Requests beyond this wait in
/// the pool's queue: more threads than this only add context switches on a small machine.
const BLOCKING_THREADS: usize = 16;

/// glibc's malloc arenas at most (see [`limit_malloc_arenas`]).
const MALLOC_ARENA_MAX: &str = "2";

/// glibc gives threads that allocate at the same time arenas of their own (up to 8 per core) and
/// keeps what is freed in each: with RocksDB's and tokio's threads that was ~11 MiB of a loaded
/// tower's peak RSS (docs/performance.md), for no throughput measured. glibc reads the limit only
/// from the environment at start, so teosd sets it and executes itself again, once, before any
/// thread exists. An operator's own `MALLOC_ARENA_MAX` is kept; if the re-execution fails, teosd
/// says so and goes on as it is.
fn limit_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let mut args = std::env::args_os();
    let (Ok(exe), Some(arg0)) = (std::env::current_exe(), args.next()) else { return };
    let error = std::process::Command::new(exe).arg0(arg0).args(args).env("MALLOC_ARENA_MAX", MALLOC_ARENA_MAX).exec();
    eprintln!("teosd: could not run again with MALLOC_ARENA_MAX={MALLOC_ARENA_MAX} ({error}); going on without");
}

fn main() -> ExitCode {
    limit_malloc_arenas();
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
