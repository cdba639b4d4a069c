//! What the CLI prints: pretty JSON by default (the serde form of the admin messages: hex bytes,
//! txids in display order), or text with `--human`. Streamed listings are written as their pages
//! arrive, so a listing of any size needs memory for one page only.

use std::io::Write;

use serde::Serialize;
use teos_proto::admin as pb;
use teos_proto::admin::appointment_data::AppointmentData as Data;
use teos_proto::json::{address_type_name, display_txid, service_name, tracker_status_name};

use crate::connect::Pages;
use crate::CliError;

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Pretty-printed JSON.
    Json,
    /// Aligned text.
    Human,
}

fn json(out: &mut impl Write, value: &impl Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Failed(format!("cannot print JSON: {e}")))?;
    Ok(writeln!(out, "{text}")?)
}

/// A streamed listing: in JSON, `{"<key>": [ ... ]}` written one item at a time, formatted as
/// `serde_json`'s pretty printer formats the whole object; in text, one line per item.
struct Listing<'a, W: Write> {
    out: &'a mut W,
    format: Format,
    items: usize,
}

impl<'a, W: Write> Listing<'a, W> {
    fn begin(out: &'a mut W, format: Format, key: &str) -> Result<Self, CliError> {
        if format == Format::Json {
            write!(out, "{{\n  \"{key}\": [")?;
        }
        Ok(Listing { out, format, items: 0 })
    }

    fn item<T: Serialize>(&mut self, value: &T, human: impl FnOnce(&T) -> String) -> Result<(), CliError> {
        self.items += 1;
        if self.format == Format::Human {
            return Ok(writeln!(self.out, "{}", human(value))?);
        }
        let text =
            serde_json::to_string_pretty(value).map_err(|e| CliError::Failed(format!("cannot print JSON: {e}")))?;
        let separator = if self.items == 1 { "" } else { "," };
        Ok(write!(self.out, "{separator}\n    {}", text.replace('\n', "\n    "))?)
    }

    /// Closes the JSON; in text, prints `empty` if there was nothing.
    fn end(self, empty: &str) -> Result<(), CliError> {
        match (self.format, self.items) {
            (Format::Json, 0) => Ok(write!(self.out, "]\n}}\n")?),
            (Format::Json, _) => Ok(write!(self.out, "\n  ]\n}}\n")?),
            (Format::Human, 0) if !empty.is_empty() => Ok(writeln!(self.out, "{empty}")?),
            (Format::Human, _) => Ok(()),
        }
    }
}

/// `gettowerinfo`.
pub fn tower_info(out: &mut impl Write, format: Format, info: &pb::GetTowerInfoResponse) -> Result<(), CliError> {
    if format == Format::Json {
        return json(out, info);
    }
    let reachable = if info.bitcoind_reachable { "reachable" } else { "UNREACHABLE" };
    writeln!(out, "tower id      {}", hex::encode(&info.tower_id))?;
    writeln!(out, "network       {} (teosd {})", info.network, info.version)?;
    writeln!(out, "chain tip     {} (bitcoind at {})", info.tip_height, info.bitcoind_height)?;
    writeln!(out, "bitcoind      {reachable}")?;
    if info.ready {
        writeln!(out, "health        ready")?;
    } else {
        writeln!(out, "health        NOT READY: {}", info.problems.join("; "))?;
    }
    if !info.last_error.is_empty() {
        writeln!(out, "last error    {}", info.last_error)?;
    }
    let reserve = if info.disk_above_reserve { "" } else { " (BELOW THE RESERVE: new data refused)" };
    writeln!(out, "disk free     {:.1} MiB{reserve}", info.disk_free_bytes as f64 / (1024.0 * 1024.0))?;
    writeln!(out, "users         {}", info.n_registered_users)?;
    writeln!(out, "appointments  {} watched", info.n_watcher_appointments)?;
    writeln!(out, "trackers      {} ({} at risk)", info.n_responder_trackers, info.n_trackers_at_risk)?;
    writeln!(
        out,
        "penalties     {} won, {} lost, {} abandoned",
        info.n_penalties_won, info.n_penalties_lost, info.n_penalties_abandoned
    )?;
    for address in &info.addresses {
        let host = match address_type_name(address.address_type) {
            "ipv6" => format!("[{}]", address.address),
            _ => address.address.clone(),
        };
        let service = match service_name(address.service) {
            "public_http" => "public HTTP",
            "admin_grpc" => "admin gRPC",
            other => other,
        };
        writeln!(out, "{service:<13} {host}:{}", address.port)?;
    }
    Ok(())
}

