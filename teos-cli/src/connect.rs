//! The connection to teosd's admin API: mutual TLS with the data directory's certificates, and
//! each RPC with its failure turned into one readable line.

use std::error::Error as _;
use std::path::Path;
use std::time::Duration;

use teos_proto::admin as pb;
use teos_proto::admin::private_tower_services_client::PrivateTowerServicesClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status, Streaming};

use crate::settings::Settings;
use crate::CliError;

/// The name the tower's certificate is issued for, whatever address it is reached at.
const TLS_DOMAIN: &str = "localhost";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Large enough for a user with millions of locators; listings come in smaller messages.
const MAX_MESSAGE: usize = 256 << 20;

/// A connected admin client.
#[derive(Debug)]
pub struct Tower {
    client: PrivateTowerServicesClient<Channel>,
}

fn read_tls_file(dir: &Path, name: &str) -> Result<String, CliError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|e| {
        let hint = "teosd creates ca.pem, client.pem and client-key.pem in its data directory at its first start; \
                    copy them here or pass --datadir";
        if e.kind() == std::io::ErrorKind::NotFound {
            CliError::Failed(format!("missing {} ({hint})", path.display()))
        } else {
            CliError::Failed(format!("cannot read {}: {e}", path.display()))
        }
    })
}

/// `error: cause: cause`, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}

fn status_error(status: Status) -> CliError {
    let message = status.message().to_string();
    match (status.code(), status.source().map(chain)) {
        (Code::InvalidArgument | Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition, _) => {
            CliError::Failed(message)
        }
        // No answer from the tower: the connection failed under the request.
        (_, Some(cause)) if cause.contains("tcp connect") => {
            CliError::Failed(format!("Could not connect to tower. Is teosd running? ({cause})"))
        }
        (_, Some(cause)) => CliError::Failed(format!(
            "the connection to the tower failed ({cause}); if teosd is running, check that ca.pem, client.pem \
             and client-key.pem are the ones from its data directory"
        )),
        (code, None) => CliError::Failed(format!("the tower answered {code:?}: {message}")),
    }
}

impl Tower {
    /// Connects to `settings.endpoint` with the client certificate of `settings.data_dir`.
    pub async fn connect(settings: &Settings) -> Result<Tower, CliError> {
        let dir = &settings.data_dir;
        let ca = read_tls_file(dir, "ca.pem")?;
        let cert = read_tls_file(dir, "client.pem")?;
        let key = read_tls_file(dir, "client-key.pem")?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(TLS_DOMAIN);
        let invalid = |e: tonic::transport::Error| {
            CliError::Failed(format!("cannot use the TLS files in {}: {}", dir.display(), chain(&e)))
        };
        let channel = Channel::from_shared(settings.endpoint.clone())
            .map_err(|e| CliError::Usage(format!("invalid tower address {}: {e}", settings.endpoint)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tls_config(tls)
            .map_err(invalid)?
            .connect()
            .await
            .map_err(|e| {
                CliError::Failed(format!(
                    "Could not connect to tower. Is teosd running? ({}: {})",
                    settings.endpoint,
                    chain(&e)
                ))
            })?;
        let client = PrivateTowerServicesClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        Ok(Tower { client })
    }

    /// `get_tower_info`.
    pub async fn tower_info(&mut self) -> Result<pb::GetTowerInfoResponse, CliError> {
        let response = self.client.get_tower_info(pb::GetTowerInfoRequest {}).await.map_err(status_error)?;
        Ok(response.into_inner())
    }

    /// `get_users`, as a stream of pages.
    pub async fn users(&mut self) -> Result<Pages<pb::GetUsersResponse>, CliError> {
        let response = self.client.get_users(pb::GetUsersRequest {}).await.map_err(status_error)?;
        Ok(Pages(response.into_inner()))
    }

    /// `get_user`.
    pub async fn user(&mut self, request: pb::GetUserRequest) -> Result<pb::GetUserResponse, CliError> {
        Ok(self.client.get_user(request).await.map_err(status_error)?.into_inner())
    }

    /// `get_all_appointments`, as a stream of pages.
    pub async fn all_appointments(&mut self) -> Result<Pages<pb::GetAllAppointmentsResponse>, CliError> {
        let response =
            self.client.get_all_appointments(pb::GetAllAppointmentsRequest {}).await.map_err(status_error)?;
        Ok(Pages(response.into_inner()))
    }

    /// `get_appointments`.
    pub async fn appointments(&mut self, locator: Vec<u8>) -> Result<pb::GetAppointmentsResponse, CliError> {
        let request = pb::GetAppointmentsRequest { locator };
        Ok(self.client.get_appointments(request).await.map_err(status_error)?.into_inner())
    }

    /// `backup`.
    pub async fn backup(&mut self, dir: String) -> Result<pb::BackupResponse, CliError> {
        Ok(self.client.backup(pb::BackupRequest { dir }).await.map_err(status_error)?.into_inner())
    }

    /// `delete_user`.
    pub async fn delete_user(&mut self, user_id: Vec<u8>) -> Result<pb::DeleteUserResponse, CliError> {
        Ok(self.client.delete_user(pb::DeleteUserRequest { user_id }).await.map_err(status_error)?.into_inner())
    }

    /// `ban_user`.
    pub async fn ban_user(&mut self, user_id: Vec<u8>) -> Result<pb::BanUserResponse, CliError> {
        Ok(self.client.ban_user(pb::BanUserRequest { user_id }).await.map_err(status_error)?.into_inner())
    }

    /// `unban_user`.
    pub async fn unban_user(&mut self, user_id: Vec<u8>) -> Result<pb::UnbanUserResponse, CliError> {
        Ok(self.client.unban_user(pb::UnbanUserRequest { user_id }).await.map_err(status_error)?.into_inner())
    }

    /// `get_banned_users`.
    pub async fn banned_users(&mut self) -> Result<pb::GetBannedUsersResponse, CliError> {
        let response = self.client.get_banned_users(pb::GetBannedUsersRequest {}).await.map_err(status_error)?;
        Ok(response.into_inner())
    }

    /// `stop`.
    pub async fn stop(&mut self) -> Result<(), CliError> {
        self.client.stop(pb::StopRequest {}).await.map_err(status_error)?;
        Ok(())
    }
}

/// The pages of a streamed listing.
#[derive(Debug)]
pub struct Pages<M>(Streaming<M>);

impl<M> Pages<M> {
    /// The next page, `None` at the end.
    pub async fn next(&mut self) -> Result<Option<M>, CliError> {
        self.0.message().await.map_err(status_error)
    }
}
