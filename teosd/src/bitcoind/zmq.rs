//! bitcoind's ZMQ `hashblock` notifications (`-zmqpubhashblock`), as a wake-up for the chain
//! follower: on every notification the follower syncs through RPC at once, as it does at each
//! poll. Nothing is taken from the message but the fact that it came, so a lost, late or forged
//! notification costs at most one extra `getbestblockhash`; polling stays on as the fallback.
//!
//! bitcoind's `rawblock` (`-zmqpubrawblock`) carries the whole block: it is kept in
//! [`OfferedBlocks`] and the follower wakes. When the follower then connects a block whose hash
//! (from bitcoind's headers over RPC) matches an offered one, it uses it instead of `getblock`,
//! after the same checks (hash, proof of work, merkle root). An offered block that is never asked
//! for is dropped after [`MAX_OFFERED`] newer ones.
//!
//! The subscriber connects with a pure-Rust ZMTP implementation (the `zeromq` crate, no libzmq),
//! reconnects by itself when bitcoind restarts (logging once when the feed is lost and once when
//! it is back) and wakes the follower whenever it (re)connects, since blocks found while the feed
//! was down were announced to nobody.

use std::sync::Arc;
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use tokio::sync::Notify;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use zeromq::{Socket, SocketEvent, SocketOptions, SocketRecv, SubSocket, ZmqMessage};

/// The topic bitcoind publishes block hashes under.
pub const TOPIC: &str = "hashblock";
/// The topic bitcoind publishes whole blocks under.
pub const RAWBLOCK_TOPIC: &str = "rawblock";
/// The topic bitcoind publishes transactions under (entering its mempool, or in a block).
pub const RAWTX_TOPIC: &str = "rawtx";
/// Blocks received over `rawblock` and not yet used, at most.
pub const MAX_OFFERED: usize = 4;

/// Blocks received whole over ZMQ, by hash, for the chain follower to use instead of `getblock`.
#[derive(Debug, Default)]
pub struct OfferedBlocks {
    blocks: std::sync::Mutex<std::collections::VecDeque<(BlockHash, Vec<u8>)>>,
}

impl OfferedBlocks {
    /// Keeps a consensus-encoded block (the oldest goes beyond [`MAX_OFFERED`]). Returns its hash,
    /// or `None` if it is too short to hold a header.
    pub fn offer(&self, block: Vec<u8>) -> Option<BlockHash> {
        let header: bitcoin::block::Header = bitcoin::consensus::deserialize(block.get(..80)?).ok()?;
        let hash = header.block_hash();
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        blocks.retain(|(h, _)| *h != hash);
        if blocks.len() == MAX_OFFERED {
            blocks.pop_front();
        }
        blocks.push_back((hash, block));
        Some(hash)
    }

    /// The block `hash`, if it was offered (and takes it out).
    pub fn take(&self, hash: &BlockHash) -> Option<Vec<u8>> {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let index = blocks.iter().position(|(h, _)| h == hash)?;
        blocks.remove(index).map(|(_, block)| block)
    }
}

/// What a subscription is for.
#[derive(Debug, Clone)]
pub enum Feed {
    /// `hashblock`: wake the follower.
    Hashblock {
        /// The follower's waker.
        wake: Arc<Notify>,
    },
    /// `rawblock`: offer the block to the follower, then wake it.
    Rawblock {
        /// The follower's waker.
        wake: Arc<Notify>,
        /// Where blocks are offered.
        blocks: Arc<OfferedBlocks>,
    },
    /// `rawtx`: hand each transaction to the follower's mempool watch (dropped if it is behind:
    /// its `getrawmempool` poll catches up).
    Rawtx {
        /// The follower's waker (woken on reconnection only).
        wake: Arc<Notify>,
        /// Where transactions go.
        txs: tokio::sync::mpsc::Sender<bitcoin::Transaction>,
    },
}

