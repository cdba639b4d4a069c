//! The control client against canned bytes and against a fake Tor speaking the protocol over
//! TCP (authentication methods, `ADD_ONION` with a new and a saved key), the key file, and the
//! publishing task: first key saved, same address after a lost connection, removal at stop.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bitcoin::hashes::{hmac, sha256, Hash, HashEngine};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::control::*;
use super::*;

const DEADLINE: Duration = Duration::from_secs(10);

/// A server that answers the first line it reads with `answer`, then closes.
async fn canned(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await.unwrap();
        write.write_all(answer).await.unwrap();
    });
    addr
}

async fn ask(answer: &'static [u8]) -> Result<Reply, ControlError> {
    let mut conn = ControlConnection::connect(canned(answer).await).await.unwrap();
    conn.command("GETINFO", "GETINFO x").await
}

#[test]
fn reply_lines_split_into_code_separator_and_text() {
    assert_eq!(split_reply_line("250 OK").unwrap(), (250, b' ', "OK"));
    assert_eq!(split_reply_line("250-ServiceID=abc").unwrap(), (250, b'-', "ServiceID=abc"));
    assert_eq!(split_reply_line("250+onions/current=").unwrap(), (250, b'+', "onions/current="));
    assert_eq!(split_reply_line("650 STATUS_CLIENT x").unwrap().0, 650);
    for bad in ["", "25", "250", "abc OK", "250xOK", "2a0 OK"] {
        assert!(matches!(split_reply_line(bad), Err(ControlError::Malformed(_))), "{bad:?}");
    }
}

#[tokio::test]
async fn a_multi_line_reply_with_a_data_block_is_read_whole_and_events_are_skipped() {
    let reply =
        ask(b"650 CIRC 1 BUILT\r\n250-ServiceID=abc\r\n250+onions/current=\r\nfirst\r\n..dotted\r\n.\r\n250 OK\r\n")
            .await
            .unwrap();
    assert_eq!(reply.code, 250);
    assert_eq!(reply.lines, vec!["ServiceID=abc", "onions/current=\nfirst\n.dotted", "OK"]);
    assert_eq!(reply.value("ServiceID"), Some("abc"));
    assert_eq!(reply.value("Service"), None);
}

#[tokio::test]
async fn errors_refusals_truncation_and_garbage_are_told_apart() {
    match ask(b"552 Unrecognized key \"x\"\r\n").await {
        Err(ControlError::Rejected { command: "GETINFO", code: 552, message }) => {
            assert_eq!(message, "Unrecognized key \"x\"")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(ask(b"250-ServiceID=abc\r\n").await, Err(ControlError::Closed)));
    assert!(matches!(ask(b"250-half a line").await, Err(ControlError::Closed)));
    assert!(matches!(ask(b"250-a\r\n251 b\r\n").await, Err(ControlError::Malformed(_))));
    assert!(matches!(ask(b"hello\r\n").await, Err(ControlError::Malformed(_))));
    let long: &'static [u8] = Box::leak(vec![b'2'; 20_000].into_boxed_slice());
    assert!(matches!(ask(long).await, Err(ControlError::Malformed("line too long"))));
}

#[tokio::test]
async fn a_silent_tor_times_out_instead_of_hanging() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut conn = ControlConnection::connect(listener.local_addr().unwrap()).await.unwrap();
    let (_held, _) = listener.accept().await.unwrap();
    // Connected: from here the clock jumps to the reply timeout as soon as nothing else is due.
    tokio::time::pause();
    let err = conn.command("PROTOCOLINFO", "PROTOCOLINFO 1").await.unwrap_err();
    assert!(matches!(err, ControlError::Timeout("PROTOCOLINFO")) && err.is_transient(), "{err}");
}

