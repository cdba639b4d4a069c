//! Lightning `signmessage`-style signatures: recoverable ECDSA over
//! `SHA256d("Lightning Signed Message:" || msg)`, encoded as `[31 + recid] ‖ r ‖ s` (65 bytes) in
//! zbase32. Byte for byte what LDK's `lightning::util::message_signing` (the scheme Core
//! Lightning's plugin is built on) produces and accepts (tested against it), but on one
//! long-lived libsecp256k1 context: LDK builds and randomises a new context on every call, which
//! costs as much as the signature itself.

use std::sync::OnceLock;

use bitcoin::hashes::{sha256d, Hash, HashEngine};
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use bitcoin::secp256k1::{All, Message, PublicKey, Secp256k1, SecretKey};

use super::ids::{TowerId, UserId};

/// A zbase32 signature is always this many characters (65 bytes).
pub const SIGNATURE_ZBASE32_LEN: usize = 104;

/// What every signed message starts with.
const LN_MESSAGE_PREFIX: &[u8] = b"Lightning Signed Message:";

/// A signature that could not be decoded or recovered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signature is not a valid zbase32 recoverable signature for this message")]
pub struct SignatureError;

/// The zbase32 encoding of signatures (alphabet `ybndrfg8ejkmcpqxot1uwisza345h769`). Decoding
/// takes either case, as LDK's does; encoding is lowercase.
pub fn zbase32() -> &'static data_encoding::Encoding {
    static ZBASE32: OnceLock<data_encoding::Encoding> = OnceLock::new();
    ZBASE32.get_or_init(|| {
        const SYMBOLS: &str = "ybndrfg8ejkmcpqxot1uwisza345h769";
        let mut spec = data_encoding::Specification::new();
        spec.symbols.push_str(SYMBOLS);
        let letters: String = SYMBOLS.chars().filter(char::is_ascii_lowercase).collect();
        spec.translate.from = letters.to_ascii_uppercase();
        spec.translate.to = letters;
        spec.encoding().unwrap_or_else(|e| unreachable!("the zbase32 alphabet is a valid specification: {e}"))
    })
}

/// The one context every signature and recovery uses (randomised once, at first use).
fn context() -> &'static Secp256k1<All> {
    static CONTEXT: OnceLock<Secp256k1<All>> = OnceLock::new();
    CONTEXT.get_or_init(Secp256k1::new)
}

fn digest(msg: &[u8]) -> Message {
    let mut engine = sha256d::Hash::engine();
    engine.input(LN_MESSAGE_PREFIX);
    engine.input(msg);
    Message::from_digest(sha256d::Hash::from_engine(engine).to_byte_array())
}

/// Signs `msg` with `sk`, returning the zbase32 text.
pub fn sign_message(msg: &[u8], sk: &SecretKey) -> String {
    let signature = context().sign_ecdsa_recoverable(&digest(msg), sk);
    let (id, compact) = signature.serialize_compact();
    let mut raw = [0u8; 65];
    // A recovery id is 0..=3.
    raw[0] = 31 + id.to_i32() as u8;
    raw[1..].copy_from_slice(&compact);
    zbase32().encode(&raw)
}

/// Recovers the key that signed `msg`. Fails on anything that is not a 104-character zbase32
/// recoverable signature.
pub fn recover_signer(msg: &[u8], signature: &str) -> Result<UserId, SignatureError> {
    if signature.len() != SIGNATURE_ZBASE32_LEN {
        return Err(SignatureError);
    }
    let raw = zbase32().decode(signature.as_bytes()).map_err(|_| SignatureError)?;
    let [header, compact @ ..] = raw.as_slice() else { return Err(SignatureError) };
    let id = RecoveryId::from_i32(i32::from(*header) - 31).map_err(|_| SignatureError)?;
    let signature = RecoverableSignature::from_compact(compact, id).map_err(|_| SignatureError)?;
    context().recover_ecdsa(&digest(msg), &signature).map(UserId).map_err(|_| SignatureError)
}

/// The tower's signing identity. Its secret never appears in `Debug` output.
#[derive(Clone)]
pub struct TowerSigner {
    secret: SecretKey,
    id: TowerId,
}

impl TowerSigner {
    /// Wraps a secret key.
    pub fn new(secret: SecretKey) -> Self {
        let id = UserId(PublicKey::from_secret_key(context(), &secret));
        TowerSigner { secret, id }
    }

    /// The tower's public id.
    pub fn tower_id(&self) -> TowerId {
        self.id
    }

    /// Signs a receipt.
    pub fn sign(&self, msg: &[u8]) -> String {
        sign_message(msg, &self.secret)
    }
}

impl std::fmt::Debug for TowerSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TowerSigner").field("tower_id", &self.id).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use lightning::util::message_signing;

    use super::*;

    fn key(n: u64) -> SecretKey {
        let mut bytes = [0x42u8; 32];
        bytes[24..].copy_from_slice(&n.to_be_bytes());
        SecretKey::from_slice(&bytes).unwrap()
    }

    /// LDK's implementation is the oracle: same signatures, same keys recovered, same refusals.
    #[test]
    fn signatures_and_recoveries_match_ldk_byte_for_byte() {
        for n in 0..200u64 {
            let msg: Vec<u8> = (0..n % 97).map(|i| (i * 7 + n) as u8).collect();
            let ours = sign_message(&msg, &key(n));
            assert_eq!(ours, message_signing::sign(&msg, &key(n)), "message {n}");
            let expected = message_signing::recover_pk(&msg, &ours).unwrap();
            assert_eq!(recover_signer(&msg, &ours), Ok(UserId(expected)));
            // Either case, as LDK.
            let upper = ours.to_ascii_uppercase();
            assert_eq!(message_signing::recover_pk(&msg, &upper).unwrap(), expected);
            assert_eq!(recover_signer(&msg, &upper), Ok(UserId(expected)));
        }
    }

    #[test]
    fn what_ldk_refuses_is_refused() {
        let msg = b"get subscription info";
        let good = sign_message(msg, &key(1));
        let mut odd: Vec<String> = vec![
            String::new(),
            "y".repeat(104),
            "9".repeat(104),
            format!("{}!", &good[..103]),
            format!("{}l", &good[..103]),
            good[..103].to_string(),
            format!("{good}y"),
        ];
        // Every possible first character: recovery ids out of range, headers below 31.
        odd.extend("ybndrfg8ejkmcpqxot1uwisza345h769".chars().map(|c| format!("{c}{}", &good[1..])));
        for sig in &odd {
            let ldk = message_signing::recover_pk(msg, sig).ok().map(UserId);
            assert_eq!(recover_signer(msg, sig).ok(), ldk.filter(|_| sig.len() == SIGNATURE_ZBASE32_LEN), "{sig:?}");
        }
    }
}
