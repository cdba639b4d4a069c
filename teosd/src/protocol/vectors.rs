//! Every vector of the reference tower's protocol (reference-tower.md §3.7), byte for byte, and
//! the negative cases around them.

use std::str::FromStr;

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::SecretKey;
use bitcoin::{Transaction, Txid};

use super::*;

const KEY_TXID_DISPLAY: &str = "d6ac4a5e61657c4c604dcde855a1db74ec6b3e54f32695d72c5e11c7761ea1b4";
const PLAINTEXT: &str = "010000000001010000000000000000000000000000000000000000000000000000000000000000ffffffff54038e830a1b4d696e656420627920416e74506f6f6c373432c2005b005e7a0ae3fabe6d6d7841cd582ead8ea5dd8e3de1173cae6fcd2a53c7362ebb7fb6f815604fe07cbe0200000000000000ac0e060005f90000ffffffff04d9476026000000001976a91411dbe48cc6b617f9c6adaf4d9ed5f625b1c7cb5988ac0000000000000000266a24aa21a9ed7248c6efddd8d99bfddd7f499f0b915bffa8253003cc934df1ff14a81301e2340000000000000000266a24b9e11b6d7054937e13f39529d6ad7e685e9dd4efa426f247d5f5a5bed58cdddb2d0fa60100000000000000002b6a2952534b424c4f434b3a054a68aa5368740e8b3e3c67bce45619c2cfd07d4d4f0936a5612d2d0034fa0a0120000000000000000000000000000000000000000000000000000000000000000000000000";
const CIPHERTEXT: &str = "f64d730654738fdbcd9e65068be17bc1abb44e74f8977985cce48e77209cf97292c862e4eb7190aedc6c53ceddda6871a3988d1d9608e2d0dd7a1f59769e410618a7029001479ac3b9d699b11a08b0ccb04e56bfee88461d9cd3207623a4a543996dd3805323c93cd62069636305aaf159e9cca1063ad1f097c16fb3c2ebbcf09be96512c5d7c195c684569cbe8b7979870b04cada9806b7610569c66021afcc63f46dd4af75716950c4de094334cdf7d9e532820afe29d2621dd79920c7e0ecc10853517dd84ca9d699f712c229e86954c227cba1d0fc87c8d48ac05e2de8a6bc980afdfafcd7064e411c8d76065c06cc7f233e869eaff5bd8ccb5d8f0090d91a8f017355cc115863356ecf06cdda9b309096ea766d033dbd4f70a789a5b03138cfc7e2900a79bb465abf07a7ac45c41b4b30c008d4b299aad9d001cf45acd07e47cdd63c3b13d4b0788b041735225b5db1a43a2142311f695478168e31deb260702976fd70d0724ded84a7c3f89b";

const USER_ID: &str = "034f355bdcb7cc0af728ef3cceb9615d90684bb5b2ca5f859ab0f0b704075871aa";
const TOWER_ID: &str = "03c978f3682f2ef86e36e0a65624314280c91111a5a587dde7543162607210a315";
const USER_APPOINTMENT_SIG: &str =
    "d9p9eu5na6jn9ppw1s57tgzrar5cejkdo9hqbwc7soih9wbrdmn9qanwrhr76w4aef4fr8h7wod7q3z56drh5tihyjd1ukcpeujp5w7x";
const REGISTRATION_SIG: &str =
    "d71tdino738jq49epjnb99fgbbppjkfcgp3uerex89z57n18c187qsj6fkk668wkgn4y58drznnaeossdqtbcdz6ge5obc7ggyzfci31";
const APPOINTMENT_RECEIPT_SIG: &str =
    "d7s6bf4hcupezagiriazdgnrs7wkj75ttbjntonbawmotr8m7sups7icz9gun48pe3qgotzwy6eyrork74oozx4yfuzykqpweywg5rju";

fn key_txid() -> Txid {
    Txid::from_str(KEY_TXID_DISPLAY).unwrap()
}

fn user_sk() -> SecretKey {
    SecretKey::from_slice(&[0x11; 32]).unwrap()
}

