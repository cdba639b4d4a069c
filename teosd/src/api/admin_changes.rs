//! The admin API's changes: backups, and banning, unbanning and deleting users. Each is logged at
//! info with what changed and who asked: the subject of the client certificate the request came
//! with (mutual TLS).

use tonic::{Request, Status};

use super::{parse_user_id, AdminError, AdminService};
use crate::backup::BackupError;
use crate::config::network_dir_name;
use crate::protocol::UserId;
use crate::tower::Tower;
use teos_proto::admin as pb;

/// The subject of the client certificate `request` came with (e.g. `CN=teos grpc Client`), or
/// `unknown` without one (the server always requires one; tests call the service directly).
pub(super) fn admin_subject<T>(request: &Request<T>) -> String {
    let subject = request.peer_certs().and_then(|certs| {
        let der = certs.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        Some(cert.subject().to_string())
    });
    subject.unwrap_or_else(|| "unknown".to_string())
}

/// How a refused or failed backup reaches the client.
pub(super) fn backup_status(e: BackupError) -> Status {
    match e {
        BackupError::NotAbsolute(_) | BackupError::ParentComponent(_) | BackupError::InsideDataDir { .. } => {
            Status::invalid_argument(e.to_string())
        }
        BackupError::NotEmpty(_) => Status::already_exists(e.to_string()),
        BackupError::Io { .. } | BackupError::Store { .. } => {
            tracing::error!(error = %e, "backup failed");
            Status::internal(e.to_string())
        }
    }
}

fn task_failed(e: crate::task::TaskFailed) -> AdminError {
    AdminError::Task(e.to_string())
}

impl AdminService {
    fn users_tower(&self) -> Result<&Tower, AdminError> {
        self.tower.as_ref().ok_or(AdminError::NotAvailable("user administration"))
    }

    /// `backup`: the store's checkpoint and the data directory's files, on the blocking pool.
    pub(super) async fn take_backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<pb::BackupResponse, AdminError> {
        let admin = admin_subject(&request);
        let data_dir = self.data_dir.clone().ok_or(AdminError::NotAvailable("backups"))?;
        let dir = std::path::PathBuf::from(&request.get_ref().dir);
        // The target is checked by `create`, on the blocking pool (file system calls).
        let network = network_dir_name(self.network);
        let backup = self.blocking(move |store| Ok(crate::backup::create(store, &data_dir, network, &dir)?)).await?;
        let (tip_height, tip_hash) = match backup.tip {
            Some((height, hash)) => (height, bitcoin::hashes::Hash::as_byte_array(&hash).to_vec()),
            None => (0, Vec::new()),
        };
        tracing::info!(
            action = "backup",
            dir = %backup.dir.display(),
            tip_height,
            size_bytes = backup.size_bytes,
            %admin,
            "admin: backup taken"
        );
        Ok(pb::BackupResponse {
            dir: backup.dir.display().to_string(),
            tip_height,
            tip_hash,
            size_bytes: backup.size_bytes,
            files: backup.files,
        })
    }

    /// `delete_user`.
    pub(super) async fn remove_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<pb::DeleteUserResponse, AdminError> {
        let user = parse_user_id(&request.get_ref().user_id)?;
        let deleted = self.users_tower()?.delete_user(user).await.map_err(task_failed)??;
        let deleted = deleted.ok_or(AdminError::UserNotFound)?;
        tracing::info!(
            action = "delete_user",
            user_id = %user,
            appointments = deleted.appointments,
            trackers_kept = deleted.trackers_kept,
            admin = %admin_subject(&request),
            "admin: user deleted"
        );
        Ok(pb::DeleteUserResponse {
            user_id: user.to_bytes().to_vec(),
            appointments_deleted: deleted.appointments,
            trackers_kept: deleted.trackers_kept,
        })
    }

    /// `ban_user`.
    pub(super) async fn ban(&self, request: Request<pb::BanUserRequest>) -> Result<pb::BanUserResponse, AdminError> {
        let user = parse_user_id(&request.get_ref().user_id)?;
        let tower = self.users_tower()?;
        let banned = tower.ban_user(user).await.map_err(task_failed)??;
        let registered = tower.is_registered(user).await.map_err(task_failed)??;
        if banned {
            tracing::info!(action = "ban_user", user_id = %user, registered, admin = %admin_subject(&request), "admin: user banned");
        }
        Ok(pb::BanUserResponse { user_id: user.to_bytes().to_vec(), already_banned: !banned, registered })
    }

    /// `unban_user`.
    pub(super) async fn unban(
        &self,
        request: Request<pb::UnbanUserRequest>,
    ) -> Result<pb::UnbanUserResponse, AdminError> {
        let user: UserId = parse_user_id(&request.get_ref().user_id)?;
        if !self.users_tower()?.unban_user(user).await.map_err(task_failed)?? {
            return Err(AdminError::NotBanned);
        }
        tracing::info!(action = "unban_user", user_id = %user, admin = %admin_subject(&request), "admin: user unbanned");
        Ok(pb::UnbanUserResponse { user_id: user.to_bytes().to_vec() })
    }
}

#[cfg(test)]
#[path = "admin_changes_tests.rs"]
mod tests;
