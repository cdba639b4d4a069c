//! The admin service against an in-memory store: every RPC, request validation, streamed
//! listings across pages and message budgets, `stop`, shutdown during a listing; and the real
//! server over mutual TLS on a loopback port.

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use tokio_stream::StreamExt;
use tonic::Code;

use super::*;
use crate::chain::ChainStatus;
use crate::disk::DiskReserve;
use crate::protocol::Appointment;

struct Harness {
    store: Store,
    service: AdminService,
    chain: tokio::sync::watch::Sender<ChainStatus>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    harness_with_onion(crate::tor::PublishedOnion::none())
}

fn harness_with_onion(onion: crate::tor::PublishedOnion) -> Harness {
    let store = Store::in_memory();
    let following = ChainStatus { source_height: Some(101), source_reachable: true, ..ChainStatus::starting(101) };
    let (chain, rx) = tokio::sync::watch::channel(following);
    let dir = tempfile::tempdir().unwrap();
    let health = HealthCheck::new(rx, Arc::new(DiskReserve::new(dir.path(), 0)), 3);
    let shutdown = CancellationToken::new();
    let addresses = ServedAddresses {
        public_http: "127.0.0.1:9814".parse().unwrap(),
        admin_grpc: "[::1]:8814".parse().unwrap(),
        onion,
    };
    let service = AdminService::new(store.clone(), user(200), Network::Regtest, addresses, health, shutdown.clone());
    Harness { store, service, chain, shutdown, _dir: dir }
}

fn user(n: u8) -> UserId {
    let sk = SecretKey::from_slice(&[n.max(1); 32]).unwrap();
    UserId(PublicKey::from_secret_key(&Secp256k1::signing_only(), &sk))
}

fn numbered_user(n: u32) -> UserId {
    let mut bytes = [1u8; 32];
    bytes[28..].copy_from_slice(&(n + 1).to_be_bytes());
    UserId(PublicKey::from_secret_key(&Secp256k1::signing_only(), &SecretKey::from_slice(&bytes).unwrap()))
}

fn locator(n: u32) -> Locator {
    let mut bytes = [9u8; 16];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    Locator::from_slice(&bytes).unwrap()
}

fn stored(loc: Locator, blob_len: usize) -> StoredAppointment {
    StoredAppointment {
        appointment: Appointment { locator: loc, encrypted_blob: vec![0xb1; blob_len], to_self_delay: 42 },
        user_signature: "s".repeat(104),
        start_block: 100,
    }
}

fn tracker(seed: u8) -> TrackerRecord {
    crate::test_utils::tracker(seed, 110, PenaltyStatus::Confirmed(111))
}

fn record(slots: u32) -> UserRecord {
    UserRecord {
        available_slots: slots,
        subscription_start: 100,
        subscription_expiry: 4420,
        number: 0,
        dialect: Default::default(),
    }
}

impl Harness {
    fn add(&self, user: &UserId, appointments: &[StoredAppointment]) {
        let mut batch = self.store.batch();
        let record = match self.store.user(user).unwrap() {
            Some(record) => record,
            None => {
                let record = UserRecord { number: self.store.new_user_number().unwrap(), ..record(10) };
                batch.put_user(user, None, &record);
                record
            }
        };
        for a in appointments {
            batch.put_appointment(user, &record, a, true);
        }
        self.store.commit(batch).unwrap();
    }

    fn trigger(&self, locator: &Locator, user: &UserId, seed: u8) {
        let mut batch = self.store.batch();
        batch.put_tracker(locator, user, &tracker(seed), None);
        self.store.commit(batch).unwrap();
    }

    async fn all_appointments(&self) -> Vec<Result<pb::GetAllAppointmentsResponse, Status>> {
        let stream = self.service.get_all_appointments(Request::new(pb::GetAllAppointmentsRequest {})).await.unwrap();
        stream.into_inner().collect().await
    }
}

fn kind(data: &pb::AppointmentData) -> (&'static str, Vec<u8>, Vec<u8>) {
    match data.appointment_data.as_ref().unwrap() {
        pb::appointment_data::AppointmentData::Appointment(a) => {
            ("appointment", a.locator.clone(), data.user_id.clone())
        }
        pb::appointment_data::AppointmentData::Tracker(t) => ("tracker", t.locator.clone(), data.user_id.clone()),
    }
}

