//! Lightning `signmessage`-style signatures: recoverable ECDSA over
//! `SHA256d("Lightning Signed Message:" || msg)`, zbase32-encoded. We use LDK's implementation
//! (`lightning::util::message_signing`), the one Core Lightning's plugin is built on.

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use lightning::util::message_signing;

use super::ids::{TowerId, UserId};

/// A zbase32 signature is always this many characters (65 bytes).
pub const SIGNATURE_ZBASE32_LEN: usize = 104;

/// A signature that could not be decoded or recovered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signature is not a valid zbase32 recoverable signature for this message")]
pub struct SignatureError;

/// Signs `msg` with `sk`, returning the zbase32 text.
pub fn sign_message(msg: &[u8], sk: &SecretKey) -> String {
    message_signing::sign(msg, sk)
}

/// Recovers the key that signed `msg`. Fails on anything that is not a 104-character zbase32
/// recoverable signature.
pub fn recover_signer(msg: &[u8], signature: &str) -> Result<UserId, SignatureError> {
    if signature.len() != SIGNATURE_ZBASE32_LEN {
        return Err(SignatureError);
    }
    message_signing::recover_pk(msg, signature).map(UserId).map_err(|_| SignatureError)
}

/// The zbase32 encoding of signatures (alphabet `ybndrfg8ejkmcpqxot1uwisza345h769`).
pub fn zbase32() -> &'static data_encoding::Encoding {
    static ZBASE32: std::sync::OnceLock<data_encoding::Encoding> = std::sync::OnceLock::new();
    ZBASE32.get_or_init(|| {
        let mut spec = data_encoding::Specification::new();
        spec.symbols.push_str("ybndrfg8ejkmcpqxot1uwisza345h769");
        spec.encoding().unwrap_or_else(|e| unreachable!("the zbase32 alphabet is a valid specification: {e}"))
    })
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
        let id = UserId(PublicKey::from_secret_key(&Secp256k1::signing_only(), &secret));
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