fn vector_appointment() -> Appointment {
    Appointment {
        locator: Locator::from_str("b4a11e76c7115e2cd79526f3543e6bec").unwrap(),
        encrypted_blob: hex::decode("deadbeef").unwrap(),
        to_self_delay: 42,
    }
}

#[test]
fn key_is_sha256_of_internal_txid_bytes() {
    let txid = key_txid();
    assert_eq!(hex::encode(txid.as_byte_array()), "b4a11e76c7115e2cd79526f3543e6bec74dba155e8cd4d604c7c65615e4aacd6");
    assert_eq!(
        hex::encode(sha256::Hash::hash(txid.as_byte_array()).as_byte_array()),
        "0b5ea4b921962850f241810c04296a8cf7b63651943886f18131fe0ee7d942ea"
    );
}

#[test]
fn locator_is_first_16_internal_bytes() {
    assert_eq!(Locator::from_txid(&key_txid()).to_string(), "b4a11e76c7115e2cd79526f3543e6bec");
}

#[test]
fn encryption_vector_round_trips() {
    let penalty: Transaction = deserialize(&hex::decode(PLAINTEXT).unwrap()).unwrap();
    let display = penalty.compute_txid().to_string();
    assert!(display.starts_with("3e9d3449") && display.ends_with("69da8b33"), "{display}");
    let blob = encrypt_penalty(&penalty, &key_txid());
    assert_eq!(hex::encode(&blob), CIPHERTEXT);
    assert_eq!(blob.len(), 351 + 16);
    assert_eq!(decrypt_penalty(&blob, &key_txid()).unwrap(), penalty);
}

#[test]
fn display_order_key_does_not_reproduce_vector() {
    let plaintext = hex::decode(PLAINTEXT).unwrap();
    let reversed = Txid::from_byte_array(*key_txid().as_byte_array()).to_string();
    let display_as_internal =
        Txid::from_str(&hex::encode(hex::decode(&reversed).unwrap().into_iter().rev().collect::<Vec<_>>())).unwrap();
    let display_keyed = crypto::encrypt_bytes(&plaintext, &display_as_internal, super::Dialect::Rust);
    assert_ne!(hex::encode(&display_keyed), CIPHERTEXT);
    // python-teos keys by the display order (reference-tower.md §3.3): exactly that key.
    assert_eq!(crypto::encrypt_bytes(&plaintext, &key_txid(), super::Dialect::Python), display_keyed);
    let penalty: Transaction = deserialize(&plaintext).unwrap();
    let blob = crate::protocol::encrypt_penalty_as(&penalty, &key_txid(), super::Dialect::Python);
    assert_eq!(crate::protocol::decrypt_penalty_as(&blob, &key_txid(), super::Dialect::Python).unwrap(), penalty);
    assert_eq!(decrypt_penalty(&blob, &key_txid()), Err(DecryptError::WrongKey));
}

#[test]
fn decrypt_rejects_wrong_key() {
    let blob = hex::decode(CIPHERTEXT).unwrap();
    let other = Txid::from_byte_array([7u8; 32]);
    assert_eq!(decrypt_penalty(&blob, &other), Err(DecryptError::WrongKey));
}

#[test]
fn decrypt_rejects_tampered_blob() {
    let mut blob = hex::decode(CIPHERTEXT).unwrap();
    blob[10] ^= 1;
    assert_eq!(decrypt_penalty(&blob, &key_txid()), Err(DecryptError::WrongKey));
}

#[test]
fn decrypt_rejects_short_blobs() {
    for len in [0usize, 1, 15] {
        assert_eq!(decrypt_penalty(&vec![0u8; len], &key_txid()), Err(DecryptError::TooShort(len)));
    }
    // Exactly a tag's worth of bytes is long enough to try, and fails authentication.
    assert_eq!(decrypt_penalty(&[0u8; 16], &key_txid()), Err(DecryptError::WrongKey));
}