#[tokio::test]
async fn tower_info_lists_the_onion_address_while_the_service_is_published() {
    let (published, rx) = tokio::sync::watch::channel(None);
    let h = harness_with_onion(crate::tor::PublishedOnion::watching(rx));
    let addresses = || async {
        let info = h.service.get_tower_info(Request::new(pb::GetTowerInfoRequest {})).await.unwrap().into_inner();
        info.addresses.into_iter().map(|a| (a.address_type, a.address, a.port, a.service)).collect::<Vec<_>>()
    };
    assert_eq!(addresses().await.len(), 2, "nothing while Tor has not published it");
    let host = format!("{}.onion", "a".repeat(56));
    published.send_replace(Some(crate::tor::OnionAddress { host: host.clone(), port: 9814 }));
    let (tor, public_http) = (pb::network_address::AddressType::TorV3 as i32, pb::network_address::Service::PublicHttp);
    assert_eq!(addresses().await[1], (tor, host, 9814, public_http as i32));
    published.send_replace(None);
    assert_eq!(addresses().await.len(), 2, "gone while Tor is away");
}

#[tokio::test]
async fn tower_info_reports_counts_tip_reachability_and_addresses() {
    let h = harness();
    let (alice, bob) = (user(1), user(2));
    h.add(&alice, &[stored(locator(1), 10), stored(locator(2), 10)]);
    h.add(&bob, &[stored(locator(1), 10)]);
    h.trigger(&locator(1), &bob, 1);

    let info = h.service.get_tower_info(Request::new(pb::GetTowerInfoRequest {})).await.unwrap().into_inner();
    assert_eq!(info.tower_id, user(200).to_bytes().to_vec());
    assert_eq!((info.n_registered_users, info.n_watcher_appointments, info.n_responder_trackers), (2, 2, 1));
    assert!(info.bitcoind_reachable);
    assert_eq!(info.tip_height, 101);
    assert_eq!(info.network, "regtest");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    let addresses: Vec<_> =
        info.addresses.iter().map(|a| (a.address_type, a.address.as_str(), a.port, a.service)).collect();
    assert_eq!(
        addresses,
        vec![
            (pb::network_address::AddressType::IpV4 as i32, "127.0.0.1", 9814, 0),
            (pb::network_address::AddressType::IpV6 as i32, "::1", 8814, 1),
        ]
    );

    assert!(info.ready && info.store_ok && info.disk_above_reserve && info.problems.is_empty(), "{info:?}");
    assert_eq!(info.bitcoind_height, 101);

    h.chain.send_modify(|s| {
        s.tip_height = 102;
        s.source_height = Some(110);
        s.source_reachable = false;
    });
    let info = h.service.get_tower_info(Request::new(pb::GetTowerInfoRequest {})).await.unwrap().into_inner();
    assert_eq!((info.tip_height, info.bitcoind_height), (102, 110));
    assert!(!info.bitcoind_reachable && !info.ready);
    assert_eq!(info.problems, vec!["bitcoind is unreachable".to_string(), "8 blocks behind bitcoind".to_string()]);
}

#[tokio::test]
async fn get_user_returns_the_subscription_and_locators() {
    let h = harness();
    h.add(&user(1), &[stored(locator(2), 10), stored(locator(1), 10)]);
    let request = pb::GetUserRequest { user_id: user(1).to_bytes().to_vec() };
    let got = h.service.get_user(Request::new(request)).await.unwrap().into_inner();
    assert_eq!(
        got,
        pb::GetUserResponse {
            available_slots: 10,
            subscription_expiry: 4420,
            subscription_start: 100,
            locators: vec![locator(1).as_bytes().to_vec(), locator(2).as_bytes().to_vec()],
            dialect: "rust".into(),
        }
    );
}

#[tokio::test]
async fn get_user_validates_the_id_and_reports_unknown_users() {
    let h = harness();
    for (bytes, needle) in [
        (vec![], "received 0"),
        (vec![2; 32], "received 32"),
        (vec![2; 34], "received 34"),
        (vec![5; 33], "not a valid 33-byte compressed public key"),
    ] {
        let status = h.service.get_user(Request::new(pb::GetUserRequest { user_id: bytes })).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("invalid user_id"), "{}", status.message());
        assert!(status.message().contains(needle), "{}", status.message());
    }
    let unknown = pb::GetUserRequest { user_id: user(9).to_bytes().to_vec() };
    let status = h.service.get_user(Request::new(unknown)).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::NotFound, "User not found"));
}

