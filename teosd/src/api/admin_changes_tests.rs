//! The admin changes against the real domain over an in-memory chain and store (`Scene`): bans
//! refuse every request of the user and survive a restart, deletion removes the user and its
//! appointments in one go while its trackers run to their end, and backups refuse bad targets.

use std::sync::Arc;

use bitcoin::Network;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request};

use super::*;
use crate::api::admin::ServedAddresses;
use crate::disk::DiskReserve;
use crate::health::HealthCheck;
use crate::protocol::{encrypt_penalty, sign_message, Appointment, Locator};
use crate::responder::IRREVOCABLY_RESOLVED;
use crate::store::Store;
use crate::test_utils::{channel, policy, FakeChain, Scene};
use crate::tower::RequestError;
use teos_proto::admin::private_tower_services_server::PrivateTowerServices;

struct Admin {
    scene: Scene,
    tower: Tower,
    service: AdminService,
    _dir: tempfile::TempDir,
}

fn service(
    store: Store,
    tower: Option<Tower>,
    data_dir: Option<std::path::PathBuf>,
) -> (AdminService, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (_, rx) = tokio::sync::watch::channel(crate::chain::ChainStatus::starting(0));
    let health = HealthCheck::new(rx, Arc::new(DiskReserve::new(dir.path(), 0)), 3);
    let addresses = ServedAddresses {
        public_http: "127.0.0.1:9814".parse().unwrap(),
        admin_grpc: "127.0.0.1:8814".parse().unwrap(),
        onion: crate::tor::PublishedOnion::none(),
    };
    let mut service =
        AdminService::new(store, user_id(200), Network::Regtest, addresses, health, CancellationToken::new());
    if let Some(tower) = tower {
        service = service.with_tower(tower);
    }
    if let Some(data_dir) = data_dir {
        service = service.with_data_dir(data_dir);
    }
    (service, dir)
}

fn tower_over(scene: &Scene, dir: &std::path::Path) -> Tower {
    let disk = Arc::new(DiskReserve::new(dir, 0));
    Tower::new(scene.watcher.clone(), scene.locks.clone(), scene.follower.status(), None, disk)
        .expect("the intake's thread")
        .0
}

async fn admin(scene: Scene) -> Admin {
    let dir = tempfile::tempdir().unwrap();
    let tower = tower_over(&scene, dir.path());
    let (service, _) = service(scene.store.clone(), Some(tower.clone()), None);
    Admin { scene, tower, service, _dir: dir }
}

fn secret(n: u8) -> bitcoin::secp256k1::SecretKey {
    bitcoin::secp256k1::SecretKey::from_slice(&[n; 32]).unwrap()
}

fn user_id(n: u8) -> UserId {
    UserId(bitcoin::secp256k1::PublicKey::from_secret_key(&bitcoin::secp256k1::Secp256k1::new(), &secret(n)))
}

fn appointment(dispute: &bitcoin::Transaction, penalty: &bitcoin::Transaction) -> Appointment {
    let txid = dispute.compute_txid();
    Appointment {
        locator: Locator::from_txid(&txid),
        encrypted_blob: encrypt_penalty(penalty, &txid),
        to_self_delay: 42,
    }
}

impl Admin {
    /// `user n`'s add_appointment through the Tower, signed as the public API receives it.
    async fn add(&self, n: u8, appointment: Appointment) -> Result<(), RequestError> {
        let signature = sign_message(&appointment.signed_bytes(), &secret(n));
        self.tower.add_appointment(appointment, signature).await.map(|_| ())
    }

    async fn get(&self, n: u8, locator: Locator) -> Result<(), RequestError> {
        let signature = sign_message(format!("get appointment {locator}").as_bytes(), &secret(n));
        self.tower.get_appointment(locator, signature).await.map(|_| ())
    }

    async fn info(&self, n: u8) -> Result<(), RequestError> {
        let signature = sign_message(b"get subscription info", &secret(n));
        self.tower.subscription_info(signature).await.map(|_| ())
    }

    async fn ban(&self, n: u8) -> Result<pb::BanUserResponse, Status> {
        let request = pb::BanUserRequest { user_id: user_id(n).to_bytes().to_vec() };
        self.service.ban_user(Request::new(request)).await.map(|r| r.into_inner())
    }

    async fn unban(&self, n: u8) -> Result<pb::UnbanUserResponse, Status> {
        let request = pb::UnbanUserRequest { user_id: user_id(n).to_bytes().to_vec() };
        self.service.unban_user(Request::new(request)).await.map(|r| r.into_inner())
    }

