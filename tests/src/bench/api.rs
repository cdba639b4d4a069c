//! add_appointment under load: throughput, latency percentiles and the server's CPU time per
//! appointment; and the crypto floor (one signature recovery plus one signature), in process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use serde_json::{json, Value};
use teosd::protocol::{
    appointment_receipt_bytes, recover_signer, sign_message, Appointment, Locator, TowerSigner, LOCATOR_LEN,
};

use super::{percentile, process_cpu, pseudo_random, thread_cpu, BLOB_SIZE};

/// A user of the bench: a key and its id.
#[derive(Debug, Clone)]
pub struct BenchUser {
    pub secret: SecretKey,
    pub user_id: String,
}

impl BenchUser {
    /// The user number `index` (keys differ per `salt`, so runs on one tower never collide).
    pub fn new(salt: u32, index: u32) -> BenchUser {
        let mut bytes = [0u8; 32];
        bytes[0] = 1;
        bytes[24..28].copy_from_slice(&salt.to_be_bytes());
        bytes[28..].copy_from_slice(&(index + 1).to_be_bytes());
        let secret = SecretKey::from_slice(&bytes).expect("a valid key");
        let user_id = PublicKey::from_secret_key(&Secp256k1::new(), &secret).to_string();
        BenchUser { secret, user_id }
    }
}

/// An appointment with a pseudo-random locator and blob.
pub fn appointment(seed: &[u8]) -> Appointment {
    let locator = Locator::from_slice(&pseudo_random(&[seed, b"locator"].concat(), LOCATOR_LEN)).expect("16 bytes");
    Appointment { locator, encrypted_blob: pseudo_random(&[seed, b"blob"].concat(), BLOB_SIZE), to_self_delay: 42 }
}

/// The `/add_appointment` body for `appointment`, signed by `user`.
pub fn add_appointment_body(appointment: &Appointment, user: &BenchUser) -> Vec<u8> {
    let signature = sign_message(&appointment.signed_bytes(), &user.secret);
    let body = json!({"appointment": {
        "locator": appointment.locator.to_string(),
        "encrypted_blob": hex::encode(&appointment.encrypted_blob),
        "to_self_delay": appointment.to_self_delay}, "signature": signature});
    serde_json::to_vec(&body).expect("JSON")
}

/// A client with up to `connections` keep-alive connections.
pub fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(connections).tcp_nodelay(true).build().expect("an HTTP client")
}

/// POSTs JSON `body` to `url`; returns the status and the parsed reply.
pub async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<(u16, Value)> {
    let response = http.post(url).header("content-type", "application/json").body(body).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// Registers `users` with the tower at `api_url`, 16 at a time.
pub async fn register_all(api_url: &str, users: &[BenchUser]) -> Result<()> {
    let http = client(16);
    for chunk in users.chunks(16) {
        let mut tasks = Vec::new();
        for user in chunk {
            let (http, url) = (http.clone(), format!("{api_url}/register"));
            let body = serde_json::to_vec(&json!({ "user_id": user.user_id }))?;
            tasks.push(tokio::spawn(async move { post(&http, &url, body).await }));
        }
        for task in tasks {
            let (status, reply) = task.await??;
            if status != 200 {
                bail!("register: {status} {reply}");
            }
        }
    }
    Ok(())
}

/// Pre-signed `/add_appointment` bodies: request `j` is from user `j % users.len()`.
pub fn prepare(salt: u32, n: usize, users: &[BenchUser]) -> Vec<Vec<u8>> {
    (0..n)
        .map(|j| {
            let seed = [salt.to_be_bytes(), (j as u32).to_be_bytes()].concat();
            add_appointment_body(&appointment(&seed), &users[j % users.len()])
        })
        .collect()
}

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub in_flight: usize,
    pub requests: usize,
    pub elapsed: Duration,
    /// Latencies in milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
    /// teosd's user+system CPU time over the run.
    pub server_cpu: Option<Duration>,
}

impl LoadResult {
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn p(&self, p: f64) -> f64 {
        percentile(&self.latencies_ms, p)
    }

    /// Server CPU per appointment, microseconds.
    pub fn cpu_per_appointment_us(&self) -> Option<f64> {
        self.server_cpu.map(|cpu| cpu.as_secs_f64() * 1e6 / self.requests as f64)
    }
}

/// Sends `bodies` to `api_url` with `in_flight` requests outstanding at all times, each over
/// its own keep-alive connection; every one must get a 200 receipt.
pub async fn load(api_url: &str, pid: u32, bodies: Vec<Vec<u8>>, in_flight: usize) -> Result<LoadResult> {
    load_with(api_url, pid, bodies, vec![client(in_flight); in_flight]).await
}