impl Feed {
    fn topic(&self) -> &'static str {
        match self {
            Feed::Hashblock { .. } => TOPIC,
            Feed::Rawblock { .. } => RAWBLOCK_TOPIC,
            Feed::Rawtx { .. } => RAWTX_TOPIC,
        }
    }

    fn wake(&self) -> &Notify {
        match self {
            Feed::Hashblock { wake } | Feed::Rawblock { wake, .. } | Feed::Rawtx { wake, .. } => wake,
        }
    }
}

/// How long one connection attempt (TCP connect and ZMTP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after the first failed attempt, doubled after each further one up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// One `hashblock` notification: `[b"hashblock", hash (32 bytes, display order), sequence
/// (4 bytes, little-endian)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashblock {
    /// The new tip.
    pub hash: BlockHash,
    /// bitcoind's per-topic message counter (starts at 0 when bitcoind starts).
    pub sequence: u32,
}

/// Why a message is not a `hashblock` notification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not three parts.
    #[error("{0} parts, expected 3")]
    Parts(usize),
    /// Another topic.
    #[error("unexpected topic {0:?}")]
    Topic(String),
    /// The hash part is not 32 bytes.
    #[error("block hash of {0} bytes, expected 32")]
    HashLength(usize),
    /// The sequence part is not 4 bytes.
    #[error("sequence of {0} bytes, expected 4")]
    SequenceLength(usize),
    /// The transaction part does not decode.
    #[error("transaction does not decode: {0}")]
    Transaction(String),
}

/// Parses the parts of a `rawblock` message: the block's bytes and the sequence.
pub fn parse_rawblock<P: AsRef<[u8]>>(parts: &[P]) -> Result<(&[u8], u32), MessageError> {
    let [topic, block, sequence] = parts else {
        return Err(MessageError::Parts(parts.len()));
    };
    let (topic, block, sequence) = (topic.as_ref(), block.as_ref(), sequence.as_ref());
    if topic != RAWBLOCK_TOPIC.as_bytes() {
        return Err(MessageError::Topic(String::from_utf8_lossy(topic).into_owned()));
    }
    let sequence: [u8; 4] = sequence.try_into().map_err(|_| MessageError::SequenceLength(sequence.len()))?;
    Ok((block, u32::from_le_bytes(sequence)))
}

/// Parses the parts of a `rawtx` message: the transaction and the sequence.
pub fn parse_rawtx<P: AsRef<[u8]>>(parts: &[P]) -> Result<(bitcoin::Transaction, u32), MessageError> {
    let [topic, tx, sequence] = parts else {
        return Err(MessageError::Parts(parts.len()));
    };
    let (topic, tx, sequence) = (topic.as_ref(), tx.as_ref(), sequence.as_ref());
    if topic != RAWTX_TOPIC.as_bytes() {
        return Err(MessageError::Topic(String::from_utf8_lossy(topic).into_owned()));
    }
    let tx = bitcoin::consensus::deserialize(tx).map_err(|e| MessageError::Transaction(e.to_string()))?;
    let sequence: [u8; 4] = sequence.try_into().map_err(|_| MessageError::SequenceLength(sequence.len()))?;
    Ok((tx, u32::from_le_bytes(sequence)))
}

/// Parses the parts of a `hashblock` message.
pub fn parse_hashblock<P: AsRef<[u8]>>(parts: &[P]) -> Result<Hashblock, MessageError> {
    let [topic, hash, sequence] = parts else {
        return Err(MessageError::Parts(parts.len()));
    };
    let (topic, hash, sequence) = (topic.as_ref(), hash.as_ref(), sequence.as_ref());
    if topic != TOPIC.as_bytes() {
        return Err(MessageError::Topic(String::from_utf8_lossy(topic).into_owned()));
    }
    let mut bytes: [u8; 32] = hash.try_into().map_err(|_| MessageError::HashLength(hash.len()))?;
    // Sent in display order; `BlockHash` holds the internal (reversed) order.
    bytes.reverse();
    let sequence: [u8; 4] = sequence.try_into().map_err(|_| MessageError::SequenceLength(sequence.len()))?;
    Ok(Hashblock { hash: BlockHash::from_byte_array(bytes), sequence: u32::from_le_bytes(sequence) })
}

/// Why a connection ended.
enum End {
    Stopped,
    Lost(String),
}