#[tokio::test]
async fn get_appointments_lists_every_user_at_a_locator_with_trackers_replacing_triggered_ones() {
    let h = harness();
    let (alice, bob, carol) = (user(1), user(2), user(3));
    h.add(&alice, &[stored(locator(5), 10)]);
    h.add(&bob, &[stored(locator(5), 10)]);
    h.add(&carol, &[stored(locator(6), 10)]);
    h.trigger(&locator(5), &bob, 7);

    let request = pb::GetAppointmentsRequest { locator: locator(5).as_bytes().to_vec() };
    let got = h.service.get_appointments(Request::new(request)).await.unwrap().into_inner().appointments;
    let kinds: Vec<_> = got.iter().map(kind).collect();
    let l5 = locator(5).as_bytes().to_vec();
    assert_eq!(
        kinds,
        vec![("appointment", l5.clone(), alice.to_bytes().to_vec()), ("tracker", l5, bob.to_bytes().to_vec())]
    );
    let Some(pb::appointment_data::AppointmentData::Tracker(t)) = &got[1].appointment_data else { panic!() };
    let record = tracker(7);
    assert_eq!(t.dispute_txid, record.dispute_txid.as_byte_array().to_vec());
    assert_eq!(t.penalty_rawtx, serialize(&record.penalty));
    assert_eq!((t.status, t.status_height), (pb::TrackerStatus::Confirmed as i32, 111));

    let empty = pb::GetAppointmentsRequest { locator: locator(7).as_bytes().to_vec() };
    assert!(h.service.get_appointments(Request::new(empty)).await.unwrap().into_inner().appointments.is_empty());
    for bad in [vec![], vec![1; 15], vec![1; 17]] {
        let request = pb::GetAppointmentsRequest { locator: bad };
        let status = h.service.get_appointments(Request::new(request)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("invalid locator: must be 16 bytes"), "{}", status.message());
    }
}

#[tokio::test]
async fn all_appointments_stream_every_page_then_the_trackers() {
    let h = harness();
    let (alice, bob) = (user(1), user(2));
    let count = LIST_PAGE as u32 * 2 + 10;
    let appointments: Vec<_> = (0..count).map(|n| stored(locator(n), 10)).collect();
    h.add(&alice, &appointments);
    h.add(&bob, &[stored(locator(3), 10)]);
    h.trigger(&locator(3), &alice, 1);
    h.trigger(&locator(4), &alice, 2);

    let messages = h.all_appointments().await;
    let items: Vec<_> = messages.into_iter().flat_map(|m| m.unwrap().appointments).collect();
    let kinds: Vec<_> = items.iter().map(kind).collect();
    let watched: Vec<_> = kinds.iter().filter(|k| k.0 == "appointment").collect();
    assert_eq!(watched.len() as u32, count + 1 - 2);
    assert!(watched.windows(2).all(|w| (&w[0].1, &w[0].2) < (&w[1].1, &w[1].2)), "in key order, no repeats");
    let trackers: Vec<_> = kinds.iter().skip(watched.len()).cloned().collect();
    assert_eq!(
        trackers,
        vec![
            ("tracker", locator(3).as_bytes().to_vec(), alice.to_bytes().to_vec()),
            ("tracker", locator(4).as_bytes().to_vec(), alice.to_bytes().to_vec()),
        ]
    );
}

#[tokio::test]
async fn an_empty_tower_streams_no_appointments_and_no_users() {
    let h = harness();
    assert!(h.all_appointments().await.is_empty());
    let users = h.service.get_users(Request::new(pb::GetUsersRequest {})).await.unwrap().into_inner();
    assert!(users.collect::<Vec<_>>().await.is_empty());
}

#[tokio::test]
async fn big_appointments_are_streamed_in_messages_within_the_budget() {
    let h = harness();
    let appointments: Vec<_> = (0..40).map(|n| stored(locator(n), 65_536)).collect();
    h.add(&user(1), &appointments);
    let messages: Vec<_> = h.all_appointments().await.into_iter().map(Result::unwrap).collect();
    assert!(messages.len() >= 3, "{} messages", messages.len());
    assert!(messages.iter().all(|m| m.encoded_len() <= MESSAGE_BUDGET + 65_536));
    assert_eq!(messages.iter().map(|m| m.appointments.len()).sum::<usize>(), 40);
}

#[tokio::test]
async fn users_stream_in_id_order_across_pages() {
    let h = harness();
    let mut users: Vec<_> = (0..(LIST_PAGE as u32 * 4 + 5)).map(numbered_user).collect();
    let mut batch = h.store.batch();
    for u in &users {
        batch.put_user(u, None, &UserRecord { number: h.store.new_user_number().unwrap(), ..record(1) });
    }
    h.store.commit(batch).unwrap();
    users.sort_by_key(|u| u.to_bytes());

    let stream = h.service.get_users(Request::new(pb::GetUsersRequest {})).await.unwrap().into_inner();
    let messages: Vec<_> = stream.collect::<Vec<_>>().await.into_iter().map(Result::unwrap).collect();
    assert_eq!(messages.len(), 2);
    let got: Vec<Vec<u8>> = messages.into_iter().flat_map(|m| m.user_ids).collect();
    assert_eq!(got, users.iter().map(|u| u.to_bytes().to_vec()).collect::<Vec<_>>());
}

