//! The admin gRPC API (`teos.v2.PrivateTowerServices`, see `proto/proto/teos/v2/`) for the
//! operator's teos-cli, served with mutual TLS on `rpc_bind:rpc_port`. Every request field is
//! validated here; store reads run on the blocking pool; listings stream bounded pages read from
//! the store as the client consumes them; errors map to `tonic::Status` in one place
//! (`From<AdminError> for Status`). Conversions between the store's types and the prost
//! messages live at the bottom of this file, so the core never sees prost types.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::consensus::serialize;
use bitcoin::hashes::Hash;
use bitcoin::Network;
use prost::Message;
use teos_proto::admin as pb;
use teos_proto::admin::private_tower_services_server::{PrivateTowerServices, PrivateTowerServicesServer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::config::network_dir_name;
use crate::health::HealthCheck;
use crate::protocol::{IdError, Locator, TowerId, UserId};
use crate::responder::{self, Responder};
use crate::store::{PenaltyStatus, Store, StoreError, StoredAppointment, TrackerRecord, UserRecord};
use crate::tls::TlsMaterial;
use crate::tower::Tower;

/// Entries read from the store per step of a streamed listing.
const LIST_PAGE: usize = 256;
/// Streamed messages are cut at about this many bytes (clients decode up to 4 MiB by default).
const MESSAGE_BUDGET: usize = 1 << 20;
/// Messages a listing may have ready ahead of the client.
const STREAM_AHEAD: usize = 2;
/// How long a listing cut short by shutdown waits for its client to take the notice.
const SHUTDOWN_NOTICE: Duration = Duration::from_secs(2);
/// Time allowed for a TLS handshake, and for a unary request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The addresses the tower serves, as `get_tower_info` reports them.
#[derive(Debug, Clone)]
pub struct ServedAddresses {
    /// The users' HTTP API.
    pub public_http: SocketAddr,
    /// This API.
    pub admin_grpc: SocketAddr,
    /// The users' HTTP API as an onion service, while it is published.
    pub onion: crate::tor::PublishedOnion,
}

/// Why an admin request failed. `From<AdminError> for Status` is the one mapping to gRPC.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `user_id` is not a 33-byte compressed public key.
    #[error("invalid user_id: must be a 33-byte compressed public key ({0})")]
    InvalidUserId(IdError),
    /// `locator` is not 16 bytes.
    #[error("invalid locator: must be 16 bytes ({0})")]
    InvalidLocator(IdError),
    /// No such user.
    #[error("User not found")]
    UserNotFound,
    /// Unban of a user that is not banned.
    #[error("User is not banned")]
    NotBanned,
    /// A backup was refused or failed.
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    /// This service was built without what the request needs (tests only: teosd gives it all).
    #[error("not available: {0}")]
    NotAvailable(&'static str),
    /// The store failed (logged; the client hears only that it did).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task failed.
    #[error("task failed: {0}")]
    Task(String),
    /// The tower is stopping.
    #[error("the tower is shutting down")]
    ShuttingDown,
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::InvalidUserId(_) | AdminError::InvalidLocator(_) => Status::invalid_argument(e.to_string()),
            AdminError::UserNotFound | AdminError::NotBanned => Status::not_found(e.to_string()),
            AdminError::Backup(e) => changes::backup_status(e),
            AdminError::NotAvailable(_) => Status::failed_precondition(e.to_string()),
            AdminError::Store(e) => {
                tracing::error!(error = %e, "store failure while serving an admin request");
                Status::internal("the tower could not read its store")
            }
            AdminError::Task(e) => {
                tracing::error!(error = %e, "admin request task failed");
                Status::internal("internal error")
            }
            AdminError::ShuttingDown => Status::unavailable(e.to_string()),
        }
    }
}