/// [`load`] with one request in flight per client in `clients` (each may have its own source
/// address).
pub async fn load_with(
    api_url: &str,
    pid: u32,
    bodies: Vec<Vec<u8>>,
    clients: Vec<reqwest::Client>,
) -> Result<LoadResult> {
    let in_flight = clients.len();
    let url = format!("{api_url}/add_appointment");
    // Warm the connections so their set-up is not timed.
    let mut warm = Vec::new();
    for http in &clients {
        let (http, url) = (http.clone(), format!("{api_url}/ping"));
        warm.push(tokio::spawn(async move { http.get(url).send().await.map(|_| ()) }));
    }
    for task in warm {
        task.await??;
    }
    let requests = bodies.len();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = process_cpu(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for http in clients {
        let (url, bodies, next) = (url.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(j) else {
                    return Ok::<_, anyhow::Error>(latencies);
                };
                let sent = Instant::now();
                let (status, reply) = post(&http, &url, body.clone()).await?;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                if status != 200 {
                    bail!("add_appointment {j}: {status} {reply}");
                }
            }
        }));
    }
    let mut latencies_ms = Vec::with_capacity(requests);
    for task in tasks {
        latencies_ms.extend(task.await.context("load task")??);
    }
    let elapsed = started.elapsed();
    let server_cpu = match (cpu_before, process_cpu(pid)) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    latencies_ms.sort_by(f64::total_cmp);
    Ok(LoadResult { in_flight, requests, elapsed, latencies_ms, server_cpu })
}

/// One appointment's signature work, CPU microseconds on one thread, averaged over `iterations`:
/// the raw library floor and teosd's own path, measured back to back.
#[derive(Debug, Clone, Copy)]
pub struct CryptoCost {
    /// libsecp256k1 through `secp256k1` on one long-lived context: recover the user's key
    /// (zbase32 decode, sha256d, recover) and sign the receipt (sha256d, recoverable sign,
    /// zbase32 encode). Nothing of teosd's.
    pub raw_us: f64,
    /// The same through teosd's `protocol` (`recover_signer`, `TowerSigner::sign`).
    pub ours_us: f64,
}

/// Measures [`CryptoCost`] over `iterations` appointments.
pub fn crypto_cost(iterations: usize) -> Result<CryptoCost> {
    use bitcoin::hashes::{sha256d, Hash, HashEngine};
    use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
    use bitcoin::secp256k1::Message;
    let user = BenchUser::new(0xf100, 0);
    let tower_key = SecretKey::from_slice(&[7; 32])?;
    let signer = TowerSigner::new(tower_key);
    let inputs: Vec<(Vec<u8>, String)> = (0..iterations)
        .map(|i| {
            let message = appointment(&(i as u64).to_be_bytes()).signed_bytes();
            let signature = sign_message(&message, &user.secret);
            (message, signature)
        })
        .collect();
    let zbase32 = teosd::protocol::zbase32();
    let secp = Secp256k1::new();
    let digest = |msg: &[u8]| {
        let mut engine = sha256d::Hash::engine();
        engine.input(b"Lightning Signed Message:");
        engine.input(msg);
        Message::from_digest(sha256d::Hash::from_engine(engine).to_byte_array())
    };
    let raw = || -> Result<usize> {
        let mut out = 0usize;
        for (message, signature) in &inputs {
            let bytes = zbase32.decode(signature.as_bytes())?;
            let id = RecoveryId::from_i32(i32::from(bytes[0]) - 31)?;
            let user = secp.recover_ecdsa(&digest(message), &RecoverableSignature::from_compact(&bytes[1..], id)?)?;
            std::hint::black_box(user);
            let receipt = appointment_receipt_bytes(signature, 1000);
            let (id, compact) = secp.sign_ecdsa_recoverable(&digest(&receipt), &tower_key).serialize_compact();
            let mut sig = [0u8; 65];
            sig[0] = 31 + id.to_i32() as u8;
            sig[1..].copy_from_slice(&compact);
            out += zbase32.encode(&sig).len();
        }
        Ok(out)
    };
    let ours = || -> Result<usize> {
        let mut out = 0usize;
        for (message, signature) in &inputs {
            let user = recover_signer(message, signature).map_err(|_| anyhow::anyhow!("recovery failed"))?;
            std::hint::black_box(user);
            out += signer.sign(&appointment_receipt_bytes(signature, 1000)).len();
        }
        Ok(out)
    };
    let timed = |work: &dyn Fn() -> Result<usize>| -> Result<f64> {
        let before = thread_cpu().context("thread CPU time")?;
        std::hint::black_box(work()?);
        let cpu = thread_cpu().context("thread CPU time")?.saturating_sub(before);
        Ok(cpu.as_secs_f64() * 1e6 / iterations as f64)
    };
    // Warm both (the first use builds the shared contexts), then alternate halves.
    timed(&raw)?;
    timed(&ours)?;
    let (raw_a, ours_a, raw_b, ours_b) = (timed(&raw)?, timed(&ours)?, timed(&raw)?, timed(&ours)?);
    Ok(CryptoCost { raw_us: (raw_a + raw_b) / 2.0, ours_us: (ours_a + ours_b) / 2.0 })
}
