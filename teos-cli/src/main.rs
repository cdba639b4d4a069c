//! `teos-cli`: the operator's client for teosd's admin gRPC API (mutual TLS).
//!
//! It reads `ca.pem`, `client.pem` and `client-key.pem` from the data directory (teosd creates
//! them at its first start; copy them to run the CLI elsewhere) and the admin address from
//! `--rpcbind`/`--rpcport`, else `rpc_bind`/`rpc_port` in `<datadir>/teos.toml`. Output is JSON
//! (bytes in hex, txids in display order), or text with `--human`. Every failure is one line on
//! stderr and a non-zero exit: 2 for bad arguments, 1 for everything else.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod connect;
mod output;
mod settings;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use teos_proto::admin as pb;

use crate::connect::Tower;
use crate::output::Format;

/// Admin client of the teos watchtower: talks to teosd's admin gRPC API over mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "teos-cli", version, about, long_about)]
struct Cli {
    /// Data directory holding ca.pem, client.pem, client-key.pem and teos.toml [default: ~/.teos].
    #[arg(long = "datadir", env = "TEOS_DATADIR", value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,

    /// Address of teosd's admin API [default: rpc_bind in teos.toml, else 127.0.0.1].
    #[arg(long = "rpcbind", env = "TEOS_RPC_BIND", value_name = "ADDR", global = true)]
    rpc_bind: Option<String>,

    /// Port of teosd's admin API [default: rpc_port in teos.toml, else 8814].
    #[arg(long = "rpcport", env = "TEOS_RPC_PORT", value_name = "PORT", global = true)]
    rpc_port: Option<u16>,

    /// Print readable text instead of JSON.
    #[arg(long, global = true)]
    human: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tower id, counts, chain tip, bitcoind reachability and the addresses served.
    #[command(name = "gettowerinfo")]
    GetTowerInfo,
    /// Every registered user id.
    #[command(name = "getusers")]
    GetUsers,
    /// One user's slots, subscription and locators.
    #[command(name = "getuser")]
    GetUser {
        /// The user's id: a 33-byte compressed public key in hex.
        user_id: String,
    },
    /// Every appointment being watched, then every tracker (streamed).
    #[command(name = "getallappointments")]
    GetAllAppointments,
    /// Every user's appointment or tracker at one locator.
    #[command(name = "getappointments")]
    GetAppointments {
        /// The locator: 16 bytes in hex.
        locator: String,
    },
    /// Shuts the tower down gracefully (as SIGTERM does).
    #[command(name = "stop")]
    Stop,
    /// Backs the running tower up: a consistent copy of its store, its TLS files and teos.toml,
    /// into a new directory ON THE TOWER'S MACHINE (see docs/operations.md to restore).
    #[command(name = "backup")]
    Backup {
        /// Absolute path on the tower's machine: a new directory, or an empty one.
        dir: String,
    },
    /// Deletes a user and all their appointments (penalties already being followed run to their end).
    #[command(name = "deleteuser")]
    DeleteUser {
        /// The user's id: a 33-byte compressed public key in hex.
        user_id: String,
    },
    /// Bans a user: every request of theirs is refused until unbanned; their appointments stay watched.
    #[command(name = "banuser")]
    BanUser {
        /// The user's id: a 33-byte compressed public key in hex.
        user_id: String,
    },
    /// Lifts a user's ban.
    #[command(name = "unbanuser")]
    UnbanUser {
        /// The user's id: a 33-byte compressed public key in hex.
        user_id: String,
    },
    /// Every banned user, with the height they were banned at.
    #[command(name = "getbannedusers")]
    GetBannedUsers,
    /// Prints a completion script for a shell, e.g. `teos-cli completions bash > /etc/bash_completion.d/teos-cli`.
    #[command(name = "completions")]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// A failure, printed as one line on stderr.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments, found before connecting (exit code 2).
    Usage(String),
    /// Anything else (exit code 1).
    Failed(String),
    /// stdout was closed (e.g. piped into `head`): stop quietly.
    OutputClosed,
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::OutputClosed
        } else {
            CliError::Failed(format!("cannot write the output: {e}"))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) | Err(CliError::OutputClosed) => ExitCode::SUCCESS,
        Err(CliError::Usage(message)) => {
            eprintln!("teos-cli: {message}");
            ExitCode::from(2)
        }
        Err(CliError::Failed(message)) => {
            eprintln!("teos-cli: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let format = if cli.human { Format::Human } else { Format::Json };
    // Check what can be checked before touching files or the network.
    let request = match &cli.command {
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "teos-cli", &mut script);
            out.write_all(&script)?;
            return Ok(out.flush()?);
        }
        Command::GetUser { user_id } => Some(pb::GetUserRequest { user_id: settings::parse_user_id(user_id)? }),
        _ => None,
    };
    let user_id = match &cli.command {
        Command::DeleteUser { user_id } | Command::BanUser { user_id } | Command::UnbanUser { user_id } => {
            settings::parse_user_id(user_id)?
        }
        _ => Vec::new(),
    };
    let locator = match &cli.command {
        Command::GetAppointments { locator } => settings::parse_locator(locator)?,
        _ => Vec::new(),
    };
    let settings = settings::Settings::resolve(cli.data_dir, cli.rpc_bind, cli.rpc_port)?;
    let mut tower = Tower::connect(&settings).await?;
    match cli.command {
        Command::GetTowerInfo => output::tower_info(&mut out, format, &tower.tower_info().await?)?,
        Command::GetUsers => output::users(&mut out, format, tower.users().await?).await?,
        Command::GetUser { .. } => {
            let request = request.ok_or_else(|| CliError::Failed("no request".into()))?;
            output::user(&mut out, format, &tower.user(request).await?)?
        }
        Command::GetAllAppointments => {
            output::all_appointments(&mut out, format, tower.all_appointments().await?).await?
        }
        Command::GetAppointments { .. } => output::appointments(&mut out, format, &tower.appointments(locator).await?)?,
        Command::Stop => {
            tower.stop().await?;
            writeln!(out, "Shutting down tower")?;
        }
        Command::Backup { dir } => output::backup(&mut out, format, &tower.backup(dir).await?)?,
        Command::DeleteUser { .. } => output::deleted_user(&mut out, format, &tower.delete_user(user_id).await?)?,
        Command::BanUser { .. } => output::banned_user(&mut out, format, &tower.ban_user(user_id).await?)?,
        Command::UnbanUser { .. } => output::unbanned_user(&mut out, format, &tower.unban_user(user_id).await?)?,
        Command::GetBannedUsers => output::banned_users(&mut out, format, &tower.banned_users().await?)?,
        Command::Completions { .. } => {}
    }
    Ok(out.flush()?)
}