#[test]
fn protocolinfo_gives_the_methods_and_the_unquoted_cookie_path() {
    let reply = Reply {
        code: 250,
        lines: vec![
            "PROTOCOLINFO 1".into(),
            r#"AUTH METHODS=COOKIE,SAFECOOKIE COOKIEFILE="/var/run/tor/a \"b\"\\c""#.into(),
            r#"VERSION Tor="0.4.9.11""#.into(),
            "OK".into(),
        ],
    };
    let info = parse_protocol_info(&reply).unwrap();
    assert_eq!(info.methods, vec!["COOKIE", "SAFECOOKIE"]);
    assert_eq!(info.cookie_file, Some(PathBuf::from(r#"/var/run/tor/a "b"\c"#)));
    let null = Reply { code: 250, lines: vec!["AUTH METHODS=NULL".into(), "OK".into()] };
    assert_eq!(parse_protocol_info(&null).unwrap(), ProtocolInfo { methods: vec!["NULL".into()], cookie_file: None });
    let none = Reply { code: 250, lines: vec!["OK".into()] };
    assert!(matches!(parse_protocol_info(&none), Err(ControlError::Malformed(_))));
    let open = Reply { code: 250, lines: vec![r#"AUTH METHODS=COOKIE COOKIEFILE="/x"#.into()] };
    assert!(matches!(parse_protocol_info(&open), Err(ControlError::Malformed(_))));
}

#[test]
fn quoting_round_trips() {
    for value in ["plain", "with \"quotes\"", "back\\slash", "new\nline", ""] {
        let quoted = quote(value);
        assert_eq!(unquote(&quoted), Some((value.to_string(), "")), "{quoted}");
    }
    assert_eq!(unquote("\"a\" rest"), Some(("a".to_string(), " rest")));
}

#[test]
fn service_ids_are_56_lowercase_base32_characters() {
    assert!(is_service_id("unrhtsss5rrtwoloykldc2vbzr5w2wuxiwa6ejlormx44ntlo4drnmqd"));
    assert!(!is_service_id("unrhtsss5rrtwoloykldc2vbzr5w2wuxiwa6ejlormx44ntlo4drnmq"));
    assert!(!is_service_id("UNRHTSSS5RRTWOLOYKLDC2VBZR5W2WUXIWA6EJLORMX44NTLO4DRNMQD"));
    assert!(!is_service_id("unrhtsss5rrtwoloykldc2vbzr5w2wuxiwa6ejlormx44ntlo4drnm19"));
}

#[test]
fn keys_never_show_and_round_trip_through_base64() {
    let key = OnionKey([0xab; 64]);
    assert_eq!(format!("{key:?}"), "OnionKey(****)");
    assert_eq!(OnionKey::from_base64(&key.to_base64()), Some(key));
    assert_eq!(OnionKey::from_base64("AAAA"), None);
    assert_eq!(OnionKey::from_base64("not base64!"), None);
}

#[test]
fn the_key_file_is_owner_only_whole_and_checked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(ONION_KEY_FILE);
    assert_eq!(load_key(&path).unwrap(), None);
    let key = OnionKey([7; 64]);
    save_key(&path, &key).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(&path).unwrap(), vec![7; 64], "64 raw bytes, as the reference tower keeps it");
    assert_eq!(load_key(&path).unwrap(), Some(key));
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from(ONION_KEY_FILE)], "no temporary file left");
    std::fs::write(&path, [1; 63]).unwrap();
    let err = load_key(&path).unwrap_err();
    assert!(matches!(err, KeyFileError::Invalid { len: 63, .. }), "{err}");
}

/// How the fake Tor wants controllers to authenticate.
#[derive(Clone)]
enum Auth {
    Null,
    Password(&'static str),
    /// The cookie file; whether SAFECOOKIE is offered; whether its server hash is wrong.
    Cookie {
        path: PathBuf,
        safe: bool,
        lie: bool,
    },
}

/// A fake Tor control port: the methods in `auth`, `ADD_ONION` with new keys (`[n; 64]` for the
/// n-th) and given keys (the service id derived from the key), `DEL_ONION`. It records every
/// command line. [`FakeTor::go_down`] closes the open connections and every new one at once,
/// until [`FakeTor::come_back`].
struct FakeTor {
    addr: SocketAddr,
    commands: Arc<Mutex<Vec<String>>>,
    drop_all: Arc<Notify>,
    down: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
}

impl FakeTor {
    async fn start(auth: Auth) -> FakeTor {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        FakeTor::serve(listener, auth)
    }

    fn serve(listener: TcpListener, auth: Auth) -> FakeTor {
        let fake = FakeTor {
            addr: listener.local_addr().unwrap(),
            commands: Arc::default(),
            drop_all: Arc::new(Notify::new()),
            down: Arc::default(),
            connections: Arc::default(),
        };
        let (commands, drop_all, down) = (fake.commands.clone(), fake.drop_all.clone(), fake.down.clone());
        let connections = fake.connections.clone();
        tokio::spawn(async move {
            let new_keys = Arc::new(Mutex::new(0u8));
            while let Ok((stream, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                if down.load(Ordering::SeqCst) {
                    continue;
                }
                let connection = serve_connection(stream, auth.clone(), commands.clone(), new_keys.clone());
                let drop_all = drop_all.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = connection => {}
                        _ = drop_all.notified() => {}
                    }
                });
            }
        });
        fake
    }

    fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }

    fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.drop_all.notify_waiters();
    }

    fn come_back(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

fn service_id_of(key: &[u8]) -> String {
    let hash = sha256::Hash::hash(key).to_byte_array();
    let id = data_encoding::BASE32_NOPAD.encode(&[&hash[..], &hash[..3]].concat()).to_lowercase();
    id[..56].to_string()
}

fn hmac256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut engine = hmac::HmacEngine::<sha256::Hash>::new(key);
    engine.input(message);
    hmac::Hmac::<sha256::Hash>::from_engine(engine).to_byte_array()
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    auth: Auth,
    commands: Arc<Mutex<Vec<String>>>,
    new_keys: Arc<Mutex<u8>>,
) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut authenticated = false;
    let mut expected_client_hash = None;
    while let Ok(Some(line)) = lines.next_line().await {
        commands.lock().unwrap().push(line.clone());
        let (verb, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let answer = match (verb, authenticated) {
            ("PROTOCOLINFO", _) => {
                let methods = match &auth {
                    Auth::Null => "METHODS=NULL".to_string(),
                    Auth::Password(_) => "METHODS=HASHEDPASSWORD".to_string(),
                    Auth::Cookie { path, safe, .. } => format!(
                        "METHODS={} COOKIEFILE={}",
                        if *safe { "COOKIE,SAFECOOKIE" } else { "COOKIE" },
                        quote(path.to_str().unwrap())
                    ),
                };
                format!("250-PROTOCOLINFO 1\r\n250-AUTH {methods}\r\n250-VERSION Tor=\"0.4.9.11\"\r\n250 OK\r\n")
            }
            ("AUTHCHALLENGE", _) => {
                let Auth::Cookie { path, lie, .. } = &auth else { panic!("AUTHCHALLENGE without cookies") };
                let client_nonce = hex::decode(rest.strip_prefix("SAFECOOKIE ").unwrap()).unwrap();
                let message = [std::fs::read(path).unwrap(), client_nonce, vec![9; 32]].concat();
                let mut server_hash = hmac256(b"Tor safe cookie authentication server-to-controller hash", &message);
                if *lie {
                    server_hash[0] ^= 1;
                }
                let client_key = b"Tor safe cookie authentication controller-to-server hash";
                expected_client_hash = Some(hex::encode(hmac256(client_key, &message)).to_uppercase());
                format!(
                    "250 AUTHCHALLENGE SERVERHASH={} SERVERNONCE={}\r\n",
                    hex::encode(server_hash).to_uppercase(),
                    hex::encode([9; 32]).to_uppercase()
                )
            }
            ("AUTHENTICATE", _) => {
                let good = match &auth {
                    Auth::Null => rest.is_empty(),
                    Auth::Password(password) => rest == quote(password),
                    Auth::Cookie { path, .. } => {
                        let cookie = hex::encode(std::fs::read(path).unwrap());
                        rest.eq_ignore_ascii_case(&cookie)
                            || expected_client_hash.as_deref().is_some_and(|h| rest.eq_ignore_ascii_case(h))
                    }
                };
                authenticated = good;
                if good { "250 OK\r\n" } else { "515 Authentication failed: wrong secret\r\n" }.to_string()
            }
            (_, false) => "514 Authentication required.\r\n".to_string(),
            ("ADD_ONION", true) => add_onion(rest, &new_keys),
            ("DEL_ONION", true) => "250 OK\r\n".to_string(),
            _ => "510 Unrecognized command\r\n".to_string(),
        };
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn add_onion(args: &str, new_keys: &Mutex<u8>) -> String {
    let key_arg = args.split(' ').next().unwrap();
    assert!(args.contains(" Port="), "{args}");
    if key_arg == "NEW:ED25519-V3" {
        let mut n = new_keys.lock().unwrap();
        *n += 1;
        let key = [*n; 64];
        return format!(
            "250-ServiceID={}\r\n250-PrivateKey=ED25519-V3:{}\r\n250 OK\r\n",
            service_id_of(&key),
            data_encoding::BASE64.encode(&key)
        );
    }
    match key_arg.strip_prefix("ED25519-V3:").and_then(|b| data_encoding::BASE64.decode(b.as_bytes()).ok()) {
        Some(key) if key.len() == 64 => format!("250-ServiceID={}\r\n250 OK\r\n", service_id_of(&key)),
        _ => "512 Failed to decode ED25519-V3 key\r\n".to_string(),
    }
}

fn cookie_file(dir: &Path) -> PathBuf {
    let path = dir.join("control_auth_cookie");
    std::fs::write(&path, [0x5a; 32]).unwrap();
    path
}

async fn authenticate(auth: Auth, password: Option<&str>) -> Result<AuthMethod, ControlError> {
    let tor = FakeTor::start(auth).await;
    let mut conn = ControlConnection::connect(tor.addr).await.unwrap();
    let password = password.map(|p| Secret::new(p.to_string()));
    conn.authenticate(password.as_ref()).await
}

#[tokio::test]
async fn each_authentication_method_is_used_as_tor_offers_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = cookie_file(dir.path());
    assert_eq!(authenticate(Auth::Null, None).await.unwrap(), AuthMethod::Null);
    assert_eq!(authenticate(Auth::Password("pa ss\"word"), Some("pa ss\"word")).await.unwrap(), AuthMethod::Password);
    let safe = Auth::Cookie { path: path.clone(), safe: true, lie: false };
    assert_eq!(authenticate(safe, None).await.unwrap(), AuthMethod::SafeCookie);
    let plain = Auth::Cookie { path: path.clone(), safe: false, lie: false };
    assert_eq!(authenticate(plain, None).await.unwrap(), AuthMethod::Cookie);
}

#[tokio::test]
async fn authentication_failures_say_what_to_fix_without_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = cookie_file(dir.path());
    let err = authenticate(Auth::Password("right"), None).await.unwrap_err();
    assert!(matches!(&err, ControlError::NoAuthMethod(m) if m.contains("tor_control_password")), "{err}");
    assert!(!err.is_transient());
    let err = authenticate(Auth::Password("right"), Some("wrong-secret-42")).await.unwrap_err();
    assert!(matches!(err, ControlError::Rejected { command: "AUTHENTICATE", code: 515, .. }), "{err}");
    assert!(!err.to_string().contains("wrong-secret-42"), "{err}");
    let liar = Auth::Cookie { path: path.clone(), safe: true, lie: true };
    assert!(matches!(authenticate(liar, None).await, Err(ControlError::ServerHash)));
    std::fs::remove_file(&path).unwrap();
    let gone = Auth::Cookie { path: path.clone(), safe: true, lie: false };
    let tor = FakeTor::start(gone).await;
    let mut conn = ControlConnection::connect(tor.addr).await.unwrap();
    let err = conn.authenticate(None).await.unwrap_err();
    assert!(matches!(&err, ControlError::Cookie { path: p, .. } if *p == path), "{err}");
    std::fs::write(&path, [1; 16]).unwrap();
    let err = conn.authenticate(None).await.unwrap_err();
    assert!(matches!(err, ControlError::CookieSize { len: 16, .. }), "{err}");
}