    async fn delete(&self, n: u8) -> Result<pb::DeleteUserResponse, Status> {
        let request = pb::DeleteUserRequest { user_id: user_id(n).to_bytes().to_vec() };
        self.service.delete_user(Request::new(request)).await.map(|r| r.into_inner())
    }

    async fn banned(&self) -> Vec<(Vec<u8>, u32)> {
        let response = self.service.get_banned_users(Request::new(pb::GetBannedUsersRequest {})).await.unwrap();
        response.into_inner().banned_users.into_iter().map(|b| (b.user_id, b.banned_at)).collect()
    }
}

fn is_banned<T: std::fmt::Debug>(result: Result<T, RequestError>) -> bool {
    matches!(result, Err(RequestError::Banned))
}

#[tokio::test]
async fn a_banned_user_is_refused_everything_until_unbanned_and_the_ban_survives_a_restart() {
    let a = admin(Scene::new(Arc::new(FakeChain::new())).await).await;
    a.tower.register(user_id(1), crate::protocol::Dialect::Rust).await.unwrap();
    let (dispute, penalty) = channel(1);
    a.add(1, appointment(&dispute, &penalty)).await.unwrap();

    let banned = a.ban(1).await.unwrap();
    assert_eq!((banned.already_banned, banned.registered), (false, true));
    assert!(a.ban(1).await.unwrap().already_banned, "banning twice changes nothing");
    let (other_dispute, other_penalty) = channel(2);
    assert!(is_banned(a.add(1, appointment(&other_dispute, &other_penalty)).await));
    assert!(is_banned(a.get(1, Locator::from_txid(&dispute.compute_txid())).await));
    assert!(is_banned(a.info(1).await));
    assert!(
        is_banned(a.tower.register(user_id(1), crate::protocol::Dialect::Rust).await),
        "re-registering is refused too"
    );
    assert_eq!(a.banned().await, vec![(user_id(1).to_bytes().to_vec(), a.scene.height())]);
    // A user who never registered can be banned beforehand; others are served.
    assert!(!a.ban(2).await.unwrap().registered);
    assert!(is_banned(a.tower.register(user_id(2), crate::protocol::Dialect::Rust).await));
    a.tower.register(user_id(3), crate::protocol::Dialect::Rust).await.unwrap();

    // The banned user's appointment is still watched: its breach is answered.
    a.scene.mine(vec![dispute.clone()]).await;
    assert!(a.scene.tracker(&user_id(1), &dispute).is_some());

    // A restart loads the bans from the store.
    let restarted = admin(a.scene.restart()).await;
    restarted.scene.sync().await;
    assert!(is_banned(restarted.add(1, appointment(&other_dispute, &other_penalty)).await));
    assert_eq!(restarted.banned().await.len(), 2);

    restarted.unban(1).await.unwrap();
    restarted.add(1, appointment(&other_dispute, &other_penalty)).await.unwrap();
    restarted.info(1).await.unwrap();
    assert_eq!(restarted.unban(1).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(restarted.banned().await, vec![(user_id(2).to_bytes().to_vec(), a.scene.height() - 1)]);
}

#[tokio::test]
async fn deleting_a_user_removes_it_and_its_appointments_and_its_trackers_run_to_their_end() {
    let a = admin(Scene::new(Arc::new(FakeChain::new())).await).await;
    for n in [1, 2] {
        a.tower.register(user_id(n), crate::protocol::Dialect::Rust).await.unwrap();
    }
    let (watched, watched_penalty) = channel(1);
    let (triggered, triggered_penalty) = channel(2);
    a.add(1, appointment(&watched, &watched_penalty)).await.unwrap();
    a.add(1, appointment(&triggered, &triggered_penalty)).await.unwrap();
    a.add(2, appointment(&watched, &watched_penalty)).await.unwrap();
    a.scene.mine(vec![triggered.clone()]).await;
    assert!(a.scene.tracker(&user_id(1), &triggered).is_some());
    let users = a.scene.watcher.gatekeeper().user_count();

    let deleted = a.delete(1).await.unwrap();
    assert_eq!((deleted.appointments_deleted, deleted.trackers_kept), (2, 1));
    assert_eq!(a.scene.watcher.gatekeeper().user_count(), users - 1);
    assert!(a.scene.user(&user_id(1)).is_none());
    assert!(a.scene.store.user_locators(&user_id(1)).unwrap().is_empty());
    let at_watched = a.scene.store.appointments_at(&Locator::from_txid(&watched.compute_txid())).unwrap();
    assert_eq!(at_watched.iter().map(|(u, _)| *u).collect::<Vec<_>>(), vec![user_id(2)], "others keep theirs");
    assert!(a.scene.store.appointments_at(&Locator::from_txid(&triggered.compute_txid())).unwrap().is_empty());
    let get_user = a.service.get_user(Request::new(pb::GetUserRequest { user_id: user_id(1).to_bytes().to_vec() }));
    assert_eq!(get_user.await.unwrap_err().code(), Code::NotFound);
    assert_eq!(a.delete(1).await.unwrap_err().code(), Code::NotFound);
    assert!(matches!(
        a.get(1, Locator::from_txid(&watched.compute_txid())).await,
        Err(RequestError::UserUnauthenticated)
    ));

    // The tracker is still followed: the penalty confirms and is buried; nothing is refunded to
    // the deleted user, and the other user's breach of the watched channel is still answered.
    assert!(a.scene.tracker(&user_id(1), &triggered).is_some());
    a.scene.mine(vec![triggered_penalty.clone(), watched.clone()]).await;
    assert!(a.scene.tracker(&user_id(2), &watched).is_some());
    assert!(a.scene.tracker(&user_id(1), &watched).is_none());
    a.scene.mine_empty(IRREVOCABLY_RESOLVED).await;
    assert!(a.scene.tracker(&user_id(1), &triggered).is_none());
    assert_eq!(a.scene.store.outcome_counts().unwrap().won, 1);
    assert!(a.scene.user(&user_id(1)).is_none(), "a refund does not bring the user back");
    // It may register again, from scratch.
    let again = a.tower.register(user_id(1), crate::protocol::Dialect::Rust).await.unwrap();
    assert_eq!(again.available_slots, policy().subscription_slots);
}

#[tokio::test]
async fn admin_changes_validate_their_user_ids() {
    let a = admin(Scene::new(Arc::new(FakeChain::new())).await).await;
    for bad in [vec![], vec![2; 32], vec![9; 33]] {
        let ban = a.service.ban_user(Request::new(pb::BanUserRequest { user_id: bad.clone() })).await;
        assert_eq!(ban.unwrap_err().code(), Code::InvalidArgument);
        let delete = a.service.delete_user(Request::new(pb::DeleteUserRequest { user_id: bad.clone() })).await;
        assert_eq!(delete.unwrap_err().code(), Code::InvalidArgument);
        let unban = a.service.unban_user(Request::new(pb::UnbanUserRequest { user_id: bad })).await;
        assert_eq!(unban.unwrap_err().code(), Code::InvalidArgument);
    }
    // Without a tower or a data directory (never so in teosd), the request is refused cleanly.
    let (bare, _dir) = service(Store::in_memory(), None, None);
    let ban = bare.ban_user(Request::new(pb::BanUserRequest { user_id: user_id(1).to_bytes().to_vec() })).await;
    assert_eq!(ban.unwrap_err().code(), Code::FailedPrecondition);
    let backup = bare.backup(Request::new(pb::BackupRequest { dir: "/tmp/x".into() })).await;
    assert_eq!(backup.unwrap_err().code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn backups_refuse_bad_targets_and_report_the_copys_tip() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(&data.path().join("regtest/db"), 8).unwrap();
    let mut batch = store.batch();
    batch.set_tip(321, &bitcoin::BlockHash::from_raw_hash(bitcoin::hashes::Hash::from_byte_array([5; 32])));
    store.commit(batch).unwrap();
    let (service, _dir) = service(store, None, Some(data.path().to_path_buf()));
    let backup = |dir: String| service.backup(Request::new(pb::BackupRequest { dir }));

    assert_eq!(backup("relative/dir".into()).await.unwrap_err().code(), Code::InvalidArgument);
    let inside = data.path().join("backup").display().to_string();
    assert_eq!(backup(inside).await.unwrap_err().code(), Code::InvalidArgument);
    let target = tempfile::tempdir().unwrap();
    std::fs::write(target.path().join("something"), "x").unwrap();
    let refused = backup(target.path().display().to_string()).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");

    let dir = target.path().join("new");
    let done = backup(dir.display().to_string()).await.unwrap().into_inner();
    assert_eq!((done.tip_height, done.tip_hash), (321, vec![5; 32]));
    assert_eq!(done.dir, dir.display().to_string());
    assert!(done.size_bytes > 0);
    assert_eq!(Store::open_read_only(&dir.join("db")).unwrap().tip().unwrap().map(|(h, _)| h), Some(321));
}
