//! The node's ZMQ publisher, as bitcoind's `-zmqpubhashblock=<endpoint>`,
//! `-zmqpubrawblock=<endpoint>` and `-zmqpubrawtx=<endpoint>` given the same endpoint.
//!
//! # Messages
//!
//! Each message is bitcoind's three parts: the topic, the body, and a 4-byte little-endian
//! sequence number, per topic, that starts at 0 when the node starts (again after
//! [`come_back`](super::RegtestNode::come_back), as after a bitcoind restart) and counts every
//! message published on the topic, heard or not:
//!
//! * `[b"hashblock", block hash (32 bytes in display order: the bytes of the hex bitcoind
//!   prints), sequence]`,
//! * `[b"rawblock", block (consensus-encoded), sequence]`,
//! * `[b"rawtx", transaction (consensus-encoded, with its witnesses), sequence]`.
//!
//! `hashblock` and `rawblock` go out when the chain tip moves forward, as bitcoind's
//! `UpdatedBlockTip` does: for every mined or submitted block that extends the tip, and, in a
//! reorg, for each block of the new branch once it holds more work than the old tip (so
//! disconnecting a block announces nothing, and replacing 2 blocks by 3 announces the third
//! only). See `NodeState::activate_best_chain`.
//!
//! `rawtx` goes out, as bitcoind's notifier does, for
//!
//! * every transaction accepted to the mempool (`sendrawtransaction`, and transactions of
//!   disconnected blocks that go back to the mempool), but not for one already there, nor for
//!   those a replacement or a block evicts;
//! * every transaction of every block connected to the active chain, coinbase first, in block
//!   order, whether or not it was in the mempool (a reorg connects each block of the new
//!   branch);
//! * every transaction of every block disconnected from it (`invalidateblock`, reorgs), in
//!   block order: a `rawtx` is a transaction whose status changed, not a new one.
//!
//! A block's `rawtx` messages come before its `hashblock` and `rawblock`. In a reorg the order is
//! bitcoind's: the disconnected blocks' transactions, then those going back to the mempool, then
//! the connected blocks' transactions and the new tips.
//!
//! # The wire
//!
//! A small ZMTP 3.0 PUB socket (RFC 23, NULL mechanism) over TCP, written here rather than taken
//! from a ZMQ library so that the node (a) closes every connection when it goes down, as a
//! stopping bitcoind does, (b) sees subscriptions arrive: tests wait for the subscriber to be
//! listening ([`RegtestNode::wait_for_zmq_subscriptions`](super::RegtestNode::wait_for_zmq_subscriptions))
//! instead of guessing, since a PUB socket drops what it publishes before a subscription reaches
//! it (as bitcoind's does), and (c) is an implementation independent of the subscriber's.
//! Subscriptions are accepted as ZMTP 3.0 messages (`0x01` + prefix) and as ZMTP 3.1 `SUBSCRIBE`
//! commands; `PING` is answered with `PONG`. As with bitcoind's PUB socket, messages are filtered
//! by topic at the publisher, and a subscriber with 1000 messages of its topics queued (the
//! high-water mark) loses the next ones rather than slowing the node.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The topic of block hashes.
pub const HASHBLOCK: &str = "hashblock";
/// The topic of whole blocks.
pub const RAWBLOCK: &str = "rawblock";
/// The topic of whole transactions.
pub const RAWTX: &str = "rawtx";
/// Every topic published, in `getzmqnotifications`' order.
pub const TOPICS: [&str; 3] = [HASHBLOCK, RAWBLOCK, RAWTX];

/// Messages a subscriber may fall behind by before it loses some (bitcoind's default
/// `-zmqpubhashblockhwm`).
const HIGH_WATER_MARK: usize = 1000;
/// How long a connecting subscriber has for the greeting and handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest frame accepted from a subscriber (subscriptions and commands are small).
const MAX_FRAME: u64 = 64 * 1024;

const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;

/// What the node's state tells the publisher to announce.
#[derive(Debug)]
pub(crate) enum Notification {
    /// A new tip (`hashblock` and `rawblock`): its hash and consensus encoding.
    Block { hash: BlockHash, raw: Arc<Vec<u8>> },
    /// A transaction (`rawtx`), consensus-encoded: accepted to the mempool, or in a block
    /// connected or disconnected.
    Tx(Vec<u8>),
}

/// Where the node's state sends its notifications.
pub(crate) type Notifier = mpsc::UnboundedSender<Notification>;

/// The three parts of the `rawtx` message for a transaction's consensus encoding.
pub fn rawtx_message(tx: &[u8], sequence: u32) -> [Vec<u8>; 3] {
    [RAWTX.as_bytes().to_vec(), tx.to_vec(), sequence.to_le_bytes().to_vec()]
}

