//! The two TEOS client families the tower serves (reference-tower.md §10). Each user speaks one,
//! chosen at its first registration: `{"user_id"}` makes a rust-teos user (Core Lightning's
//! `watchtower-client`, rust-teos's own client), `{"public_key"}` a python-teos user (python-teos's
//! `teos_client.py` and plugin). They differ in three places only:
//!
//! | | rust | python |
//! |---|---|---|
//! | locator | first 16 bytes of the txid, internal order | first 16 bytes of the txid, display order |
//! | blob key | SHA256 of the txid, internal order | SHA256 of the txid, display order |
//! | registration receipt | `user ‖ slots ‖ start ‖ expiry` (45 B) | `user ‖ slots ‖ expiry` (41 B) |
//! | appointment receipt | the user signature's zbase32 *text* ‖ start | its decoded 65 bytes ‖ start |
//!
//! Signed requests, the message-signing scheme and the tower key are the same for both.

use bitcoin::hashes::Hash;
use bitcoin::Txid;

use super::ids::{Locator, UserId, LOCATOR_LEN};
use super::receipts::{appointment_receipt_bytes, registration_receipt_bytes};
use super::signing::zbase32;

/// Which client family a user speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// rust-teos and Core Lightning's `watchtower-client`: internal byte order.
    #[default]
    Rust,
    /// python-teos (`teos_client.py`): display byte order, its own receipt layouts.
    Python,
}

impl Dialect {
    /// Both, rust first.
    pub const ALL: [Dialect; 2] = [Dialect::Rust, Dialect::Python];

    /// Its name in logs and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Rust => "rust",
            Dialect::Python => "python",
        }
    }

    /// The txid's bytes in this dialect's order: what its locator and blob key are cut from.
    pub fn txid_bytes(self, txid: &Txid) -> [u8; 32] {
        let mut bytes = txid.to_byte_array();
        if self == Dialect::Python {
            bytes.reverse();
        }
        bytes
    }

    /// The locator a client of this dialect derives from a dispute txid.
    pub fn locator(self, txid: &Txid) -> Locator {
        let bytes = self.txid_bytes(txid);
        let mut locator = [0u8; LOCATOR_LEN];
        locator.copy_from_slice(&bytes[..LOCATOR_LEN]);
        Locator::from_array(locator)
    }

    /// The bytes the tower signs when it registers `user` (see the module table).
    pub fn registration_receipt(self, user: &UserId, slots: u32, start: u32, expiry: u32) -> Vec<u8> {
        let rust = registration_receipt_bytes(user, slots, start, expiry);
        match self {
            Dialect::Rust => rust.to_vec(),
            // The same without `start` (bytes 37..41).
            Dialect::Python => [&rust[..37], &rust[41..]].concat(),
        }
    }

    /// The bytes the tower signs when it accepts an appointment signed with `user_signature`
    /// (see the module table). `None` if a python user's signature is not zbase32 (it always is
    /// once it has been recovered).
    pub fn appointment_receipt(self, user_signature: &str, start_block: u32) -> Option<Vec<u8>> {
        match self {
            Dialect::Rust => Some(appointment_receipt_bytes(user_signature, start_block)),
            Dialect::Python => {
                let mut out = zbase32().decode(user_signature.as_bytes()).ok()?;
                out.extend_from_slice(&start_block.to_be_bytes());
                Some(out)
            }
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    /// reference-tower.md §3.2: display txid `d6ac…a1b4`.
    const DISPLAY_TXID: &str = "d6ac4a5e61657c4c604dcde855a1db74ec6b3e54f32695d72c5e11c7761ea1b4";

    #[test]
    fn locators_follow_each_dialects_byte_order() {
        let txid = Txid::from_str(DISPLAY_TXID).unwrap();
        assert_eq!(Dialect::Rust.locator(&txid).to_string(), "b4a11e76c7115e2cd79526f3543e6bec");
        // python-teos: `txid_hex[:32]`.
        assert_eq!(Dialect::Python.locator(&txid).to_string(), DISPLAY_TXID[..32]);
        assert_eq!(Dialect::Rust.locator(&txid), Locator::from_txid(&txid));
    }

    #[test]
    fn receipts_have_each_dialects_layout() {
        let user = UserId::from_str("034f355bdcb7cc0af728ef3cceb9615d90684bb5b2ca5f859ab0f0b704075871aa").unwrap();
        let rust = Dialect::Rust.registration_receipt(&user, 21, 100, 600);
        assert_eq!(rust, crate::protocol::registration_receipt_bytes(&user, 21, 100, 600));
        let python = Dialect::Python.registration_receipt(&user, 21, 100, 600);
        assert_eq!(python.len(), 41);
        assert_eq!(python[..37], rust[..37]);
        assert_eq!(python[37..], 600u32.to_be_bytes());
        let sig =
            "d9p9eu5na6jn9ppw1s57tgzrar5cejkdo9hqbwc7soih9wbrdmn9qanwrhr76w4aef4fr8h7wod7q3z56drh5tihyjd1ukcpeujp5w7x";
        let rust = Dialect::Rust.appointment_receipt(sig, 100).unwrap();
        assert_eq!(rust, crate::protocol::appointment_receipt_bytes(sig, 100));
        let python = Dialect::Python.appointment_receipt(sig, 100).unwrap();
        assert_eq!(python.len(), 69);
        assert_eq!(python[65..], 100u32.to_be_bytes());
        assert_eq!(Dialect::Python.appointment_receipt("not zbase32!", 100), None);
    }
}