#[tokio::test]
async fn add_onion_makes_a_key_once_and_the_saved_key_gives_the_same_address() {
    let tor = FakeTor::start(Auth::Null).await;
    let mut conn = ControlConnection::connect(tor.addr).await.unwrap();
    conn.authenticate(None).await.unwrap();
    let target: SocketAddr = "127.0.0.1:9814".parse().unwrap();
    let first = conn.add_onion(None, 9814, target).await.unwrap();
    let key = first.new_key.clone().expect("a new key");
    assert_eq!(key, OnionKey([1; 64]));
    assert_eq!(first.service_id, service_id_of(&[1; 64]));
    let again = conn.add_onion(Some(&key), 9814, target).await.unwrap();
    assert_eq!(again, AddedOnion { service_id: first.service_id.clone(), new_key: None });
    conn.del_onion(&first.service_id).await.unwrap();
    let commands = tor.commands();
    assert!(commands.contains(&"ADD_ONION NEW:ED25519-V3 Port=9814,127.0.0.1:9814".to_string()), "{commands:?}");
    assert!(commands.contains(&format!("ADD_ONION ED25519-V3:{} Port=9814,127.0.0.1:9814", key.to_base64())));
}

#[tokio::test]
async fn add_onion_refusals_and_odd_answers_are_errors_that_never_quote_the_key() {
    let tor = FakeTor::start(Auth::Null).await;
    let mut conn = ControlConnection::connect(tor.addr).await.unwrap();
    let target: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let err = conn.add_onion(None, 1, target).await.unwrap_err();
    assert!(matches!(err, ControlError::Rejected { code: 514, .. }), "before authenticating: {err}");
    conn.authenticate(None).await.unwrap();
    let added = conn.add_onion(Some(&OnionKey([0; 64])), 1, "[::1]:1".parse().unwrap()).await.unwrap();
    assert_eq!(added.service_id, service_id_of(&[0; 64]), "an IPv6 target is accepted");
    let commands = tor.commands();
    assert!(commands.last().unwrap().ends_with(" Port=1,[::1]:1"), "{commands:?}");
    for answer in [
        &b"250-ServiceID=tooshort\r\n250 OK\r\n"[..],
        b"250-ServiceID=unrhtsss5rrtwoloykldc2vbzr5w2wuxiwa6ejlormx44ntlo4drnmqd\r\n250-PrivateKey=RSA1024:QUJD\r\n250 OK\r\n",
        b"250 OK\r\n",
    ] {
        let answer: &'static [u8] = Box::leak(answer.to_vec().into_boxed_slice());
        let mut conn = ControlConnection::connect(canned(answer).await).await.unwrap();
        let err = conn.add_onion(None, 1, target).await.unwrap_err();
        assert!(matches!(err, ControlError::Malformed(_)), "{err}");
        assert!(!err.to_string().contains("QUJD"), "{err}");
    }
}