/// The three parts of the `rawblock` message for a block's consensus encoding.
pub fn rawblock_message(block: &[u8], sequence: u32) -> [Vec<u8>; 3] {
    [RAWBLOCK.as_bytes().to_vec(), block.to_vec(), sequence.to_le_bytes().to_vec()]
}

/// The three parts of the `hashblock` message for `hash`.
pub fn hashblock_message(hash: &BlockHash, sequence: u32) -> [Vec<u8>; 3] {
    let mut display = hash.to_byte_array();
    display.reverse();
    [HASHBLOCK.as_bytes().to_vec(), display.to_vec(), sequence.to_le_bytes().to_vec()]
}

/// The port of a `tcp://127.0.0.1:<port>` (or `tcp://localhost:<port>`) endpoint: the node
/// publishes on the loopback interface only.
pub fn loopback_port(endpoint: &str) -> Result<u16, String> {
    let address =
        endpoint.strip_prefix("tcp://").ok_or_else(|| format!("`{endpoint}`: expected tcp://127.0.0.1:<port>"))?;
    let (host, port) = address.rsplit_once(':').ok_or_else(|| format!("`{endpoint}`: no port"))?;
    if host != "127.0.0.1" && host != "localhost" {
        return Err(format!("`{endpoint}`: the regtest node publishes on 127.0.0.1 only"));
    }
    port.parse().map_err(|_| format!("`{endpoint}`: bad port `{port}`"))
}

/// Publishes every notification received on `notifications` to the subscribers accepted on
/// `listener`, until `stop` fires; then closes the listener and every connection before
/// returning. `subscriptions` counts the subscriptions received that cover one of the
/// [`TOPICS`] (an empty one, to every topic, does; so does `raw`, once).
pub(crate) async fn publish(
    listener: TcpListener,
    mut notifications: mpsc::UnboundedReceiver<Notification>,
    subscriptions: Arc<watch::Sender<u64>>,
    stop: CancellationToken,
) {
    let stop = stop.child_token();
    let connections = TaskTracker::new();
    let mut outlets: Vec<Outlet> = Vec::new();
    // Each topic counts its own messages.
    let (mut hash_sequence, mut raw_sequence, mut tx_sequence): (u32, u32, u32) = (0, 0, 0);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (queue, messages) = mpsc::channel(HIGH_WATER_MARK);
                    let topics = Arc::new(Mutex::new(Vec::new()));
                    outlets.push(Outlet { topics: topics.clone(), queue, losing: false });
                    let subscriber = Subscriber { messages, topics, counter: subscriptions.clone() };
                    connections.spawn(subscriber.serve(stream, stop.clone()));
                }
                Err(error) => tracing::warn!(%error, "ZMQ publisher: accept failed"),
            },
            notification = notifications.recv() => {
                let Some(notification) = notification else { break };
                outlets.retain(|outlet| !outlet.queue.is_closed());
                // No subscriber: nobody hears it, and the sequences move on all the same.
                match notification {
                    Notification::Block { hash, raw } => {
                        send(&mut outlets, HASHBLOCK, || hashblock_message(&hash, hash_sequence));
                        hash_sequence = hash_sequence.wrapping_add(1);
                        send(&mut outlets, RAWBLOCK, || rawblock_message(&raw, raw_sequence));
                        raw_sequence = raw_sequence.wrapping_add(1);
                    }
                    Notification::Tx(raw) => {
                        send(&mut outlets, RAWTX, || rawtx_message(&raw, tx_sequence));
                        tx_sequence = tx_sequence.wrapping_add(1);
                    }
                }
            }
        }
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
}

/// A message as sent on the wire (all its frames).
type Encoded = Arc<Vec<u8>>;

/// Where the publisher queues a connected subscriber's messages.
struct Outlet {
    /// The subscriber's subscriptions (prefixes), as its connection reads them.
    topics: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Holds at most [`HIGH_WATER_MARK`] messages.
    queue: mpsc::Sender<Encoded>,
    /// Whether the last message was lost (for logging once per spell).
    losing: bool,
}