#[tokio::test]
async fn stop_trips_the_shutdown_token() {
    let h = harness();
    assert!(!h.shutdown.is_cancelled());
    h.service.stop(Request::new(pb::StopRequest {})).await.unwrap();
    assert!(h.shutdown.is_cancelled());
}

#[tokio::test]
async fn a_listing_cut_short_by_shutdown_ends_with_unavailable() {
    let h = harness();
    let appointments: Vec<_> = (0..LIST_PAGE as u32 * 8).map(|n| stored(locator(n), 10)).collect();
    h.add(&user(1), &appointments);
    let stream = h.service.get_all_appointments(Request::new(pb::GetAllAppointmentsRequest {})).await.unwrap();
    let mut stream = stream.into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.appointments.len(), LIST_PAGE);
    h.shutdown.cancel();
    let rest: Vec<_> = stream.collect().await;
    let last = rest.last().expect("a notice").as_ref().unwrap_err();
    assert_eq!(last.code(), Code::Unavailable);
    let listed: usize = rest.iter().filter_map(|m| m.as_ref().ok()).map(|m| m.appointments.len()).sum();
    assert!(listed + LIST_PAGE < appointments.len());
}

#[test]
fn chunks_stay_within_the_budget_and_keep_order() {
    let big = |n: u8| pb::Appointment { encrypted_blob: vec![n; MESSAGE_BUDGET / 3], ..Default::default() };
    let chunks = chunks_within_budget((0..7).map(big).collect());
    let sizes: Vec<_> = chunks.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![2, 2, 2, 1]);
    assert_eq!(chunks.concat().iter().map(|a| a.encrypted_blob[0]).collect::<Vec<_>>(), (0..7).collect::<Vec<_>>());
    let huge = pb::Appointment { encrypted_blob: vec![0; MESSAGE_BUDGET * 2], ..Default::default() };
    assert_eq!(chunks_within_budget(vec![huge]).len(), 1);
    assert!(chunks_within_budget(Vec::<pb::Appointment>::new()).is_empty());
}

#[test]
fn store_failures_are_internal_without_details() {
    let status = Status::from(AdminError::Store(StoreError::MissingSchemaVersion));
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(status.message(), "the tower could not read its store");
}

mod over_tls {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

    use super::*;
    use crate::tls;
    use teos_proto::admin::private_tower_services_client::PrivateTowerServicesClient;

    async fn connect(addr: SocketAddr, tls: ClientTlsConfig) -> Result<pb::GetTowerInfoResponse, String> {
        let channel = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let mut client = PrivateTowerServicesClient::new(channel);
        client.get_tower_info(pb::GetTowerInfoRequest {}).await.map(|r| r.into_inner()).map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn requires_a_client_certificate_from_the_tower_ca_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let material = tokio::task::spawn_blocking({
            let dir = dir.path().to_path_buf();
            move || tls::load_or_create(&dir)
        })
        .await
        .unwrap()
        .unwrap();
        let h = harness();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn({
            let (service, shutdown) = (h.service.clone(), h.shutdown.clone());
            async move { serve(listener, &material, service, shutdown).await }
        });

        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        let ca = Certificate::from_pem(read("ca.pem"));
        let trusted = ClientTlsConfig::new().ca_certificate(ca.clone()).domain_name("localhost");
        let with_cert = trusted.clone().identity(Identity::from_pem(read("client.pem"), read("client-key.pem")));
        let info = connect(addr, with_cert.clone()).await.unwrap();
        assert_eq!(info.tower_id, user(200).to_bytes().to_vec());

        assert!(connect(addr, trusted).await.is_err(), "no client certificate: refused");
        let other = tempfile::tempdir().unwrap();
        tls::load_or_create(other.path()).unwrap();
        let foreign = std::fs::read_to_string(other.path().join("client.pem")).unwrap();
        let foreign_key = std::fs::read_to_string(other.path().join("client-key.pem")).unwrap();
        let impostor = ClientTlsConfig::new()
            .ca_certificate(ca)
            .domain_name("localhost")
            .identity(Identity::from_pem(foreign, foreign_key));
        assert!(connect(addr, impostor).await.is_err(), "a certificate from another CA: refused");

        h.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
        assert!(connect(addr, with_cert).await.is_err(), "closed after shutdown");
    }
}