fn settings(control_addr: SocketAddr, dir: &Path) -> OnionSettings {
    OnionSettings {
        control_addr,
        password: None,
        onion_port: 9814,
        target: "127.0.0.1:19814".parse().unwrap(),
        key_path: dir.join(ONION_KEY_FILE),
        retry_first: Duration::from_millis(10),
        retry_max: Duration::from_millis(50),
    }
}

/// Polls `published` until it shows `want` (`None`: nothing), within [`DEADLINE`].
async fn until(published: &PublishedOnion, what: &str, want: impl Fn(Option<OnionAddress>) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !want(published.current()) {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_service_is_published_kept_through_a_lost_connection_and_removed_at_stop() {
    let dir = tempfile::tempdir().unwrap();
    let tor = FakeTor::start(Auth::Null).await;
    let stop = CancellationToken::new();
    let (published, task) = start(settings(tor.addr, dir.path()), None, stop.clone());
    let task = tokio::spawn(task);
    until(&published, "published", |a| a.is_some()).await;
    let address = published.current().unwrap();
    assert_eq!(address, OnionAddress { host: format!("{}.onion", service_id_of(&[1; 64])), port: 9814 });
    let saved = load_key(&dir.path().join(ONION_KEY_FILE)).unwrap().expect("the new key is saved");
    assert_eq!(saved, OnionKey([1; 64]));

    tor.go_down();
    until(&published, "withdrawn while Tor is away", |a| a.is_none()).await;
    let adds = tor.commands().iter().filter(|c| c.starts_with("ADD_ONION")).count();
    tor.come_back();
    until(&published, "published again", |a| a.is_some()).await;
    assert_eq!(tor.commands().iter().filter(|c| c.starts_with("ADD_ONION")).count(), adds + 1);
    assert_eq!(published.current(), Some(address.clone()), "the same address after reconnecting");
    let re_added = format!("ADD_ONION ED25519-V3:{} Port=9814,127.0.0.1:19814", saved.to_base64());
    assert_eq!(tor.commands().iter().filter(|c| c.starts_with("ADD_ONION NEW")).count(), 1);
    assert!(tor.commands().contains(&re_added), "{:?}", tor.commands());

    stop.cancel();
    tokio::time::timeout(DEADLINE, task).await.expect("the task ends at stop").unwrap();
    assert_eq!(published.current(), None);
    assert_eq!(tor.commands().last(), Some(&format!("DEL_ONION {}", service_id_of(&[1; 64]))));
}

#[tokio::test]
async fn a_tor_that_comes_up_late_is_waited_for_and_a_saved_key_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let tor = FakeTor::start(Auth::Null).await;
    tor.go_down();
    let stop = CancellationToken::new();
    let key = OnionKey([42; 64]);
    let (published, task) = start(settings(tor.addr, dir.path()), Some(key.clone()), stop.clone());
    let task = tokio::spawn(task);
    // Tor closes every connection at first: the task keeps trying.
    let deadline = Instant::now() + DEADLINE;
    while tor.connections.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "the task never tried again");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(published.current(), None);
    tor.come_back();
    until(&published, "published once Tor is up", |a| a.is_some()).await;
    assert_eq!(published.current().unwrap().host, format!("{}.onion", service_id_of(&[42; 64])));
    assert!(tor.commands().iter().all(|c| !c.starts_with("ADD_ONION NEW")), "{:?}", tor.commands());
    assert!(!dir.path().join(ONION_KEY_FILE).exists(), "a key given is not written again");
    stop.cancel();
    tokio::time::timeout(DEADLINE, task).await.expect("the task ends at stop").unwrap();
}