/// Queues the message `parts` builds (built and encoded once, if anyone subscribes to `topic`)
/// for every subscriber to `topic`. Like a ZMQ PUB socket, it filters here, and drops the
/// message for a subscriber whose queue is full.
fn send(outlets: &mut [Outlet], topic: &'static str, parts: impl Fn() -> [Vec<u8>; 3]) {
    let mut encoded: Option<Encoded> = None;
    for outlet in outlets.iter_mut().filter(|outlet| subscribed(&outlet.topics, topic.as_bytes())) {
        let message = encoded.get_or_insert_with(|| Arc::new(encode_message(&parts()))).clone();
        match outlet.queue.try_send(message) {
            Ok(()) => outlet.losing = false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !outlet.losing {
                    tracing::warn!(topic, "ZMQ publisher: a slow subscriber loses messages");
                }
                outlet.losing = true;
            }
            // Gone: dropped at the next message.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// One connected subscriber.
struct Subscriber {
    /// What the publisher queued for it (only its topics).
    messages: mpsc::Receiver<Encoded>,
    topics: Arc<Mutex<Vec<Vec<u8>>>>,
    counter: Arc<watch::Sender<u64>>,
}

impl Subscriber {
    async fn serve(self, stream: TcpStream, stop: CancellationToken) {
        let _ = stream.set_nodelay(true);
        let (mut read, mut write) = stream.into_split();
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut read, &mut write));
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = handshake => outcome,
        };
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return tracing::debug!(%error, "ZMQ publisher: handshake failed"),
            Err(_) => return tracing::debug!("ZMQ publisher: handshake timed out"),
        }
        let Subscriber { mut messages, topics, counter } = self;
        let (pongs, mut pongs_rx) = mpsc::unbounded_channel();
        let done = stop.child_token();
        let reader = tokio::spawn(read_subscriptions(read, topics, counter, pongs, done.clone()));
        loop {
            let bytes = tokio::select! {
                _ = done.cancelled() => break,
                message = messages.recv() => match message {
                    Some(message) => message,
                    None => break,
                },
                pong = pongs_rx.recv() => match pong {
                    Some(pong) => Arc::new(pong),
                    None => break,
                },
            };
            if write.write_all(&bytes).await.is_err() {
                break;
            }
        }
        done.cancel();
        let _ = reader.await;
        // Both halves dropped here (and the queue: the publisher forgets the outlet): the
        // connection closes.
    }
}

/// Whether a subscription in `topics` covers `topic` (subscriptions are prefixes).
fn subscribed(topics: &Mutex<Vec<Vec<u8>>>, topic: &[u8]) -> bool {
    topics.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|prefix| topic.starts_with(prefix))
}

/// Reads what the subscriber sends after the handshake: (un)subscriptions and pings, until it
/// closes the connection or `done` fires (then fires `done`).
async fn read_subscriptions(
    mut read: impl AsyncRead + Unpin,
    topics: Arc<Mutex<Vec<Vec<u8>>>>,
    counter: Arc<watch::Sender<u64>>,
    pongs: mpsc::UnboundedSender<Vec<u8>>,
    done: CancellationToken,
) {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    loop {
        let frame = tokio::select! {
            _ = done.cancelled() => break,
            frame = read_frame(&mut read) => frame,
        };
        let Ok((flags, body)) = frame else { break };
        let update = if flags & FLAG_COMMAND != 0 {
            match parse_command(&body) {
                Some((b"SUBSCRIBE", topic)) => Some((true, topic.to_vec())),
                Some((b"CANCEL", topic)) => Some((false, topic.to_vec())),
                Some((b"PING", data)) if data.len() >= 2 => {
                    let _ = pongs.send(encode_command(b"PONG", &data[2..]));
                    None
                }
                Some((b"ERROR", _)) => break,
                _ => None,
            }
        } else {
            parts.push(body);
            if flags & FLAG_MORE != 0 {
                continue;
            }
            let message = std::mem::take(&mut parts);
            match message.as_slice() {
                [single] if single.first() == Some(&1) => Some((true, single[1..].to_vec())),
                [single] if single.first() == Some(&0) => Some((false, single[1..].to_vec())),
                _ => None,
            }
        };
        match update {
            Some((true, topic)) => {
                let covers = TOPICS.iter().any(|t| t.as_bytes().starts_with(&topic));
                topics.lock().unwrap_or_else(|e| e.into_inner()).push(topic);
                // Counted once the subscription is in force.
                if covers {
                    counter.send_modify(|n| *n += 1);
                }
            }
            Some((false, topic)) => {
                let mut topics = topics.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(i) = topics.iter().position(|t| *t == topic) {
                    topics.remove(i);
                }
            }
            None => {}
        }
    }
    done.cancel();
}

