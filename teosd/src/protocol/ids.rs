//! User and tower identities (33-byte compressed secp256k1 keys) and locators.

use std::fmt;
use std::str::FromStr;

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::PublicKey;
use bitcoin::Txid;

/// Length of a serialized user or tower id.
pub const USER_ID_LEN: usize = 33;
/// Length of a locator.
pub const LOCATOR_LEN: usize = 16;

/// Why bytes or text could not be turned into an id or a locator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The input had the wrong number of bytes.
    #[error("expected {expected} bytes, received {received}")]
    WrongSize {
        /// Bytes required.
        expected: usize,
        /// Bytes given.
        received: usize,
    },
    /// 33 bytes that are not a valid compressed secp256k1 point.
    #[error("not a valid 33-byte compressed public key")]
    NotAPoint,
    /// The text was not hex.
    #[error("not hex encoded")]
    NotHex,
}

/// A user's id: the compressed secp256k1 public key that signs its requests.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub PublicKey);

/// The tower's id: its public key, in the same form as a [`UserId`].
pub type TowerId = UserId;

impl UserId {
    /// Parses 33 bytes of a compressed SEC1 key.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
        if bytes.len() != USER_ID_LEN {
            return Err(IdError::WrongSize { expected: USER_ID_LEN, received: bytes.len() });
        }
        PublicKey::from_slice(bytes).map(UserId).map_err(|_| IdError::NotAPoint)
    }

    /// The 33-byte compressed serialization.
    pub fn to_bytes(&self) -> [u8; USER_ID_LEN] {
        self.0.serialize()
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.to_bytes()))
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({self})")
    }
}

impl FromStr for UserId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s).map_err(|_| IdError::NotHex)?;
        Self::from_slice(&bytes)
    }
}

/// The first 16 bytes of a dispute txid in internal byte order: how the tower recognises a breach
/// without learning anything about the channel before it happens.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locator([u8; LOCATOR_LEN]);

impl Locator {
    /// The locator of a transaction id.
    pub fn from_txid(txid: &Txid) -> Self {
        let mut bytes = [0u8; LOCATOR_LEN];
        bytes.copy_from_slice(&txid.as_byte_array()[..LOCATOR_LEN]);
        Locator(bytes)
    }

    /// The locator with these bytes.
    pub fn from_array(bytes: [u8; LOCATOR_LEN]) -> Self {
        Locator(bytes)
    }

    /// Parses exactly 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
        <[u8; LOCATOR_LEN]>::try_from(bytes)
            .map(Locator)
            .map_err(|_| IdError::WrongSize { expected: LOCATOR_LEN, received: bytes.len() })
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; LOCATOR_LEN] {
        &self.0
    }
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Locator({self})")
    }
}

impl FromStr for Locator {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s).map_err(|_| IdError::NotHex)?;
        Self::from_slice(&bytes)
    }
}
