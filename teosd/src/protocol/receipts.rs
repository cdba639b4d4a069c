//! The byte layouts the tower signs to give users proof of what it promised.

use super::ids::UserId;

/// Registration receipt: `user_id(33) ‖ slots ‖ start ‖ expiry` (u32 big-endian each), 45 bytes.
pub fn registration_receipt_bytes(user: &UserId, slots: u32, start: u32, expiry: u32) -> [u8; 45] {
    let mut out = [0u8; 45];
    out[..33].copy_from_slice(&user.to_bytes());
    out[33..37].copy_from_slice(&slots.to_be_bytes());
    out[37..41].copy_from_slice(&start.to_be_bytes());
    out[41..45].copy_from_slice(&expiry.to_be_bytes());
    out
}

/// Appointment receipt: the ASCII text of the user's zbase32 signature, then `start_block`
/// (u32 big-endian). The reference signs the text, not the decoded bytes, and clients check that.
pub fn appointment_receipt_bytes(user_signature: &str, start_block: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_signature.len() + 4);
    out.extend_from_slice(user_signature.as_bytes());
    out.extend_from_slice(&start_block.to_be_bytes());
    out
}