/// The admin service: reads the store, reports the tower's state, and stops the tower.
#[derive(Debug, Clone)]
pub struct AdminService {
    store: Store,
    tower_id: TowerId,
    network: Network,
    addresses: ServedAddresses,
    health: HealthCheck,
    shutdown: CancellationToken,
    /// For the changes to users (under their locks, with the Gatekeeper's in-memory state).
    tower: Option<Tower>,
    /// The data directory, for backups.
    data_dir: Option<PathBuf>,
}

impl AdminService {
    /// A service over `store` for the tower `tower_id`, reporting `health`; `stop` cancels
    /// `shutdown` (the token SIGTERM trips).
    pub fn new(
        store: Store,
        tower_id: TowerId,
        network: Network,
        addresses: ServedAddresses,
        health: HealthCheck,
        shutdown: CancellationToken,
    ) -> Self {
        AdminService { store, tower_id, network, addresses, health, shutdown, tower: None, data_dir: None }
    }

    /// Lets the service ban, unban and delete users through `tower`.
    pub fn with_tower(self, tower: Tower) -> Self {
        AdminService { tower: Some(tower), ..self }
    }

    /// Lets the service back the store up, with the files of `data_dir` a restore needs.
    pub fn with_data_dir(self, data_dir: PathBuf) -> Self {
        AdminService { data_dir: Some(data_dir), ..self }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, AdminError> + Send + 'static,
    ) -> Result<T, AdminError> {
        let store = self.store.clone();
        crate::task::blocking(move || work(&store)).await.map_err(|e| AdminError::Task(e.to_string()))?
    }

    fn tower_info(&self, counts: Counts) -> pb::GetTowerInfoResponse {
        let health = self.health.report();
        pb::GetTowerInfoResponse {
            tower_id: self.tower_id.to_bytes().to_vec(),
            n_registered_users: counts.users,
            n_watcher_appointments: counts.watched,
            n_responder_trackers: counts.trackers,
            bitcoind_reachable: health.bitcoind_reachable,
            addresses: self.served_addresses(),
            tip_height: health.tip_height,
            network: network_dir_name(self.network).to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ready: health.ready,
            problems: health.problems,
            bitcoind_height: health.bitcoind_height.unwrap_or(0),
            store_ok: health.store_ok,
            last_error: health.last_error.unwrap_or_default(),
            disk_free_bytes: health.disk_free_bytes.unwrap_or(0),
            disk_above_reserve: health.disk_above_reserve,
            n_trackers_at_risk: counts.at_risk,
            n_penalties_won: counts.outcomes.won,
            n_penalties_lost: counts.outcomes.lost,
            n_penalties_abandoned: counts.outcomes.abandoned,
        }
    }

    /// The public API, the onion service while it is up (`torv3`, service `public_http`), this API.
    fn served_addresses(&self) -> Vec<pb::NetworkAddress> {
        let mut addresses = vec![network_address(self.addresses.public_http, pb::network_address::Service::PublicHttp)];
        if let Some(onion) = self.addresses.onion.current() {
            addresses.push(pb::NetworkAddress {
                address_type: pb::network_address::AddressType::TorV3 as i32,
                address: onion.host,
                port: u32::from(onion.port),
                service: pb::network_address::Service::PublicHttp as i32,
            });
        }
        addresses.push(network_address(self.addresses.admin_grpc, pb::network_address::Service::AdminGrpc));
        addresses
    }

    /// The height the tower is at (for whether a tracker is at risk).
    fn height(&self) -> u32 {
        self.health.report().tip_height
    }
}

struct Counts {
    users: u64,
    watched: u64,
    trackers: u64,
    at_risk: u64,
    outcomes: crate::store::OutcomeCounts,
}

type Stream<M> = ReceiverStream<Result<M, Status>>;

#[tonic::async_trait]
impl PrivateTowerServices for AdminService {
    type get_all_appointmentsStream = Stream<pb::GetAllAppointmentsResponse>;
    type get_usersStream = Stream<pb::GetUsersResponse>;

