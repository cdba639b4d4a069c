//! The appointment a user hands the tower, and the UUID the reference tower keys it by.

use std::fmt;

use bitcoin::hashes::{ripemd160, Hash};

use super::ids::{Locator, UserId};

/// What a user asks the tower to watch for: when `locator` shows up on chain, decrypt
/// `encrypted_blob` with the dispute's txid and broadcast the penalty inside.
#[derive(Clone, PartialEq, Eq)]
pub struct Appointment {
    /// The dispute's locator.
    pub locator: Locator,
    /// The penalty, encrypted under the dispute txid.
    pub encrypted_blob: Vec<u8>,
    /// The CSV delay of the commitment's to_self output, in blocks.
    pub to_self_delay: u32,
}

impl Appointment {
    /// The bytes a user signs: `locator ‖ encrypted_blob ‖ to_self_delay (u32 big-endian)`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.encrypted_blob.len() + 4);
        out.extend_from_slice(self.locator.as_bytes());
        out.extend_from_slice(&self.encrypted_blob);
        out.extend_from_slice(&self.to_self_delay.to_be_bytes());
        out
    }
}

impl fmt::Debug for Appointment {
    // The blob is the user's secret-until-breach: log its size, never its bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Appointment")
            .field("locator", &self.locator)
            .field("blob_len", &self.encrypted_blob.len())
            .field("to_self_delay", &self.to_self_delay)
            .finish()
    }
}

/// `RIPEMD160(locator ‖ user_id)`: the reference tower's key for one user's appointment at one
/// locator, shown by admin tools.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uuid(pub [u8; 20]);

impl Uuid {
    /// The UUID of `user`'s appointment at `locator`.
    pub fn new(locator: &Locator, user: &UserId) -> Self {
        let mut engine = ripemd160::Hash::engine();
        bitcoin::hashes::HashEngine::input(&mut engine, locator.as_bytes());
        bitcoin::hashes::HashEngine::input(&mut engine, &user.to_bytes());
        Uuid(ripemd160::Hash::from_engine(engine).to_byte_array())
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}
