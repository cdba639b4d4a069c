//! A python-teos client, as `teos_client.py` behaves on the wire (reference-tower.md §10), written
//! from those facts for the tests: it registers with `{"public_key"}`, derives its locator from
//! the first 32 hex characters of the dispute txid as displayed and its blob key from the display
//! bytes, and checks the tower's receipts in python-teos's layouts:
//!
//! * registration: `user_id(33) ‖ available_slots ‖ subscription_expiry` (u32 big-endian);
//! * appointment: the user's signature *decoded from zbase32* (65 bytes) ‖ `start_block`.
//!
//! Like `teos_client.py`, it sends with a space after `:` and `,` (Python's `json.dumps`) and
//! treats any status but 200 as an error.

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{Transaction, Txid};
use serde_json::{json, Value};
use teosd::protocol::{encrypt_penalty_as, recover_signer, sign_message, Appointment, Dialect, Locator, UserId};

/// Why a python-teos client would give up on the tower's reply.
#[derive(Debug, thiserror::Error)]
pub enum PythonClientError {
    /// Not 200 (python's `process_post_response` raises on any other status).
    #[error("the tower answered {status}: {body}")]
    Refused {
        /// The status.
        status: u16,
        /// The body.
        body: Value,
    },
    /// A field the client reads is missing or mistyped.
    #[error("the reply has no usable `{0}`")]
    Missing(&'static str),
    /// The receipt's signature does not recover the tower's id.
    #[error("The returned appointment's signature is invalid")]
    BadReceipt,
    /// No connection.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// A python-teos user of a tower.
#[derive(Debug, Clone)]
pub struct PythonUser {
    secret: SecretKey,
    /// Hex of its compressed public key.
    pub user_id: String,
    tower_id: UserId,
    http: reqwest::Client,
    api_url: String,
}

/// What `add_appointment` hands back: the start block and the tower's signature.
#[derive(Debug, Clone)]
pub struct PythonReceipt {
    /// The tower's height at acceptance.
    pub start_block: u32,
    /// The tower's signature.
    pub signature: String,
}

/// The locator `teos_client.py` computes: the first 32 hex characters of the txid as displayed.
pub fn python_locator(dispute_txid: &Txid) -> String {
    dispute_txid.to_string()[..32].to_string()
}

fn u32_field(body: &Value, name: &'static str) -> Result<u32, PythonClientError> {
    body[name].as_u64().and_then(|v| u32::try_from(v).ok()).ok_or(PythonClientError::Missing(name))
}

fn str_field<'a>(body: &'a Value, name: &'static str) -> Result<&'a str, PythonClientError> {
    body[name].as_str().ok_or(PythonClientError::Missing(name))
}

/// zbase32 decoding, as python's `pyzbase32.decode_bytes` (alphabet of RFC-less zbase32).
fn zbase32_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";
    let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::with_capacity(text.len() * 5 / 8));
    for c in text.bytes() {
        acc = (acc << 5) | ALPHABET.iter().position(|&a| a == c)? as u64;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

impl PythonUser {
    /// A user with the secret key `[seed; 32]`, of the tower `tower_id` at `api_url`.
    pub fn new(seed: u8, tower_id: UserId, api_url: &str) -> PythonUser {
        let secret = SecretKey::from_slice(&[seed; 32]).expect("valid key");
        let user_id = PublicKey::from_secret_key(&Secp256k1::new(), &secret).to_string();
        PythonUser { secret, user_id, tower_id, http: reqwest::Client::new(), api_url: api_url.to_string() }
    }

    /// POSTs `body` serialised the way Python's `json.dumps` does (`", "` and `": "`).
    async fn post(&self, path: &str, body: Value) -> Result<(u16, Value), PythonClientError> {
        let text = python_json(&body);
        let response = self
            .http
            .post(format!("{}{path}", self.api_url))
            .header("content-type", "application/json")
            .body(text)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    async fn post_ok(&self, path: &str, body: Value) -> Result<Value, PythonClientError> {
        match self.post(path, body).await? {
            (200, body) => Ok(body),
            (status, body) => Err(PythonClientError::Refused { status, body }),
        }
    }

    fn check(&self, receipt: &[u8], signature: &str) -> Result<(), PythonClientError> {
        match recover_signer(receipt, signature) {
            Ok(signer) if signer == self.tower_id => Ok(()),
            _ => Err(PythonClientError::BadReceipt),
        }
    }

    /// `register`: returns (available_slots, subscription_expiry) once the receipt checks out.
    pub async fn register(&self) -> Result<(u32, u32), PythonClientError> {
        let body = self.post_ok("/register", json!({ "public_key": self.user_id })).await?;
        let slots = u32_field(&body, "available_slots")?;
        let expiry = u32_field(&body, "subscription_expiry")?;
        let signature = str_field(&body, "subscription_signature")?;
        let mut receipt = hex::decode(&self.user_id).expect("own id is hex");
        receipt.extend_from_slice(&slots.to_be_bytes());
        receipt.extend_from_slice(&expiry.to_be_bytes());
        self.check(&receipt, signature)?;
        Ok((slots, expiry))
    }

    /// `add_appointment` of `penalty` for the dispute `dispute_txid`, receipt checked.
    pub async fn add_appointment(
        &self,
        dispute_txid: &Txid,
        penalty: &Transaction,
    ) -> Result<PythonReceipt, PythonClientError> {
        let locator: Locator = python_locator(dispute_txid).parse().expect("32 hex characters");
        let appointment = Appointment {
            locator,
            encrypted_blob: encrypt_penalty_as(penalty, dispute_txid, Dialect::Python),
            to_self_delay: 20,
        };
        let signature = sign_message(&appointment.signed_bytes(), &self.secret);
        let body = json!({"appointment": {
            "locator": locator.to_string(),
            "encrypted_blob": hex::encode(&appointment.encrypted_blob),
            "to_self_delay": appointment.to_self_delay}, "signature": signature});
        let reply = self.post_ok("/add_appointment", body).await?;
        let start_block = u32_field(&reply, "start_block")?;
        let tower_signature = str_field(&reply, "signature")?.to_string();
        let mut receipt = zbase32_decode(&signature).ok_or(PythonClientError::BadReceipt)?;
        receipt.extend_from_slice(&start_block.to_be_bytes());
        self.check(&receipt, &tower_signature)?;
        Ok(PythonReceipt { start_block, signature: tower_signature })
    }

    /// `get_appointment` for the dispute `dispute_txid`: the status and body, whatever the status
    /// (python's client raises on 404; the tests want to see it).
    pub async fn get_appointment(&self, dispute_txid: &Txid) -> Result<(u16, Value), PythonClientError> {
        let locator = python_locator(dispute_txid);
        let signature = sign_message(format!("get appointment {locator}").as_bytes(), &self.secret);
        self.post("/get_appointment", json!({"locator": locator, "signature": signature})).await
    }

    /// `get_subscription_info`.
    pub async fn subscription_info(&self) -> Result<Value, PythonClientError> {
        let signature = sign_message(b"get subscription info", &self.secret);
        self.post_ok("/get_subscription_info", json!({ "signature": signature })).await
    }
}

/// `json.dumps` spacing: `{"a": 1, "b": [2, 3]}`.
fn python_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let fields: Vec<String> =
                map.iter().map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_json(v))).collect();
            format!("{{{}}}", fields.join(", "))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(python_json).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_spaced_as_python_sends_them() {
        assert_eq!(python_json(&json!({"a": 1, "b": [2, "x"]})), r#"{"a": 1, "b": [2, "x"]}"#);
    }

    #[test]
    fn the_python_locator_is_the_display_txids_first_half() {
        let txid: Txid = "d6ac4a5e61657c4c604dcde855a1db74ec6b3e54f32695d72c5e11c7761ea1b4".parse().unwrap();
        assert_eq!(python_locator(&txid), "d6ac4a5e61657c4c604dcde855a1db74");
        assert_eq!(python_locator(&txid), Dialect::Python.locator(&txid).to_string());
    }

    #[test]
    fn zbase32_decodes_a_signature_to_65_bytes() {
        assert_eq!(zbase32_decode(&"y".repeat(104)), Some(vec![0; 65]));
        assert_eq!(zbase32_decode("not zbase32!"), None);
    }
}
