//! The public API under attack: honest add_appointment throughput and p99 (16 in flight, each
//! connection from its own loopback address, as honest users are) while one attack runs, as
//! ratios to the same measurement without an attack, on a fresh tower each time. The tower runs
//! with its default connection caps and timeouts and registration limit; its appointment limit is
//! 500 per second per source (each honest connection sends about a tenth of that).
//!
//! The attacks, each sustained for the whole measurement by a separate process (`teos-bench
//! --attacker <kind> <url>`, so that its runtime does not share the honest client's): half-open
//! requests from one address (1000 sockets) and from 64 addresses (32 each: 2048, four times the
//! total cap), each socket opened again 50 ms (a round trip) after the tower closes it; a
//! registration flood (64 in flight, one address); forged appointments (64 in flight, one
//! address, signatures of users that are not registered); each flood request after a 50 ms round
//! trip, as from across the internet (on loopback an unpaced attacker is bound only by its own
//! CPU, which on two shared cores is the tower's). The ratios are for the whole machine; each
//! figure's note gives teosd's and the attacker's CPU time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::Result;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_util::sync::CancellationToken;

use super::api::{add_appointment_body, appointment, load_with, post, prepare, register_all, BenchUser, LoadResult};
use super::daemon::Daemon;
use crate::backend::Bitcoind;

/// The attacks measured, after the baseline (`None`).
pub const ATTACKS: [Option<Attack>; 5] = [
    None,
    Some(Attack::SlowHeadersOneSource),
    Some(Attack::SlowHeadersManySources),
    Some(Attack::RegistrationFlood),
    Some(Attack::ForgedAppointments),
];

/// One attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Attack {
    /// 1000 connections from one address, each sending half a request head and waiting.
    SlowHeadersOneSource,
    /// The same from 64 addresses, 32 each.
    SlowHeadersManySources,
    /// `/register` with fresh user ids, 64 in flight, one address.
    RegistrationFlood,
    /// `/add_appointment` signed by unregistered keys, 64 in flight, one address.
    ForgedAppointments,
}

impl Attack {
    /// Its name on the `--attacker` command line.
    pub fn flag(self) -> &'static str {
        match self {
            Attack::SlowHeadersOneSource => "slow-headers",
            Attack::SlowHeadersManySources => "slow-headers-many",
            Attack::RegistrationFlood => "register-flood",
            Attack::ForgedAppointments => "forged-appointments",
        }
    }

    /// The attack named `flag`.
    pub fn from_flag(flag: &str) -> Option<Attack> {
        ATTACKS.iter().flatten().copied().find(|a| a.flag() == flag)
    }

    /// How the figures name it.
    pub fn name(attack: Option<Attack>) -> &'static str {
        match attack {
            None => "no attack",
            Some(Attack::SlowHeadersOneSource) => "half-open requests, 1 address x 1000",
            Some(Attack::SlowHeadersManySources) => "half-open requests, 64 addresses x 32",
            Some(Attack::RegistrationFlood) => "registration flood, 64 in flight",
            Some(Attack::ForgedAppointments) => "forged appointments, 64 in flight",
        }
    }
}