/// Subscribes to the feed's topic on `endpoint` (e.g. `tcp://127.0.0.1:28332`), handles every
/// message (see [`Feed`]) and wakes the follower on every (re)connection, until `stop` fires.
/// Never returns an error: an unreachable endpoint is logged and retried (with backoff up to
/// five seconds) while the follower keeps polling.
pub async fn subscribe(endpoint: String, feed: Feed, stop: CancellationToken) {
    let topic = feed.topic();
    // Each change is logged once: unavailable at start, connected, lost, back.
    let (mut ever_connected, mut unavailable_logged) = (false, false);
    let mut retry = RETRY_MIN;
    loop {
        let mut options = SocketOptions::default();
        options.connect_timeout(CONNECT_TIMEOUT);
        let mut socket = SubSocket::with_options(options);
        let mut events = socket.monitor();
        let attempt = tokio::select! {
            _ = stop.cancelled() => break,
            attempt = connect(&mut socket, &endpoint, topic) => attempt,
        };
        if let Err(error) = attempt {
            if !ever_connected && !unavailable_logged {
                tracing::warn!(%endpoint, %error, "ZMQ {topic} feed unavailable; following the chain by polling until it is up");
                unavailable_logged = true;
            }
            drop(socket);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(RETRY_MAX);
            continue;
        }
        retry = RETRY_MIN;
        if ever_connected {
            tracing::info!(%endpoint, "ZMQ {topic} feed back");
        } else {
            tracing::info!(%endpoint, "ZMQ {topic} feed connected");
            ever_connected = true;
        }
        // Blocks found before this connection were announced to nobody: look now.
        feed.wake().notify_one();
        match receive(&mut socket, &mut events, &feed, &stop).await {
            End::Stopped => break,
            End::Lost(reason) => {
                tracing::warn!(%endpoint, %reason, "ZMQ {topic} feed lost; following the chain by polling until it is back")
            }
        }
        // Dropping the socket closes the connection and the crate's own reconnection task: we
        // reconnect ourselves, with a fresh socket and our own backoff and logs.
    }
    tracing::debug!(%endpoint, "ZMQ {topic} subscriber stopped");
}

async fn connect(socket: &mut SubSocket, endpoint: &str, topic: &str) -> zeromq::ZmqResult<()> {
    socket.connect(endpoint).await?;
    socket.subscribe(topic).await
}

/// Handles each message until the connection ends or `stop` fires.
async fn receive(
    socket: &mut SubSocket,
    events: &mut (impl tokio_stream::Stream<Item = SocketEvent> + Unpin),
    feed: &Feed,
    stop: &CancellationToken,
) -> End {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return End::Stopped,
            event = events.next() => match event {
                Some(SocketEvent::Disconnected(_)) => return End::Lost("bitcoind closed the connection".into()),
                Some(_) => {}
                None => return End::Lost("the socket's monitor closed".into()),
            },
            message = socket.recv() => match message {
                Ok(message) => on_message(&message, feed),
                Err(error) => return End::Lost(error.to_string()),
            },
        }
    }
}