/// `getusers`.
pub async fn users(
    out: &mut impl Write,
    format: Format,
    mut pages: Pages<pb::GetUsersResponse>,
) -> Result<(), CliError> {
    let mut list = Listing::begin(out, format, "user_ids")?;
    while let Some(page) = pages.next().await? {
        for user_id in page.user_ids {
            list.item(&hex::encode(user_id), String::clone)?;
        }
    }
    list.end("")
}

/// `getuser`.
pub fn user(out: &mut impl Write, format: Format, user: &pb::GetUserResponse) -> Result<(), CliError> {
    if format == Format::Json {
        return json(out, user);
    }
    writeln!(out, "available slots  {}", user.available_slots)?;
    writeln!(out, "subscription     blocks {} to {}", user.subscription_start, user.subscription_expiry)?;
    writeln!(out, "client dialect   {}", user.dialect)?;
    writeln!(out, "appointments     {}", user.locators.len())?;
    for locator in &user.locators {
        writeln!(out, "  {}", hex::encode(locator))?;
    }
    Ok(())
}

/// One appointment or tracker on one line.
fn human_line(data: &pb::AppointmentData) -> String {
    let user = hex::encode(&data.user_id);
    match &data.appointment_data {
        Some(Data::Appointment(a)) => format!(
            "appointment {} user {user} to_self_delay {} start_block {} blob {} bytes",
            hex::encode(&a.locator),
            a.to_self_delay,
            a.start_block,
            a.encrypted_blob.len()
        ),
        Some(Data::Tracker(t)) => format!(
            "tracker     {} user {user} dispute {} penalty {} {} at {}{}",
            hex::encode(&t.locator),
            display_txid(&t.dispute_txid),
            display_txid(&t.penalty_txid),
            tracker_status_name(t.status),
            t.status_height,
            if t.at_risk { format!(" AT RISK (deadline {})", t.deadline_height) } else { String::new() }
        ),
        None => format!("(empty)     user {user}"),
    }
}

/// `getappointments`.
pub fn appointments(
    out: &mut impl Write,
    format: Format,
    response: &pb::GetAppointmentsResponse,
) -> Result<(), CliError> {
    if format == Format::Json {
        return json(out, response);
    }
    if response.appointments.is_empty() {
        writeln!(out, "no appointments at this locator")?;
    }
    for data in &response.appointments {
        writeln!(out, "{}", human_line(data))?;
    }
    Ok(())
}

/// `getallappointments`.
pub async fn all_appointments(
    out: &mut impl Write,
    format: Format,
    mut pages: Pages<pb::GetAllAppointmentsResponse>,
) -> Result<(), CliError> {
    let mut list = Listing::begin(out, format, "appointments")?;
    while let Some(page) = pages.next().await? {
        for data in &page.appointments {
            list.item(data, human_line)?;
        }
    }
    list.end("no appointments")
}

/// `backup`.
pub fn backup(out: &mut impl Write, format: Format, backup: &pb::BackupResponse) -> Result<(), CliError> {
    if format == Format::Json {
        return json(out, backup);
    }
    writeln!(out, "backup in   {} (on the tower's machine)", backup.dir)?;
    writeln!(out, "chain tip   {} {}", backup.tip_height, display_txid(&backup.tip_hash))?;
    writeln!(out, "size        {:.1} MiB", backup.size_bytes as f64 / (1024.0 * 1024.0))?;
    writeln!(out, "also copied {}", backup.files.join(", "))?;
    Ok(())
}

/// `deleteuser`.
pub fn deleted_user(out: &mut impl Write, format: Format, deleted: &pb::DeleteUserResponse) -> Result<(), CliError> {
    if format == Format::Json {
        return json(out, deleted);
    }
    writeln!(
        out,
        "user {} deleted: {} appointments removed, {} trackers kept until they end",
        hex::encode(&deleted.user_id),
        deleted.appointments_deleted,
        deleted.trackers_kept
    )?;
    Ok(())
}

/// `banuser`.
pub fn banned_user(out: &mut impl Write, format: Format, banned: &pb::BanUserResponse) -> Result<(), CliError> {
    if format == Format::Json {
        return json(out, banned);
    }
    let already = if banned.already_banned { " (already banned)" } else { "" };
    let registered = if banned.registered { "" } else { " (not registered)" };
    writeln!(out, "user {} banned{already}{registered}", hex::encode(&banned.user_id))?;
    Ok(())
}

