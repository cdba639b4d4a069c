//! Generates the admin gRPC API (`proto/teos/v2/*.proto`, package `teos.v2`): messages, the
//! tonic client and server, and serde `Serialize` impls whose JSON is teos-cli's output (hex for
//! bytes, txids in display order, enums as lowercase names, the oneof flattened).

const PROTOS: &[&str] = &["proto/teos/v2/tower_services.proto"];

/// `(field path, serde attribute)`.
const FIELD_ATTRIBUTES: &[(&str, &str)] = &[
    (".teos.v2.Appointment.locator", HEX),
    (".teos.v2.Appointment.encrypted_blob", HEX),
    (".teos.v2.Tracker.dispute_txid", TXID),
    (".teos.v2.Tracker.penalty_txid", TXID),
    (".teos.v2.Tracker.penalty_rawtx", HEX),
    (".teos.v2.Tracker.locator", HEX),
    (".teos.v2.Tracker.status", r#"#[serde(serialize_with = "crate::json::tracker_status")]"#),
    (".teos.v2.Tracker.conflicting_txid", r#"#[serde(serialize_with = "crate::json::optional_txid")]"#),
    (
        ".teos.v2.NetworkAddress.address_type",
        r#"#[serde(rename = "type", serialize_with = "crate::json::address_type")]"#,
    ),
    (".teos.v2.NetworkAddress.service", r#"#[serde(serialize_with = "crate::json::service")]"#),
    (".teos.v2.GetTowerInfoResponse.tower_id", HEX),
    (".teos.v2.GetUsersResponse.user_ids", HEX_LIST),
    (".teos.v2.GetUserResponse.locators", HEX_LIST),
    (".teos.v2.BackupResponse.tip_hash", r#"#[serde(serialize_with = "crate::json::optional_txid")]"#),
    (".teos.v2.DeleteUserResponse.user_id", HEX),
    (".teos.v2.BanUserResponse.user_id", HEX),
    (".teos.v2.UnbanUserResponse.user_id", HEX),
    (".teos.v2.BannedUser.user_id", HEX),
];

/// The messages teos-cli prints. `AppointmentData` (a oneof flattened next to `user_id`) has a
/// hand-written impl in `src/json.rs`.
const SERIALIZED: &[&str] = &[
    ".teos.v2.Appointment",
    ".teos.v2.Tracker",
    ".teos.v2.GetAllAppointmentsResponse",
    ".teos.v2.GetAppointmentsResponse",
    ".teos.v2.NetworkAddress",
    ".teos.v2.GetTowerInfoResponse",
    ".teos.v2.GetUsersResponse",
    ".teos.v2.GetUserResponse",
    ".teos.v2.StopResponse",
    ".teos.v2.BackupResponse",
    ".teos.v2.DeleteUserResponse",
    ".teos.v2.BanUserResponse",
    ".teos.v2.UnbanUserResponse",
    ".teos.v2.BannedUser",
    ".teos.v2.GetBannedUsersResponse",
];

const HEX: &str = r#"#[serde(serialize_with = "crate::json::hex")]"#;
const HEX_LIST: &str = r#"#[serde(serialize_with = "crate::json::hex_list")]"#;
const TXID: &str = r#"#[serde(serialize_with = "crate::json::txid")]"#;

fn main() -> std::io::Result<()> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut builder = tonic_prost_build::configure();
    for message in SERIALIZED {
        builder = builder.type_attribute(message, "#[derive(serde::Serialize)]");
    }
    for (path, attribute) in FIELD_ATTRIBUTES {
        builder = builder.field_attribute(path, attribute);
    }
    builder.compile_protos(PROTOS, &["proto"])
}