/// The ZMTP 3.0 greeting (NULL mechanism, not as server), then `READY` both ways; the peer must
/// be a SUB or an XSUB.
async fn handshake(
    read: &mut (impl AsyncRead + Unpin),
    write: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> io::Result<()> {
    let mut greeting = [0u8; 64];
    greeting[0] = 0xff;
    greeting[9] = 0x7f;
    greeting[10] = 3; // version 3.0
    greeting[12..16].copy_from_slice(b"NULL");
    write.write_all(&greeting).await?;
    let mut theirs = [0u8; 64];
    read.read_exact(&mut theirs).await?;
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    if theirs[0] != 0xff || theirs[9] & 1 != 1 {
        return Err(invalid("not a ZMTP peer"));
    }
    if theirs[10] < 3 {
        return Err(invalid("ZMTP before 3.0"));
    }
    if theirs[12..32] != greeting[12..32] {
        return Err(invalid("security mechanism other than NULL"));
    }
    write.write_all(&encode_command(b"READY", &property(b"Socket-Type", b"PUB"))).await?;
    let (flags, body) = read_frame(read).await?;
    let Some((b"READY", properties)) = parse_command(&body).filter(|_| flags & FLAG_COMMAND != 0) else {
        return Err(invalid("expected READY"));
    };
    match socket_type(properties) {
        Some(b"SUB" | b"XSUB") => Ok(()),
        _ => Err(invalid("the peer is not a SUB or XSUB socket")),
    }
}

async fn read_frame(read: &mut (impl AsyncRead + Unpin)) -> io::Result<(u8, Vec<u8>)> {
    let flags = read.read_u8().await?;
    let size = if flags & FLAG_LONG != 0 { read.read_u64().await? } else { u64::from(read.read_u8().await?) };
    if size > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too large"));
    }
    let mut body = vec![0; size as usize];
    read.read_exact(&mut body).await?;
    Ok((flags, body))
}

/// A command frame's name and data.
fn parse_command(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = body.split_first()?;
    (rest.len() >= len as usize).then(|| rest.split_at(len as usize))
}

/// The `Socket-Type` property of a `READY` command.
fn socket_type(mut properties: &[u8]) -> Option<&[u8]> {
    while let Some((&len, rest)) = properties.split_first() {
        let (name, rest) = (rest.get(..len as usize)?, rest.get(len as usize..)?);
        let size = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let value = rest.get(4..4 + size)?;
        if name.eq_ignore_ascii_case(b"Socket-Type") {
            return Some(value);
        }
        properties = &rest[4 + size..];
    }
    None
}

fn property(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![name.len() as u8];
    out.extend_from_slice(name);
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn push_frame(out: &mut Vec<u8>, flags: u8, body: &[u8]) {
    if body.len() > 255 {
        out.push(flags | FLAG_LONG);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        out.push(flags);
        out.push(body.len() as u8);
    }
    out.extend_from_slice(body);
}

fn encode_command(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(data);
    let mut out = Vec::new();
    push_frame(&mut out, FLAG_COMMAND, &body);
    out
}

fn encode_message(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let more = if i + 1 < parts.len() { FLAG_MORE } else { 0 };
        push_frame(&mut out, more, part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_bitcoinds_layout() {
        let hash: BlockHash = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206".parse().unwrap();
        let [topic, body, sequence] = hashblock_message(&hash, 258);
        assert_eq!(topic, b"hashblock");
        assert_eq!(hex::encode(&body), hash.to_string());
        assert_eq!(sequence, [2, 1, 0, 0]);
        // On the wire: three short frames, the first two flagged MORE.
        let wire = encode_message(&[topic, body, sequence.to_vec()]);
        assert_eq!(&wire[..11], b"\x01\x09hashblock");
        assert_eq!(&wire[11..13], &[0x01, 32]);
        assert_eq!(&wire[45..], &[0x00, 4, 2, 1, 0, 0]);
    }

    #[test]
    fn frames_and_commands() {
        let ready = encode_command(b"READY", &property(b"Socket-Type", b"PUB"));
        assert_eq!(ready[0], FLAG_COMMAND);
        assert_eq!(ready[1] as usize, ready.len() - 2);
        let (name, properties) = parse_command(&ready[2..]).unwrap();
        assert_eq!(name, b"READY");
        assert_eq!(socket_type(properties), Some(&b"PUB"[..]));
        let two = [property(b"Identity", b""), property(b"socket-type", b"SUB")].concat();
        assert_eq!(socket_type(&two), Some(&b"SUB"[..]));
        assert_eq!(socket_type(&two[..5]), None);
        let mut long = Vec::new();
        push_frame(&mut long, 0, &[7; 300]);
        assert_eq!(long[0], FLAG_LONG);
        assert_eq!(u64::from_be_bytes(long[1..9].try_into().unwrap()), 300);
    }

    #[test]
    fn endpoints_on_the_loopback_interface_only() {
        assert_eq!(loopback_port("tcp://127.0.0.1:28332"), Ok(28332));
        assert_eq!(loopback_port("tcp://localhost:0"), Ok(0));
        for bad in ["127.0.0.1:28332", "tcp://0.0.0.0:28332", "tcp://127.0.0.1", "tcp://127.0.0.1:x", "ipc:///tmp/z"] {
            assert!(loopback_port(bad).is_err(), "{bad}");
        }
    }
}
