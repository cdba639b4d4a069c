//! JSON bodies of the public HTTP API. Field names, order and encodings follow the reference
//! tower: bytes are hex (either case in, lowercase out), signatures are zbase32 strings, txids in
//! responses are in display (big-endian) order.

use serde::{Deserialize, Serialize};

/// Hex (de)serialization with the reference tower's error texts ("Odd number of digits",
/// "Invalid character 'z' at position 0", "expected a hex encoded string").
pub mod hex_bytes {
    use serde::de::{Error, Visitor};
    use serde::Deserializer;

    /// Lowercase hex: the admin JSON's serializer, [`crate::json::hex()`].
    pub use crate::json::hex as serialize;

    /// Hex of either case.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct HexVisitor;
        impl Visitor<'_> for HexVisitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a hex encoded string")
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
                hex::decode(v).map_err(E::custom)
            }
        }
        d.deserialize_str(HexVisitor)
    }
}

/// Hex lists.
pub mod hex_list {
    /// Lowercase hex strings: the admin JSON's serializer, [`crate::json::hex_list()`].
    pub use crate::json::hex_list as serialize;
}

/// `POST /register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// 33-byte compressed public key.
    #[serde(with = "hex_bytes")]
    pub user_id: Vec<u8>,
}

/// `POST /register` as the tower reads it: `user_id` from a rust-teos client, `public_key` from a
/// python-teos one (`user_id` wins if both are given).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RegisterBody {
    /// 33-byte compressed public key (rust-teos).
    #[serde(default, deserialize_with = "optional_hex")]
    pub user_id: Option<Vec<u8>>,
    /// 33-byte compressed public key (python-teos).
    #[serde(default, deserialize_with = "optional_hex")]
    pub public_key: Option<Vec<u8>>,
}

fn optional_hex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    hex_bytes::deserialize(d).map(Some)
}

/// Reply to `POST /register` for a python-teos client (its fields; the key is echoed twice, as
/// python-teos did). Its signature covers the 41-byte python receipt (no start height).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonRegisterResponse {
    /// The key sent.
    #[serde(with = "hex_bytes")]
    pub public_key: Vec<u8>,
    /// The registered key.
    #[serde(with = "hex_bytes")]
    pub user_id: Vec<u8>,
    /// Slots now available.
    pub available_slots: u32,
    /// Height the subscription ends.
    pub subscription_expiry: u32,
    /// The tower's signature over `user_id ‖ available_slots ‖ subscription_expiry`.
    pub subscription_signature: String,
}

/// Reply to `POST /register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The registered key.
    #[serde(with = "hex_bytes")]
    pub user_id: Vec<u8>,
    /// Slots now available.
    pub available_slots: u32,
    /// Height the subscription started.
    pub subscription_start: u32,
    /// Height the subscription ends.
    pub subscription_expiry: u32,
    /// The tower's signature over the registration receipt.
    pub subscription_signature: String,
}

/// The appointment inside `POST /add_appointment` and a watched `get_appointment` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentJson {
    /// 16-byte locator.
    #[serde(with = "hex_bytes")]
    pub locator: Vec<u8>,
    /// Encrypted penalty.
    #[serde(with = "hex_bytes")]
    pub encrypted_blob: Vec<u8>,
    /// CSV delay of the commitment.
    pub to_self_delay: u32,
}

/// `POST /add_appointment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddAppointmentRequest {
    /// The appointment; `null` is reported as missing.
    pub appointment: Option<AppointmentJson>,
    /// The user's zbase32 signature over the appointment.
    pub signature: String,
}

/// Reply to `POST /add_appointment`: the appointment receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddAppointmentResponse {
    /// The appointment's locator.
    #[serde(with = "hex_bytes")]
    pub locator: Vec<u8>,
    /// The tower's height when it accepted the appointment.
    pub start_block: u32,
    /// The tower's signature over the appointment receipt.
    pub signature: String,
    /// Slots left after this appointment.
    pub available_slots: u32,
    /// Height the subscription ends.
    pub subscription_expiry: u32,
}