#[test]
fn decrypt_rejects_trailing_bytes_and_garbage() {
    let mut plaintext = hex::decode(PLAINTEXT).unwrap();
    plaintext.push(0);
    let blob = crypto::encrypt_bytes(&plaintext, &key_txid(), super::Dialect::Rust);
    assert!(matches!(decrypt_penalty(&blob, &key_txid()), Err(DecryptError::NotATransaction(_))));
    let blob = crypto::encrypt_bytes(b"not a transaction", &key_txid(), super::Dialect::Rust);
    assert!(matches!(decrypt_penalty(&blob, &key_txid()), Err(DecryptError::NotATransaction(_))));
    let blob = crypto::encrypt_bytes(&[], &key_txid(), super::Dialect::Rust);
    assert!(matches!(decrypt_penalty(&blob, &key_txid()), Err(DecryptError::NotATransaction(_))));
}

#[test]
fn lightning_sign_vector_sk_one() {
    let mut sk = [0u8; 32];
    sk[31] = 1;
    let sk = SecretKey::from_slice(&sk).unwrap();
    assert_eq!(
        sign_message(b"test message", &sk),
        "d9tibmnic9t5y41hg7hkakdcra94akas9ku3rmmj4ag9mritc8ok4p5qzefs78c9pqfhpuftqqzhydbdwfg7u6w6wdxcqpqn4sj4e73e"
    );
}

#[test]
fn core_lightning_signatures_recover() {
    let cases = [
        (
            "is this compatible?",
            "rbgfioj114mh48d8egqx8o9qxqw4fmhe8jbeeabdioxnjk8z3t1ma1hu1fiswpakgucwwzwo6ofycffbsqusqdimugbh41n1g698hr9t",
            "02b80cabdf82638aac86948e4c06e82064f547768dcef977677b9ea931ea75bab5",
        ),
        (
            "hi",
            "rnrphcjswusbacjnmmmrynh9pqip7sy5cx695h6mfu64iac6qmcmsd8xnsyczwmpqp9shqkth3h4jmkgyqu5z47jfn1q7gpxtaqpx4xg",
            "02de60d194e1ca5947b59fe8e2efd6aadeabfb67f2e89e13ae1a799c1e08e4a43b",
        ),
        (
            "hi",
            "ry8bbsopmduhxy3dr5d9ekfeabdpimfx95kagdem7914wtca79jwamtbw4rxh69hg7n6x9ty8cqk33knbxaqftgxsfsaeprxkn1k48p3",
            "022b8ece90ee891cbcdac0c1cc6af46b73c47212d8defbce80265ac81a6b794931",
        ),
    ];
    for (msg, sig, key) in cases {
        assert_eq!(recover_signer(msg.as_bytes(), sig).unwrap().to_string(), key);
    }
}

#[test]
fn recover_rejects_malformed_signatures() {
    let msg = b"get subscription info";
    for bad in ["", "garbage", &"y".repeat(104), &USER_APPOINTMENT_SIG[..103], &format!("{USER_APPOINTMENT_SIG}y")] {
        assert_eq!(recover_signer(msg, bad), Err(SignatureError), "{bad:?}");
    }
    // A character outside the zbase32 alphabet ('l' and 'v' are not in it).
    let mut sig = USER_APPOINTMENT_SIG.to_string();
    sig.replace_range(5..6, "l");
    assert_eq!(recover_signer(msg, &sig), Err(SignatureError));
}

#[test]
fn user_id_from_secret() {
    let user = TowerSigner::new(user_sk()).tower_id();
    assert_eq!(user.to_string(), USER_ID);
    assert_eq!(UserId::from_str(USER_ID).unwrap(), user);
}

#[test]
fn user_id_parsing_errors() {
    assert_eq!(UserId::from_slice(&[2u8; 32]), Err(IdError::WrongSize { expected: 33, received: 32 }));
    let mut not_a_point = hex::decode(USER_ID).unwrap();
    not_a_point[0] = 0x04;
    assert_eq!(UserId::from_slice(&not_a_point), Err(IdError::NotAPoint));
    assert_eq!(UserId::from_str("zz"), Err(IdError::NotHex));
    assert_eq!(Locator::from_slice(&[0u8; 2]), Err(IdError::WrongSize { expected: 16, received: 2 }));
}