/// `unbanuser`.
pub fn unbanned_user(out: &mut impl Write, format: Format, unbanned: &pb::UnbanUserResponse) -> Result<(), CliError> {
    if format == Format::Json {
        return json(out, unbanned);
    }
    writeln!(out, "user {} unbanned", hex::encode(&unbanned.user_id))?;
    Ok(())
}

/// `getbannedusers`.
pub fn banned_users(out: &mut impl Write, format: Format, banned: &pb::GetBannedUsersResponse) -> Result<(), CliError> {
    if format == Format::Json {
        return json(out, banned);
    }
    if banned.banned_users.is_empty() {
        writeln!(out, "no banned users")?;
    }
    for user in &banned.banned_users {
        writeln!(out, "{} banned at {}", hex::encode(&user.user_id), user.banned_at)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn streamed_json_lists_match_serde_json_pretty_output() {
        for items in [vec![], vec![json!("a")], vec![json!({"x": 1, "y": [1, 2]}), json!({"z": "w"})]] {
            let mut out = Vec::new();
            let mut list = Listing::begin(&mut out, Format::Json, "things").unwrap();
            for item in &items {
                list.item(item, |_| unreachable!()).unwrap();
            }
            list.end("").unwrap();
            let expected = serde_json::to_string_pretty(&json!({ "things": items })).unwrap() + "\n";
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn human_lines_show_txids_in_display_order() {
        let mut txid = vec![0u8; 32];
        txid[0] = 0xaa;
        let data = pb::AppointmentData {
            appointment_data: Some(Data::Tracker(pb::Tracker {
                dispute_txid: txid.clone(),
                penalty_txid: txid,
                penalty_rawtx: vec![],
                locator: vec![1; 16],
                status: pb::TrackerStatus::Broadcast as i32,
                status_height: 7,
                conflicting_txid: vec![],
                dispute_height: 6,
                deadline_height: 150,
                at_risk: false,
            })),
            user_id: vec![2; 33],
        };
        let line = human_line(&data);
        assert!(line.contains(&format!("dispute {}aa", "00".repeat(31))), "{line}");
        assert!(line.ends_with("broadcast at 7"), "{line}");
        let mut data = data;
        if let Some(Data::Tracker(t)) = data.appointment_data.as_mut() {
            t.at_risk = true;
        }
        assert!(human_line(&data).ends_with("broadcast at 7 AT RISK (deadline 150)"));
    }

    #[test]
    fn human_tower_info_lists_the_addresses() {
        let info = pb::GetTowerInfoResponse {
            addresses: vec![pb::NetworkAddress {
                address_type: pb::network_address::AddressType::IpV6 as i32,
                address: "::1".into(),
                port: 8814,
                service: pb::network_address::Service::AdminGrpc as i32,
            }],
            ..Default::default()
        };
        let mut out = Vec::new();
        tower_info(&mut out, Format::Human, &info).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("admin gRPC    [::1]:8814"), "{text}");
        assert!(text.contains("bitcoind      UNREACHABLE"), "{text}");
    }

    #[test]
    fn backups_show_the_tip_hash_in_display_order_or_null() {
        let mut hash = vec![0u8; 32];
        hash[0] = 0xbb;
        let mut response = pb::BackupResponse {
            dir: "/var/lib/teos-backups/today".into(),
            tip_height: 7,
            tip_hash: hash,
            size_bytes: 1,
            files: vec!["ca.pem".into()],
        };
        let mut out = Vec::new();
        backup(&mut out, Format::Json, &response).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["tip_hash"], format!("{}bb", "00".repeat(31)), "display order: reversed");
        response.tip_hash.clear();
        let mut out = Vec::new();
        backup(&mut out, Format::Json, &response).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["tip_hash"], serde_json::Value::Null);
        assert_eq!(value["files"], json!(["ca.pem"]));
    }

    #[test]
    fn banned_users_print_as_json_with_hex_ids_or_as_lines() {
        let response =
            pb::GetBannedUsersResponse { banned_users: vec![pb::BannedUser { user_id: vec![2; 33], banned_at: 150 }] };
        let mut out = Vec::new();
        banned_users(&mut out, Format::Json, &response).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value, json!({"banned_users": [{"user_id": "02".repeat(33), "banned_at": 150}]}));
        let mut out = Vec::new();
        banned_users(&mut out, Format::Human, &response).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), format!("{} banned at 150\n", "02".repeat(33)));
    }
}