fn loopback(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

/// What one attack run measured.
#[derive(Debug, Clone)]
pub struct AttackRun {
    /// The honest load.
    pub honest: LoadResult,
    /// The attacker process's CPU time over the honest load, if one ran.
    pub attacker_cpu: Option<std::time::Duration>,
}

/// Honest add_appointment load (`requests` at 16 in flight) while `attack` runs, on a fresh tower
/// in `datadir`.
pub async fn honest_under(
    bitcoind: &Bitcoind,
    datadir: &Path,
    attack: Option<Attack>,
    requests: usize,
) -> Result<AttackRun> {
    let limits = ["--httpmaxconnectionsperip", "32", "--appointmentspersecond", "500"];
    let mut daemon = Daemon::start(bitcoind, datadir, &limits).await?;
    let salt = 700 + attack.map_or(0, |a| a as u32 + 1);
    let users: Vec<BenchUser> = (0..8).map(|u| BenchUser::new(salt, u)).collect();
    register_all(&daemon.api_url, &users).await?;
    let bodies = tokio::task::spawn_blocking(move || prepare(salt, requests, &users)).await?;
    let clients = (0..16u8)
        .map(|i| {
            reqwest::Client::builder()
                .local_address(loopback(1, 1 + i))
                .pool_max_idle_per_host(1)
                .tcp_nodelay(true)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut attacker = match attack {
        Some(attack) => {
            let exe = std::env::current_exe()?;
            let child = tokio::process::Command::new(exe)
                .args(["--attacker", attack.flag(), &daemon.api_url])
                .kill_on_drop(true)
                .stdin(std::process::Stdio::null())
                .spawn()?;
            // Let it open its sockets before the honest load starts.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            Some(child)
        }
        None => None,
    };
    let attacker_pid = attacker.as_ref().and_then(tokio::process::Child::id);
    let cpu_before = attacker_pid.and_then(super::process_cpu);
    let result = load_with(&daemon.api_url, daemon.pid(), bodies, clients).await;
    let attacker_cpu = match (cpu_before, attacker_pid.and_then(super::process_cpu)) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    if let Some(child) = attacker.as_mut() {
        let _ = child.kill().await;
    }
    daemon.stop()?;
    Ok(AttackRun { honest: result?, attacker_cpu })
}

/// Runs `attack` against `api_url` until the process is killed (`teos-bench --attacker`).
pub async fn run_attacker(attack: Attack, api_url: &str) {
    let stop = CancellationToken::new();
    for task in start(attack, api_url, &stop) {
        let _ = task.await;
    }
}

fn start(attack: Attack, api_url: &str, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let target: SocketAddr = api_url.trim_start_matches("http://").parse().expect("the tower's address");
    let mut tasks = Vec::new();
    match attack {
        Attack::SlowHeadersOneSource => {
            for _ in 0..1000 {
                tasks.push(tokio::spawn(half_open(loopback(2, 1), target, stop.clone())));
            }
        }
        Attack::SlowHeadersManySources => {
            for source in 0..64u8 {
                for _ in 0..32 {
                    tasks.push(tokio::spawn(half_open(loopback(3, 1 + source), target, stop.clone())));
                }
            }
        }
        Attack::RegistrationFlood | Attack::ForgedAppointments => {
            let http = reqwest::Client::builder().local_address(loopback(4, 1)).pool_max_idle_per_host(64).build();
            let Ok(http) = http else { return tasks };
            let bodies = std::sync::Arc::new(flood_bodies(attack));
            for task in 0..64usize {
                let (http, bodies, stop) = (http.clone(), bodies.clone(), stop.clone());
                tasks.push(tokio::spawn(flood(attack, http, api_url.to_string(), bodies, task, stop)));
            }
        }
    }
    tasks
}

/// Keeps one connection from `source` sending half a request head, opening it again whenever
/// the tower closes it, until `stop`.
async fn half_open(source: IpAddr, target: SocketAddr, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let Ok(socket) = TcpSocket::new_v4() else { return };
        if socket.bind(SocketAddr::new(source, 0)).is_err() {
            return;
        }
        let Ok(mut stream) = socket.connect(target).await else {
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(ROUND_TRIP) => continue }
        };
        let _ = stream.write_all(b"POST /add_appointment HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n").await;
        let mut buf = [0u8; 256];
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                },
            }
        }
        // An attacker across the internet pays a round trip before its next connection.
        tokio::time::sleep(ROUND_TRIP).await;
    }
}

/// What a closed socket waits before the attacker opens it again.
const ROUND_TRIP: std::time::Duration = std::time::Duration::from_millis(50);

/// 1024 request bodies for a flood, built once (the attacker does not sign each request anew).
fn flood_bodies(attack: Attack) -> Vec<Vec<u8>> {
    (0..1024u32)
        .map(|n| {
            let stranger = BenchUser::new(900, n);
            match attack {
                Attack::RegistrationFlood => {
                    serde_json::to_vec(&json!({ "user_id": stranger.user_id })).unwrap_or_default()
                }
                _ => add_appointment_body(&appointment(&n.to_be_bytes()), &stranger),
            }
        })
        .collect()
}

/// Sends one kind of unwanted request as fast as the tower answers, until `stop`.
async fn flood(
    attack: Attack,
    http: reqwest::Client,
    api_url: String,
    bodies: std::sync::Arc<Vec<Vec<u8>>>,
    task: usize,
    stop: CancellationToken,
) {
    let route = if attack == Attack::RegistrationFlood { "register" } else { "add_appointment" };
    let url = format!("{api_url}/{route}");
    let mut n = task;
    while !stop.is_cancelled() {
        n = (n + 64) % bodies.len();
        tokio::select! {
            _ = stop.cancelled() => return,
            // Each request costs a round trip across the internet.
            _ = async { tokio::time::sleep(ROUND_TRIP).await; post(&http, &url, bodies[n].clone()).await } => {}
        }
    }
}