    async fn get_all_appointments(
        &self,
        _: Request<pb::GetAllAppointmentsRequest>,
    ) -> Result<Response<Self::get_all_appointmentsStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_AHEAD);
        let lister = Lister { store: self.store.clone(), tx, shutdown: self.shutdown.clone() };
        let height = self.height();
        tokio::spawn(async move {
            let wrap = |appointments| pb::GetAllAppointmentsResponse { appointments };
            let watched = lister.stream(
                |store, after| {
                    let (items, next) = store.watched_appointments_page(after.as_ref(), LIST_PAGE)?;
                    Ok((items.iter().map(|(user, stored)| appointment_data(user, stored)).collect(), next))
                },
                wrap,
            );
            if watched.await {
                let trackers = move |store: &Store, after: Option<_>| {
                    let (items, next) = store.trackers_page(after.as_ref(), LIST_PAGE)?;
                    Ok((
                        items
                            .iter()
                            .map(|(locator, user, record)| tracker_data(locator, user, record, height))
                            .collect(),
                        next,
                    ))
                };
                lister.stream(trackers, wrap).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_appointments(
        &self,
        request: Request<pb::GetAppointmentsRequest>,
    ) -> Result<Response<pb::GetAppointmentsResponse>, Status> {
        let locator = parse_locator(&request.get_ref().locator)?;
        let height = self.height();
        let appointments = self
            .blocking(move |store| {
                let trackers = store.trackers_at(&locator)?;
                let mut out: Vec<_> = store
                    .appointments_at(&locator)?
                    .iter()
                    .filter(|(user, _)| !trackers.iter().any(|(t, _)| t == user))
                    .map(|(user, stored)| appointment_data(user, stored))
                    .collect();
                out.extend(trackers.iter().map(|(user, record)| tracker_data(&locator, user, record, height)));
                Ok(out)
            })
            .await?;
        Ok(Response::new(pb::GetAppointmentsResponse { appointments }))
    }

    async fn get_tower_info(
        &self,
        _: Request<pb::GetTowerInfoRequest>,
    ) -> Result<Response<pb::GetTowerInfoResponse>, Status> {
        let height = self.height();
        let counts = self
            .blocking(move |store| {
                // Users, appointments and trackers are the store's kept counts (atomic loads);
                // the watched appointments and those at risk walk the trackers (not the
                // appointments): their cost grows with the trackers alone.
                let counts = store.stored_counts();
                Ok(Counts {
                    users: counts.users,
                    watched: counts.appointments.saturating_sub(store.count_triggered_appointments()?),
                    trackers: counts.trackers.iter().sum(),
                    at_risk: Responder::trackers_at_risk(store, height, usize::MAX)?.len() as u64,
                    outcomes: store.outcome_counts()?,
                })
            })
            .await?;
        Ok(Response::new(self.tower_info(counts)))
    }

    async fn get_users(&self, _: Request<pb::GetUsersRequest>) -> Result<Response<Self::get_usersStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_AHEAD);
        let lister = Lister { store: self.store.clone(), tx, shutdown: self.shutdown.clone() };
        tokio::spawn(async move {
            let users = |store: &Store, after: Option<UserId>| {
                let (items, next) = store.users_page(after.as_ref(), LIST_PAGE * 4)?;
                Ok((items.iter().map(|(user, _)| user.to_bytes().to_vec()).collect(), next))
            };
            lister.stream(users, |user_ids| pb::GetUsersResponse { user_ids }).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::GetUserResponse>, Status> {
        let user = parse_user_id(&request.get_ref().user_id)?;
        let response = self
            .blocking(move |store| {
                let record = store.user(&user)?.ok_or(AdminError::UserNotFound)?;
                Ok(user_response(&record, &store.user_locators(&user)?))
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn stop(&self, request: Request<pb::StopRequest>) -> Result<Response<pb::StopResponse>, Status> {
        tracing::info!(admin = %changes::admin_subject(&request), "stop requested over the admin API");
        self.shutdown.cancel();
        Ok(Response::new(pb::StopResponse {}))
    }

    async fn backup(&self, request: Request<pb::BackupRequest>) -> Result<Response<pb::BackupResponse>, Status> {
        Ok(Response::new(self.take_backup(request).await?))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        Ok(Response::new(self.remove_user(request).await?))
    }

    async fn ban_user(&self, request: Request<pb::BanUserRequest>) -> Result<Response<pb::BanUserResponse>, Status> {
        Ok(Response::new(self.ban(request).await?))
    }

    async fn unban_user(
        &self,
        request: Request<pb::UnbanUserRequest>,
    ) -> Result<Response<pb::UnbanUserResponse>, Status> {
        Ok(Response::new(self.unban(request).await?))
    }

    async fn get_banned_users(
        &self,
        _: Request<pb::GetBannedUsersRequest>,
    ) -> Result<Response<pb::GetBannedUsersResponse>, Status> {
        let banned = self.blocking(|store| Ok(store.banned_users()?)).await?;
        let banned_users = banned
            .iter()
            .map(|(user, height)| pb::BannedUser { user_id: user.to_bytes().to_vec(), banned_at: *height })
            .collect();
        Ok(Response::new(pb::GetBannedUsersResponse { banned_users }))
    }
}

/// Feeds one streamed listing: reads a page on the blocking pool, sends it in messages of at most
/// about [`MESSAGE_BUDGET`] bytes, and reads the next page only once the channel has room. Stops
/// when the client goes away, and ends the stream with `Unavailable` on shutdown.
struct Lister<M> {
    store: Store,
    tx: mpsc::Sender<Result<M, Status>>,
    shutdown: CancellationToken,
}

impl<M: Send + 'static> Lister<M> {
    /// Streams every page of `fetch`; returns whether the listing ran to its end.
    async fn stream<C, T>(
        &self,
        fetch: impl Fn(&Store, Option<C>) -> Result<(Vec<T>, Option<C>), AdminError> + Send + Sync + 'static,
        wrap: impl Fn(Vec<T>) -> M,
    ) -> bool
    where
        C: Copy + Send + 'static,
        T: Message + Send + 'static,
    {
        let fetch = Arc::new(fetch);
        let mut after = None;
        loop {
            let (store, fetch) = (self.store.clone(), fetch.clone());
            let page = crate::task::blocking(move || fetch(&store, after))
                .await
                .unwrap_or_else(|e| Err(AdminError::Task(e.to_string())));
            let (items, next) = match page {
                Ok(page) => page,
                Err(e) => {
                    let _ = self.tx.send(Err(e.into())).await;
                    return false;
                }
            };
            for chunk in chunks_within_budget(items) {
                if !self.send(wrap(chunk)).await {
                    return false;
                }
            }
            match next {
                Some(next) => after = Some(next),
                None => return true,
            }
        }
    }

    async fn send(&self, message: M) -> bool {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {
                // The client may be behind: give it a moment to make room, so that it learns the
                // listing was cut short rather than seeing it end.
                let notice = self.tx.send(Err(AdminError::ShuttingDown.into()));
                let _ = tokio::time::timeout(SHUTDOWN_NOTICE, notice).await;
                false
            }
            sent = self.tx.send(Ok(message)) => sent.is_ok(),
        }
    }
}

/// Splits `items` into runs whose encoded size stays within [`MESSAGE_BUDGET`] (a single larger
/// item gets a run of its own).
fn chunks_within_budget<T: Message>(items: Vec<T>) -> Vec<Vec<T>> {
    let mut chunks = Vec::new();
    let (mut current, mut size) = (Vec::new(), 0);
    for item in items {
        let len = item.encoded_len() + 8;
        if !current.is_empty() && size + len > MESSAGE_BUDGET {
            chunks.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(item);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Serves the admin API on `listener` with mutual TLS until `shutdown` fires, then lets requests
/// in flight finish (streamed listings end with `Unavailable`).
pub async fn serve(
    listener: TcpListener,
    tls: &TlsMaterial,
    service: AdminService,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .tls_config(tls.server_config().timeout(HANDSHAKE_TIMEOUT))?
        .timeout(REQUEST_TIMEOUT)
        .add_service(PrivateTowerServicesServer::new(service))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.cancelled_owned())
        .await
}

// Request fields → domain types.

fn parse_user_id(bytes: &[u8]) -> Result<UserId, AdminError> {
    UserId::from_slice(bytes).map_err(AdminError::InvalidUserId)
}

fn parse_locator(bytes: &[u8]) -> Result<Locator, AdminError> {
    Locator::from_slice(bytes).map_err(AdminError::InvalidLocator)
}

// Domain types → messages.

fn appointment_data(user: &UserId, stored: &StoredAppointment) -> pb::AppointmentData {
    let appointment = &stored.appointment;
    pb::AppointmentData {
        appointment_data: Some(pb::appointment_data::AppointmentData::Appointment(pb::Appointment {
            locator: appointment.locator.as_bytes().to_vec(),
            encrypted_blob: appointment.encrypted_blob.clone(),
            to_self_delay: appointment.to_self_delay,
            start_block: stored.start_block,
        })),
        user_id: user.to_bytes().to_vec(),
    }
}

fn tracker_data(locator: &Locator, user: &UserId, record: &TrackerRecord, height: u32) -> pb::AppointmentData {
    let (status, conflicting_txid) = match record.status {
        PenaltyStatus::Broadcast(_) => (pb::TrackerStatus::Broadcast, Vec::new()),
        PenaltyStatus::Confirmed(_) => (pb::TrackerStatus::Confirmed, Vec::new()),
        PenaltyStatus::Refused(_) => (pb::TrackerStatus::Refused, Vec::new()),
        PenaltyStatus::Conflicted { by, .. } => (pb::TrackerStatus::Conflicted, by.as_byte_array().to_vec()),
    };
    pb::AppointmentData {
        appointment_data: Some(pb::appointment_data::AppointmentData::Tracker(pb::Tracker {
            dispute_txid: record.dispute_txid.as_byte_array().to_vec(),
            penalty_txid: record.penalty.compute_txid().as_byte_array().to_vec(),
            penalty_rawtx: serialize(&record.penalty),
            locator: locator.as_bytes().to_vec(),
            status: status as i32,
            status_height: record.status.height(),
            conflicting_txid,
            dispute_height: record.dispute_height,
            deadline_height: responder::deadline(record).unwrap_or(0),
            at_risk: responder::at_risk(record, height),
        })),
        user_id: user.to_bytes().to_vec(),
    }
}

fn user_response(record: &UserRecord, locators: &[Locator]) -> pb::GetUserResponse {
    pb::GetUserResponse {
        available_slots: record.available_slots,
        subscription_expiry: record.subscription_expiry,
        subscription_start: record.subscription_start,
        locators: locators.iter().map(|l| l.as_bytes().to_vec()).collect(),
        dialect: record.dialect.name().to_string(),
    }
}

fn network_address(addr: SocketAddr, service: pb::network_address::Service) -> pb::NetworkAddress {
    let address_type = match addr {
        SocketAddr::V4(_) => pb::network_address::AddressType::IpV4,
        SocketAddr::V6(_) => pb::network_address::AddressType::IpV6,
    };
    pb::NetworkAddress {
        address_type: address_type as i32,
        address: addr.ip().to_string(),
        port: u32::from(addr.port()),
        service: service as i32,
    }
}

#[path = "admin_changes.rs"]
mod changes;

#[cfg(test)]
#[path = "admin_tests.rs"]
mod tests;