#[tokio::test]
async fn a_stop_while_tor_is_unreachable_ends_the_task_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let stop = CancellationToken::new();
    let mut slow = settings(addr, dir.path());
    slow.retry_first = Duration::from_secs(3600);
    let (published, task) = start(slow, None, stop.clone());
    let task = tokio::spawn(task);
    stop.cancel();
    tokio::time::timeout(DEADLINE, task).await.expect("the task ends at stop").unwrap();
    assert_eq!(published.current(), None);
}

#[test]
fn a_tor_that_stays_away_is_logged_ever_more_rarely_and_a_new_reason_at_once() {
    let away = || PublishError::Control(ControlError::Closed);
    let mut failures = Failures::default();
    let logged: Vec<u64> = (0..20).filter_map(|_| failures.worth_logging(&away())).collect();
    assert_eq!(logged, vec![1, 2, 4, 8, 16]);
    let refused = PublishError::Control(ControlError::NoAuthMethod("x".into()));
    assert_eq!(failures.worth_logging(&refused), Some(21), "a new reason is logged at once");
    assert_eq!(failures.worth_logging(&away()), Some(22), "and so is the old one coming back");
    assert_eq!(failures.worth_logging(&away()), None);
}

#[test]
fn the_target_of_an_unspecified_bind_is_loopback() {
    let tor = TorConfig { control_addr: "127.0.0.1:9051".parse().unwrap(), onion_port: 9814, password: None };
    let dir = Path::new("/tmp/x");
    assert_eq!(OnionSettings::new(&tor, "0.0.0.0:9814".parse().unwrap(), dir).target.to_string(), "127.0.0.1:9814");
    assert_eq!(OnionSettings::new(&tor, "[::]:9814".parse().unwrap(), dir).target.to_string(), "[::1]:9814");
    let settings = OnionSettings::new(&tor, "10.0.0.2:1".parse().unwrap(), dir);
    assert_eq!(settings.target.to_string(), "10.0.0.2:1");
    assert_eq!(settings.key_path, dir.join("onion_v3_sk"));
}