fn on_message(message: &ZmqMessage, feed: &Feed) {
    let parts: Vec<&[u8]> = message.iter().map(|part| part.as_ref()).collect();
    match feed {
        Feed::Hashblock { wake } => match parse_hashblock(&parts) {
            Ok(Hashblock { hash, sequence }) => {
                tracing::debug!(%hash, sequence, "ZMQ hashblock notification");
                wake.notify_one();
            }
            Err(error) => tracing::warn!(%error, "ignoring a malformed ZMQ hashblock message"),
        },
        Feed::Rawblock { wake, blocks } => {
            let offered = parse_rawblock(&parts)
                .ok()
                .and_then(|(block, sequence)| Some((blocks.offer(block.to_vec())?, sequence)));
            match offered {
                Some((hash, sequence)) => {
                    tracing::debug!(%hash, sequence, "ZMQ rawblock notification");
                    wake.notify_one();
                }
                None => tracing::warn!("ignoring a malformed ZMQ rawblock message"),
            }
        }
        Feed::Rawtx { txs, .. } => match parse_rawtx(&parts) {
            Ok((tx, sequence)) => {
                tracing::trace!(txid = %tx.compute_txid(), sequence, "ZMQ rawtx notification");
                // A full queue means the follower is behind: the mempool poll catches up.
                let _ = txs.try_send(tx);
            }
            Err(error) => tracing::warn!(%error, "ignoring a malformed ZMQ rawtx message"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENESIS: &str = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206";

    fn message(topic: &[u8], hash: &[u8], sequence: &[u8]) -> Vec<Vec<u8>> {
        vec![topic.to_vec(), hash.to_vec(), sequence.to_vec()]
    }

    #[test]
    fn parses_bitcoinds_layout() {
        let hash = hex::decode(GENESIS).unwrap();
        let parsed = parse_hashblock(&message(b"hashblock", &hash, &[7, 1, 0, 0])).unwrap();
        // Display order on the wire: the hash reads back as bitcoind prints it.
        assert_eq!(parsed.hash.to_string(), GENESIS);
        assert_eq!(parsed.hash, GENESIS.parse::<BlockHash>().unwrap());
        assert_eq!(parsed.sequence, 263);
        let last = parse_hashblock(&message(b"hashblock", &hash, &u32::MAX.to_le_bytes())).unwrap();
        assert_eq!(last.sequence, u32::MAX);
    }

    #[test]
    fn refuses_malformed_messages() {
        let hash = hex::decode(GENESIS).unwrap();
        let seq = [0u8; 4];
        assert_eq!(parse_hashblock(&[b"hashblock".to_vec(), hash.clone()]), Err(MessageError::Parts(2)));
        let mut four = message(b"hashblock", &hash, &seq);
        four.push(Vec::new());
        assert_eq!(parse_hashblock(&four), Err(MessageError::Parts(4)));
        assert_eq!(parse_hashblock::<Vec<u8>>(&[]), Err(MessageError::Parts(0)));
        assert_eq!(parse_hashblock(&message(b"hashtx", &hash, &seq)), Err(MessageError::Topic("hashtx".into())));
        assert_eq!(parse_hashblock(&message(b"hashblock", &hash[..31], &seq)), Err(MessageError::HashLength(31)));
        let mut long = hash.clone();
        long.push(0);
        assert_eq!(parse_hashblock(&message(b"hashblock", &long, &seq)), Err(MessageError::HashLength(33)));
        assert_eq!(parse_hashblock(&message(b"hashblock", &hash, &[0; 8])), Err(MessageError::SequenceLength(8)));
        assert_eq!(parse_hashblock(&message(b"hashblock", &hash, &[])), Err(MessageError::SequenceLength(0)));
    }

    /// A publisher on `endpoint` that hands subscriptions up (XPUB), so that the test knows when
    /// the subscriber is listening instead of guessing.
    async fn bind_publisher(endpoint: &str) -> (zeromq::XPubSocket, String) {
        use zeromq::Socket as _;
        let mut socket = zeromq::XPubSocket::new();
        let bound = socket.bind(endpoint).await.unwrap().to_string();
        (socket, bound)
    }

    async fn subscribed(publisher: &mut zeromq::XPubSocket) {
        let subscription = publisher.recv().await.unwrap();
        let subscription = subscription.get(0).unwrap().as_ref().to_vec();
        assert!(subscription == b"\x01hashblock" || subscription == b"\x01rawblock", "{subscription:?}");
    }

    async fn publish(publisher: &mut zeromq::XPubSocket, parts: Vec<Vec<u8>>) {
        use zeromq::SocketSend as _;
        let parts: Vec<bytes::Bytes> = parts.into_iter().map(Into::into).collect();
        publisher.send(ZmqMessage::try_from(parts).unwrap()).await.unwrap();
    }

    /// (Reconnection after a restart is tested against the regtest node's publisher, which
    /// closes its connections when it goes down: `tests/tests/regtest_zmq.rs`, and end to end in
    /// `tests/tests/e2e_zmq.rs`.)
    #[tokio::test]
    async fn wakes_the_follower_on_each_notification_and_ignores_malformed_ones() {
        let test = async {
            let (mut publisher, endpoint) = bind_publisher("tcp://127.0.0.1:0").await;
            let wake = Arc::new(Notify::new());
            let stop = CancellationToken::new();
            let task = tokio::spawn(subscribe(endpoint, Feed::Hashblock { wake: wake.clone() }, stop.clone()));
            subscribed(&mut publisher).await;
            wake.notified().await; // on connection
            let hash = hex::decode(GENESIS).unwrap();
            publish(&mut publisher, message(b"hashblock", &hash[..20], &[0; 4])).await; // ignored
            publish(&mut publisher, message(b"hashblock", &hash, &[1, 0, 0, 0])).await;
            wake.notified().await;
            publish(&mut publisher, vec![b"hashblock".to_vec()]).await; // ignored
            publish(&mut publisher, message(b"hashblock", &hash, &[2, 0, 0, 0])).await;
            wake.notified().await;
            stop.cancel();
            task.await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(30), test).await.expect("bounded");
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_never_blocks_shutdown() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let feed = Feed::Hashblock { wake: Arc::new(Notify::new()) };
        let task = tokio::spawn(subscribe(format!("tcp://127.0.0.1:{port}"), feed, stop.clone()));
        tokio::task::yield_now().await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops at once").unwrap();
    }

    fn regtest_genesis() -> (BlockHash, Vec<u8>) {
        let genesis = bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest);
        (genesis.block_hash(), bitcoin::consensus::serialize(&genesis))
    }

    #[test]
    fn rawblock_messages_are_parsed_and_offered_blocks_are_bounded() {
        let (hash, raw) = regtest_genesis();
        let parts = message(b"rawblock", &raw, &[5, 0, 0, 0]);
        assert_eq!(parse_rawblock(&parts), Ok((raw.as_slice(), 5)));
        assert_eq!(parse_rawblock(&message(b"hashblock", &raw, &[0; 4])), Err(MessageError::Topic("hashblock".into())));
        assert_eq!(parse_rawblock(&message(b"rawblock", &raw, &[0; 3])), Err(MessageError::SequenceLength(3)));
        assert_eq!(parse_rawblock(&[b"rawblock".to_vec()]), Err(MessageError::Parts(1)));

        let offered = OfferedBlocks::default();
        assert_eq!(offered.offer(raw[..79].to_vec()), None, "shorter than a header");
        assert_eq!(offered.offer(raw.clone()), Some(hash));
        assert_eq!(offered.take(&hash), Some(raw.clone()));
        assert_eq!(offered.take(&hash), None, "taken once");
        // Only the newest MAX_OFFERED stay: headers differing by their nonce.
        let mut hashes = Vec::new();
        for nonce in 0..=MAX_OFFERED as u32 {
            let mut block = raw.clone();
            block[76..80].copy_from_slice(&nonce.to_le_bytes());
            hashes.push(offered.offer(block).unwrap());
        }
        assert_eq!(offered.take(&hashes[0]), None);
        assert!(hashes[1..].iter().all(|h| offered.take(h).is_some()));
    }

    #[tokio::test]
    async fn offers_each_rawblock_and_wakes_the_follower() {
        let test = async {
            let (mut publisher, endpoint) = bind_publisher("tcp://127.0.0.1:0").await;
            let (wake, blocks) = (Arc::new(Notify::new()), Arc::new(OfferedBlocks::default()));
            let stop = CancellationToken::new();
            let feed = Feed::Rawblock { wake: wake.clone(), blocks: blocks.clone() };
            let task = tokio::spawn(subscribe(endpoint, feed, stop.clone()));
            subscribed(&mut publisher).await;
            wake.notified().await; // on connection
            let (hash, raw) = regtest_genesis();
            publish(&mut publisher, message(b"rawblock", &raw[..40], &[0; 4])).await; // ignored
            publish(&mut publisher, message(b"rawblock", &raw, &[1, 0, 0, 0])).await;
            wake.notified().await;
            assert_eq!(blocks.take(&hash), Some(raw));
            stop.cancel();
            task.await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(30), test).await.expect("bounded");
    }
}
