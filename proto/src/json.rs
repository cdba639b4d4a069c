//! serde helpers for the JSON form of the admin messages (teos-cli's output), attached to the
//! generated fields by `build.rs`: bytes as lowercase hex, txids in display order (reversed),
//! enums as lowercase names. [`hex()`] and [`hex_list()`] are also the serializers of the public
//! HTTP bodies ([`crate::http::hex_bytes`], [`crate::http::hex_list`]).

use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};

use crate::admin::appointment_data::AppointmentData as Data;
use crate::admin::network_address::{AddressType, Service};
use crate::admin::{AppointmentData, TrackerStatus};

/// The appointment's or the tracker's fields, then `user_id` (the oneof is flattened, as the
/// reference tower's JSON does).
impl Serialize for AppointmentData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Flat<'a, T: Serialize> {
            #[serde(flatten)]
            data: &'a T,
            #[serde(serialize_with = "hex")]
            user_id: &'a [u8],
        }
        #[derive(Serialize)]
        struct Nothing {}
        let user_id = self.user_id.as_slice();
        match &self.appointment_data {
            Some(Data::Appointment(data)) => Flat { data, user_id }.serialize(s),
            Some(Data::Tracker(data)) => Flat { data, user_id }.serialize(s),
            None => Flat { data: &Nothing {}, user_id }.serialize(s),
        }
    }
}

/// Bytes as lowercase hex.
pub fn hex<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// A list of byte strings as lowercase hex strings.
pub fn hex_list<S: Serializer, T: AsRef<[u8]>>(items: &[T], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(items.len()))?;
    for item in items {
        seq.serialize_element(&hex::encode(item))?;
    }
    seq.end()
}

/// A txid given in internal byte order, shown in display order (as bitcoind shows it).
pub fn txid<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&display_txid(bytes))
}

/// Hex of `bytes` reversed: a txid in display order.
pub fn display_txid(bytes: &[u8]) -> String {
    let reversed: Vec<u8> = bytes.iter().rev().copied().collect();
    hex::encode(reversed)
}

/// `broadcast`, `confirmed`, `refused`, `conflicted` or `unspecified`.
pub fn tracker_status<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(tracker_status_name(*value))
}

/// A txid in display order, or `null` when empty (a field set only in some states).
pub fn optional_txid<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    if bytes.is_empty() {
        s.serialize_none()
    } else {
        txid(bytes, s)
    }
}

/// The lowercase name of a [`TrackerStatus`] value.
pub fn tracker_status_name(value: i32) -> &'static str {
    match TrackerStatus::try_from(value) {
        Ok(TrackerStatus::Broadcast) => "broadcast",
        Ok(TrackerStatus::Confirmed) => "confirmed",
        Ok(TrackerStatus::Refused) => "refused",
        Ok(TrackerStatus::Conflicted) => "conflicted",
        _ => "unspecified",
    }
}

/// `ipv4`, `ipv6` or `torv3`, as the reference tower names address types.
pub fn address_type<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(address_type_name(*value))
}

/// The lowercase name of an [`AddressType`] value.
pub fn address_type_name(value: i32) -> &'static str {
    match AddressType::try_from(value) {
        Ok(AddressType::IpV4) => "ipv4",
        Ok(AddressType::TorV3) => "torv3",
        Ok(AddressType::IpV6) => "ipv6",
        Err(_) => "unknown",
    }
}

/// `public_http` or `admin_grpc`.
pub fn service<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(service_name(*value))
}

/// The lowercase name of a [`Service`] value.
pub fn service_name(value: i32) -> &'static str {
    match Service::try_from(value) {
        Ok(Service::PublicHttp) => "public_http",
        Ok(Service::AdminGrpc) => "admin_grpc",
        Err(_) => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use crate::admin::{
        appointment_data, Appointment, AppointmentData, GetTowerInfoResponse, NetworkAddress, Tracker, TrackerStatus,
    };
    use serde_json::json;

    use super::*;

    #[test]
    fn appointment_data_flattens_the_oneof_with_hex_and_display_order_txids() {
        let appointment = AppointmentData {
            appointment_data: Some(appointment_data::AppointmentData::Appointment(Appointment {
                locator: vec![0xab; 16],
                encrypted_blob: vec![1, 2],
                to_self_delay: 42,
                start_block: 7,
            })),
            user_id: vec![2; 33],
        };
        assert_eq!(
            serde_json::to_value(&appointment).unwrap(),
            json!({"locator": "ab".repeat(16), "encrypted_blob": "0102", "to_self_delay": 42, "start_block": 7,
                   "user_id": "02".repeat(33)})
        );
        let mut txid = vec![0u8; 32];
        txid[0] = 1;
        let tracker = AppointmentData {
            appointment_data: Some(appointment_data::AppointmentData::Tracker(Tracker {
                dispute_txid: txid.clone(),
                penalty_txid: txid,
                penalty_rawtx: vec![0xff],
                locator: vec![0xab; 16],
                status: TrackerStatus::Confirmed as i32,
                status_height: 9,
                conflicting_txid: Vec::new(),
                dispute_height: 8,
                deadline_height: 152,
                at_risk: false,
            })),
            user_id: vec![3; 33],
        };
        let value = serde_json::to_value(&tracker).unwrap();
        assert_eq!(value["dispute_txid"], format!("{}01", "00".repeat(31)));
        assert_eq!(value["penalty_rawtx"], "ff");
        assert_eq!(value["status"], "confirmed");
        assert_eq!(value["conflicting_txid"], serde_json::Value::Null);
        assert_eq!((value["deadline_height"].as_u64(), value["at_risk"].as_bool()), (Some(152), Some(false)));
        assert_eq!(value["user_id"], "03".repeat(33));
    }

    #[test]
    fn tower_info_names_address_types_and_services() {
        let info = GetTowerInfoResponse {
            addresses: vec![NetworkAddress { address_type: 0, address: "127.0.0.1".into(), port: 9814, service: 1 }],
            ..Default::default()
        };
        let value = serde_json::to_value(&info).unwrap();
        assert_eq!(
            value["addresses"][0],
            json!({"type": "ipv4", "address": "127.0.0.1", "port": 9814, "service": "admin_grpc"})
        );
        assert_eq!(address_type_name(99), "unknown");
        assert_eq!(tracker_status_name(0), "unspecified");
    }
}