#[test]
fn get_subscription_info_signature() {
    let sig = sign_message(b"get subscription info", &user_sk());
    assert_eq!(
        sig,
        "d6xprikbpk5icqqpcbukwhftke43tswhgfj3kd7ng8egfw484ndx6x9zf5cs417m4japhc9c51k34k9qeyuxcytgzs97yqm9a81g8zyy"
    );
}

#[test]
fn appointment_serialization_and_signature() {
    let appointment = vector_appointment();
    assert_eq!(hex::encode(appointment.signed_bytes()), "b4a11e76c7115e2cd79526f3543e6becdeadbeef0000002a");
    assert_eq!(sign_message(&appointment.signed_bytes(), &user_sk()), USER_APPOINTMENT_SIG);
    assert_eq!(recover_signer(&appointment.signed_bytes(), USER_APPOINTMENT_SIG).unwrap().to_string(), USER_ID);
    // Any change to the signed fields recovers a different key.
    let mut changed = appointment.clone();
    changed.to_self_delay = 43;
    assert_ne!(recover_signer(&changed.signed_bytes(), USER_APPOINTMENT_SIG).unwrap().to_string(), USER_ID);
}

#[test]
fn get_appointment_signature() {
    let sig = sign_message(b"get appointment b4a11e76c7115e2cd79526f3543e6bec", &user_sk());
    assert_eq!(
        sig,
        "rb77zibj6wfh4bebb4z5di59nn8j7gk6qonpjrzqi4f43e8uui35cquqi79xuou38d54u8w3f9jzb578mqj8cwk1dfaky8kdh3p17574"
    );
}

#[test]
fn registration_receipt_vector() {
    let user = UserId::from_str(USER_ID).unwrap();
    let bytes = registration_receipt_bytes(&user, 21, 100, 600);
    assert_eq!(hex::encode(bytes), format!("{USER_ID}000000150000006400000258"));
    assert_eq!(recover_signer(&bytes, REGISTRATION_SIG).unwrap().to_string(), TOWER_ID);
}

#[test]
fn appointment_receipt_vector() {
    let bytes = appointment_receipt_bytes(USER_APPOINTMENT_SIG, 100);
    assert_eq!(bytes.len(), 108);
    assert_eq!(&bytes[104..], &[0, 0, 0, 0x64]);
    assert_eq!(recover_signer(&bytes, APPOINTMENT_RECEIPT_SIG).unwrap().to_string(), TOWER_ID);
}

#[test]
fn appointment_receipt_over_decoded_signature_does_not_recover() {
    // The python layout: zbase32-decoded user signature ‖ start_block. Our receipts are not that.
    let mut bytes = zbase32().decode(USER_APPOINTMENT_SIG.as_bytes()).unwrap();
    assert_eq!(bytes.len(), 65);
    bytes.extend_from_slice(&100u32.to_be_bytes());
    let recovered = recover_signer(&bytes, APPOINTMENT_RECEIPT_SIG).map(|k| k.to_string());
    assert_ne!(recovered, Ok(TOWER_ID.to_string()));
}

#[test]
fn tower_receipts_recover_tower_id() {
    let signer = TowerSigner::new(SecretKey::from_slice(&[0x22; 32]).unwrap());
    let receipt = registration_receipt_bytes(&signer.tower_id(), 1, 2, 3);
    assert_eq!(recover_signer(&receipt, &signer.sign(&receipt)).unwrap(), signer.tower_id());
    assert!(!format!("{signer:?}").contains(&hex::encode([0x22u8; 32])));
}

#[test]
fn uuid_vector() {
    let user = UserId::from_str(USER_ID).unwrap();
    let uuid = Uuid::new(&vector_appointment().locator, &user);
    assert_eq!(uuid.to_string(), "cc84ec36822c2f2b05a821a636116042832f5250");
}

#[test]
fn consensus_round_trip_is_exact() {
    let raw = hex::decode(PLAINTEXT).unwrap();
    let tx: Transaction = deserialize(&raw).unwrap();
    assert_eq!(serialize(&tx), raw);
}
