//! Fixtures shared by the unit tests: transactions and trackers, an in-memory chain that mines
//! real (regtest proof-of-work) blocks and can reorg or go down, a scripted broadcaster, a store
//! whose writes can be made to fail, and a [`Scene`] wiring them to the real domain and follower.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bitcoin::block::{Header, Version};
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{
    absolute, transaction, Amount, Block, BlockHash, CompactTarget, Network, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxMerkleNode, TxOut, Txid, Witness,
};
use tokio::sync::watch;

use crate::chain::follower::FollowerSettings;
use crate::chain::{
    BlockSource, BroadcastOutcome, Broadcaster, ChainFollower, ChainInfo, ChainStatus, FetchedBlock, HeaderInfo,
    SourceError,
};
use crate::config::Policy;
use crate::locks::UserLocks;
use crate::protocol::{encrypt_penalty_as, Appointment, Dialect, TowerSigner, UserId};
use crate::store::{Kv, KvError, MemoryKv, Op, PenaltyStatus, Store, StoredAppointment, TrackerRecord, UserRecord};
use crate::watcher::Watcher;

/// A one-input, one-output transaction spending `prev`.
pub fn spending(prev: OutPoint) -> Transaction {
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: prev,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut { value: Amount::from_sat(1000), script_pubkey: ScriptBuf::new() }],
    }
}

/// A tracker whose dispute is derived from `seed` and whose penalty spends the dispute's output 0.
pub fn tracker(seed: u8, dispute_height: u32, status: PenaltyStatus) -> TrackerRecord {
    let (dispute, penalty) = channel(seed);
    TrackerRecord { dispute_txid: dispute.compute_txid(), penalty, dispute_height, to_self_delay: 144, status }
}

/// A dispute derived from `seed` and a penalty spending its output 0.
pub fn channel(seed: u8) -> (Transaction, Transaction) {
    let dispute = spending(OutPoint { txid: Txid::from_byte_array([seed; 32]), vout: 0 });
    let penalty = spending(OutPoint { txid: dispute.compute_txid(), vout: 0 });
    (dispute, penalty)
}

/// The user whose secret key is `[n; 32]`.
pub fn user(n: u8) -> UserId {
    let key = SecretKey::from_slice(&[n; 32]).expect("a valid secret key");
    UserId(PublicKey::from_secret_key(&Secp256k1::new(), &key))
}

/// User number `i` of a family `tag` (as many as wanted, all distinct).
pub fn numbered_user(tag: u8, i: u32) -> UserId {
    let mut bytes = [tag; 32];
    bytes[28..].copy_from_slice(&(i + 1).to_be_bytes());
    let key = SecretKey::from_slice(&bytes).expect("a valid secret key");
    UserId(PublicKey::from_secret_key(&Secp256k1::new(), &key))
}

/// A block chain in memory: regtest blocks with real proof of work, a best chain that can be
/// cut back and grown on another branch, and a switch that makes it unreachable.
#[derive(Debug)]
pub struct FakeChain {
    state: Mutex<ChainState>,
    down: AtomicBool,
}

#[derive(Debug)]
struct ChainState {
    blocks: HashMap<BlockHash, (u32, Block)>,
    /// The best chain's hashes by height.
    best: Vec<BlockHash>,
    mined: u32,
    mempool: Vec<Transaction>,
}

impl Default for FakeChain {
    fn default() -> Self {
        FakeChain::new()
    }
}

