//! The TEOS wire protocol: identities, locators, encrypted blobs, message signing, appointments,
//! receipts and UUIDs, byte-compatible with the reference tower (see
//! `docs/architecture.md` and the vectors in this module's tests).

mod appointment;
mod crypto;
mod dialect;
mod ids;
mod receipts;
mod signing;

pub use appointment::{Appointment, Uuid};
pub use crypto::{decrypt_penalty, decrypt_penalty_as, encrypt_penalty, encrypt_penalty_as, DecryptError};
pub use dialect::Dialect;
pub use ids::{IdError, Locator, TowerId, UserId, LOCATOR_LEN, USER_ID_LEN};
pub use receipts::{appointment_receipt_bytes, registration_receipt_bytes};
pub use signing::{recover_signer, sign_message, zbase32, SignatureError, TowerSigner, SIGNATURE_ZBASE32_LEN};

#[cfg(test)]
mod vectors;
