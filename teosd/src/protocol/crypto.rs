//! Penalty encryption: ChaCha20-Poly1305 (RFC 8439) keyed by SHA256 of the dispute txid in
//! internal byte order (display order for python-teos users, see [`Dialect`]), with a zero nonce and no associated data. Each key encrypts exactly one
//! message (the penalty for that one dispute), which is what makes the fixed nonce safe.

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::{Transaction, Txid};
use chacha20poly1305::aead::Aead;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce};

use super::dialect::Dialect;

/// Length of the Poly1305 tag that ends every blob.
const TAG_LEN: usize = 16;

/// Why a blob did not yield a penalty transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// Shorter than the authentication tag.
    #[error("blob of {0} bytes is shorter than the 16-byte tag")]
    TooShort(usize),
    /// The tag did not verify: wrong key (not this dispute) or tampered data.
    #[error("blob does not decrypt with this dispute's txid")]
    WrongKey,
    /// Decrypted, but the plaintext is not exactly one consensus-encoded transaction.
    #[error("decrypted blob is not a transaction: {0}")]
    NotATransaction(String),
}

fn cipher_for(dispute_txid: &Txid, dialect: Dialect) -> ChaCha20Poly1305 {
    let key = sha256::Hash::hash(&dialect.txid_bytes(dispute_txid));
    ChaCha20Poly1305::new(Key::from_slice(key.as_byte_array()))
}

/// Encrypts a penalty transaction under its dispute's txid (what a client does).
pub fn encrypt_penalty(penalty: &Transaction, dispute_txid: &Txid) -> Vec<u8> {
    encrypt_penalty_as(penalty, dispute_txid, Dialect::Rust)
}

/// Encrypts a penalty as a client of `dialect` does (python-teos keys by the display order).
pub fn encrypt_penalty_as(penalty: &Transaction, dispute_txid: &Txid, dialect: Dialect) -> Vec<u8> {
    encrypt_bytes(&serialize(penalty), dispute_txid, dialect)
}

pub(crate) fn encrypt_bytes(plaintext: &[u8], dispute_txid: &Txid, dialect: Dialect) -> Vec<u8> {
    cipher_for(dispute_txid, dialect)
        .encrypt(Nonce::from_slice(&[0u8; 12]), plaintext)
        // Encryption fails only for plaintexts over 256 GiB; a penalty is at most 4 MB.
        .expect("ChaCha20-Poly1305 encrypts any message under 256 GiB")
}

/// Decrypts a blob with the txid of the transaction that revealed its locator.
pub fn decrypt_penalty(blob: &[u8], dispute_txid: &Txid) -> Result<Transaction, DecryptError> {
    decrypt_penalty_as(blob, dispute_txid, Dialect::Rust)
}

/// Decrypts a blob a client of `dialect` made.
pub fn decrypt_penalty_as(blob: &[u8], dispute_txid: &Txid, dialect: Dialect) -> Result<Transaction, DecryptError> {
    if blob.len() < TAG_LEN {
        return Err(DecryptError::TooShort(blob.len()));
    }
    let plaintext = cipher_for(dispute_txid, dialect)
        .decrypt(Nonce::from_slice(&[0u8; 12]), blob)
        .map_err(|_| DecryptError::WrongKey)?;
    // `deserialize` refuses trailing bytes, so a penalty must fill the plaintext exactly.
    deserialize(&plaintext).map_err(|e| DecryptError::NotATransaction(e.to_string()))
}