impl FakeChain {
    /// A chain holding regtest's genesis block.
    pub fn new() -> Self {
        let genesis = bitcoin::blockdata::constants::genesis_block(Network::Regtest);
        let hash = genesis.block_hash();
        let state = ChainState {
            blocks: HashMap::from([(hash, (0, genesis))]),
            best: vec![hash],
            mined: 0,
            mempool: Vec::new(),
        };
        FakeChain { state: Mutex::new(state), down: AtomicBool::new(false) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ChainState> {
        self.state.lock().expect("chain lock")
    }

    /// Mines a block holding `txs` on the tip and returns it.
    pub fn mine(&self, txs: Vec<Transaction>) -> Block {
        let mut state = self.state();
        let (height, prev) = (state.best.len() as u32, *state.best.last().expect("genesis"));
        state.mined += 1;
        let mut coinbase = spending(OutPoint::null());
        coinbase.input[0].script_sig = ScriptBuf::from_bytes(state.mined.to_le_bytes().to_vec());
        let txdata: Vec<Transaction> = std::iter::once(coinbase).chain(txs).collect();
        let root = bitcoin::merkle_tree::calculate_root(txdata.iter().map(|tx| tx.compute_txid().to_raw_hash()));
        let mut header = Header {
            version: Version::TWO,
            prev_blockhash: prev,
            merkle_root: root.map(TxMerkleNode::from_raw_hash).expect("a coinbase"),
            time: 1_700_000_000 + height,
            bits: CompactTarget::from_consensus(0x207f_ffff),
            nonce: 0,
        };
        while header.validate_pow(header.target()).is_err() {
            header.nonce += 1;
        }
        let block = Block { header, txdata };
        let hash = block.block_hash();
        let mined: std::collections::HashSet<Txid> = block.txdata.iter().map(Transaction::compute_txid).collect();
        state.mempool.retain(|tx| !mined.contains(&tx.compute_txid()));
        state.blocks.insert(hash, (height, block.clone()));
        state.best.push(hash);
        block
    }

    /// Puts `tx` in the mempool (until a block mines it, or [`FakeChain::evict`]).
    pub fn add_to_mempool(&self, tx: Transaction) {
        self.state().mempool.push(tx);
    }

    /// Takes `txid` out of the mempool (replaced, say).
    pub fn evict(&self, txid: &Txid) {
        self.state().mempool.retain(|tx| tx.compute_txid() != *txid);
    }

    /// Mines `n` empty blocks.
    pub fn mine_empty(&self, n: u32) {
        for _ in 0..n {
            self.mine(Vec::new());
        }
    }

    /// Takes the tip off the best chain (as `invalidateblock` would); it stays known.
    pub fn disconnect_tip(&self) -> BlockHash {
        self.state().best.pop().expect("a block above genesis")
    }

    /// Height of the best block.
    pub fn height(&self) -> u32 {
        self.state().best.len() as u32 - 1
    }

    /// Makes every call fail as if the node were down (or back).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn reachable(&self) -> Result<(), SourceError> {
        match self.down.load(Ordering::SeqCst) {
            true => Err(SourceError::Unreachable("connection refused".into())),
            false => Ok(()),
        }
    }
}

#[async_trait]
impl BlockSource for FakeChain {
    async fn chain_info(&self) -> Result<ChainInfo, SourceError> {
        self.reachable()?;
        Ok(ChainInfo { chain: "regtest".into(), height: self.height() })
    }

    async fn best_block_hash(&self) -> Result<BlockHash, SourceError> {
        self.reachable()?;
        Ok(*self.state().best.last().expect("genesis"))
    }

    async fn header(&self, hash: &BlockHash) -> Result<HeaderInfo, SourceError> {
        self.reachable()?;
        let state = self.state();
        let (height, block) = state.blocks.get(hash).ok_or_else(|| SourceError::NotFound(hash.to_string()))?;
        let prev = (*height > 0).then_some(block.header.prev_blockhash);
        Ok(HeaderInfo { hash: *hash, height: *height, prev })
    }

    async fn block(&self, hash: &BlockHash) -> Result<FetchedBlock, SourceError> {
        self.reachable()?;
        let state = self.state();
        let (_, block) = state.blocks.get(hash).ok_or_else(|| SourceError::NotFound(hash.to_string()))?;
        Ok(FetchedBlock { block: block.clone(), origin: "fake" })
    }

    async fn mempool_txids(&self) -> Result<Vec<Txid>, SourceError> {
        self.reachable()?;
        Ok(self.state().mempool.iter().map(Transaction::compute_txid).collect())
    }

    async fn mempool_transaction(&self, txid: &Txid) -> Result<Option<Transaction>, SourceError> {
        self.reachable()?;
        Ok(self.state().mempool.iter().find(|tx| tx.compute_txid() == *txid).cloned())
    }
}

/// A broadcaster that records what it is asked to send and answers as scripted: `Accepted`
/// unless told otherwise for a transaction, or unreachable while down.
#[derive(Debug, Default)]
pub struct FakeBroadcaster {
    sent: Mutex<Vec<Txid>>,
    answers: Mutex<HashMap<Txid, VecDeque<BroadcastOutcome>>>,
    down: AtomicBool,
}

impl FakeBroadcaster {
    /// Answers the next sends of `txid` with `outcomes`, in order (then `Accepted`).
    pub fn answer(&self, txid: Txid, outcomes: impl IntoIterator<Item = BroadcastOutcome>) {
        self.answers.lock().expect("answers").entry(txid).or_default().extend(outcomes);
    }

    /// Makes every send fail as if the node were down (or back).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// How many times `txid` was sent (while reachable).
    pub fn sends_of(&self, txid: &Txid) -> usize {
        self.sent.lock().expect("sent").iter().filter(|t| *t == txid).count()
    }