/// `POST /get_appointment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetAppointmentRequest {
    /// 16-byte locator.
    #[serde(with = "hex_bytes")]
    pub locator: Vec<u8>,
    /// The user's signature over `get appointment <locator hex>`.
    pub signature: String,
}

/// A triggered appointment: what the tower broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerJson {
    /// The dispute txid, display order.
    pub dispute_txid: String,
    /// The penalty txid, display order.
    pub penalty_txid: String,
    /// The penalty, consensus hex.
    pub penalty_rawtx: String,
}

/// Either form of appointment data, serialized untagged like the reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AppointmentData {
    /// Still watched.
    Appointment(AppointmentJson),
    /// Triggered.
    Tracker(TrackerJson),
}

/// Reply to `POST /get_appointment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetAppointmentResponse {
    /// The data.
    pub appointment: AppointmentData,
    /// `being_watched` or `dispute_responded`.
    pub status: String,
}

/// `POST /get_subscription_info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetSubscriptionInfoRequest {
    /// The user's signature over `get subscription info`.
    pub signature: String,
}

/// Reply to `POST /get_subscription_info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GetSubscriptionInfoResponse {
    /// Slots left.
    pub available_slots: u32,
    /// Height the subscription ends.
    pub subscription_expiry: u32,
    /// Locators of the user's appointments, hex.
    #[serde(with = "hex_list")]
    pub locators: Vec<[u8; 16]>,
}

/// A python-teos triggered appointment: the tracker with its locator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonTrackerJson {
    /// The appointment's locator.
    #[serde(with = "hex_bytes")]
    pub locator: Vec<u8>,
    /// The dispute txid, display order.
    pub dispute_txid: String,
    /// The penalty txid, display order.
    pub penalty_txid: String,
    /// The penalty, consensus hex.
    pub penalty_rawtx: String,
}

/// Either form of a python-teos user's appointment data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PythonAppointmentData {
    /// Still watched.
    Appointment(AppointmentJson),
    /// Triggered.
    Tracker(PythonTrackerJson),
}

/// Reply to `POST /get_appointment` for a python-teos client: 200 with `being_watched` or
/// `dispute_responded` and the data, or 404 with `not_found` and no data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonGetAppointmentResponse {
    /// The locator asked about.
    #[serde(with = "hex_bytes")]
    pub locator: Vec<u8>,
    /// `being_watched`, `dispute_responded` or `not_found`.
    pub status: String,
    /// The data, unless not found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment: Option<PythonAppointmentData>,
}

/// Every error body: `{"error": <text>, "error_code": <code>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Human-readable reason.
    pub error: String,
    /// A code from [`crate::errors`].
    pub error_code: u8,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn bytes_serialize_as_lowercase_hex_and_parse_either_case() {
        let request: RegisterRequest = serde_json::from_value(json!({"user_id": "AB02"})).unwrap();
        assert_eq!(request.user_id, vec![0xab, 0x02]);
        assert_eq!(serde_json::to_value(&request).unwrap(), json!({"user_id": "ab02"}));
        let info =
            GetSubscriptionInfoResponse { available_slots: 1, subscription_expiry: 2, locators: vec![[0xcd; 16]] };
        assert_eq!(serde_json::to_value(&info).unwrap()["locators"], json!(["cd".repeat(16)]));
    }

    #[test]
    fn a_registration_names_its_key_either_way() {
        let rust: RegisterBody = serde_json::from_value(json!({"user_id": "ab"})).unwrap();
        assert_eq!((rust.user_id, rust.public_key), (Some(vec![0xab]), None));
        let python: RegisterBody = serde_json::from_value(json!({"public_key": "CD"})).unwrap();
        assert_eq!((python.user_id, python.public_key), (None, Some(vec![0xcd])));
        let neither: RegisterBody = serde_json::from_value(json!({})).unwrap();
        assert_eq!((neither.user_id, neither.public_key), (None, None));
        let err = serde_json::from_value::<RegisterBody>(json!({"public_key": null})).unwrap_err().to_string();
        assert!(err.starts_with("invalid type: null, expected a hex encoded string"), "{err}");
    }
}