    /// Every transaction sent, in order.
    pub fn sent(&self) -> Vec<Txid> {
        self.sent.lock().expect("sent").clone()
    }
}

impl Broadcaster for FakeBroadcaster {
    fn broadcast(&self, tx: &Transaction) -> Result<BroadcastOutcome, SourceError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SourceError::Unreachable("connection refused".into()));
        }
        let txid = tx.compute_txid();
        self.sent.lock().expect("sent").push(txid);
        let scripted = self.answers.lock().expect("answers").get_mut(&txid).and_then(VecDeque::pop_front);
        Ok(scripted.unwrap_or(BroadcastOutcome::Accepted))
    }
}

/// A memory store whose writes can be made to fail (a full disk, a crash before the commit).
#[derive(Debug)]
pub struct FailingKv {
    inner: MemoryKv,
    failing: AtomicBool,
    /// Writes left before they start failing (`usize::MAX`: never).
    writes_left: std::sync::atomic::AtomicUsize,
}

impl Default for FailingKv {
    fn default() -> Self {
        FailingKv {
            inner: MemoryKv::new(),
            failing: AtomicBool::new(false),
            writes_left: std::sync::atomic::AtomicUsize::new(usize::MAX),
        }
    }
}

impl FailingKv {
    /// Makes writes fail (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
        self.writes_left.store(usize::MAX, Ordering::SeqCst);
    }

    /// Lets `n` more writes through, then fails every one (until [`FailingKv::set_failing`]).
    pub fn fail_after(&self, n: usize) {
        self.writes_left.store(n, Ordering::SeqCst);
    }
}

impl Kv for FailingKv {
    fn get(&self, cf: crate::store::Cf, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.get(cf, key)
    }
    fn write(&self, ops: Vec<Op>) -> Result<(), KvError> {
        let left = self
            .writes_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n != usize::MAX).then(|| n.saturating_sub(1)));
        if self.failing.load(Ordering::SeqCst) || left == Ok(0) {
            return Err(KvError::Backend("injected write failure".into()));
        }
        self.inner.write(ops)
    }
    fn scan(
        &self,
        cf: crate::store::Cf,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<crate::store::Entries, KvError> {
        self.inner.scan(cf, prefix, from, limit)
    }
    fn range(
        &self,
        cf: crate::store::Cf,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<crate::store::Entries, KvError> {
        self.inner.range(cf, from, to, limit)
    }
    fn scan_prefixes(
        &self,
        cf: crate::store::Cf,
        prefixes: &[&[u8]],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<crate::store::Entries, KvError> {
        self.inner.scan_prefixes(cf, prefixes, after, limit)
    }
    fn prefixes_present(&self, cf: crate::store::Cf, prefixes: &[&[u8]]) -> Result<Vec<bool>, KvError> {
        self.inner.prefixes_present(cf, prefixes)
    }
    fn compact(&self) -> Result<(), KvError> {
        self.inner.compact()
    }
}

/// The policy the domain tests run with.
pub fn policy() -> Policy {
    Policy {
        subscription_slots: 10,
        subscription_duration: 3000,
        expiry_delta: 5,
        min_to_self_delay: 20,
        max_blob_size: 2048,
        recent_block_lookback: 6,
        rebroadcast_after: 3,
        max_slots_per_user: 100,
        max_users: 100_000,
    }
}

/// The real domain and follower over a [`FakeChain`], a [`FakeBroadcaster`] and a memory store
/// whose writes can fail. [`Scene::restart`] makes a new tower over the same store, as after a
/// crash.
#[derive(Debug)]
pub struct Scene {
    /// The chain.
    pub chain: Arc<FakeChain>,
    /// The broadcaster.
    pub broadcaster: Arc<FakeBroadcaster>,
    /// The store's backend.
    pub kv: Arc<FailingKv>,
    /// The store.
    pub store: Store,
    /// The Watcher (request side too).
    pub watcher: Arc<Watcher>,
    /// The follower.
    pub follower: ChainFollower,
    /// The locks the follower shares with requests.
    pub locks: Arc<UserLocks>,
    height: watch::Receiver<ChainStatus>,
}

impl Scene {
    /// A tower that starts following `chain` at its current tip.
    pub async fn new(chain: Arc<FakeChain>) -> Scene {
        let scene = Scene::over(chain, Arc::new(FakeBroadcaster::default()), Arc::new(FailingKv::default()));
        scene.follower.sync().await.expect("adopting the tip");
        scene
    }

    fn over(chain: Arc<FakeChain>, broadcaster: Arc<FakeBroadcaster>, kv: Arc<FailingKv>) -> Scene {
        let store = Store::with_kv(kv.clone()).expect("store");
        let signer = TowerSigner::new(SecretKey::from_slice(&[0x33; 32]).expect("key"));
        let (watcher, listeners) = crate::build_domain(&policy(), &store, signer, broadcaster.clone()).expect("domain");
        let start = store.tip().expect("tip").map_or(0, |(h, _)| h);
        let (status, _) = watch::channel(ChainStatus::starting(start));
        let settings = FollowerSettings {
            network: Network::Regtest,
            recent_block_lookback: policy().recent_block_lookback,
            mempool_poll: Some(std::time::Duration::ZERO),
        };
        let locks = Arc::new(UserLocks::default());
        let follower = ChainFollower::new(chain.clone(), store.clone(), locks.clone(), listeners, settings, status)
            .expect("the follower's thread");
        let height = follower.status();
        Scene { chain, broadcaster, kv, store, watcher, follower, locks, height }
    }

    /// A new tower over the same chain, broadcaster and store (a restart after a crash).
    pub fn restart(&self) -> Scene {
        Scene::over(self.chain.clone(), self.broadcaster.clone(), self.kv.clone())
    }

    /// The height the follower published last.
    pub fn height(&self) -> u32 {
        self.height.borrow().tip_height
    }

    /// Mines `txs` in a block and lets the tower process it.
    pub async fn mine(&self, txs: Vec<Transaction>) -> Block {
        let block = self.chain.mine(txs);
        self.sync().await;
        block
    }

    /// Mines `n` empty blocks and lets the tower process them.
    pub async fn mine_empty(&self, n: u32) {
        self.chain.mine_empty(n);
        self.sync().await;
    }

    /// One round of the follower, which must succeed.
    pub async fn sync(&self) {
        self.follower.sync_round().await.expect("sync");
        assert_eq!(self.height(), self.chain.height(), "the tower follows the chain");
    }

    /// Registers `user` (a rust-teos client) at the tower's height.
    pub fn register(&self, user: &UserId) -> UserRecord {
        self.register_as(user, Dialect::Rust)
    }

    /// Registers `user`, a `dialect` client, at the tower's height.
    pub fn register_as(&self, user: &UserId, dialect: Dialect) -> UserRecord {
        self.watcher.gatekeeper().register(user, self.height(), dialect).expect("register")
    }

    /// Stores `user`'s appointment for `penalty` (encrypted under `dispute`'s txid), as an
    /// accepted request would, charging a slot; returns whether a late check was queued.
    pub fn add_appointment(&self, user: &UserId, dispute: &Transaction, penalty: &Transaction) -> bool {
        self.add_appointment_as(user, dispute, penalty, Dialect::Rust)
    }

    /// [`Scene::add_appointment`] as a `dialect` client builds it (its locator and blob key).
    pub fn add_appointment_as(
        &self,
        user: &UserId,
        dispute: &Transaction,
        penalty: &Transaction,
        dialect: Dialect,
    ) -> bool {
        let txid = dispute.compute_txid();
        let appointment = Appointment {
            locator: dialect.locator(&txid),
            encrypted_blob: encrypt_penalty_as(penalty, &txid, dialect),
            to_self_delay: 42,
        };
        self.store_appointment(user, appointment)
    }

    /// Stores `appointment` for `user` as an accepted request would.
    pub fn store_appointment(&self, user: &UserId, appointment: Appointment) -> bool {
        let _guard = self.locks.lock(user);
        let receipt =
            self.watcher.store_appointment(user, appointment, "y".repeat(104), self.height()).expect("stored");
        receipt.late_dispute
    }

    /// `user`'s tracker at `dispute`'s locator (in the user's dialect).
    pub fn tracker(&self, user: &UserId, dispute: &Transaction) -> Option<TrackerRecord> {
        let dialect = self.user(user).map_or(Dialect::Rust, |r| r.dialect);
        self.store.tracker(&dialect.locator(&dispute.compute_txid()), user).expect("store")
    }

    /// `user`'s appointment at `dispute`'s locator (in the user's dialect).
    pub fn appointment(&self, user: &UserId, dispute: &Transaction) -> Option<StoredAppointment> {
        let record = self.store.user(user).expect("store")?;
        self.store.appointment(&record.dialect.locator(&dispute.compute_txid()), &record).expect("store")
    }

    /// `user`'s subscription.
    pub fn user(&self, user: &UserId) -> Option<UserRecord> {
        self.store.user(user).expect("store")
    }
}
