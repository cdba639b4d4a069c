use super::*;

fn cli(args: &[&str]) -> Cli {
    let mut argv = vec!["teosd"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).unwrap()
}

fn build(args: &[&str], toml: &str, password_env: Option<&str>) -> Result<Config, ConfigError> {
    let file = FileConfig::parse(toml).map_err(|message| ConfigError::Parse { path: "teos.toml".into(), message })?;
    Config::build("/tmp/teos-test".into(), &cli(args), file, password_env.map(str::to_string))
}

use clap::Parser;

#[test]
fn defaults_follow_the_reference_tower() {
    let config = build(&[], "", None).unwrap();
    assert_eq!(config.network, Network::Bitcoin);
    assert_eq!(config.public_http_addr, "127.0.0.1:9814".parse().unwrap());
    assert_eq!(config.admin_grpc_addr, "127.0.0.1:8814".parse().unwrap());
    assert_eq!(config.metrics_addr, Some("127.0.0.1:9815".parse().unwrap()));
    assert_eq!(config.bitcoind.port, 8332);
    assert_eq!(config.bitcoind.host, "localhost");
    assert!(matches!(config.bitcoind.auth, BitcoindAuth::Cookie(ref p) if p.ends_with(".bitcoin/.cookie")));
    assert_eq!(config.policy.subscription_slots, 10_000);
    assert_eq!(config.policy.subscription_duration, 4320);
    assert_eq!(config.policy.expiry_delta, 6);
    assert_eq!(config.policy.min_to_self_delay, 20);
    assert_eq!(config.policy.recent_block_lookback, 100);
    assert_eq!(config.bitcoind.polling_interval, Duration::from_secs(1));
    assert!(config.warnings.is_empty());
    assert_eq!(config.network_dir(), PathBuf::from("/tmp/teos-test/mainnet"));
}

#[test]
fn file_overrides_defaults_and_flags_override_file() {
    let toml = "btc_network = \"regtest\"\napi_port = 1111\nsubscription_slots = 21\nbtc_rpc_port = 1234\n";
    let config = build(&["--apiport", "2222"], toml, None).unwrap();
    assert_eq!(config.network, Network::Regtest);
    assert_eq!(config.public_http_addr.port(), 2222);
    assert_eq!(config.policy.subscription_slots, 21);
    assert_eq!(config.bitcoind.port, 1234);
    assert_eq!(config.network_dir(), PathBuf::from("/tmp/teos-test/regtest"));
}

#[test]
fn every_network_has_its_folder_and_port() {
    for (name, dir, port) in [
        ("mainnet", "mainnet", 8332),
        ("main", "mainnet", 8332),
        ("testnet", "testnet", 18332),
        ("testnet4", "testnet4", 48332),
        ("signet", "signet", 38332),
        ("regtest", "regtest", 18443),
    ] {
        let config = build(&["--btcnetwork", name], "", None).unwrap();
        assert!(config.network_dir().ends_with(dir), "{name}");
        assert_eq!(config.bitcoind.port, port, "{name}");
    }
}

#[test]
fn unknown_network_is_an_error() {
    let err = build(&["--btcnetwork", "liquid"], "", None).unwrap_err();
    assert!(err.to_string().contains("unknown network `liquid`"), "{err}");
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let err = build(&[], "btc_netwrok = \"regtest\"\n", None).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }));
    assert!(err.to_string().contains("btc_netwrok"), "{err}");
}

#[test]
fn malformed_file_is_an_error() {
    let err = build(&[], "api_port = \n", None).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    let err = build(&[], "api_port = \"ninety\"\n", None).unwrap_err();
    assert!(err.to_string().contains("api_port") || err.to_string().contains("invalid type"), "{err}");
}

#[test]
fn a_parse_error_names_the_line_but_never_shows_a_password() {
    let err = build(&[], "btc_network = \"regtest\"\nbtc_rpc_password = \"hunter2\n", None).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("line 2") && !text.contains("hunter2"), "{text}");
    let err = build(&[], "btc_rpc_password = 31337\n", None).unwrap_err();
    assert!(!err.to_string().contains("31337"), "{err}");
    let err = build(&[], "api_port = \"ninety\"\n", None).unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn a_password_file_readable_by_others_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CONFIG_FILE_NAME);
    std::fs::write(&path, "btc_rpc_user = \"alice\"\nbtc_rpc_password = \"hunter2\"\n").unwrap();
    let load = || Config::load(&cli(&["--datadir", dir.path().to_str().unwrap()])).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(load().warnings.iter().any(|w| w.contains("chmod 600")), "{:?}", load().warnings);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(load().warnings.is_empty());
}

#[test]
fn reference_only_keys_warn() {
    let config = build(&[], "internal_api_bind = \"127.0.0.1\"\ninternal_api_port = 50051\n", None).unwrap();
    assert_eq!(config.warnings.len(), 2);
    assert!(config.warnings[0].contains("internal_api_bind"));
}

#[test]
fn user_and_password_authenticate() {
    let config = build(&["--btcrpcuser", "alice"], "btc_rpc_password = \"hunter2\"\n", None).unwrap();
    assert_eq!(
        config.bitcoind.auth,
        BitcoindAuth::UserPass { user: "alice".into(), password: Secret::new("hunter2".into()) }
    );
    // The environment beats the file for the password.
    let config = build(&["--btcrpcuser", "alice"], "btc_rpc_password = \"hunter2\"\n", Some("env")).unwrap();
    assert!(matches!(config.bitcoind.auth, BitcoindAuth::UserPass { ref password, .. } if password.expose() == "env"));
}

#[test]
fn conflicting_credentials_are_an_error() {
    let toml = "btc_rpc_user = \"CSW\"\nbtc_rpc_password = \"NotSatoshi\"\nbtc_rpc_cookie = \"~/.bitcoin/.cookie\"\n";
    let err = build(&[], toml, None).unwrap_err();
    assert!(err.to_string().contains("conflicting bitcoind credentials"), "{err}");
    assert!(build(&["--btcrpcuser", "alice"], "", None).is_err());
    assert!(build(&[], "btc_rpc_password = \"x\"\n", None).is_err());
}

#[test]
fn password_on_command_line_is_refused() {
    let err = build(&["--btcrpcpassword", "hunter2"], "", None).unwrap_err();
    assert!(err.to_string().contains("command line"), "{err}");
    assert!(!err.to_string().contains("hunter2"));
}

#[test]
fn password_never_shows_in_debug_or_summary() {
    let config = build(&["--btcrpcuser", "alice"], "btc_rpc_password = \"hunter2\"\n", None).unwrap();
    assert!(!format!("{config:?}").contains("hunter2"));
    assert!(!config.summary().contains("hunter2"));
    assert!(format!("{config:?}").contains("****"));
}

#[test]
fn cookie_path_expands_home() {
    let config = build(&["--btcrpccookie", "~/x/.cookie"], "", None).unwrap();
    match config.bitcoind.auth {
        BitcoindAuth::Cookie(path) => assert!(path.is_absolute() && path.ends_with("x/.cookie")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_values_are_errors() {
    assert!(build(&[], "polling_delta = 0\n", None).is_err());
    assert!(build(&[], "subscription_slots = 0\n", None).is_err());
    assert!(build(&[], "log_format = \"xml\"\n", None).is_err());
    assert!(build(&["--apibind", "not an address!"], "", None).is_err());
    assert!(build(&[], "api_port = 70000\n", None).is_err());
}

#[test]
fn zmq_endpoint_is_checked() {
    let config = build(&["--zmqpubhashblock", "tcp://127.0.0.1:28332"], "", None).unwrap();
    assert_eq!(config.bitcoind.zmq_hashblock.as_deref(), Some("tcp://127.0.0.1:28332"));
    let config = build(&[], "zmq_hashblock = \"ipc:///tmp/bitcoind.zmq\"\n", None).unwrap();
    assert_eq!(config.bitcoind.zmq_hashblock.as_deref(), Some("ipc:///tmp/bitcoind.zmq"));
    assert_eq!(build(&[], "zmq_hashblock = \"\"\n", None).unwrap().bitcoind.zmq_hashblock, None);
    for bad in ["127.0.0.1:28332", "tcp://127.0.0.1", "tcp://127.0.0.1:99999", "udp://127.0.0.1:28332"] {
        match build(&["--zmqpubhashblock", bad], "", None) {
            Err(ConfigError::Invalid { key: "zmq_hashblock", .. }) => {}
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn python_teos_clients_are_served_unless_switched_off() {
    assert!(build(&[], "", None).unwrap().python_teos_clients);
    assert!(!build(&[], "python_teos_clients = false\n", None).unwrap().python_teos_clients);
    let flag = build(&["--pythonteosclients", "true"], "python_teos_clients = false\n", None).unwrap();
    assert!(flag.python_teos_clients, "the flag beats the file");
}

#[test]
fn help_documents_every_option() {
    use clap::CommandFactory;
    let help = Cli::command().render_long_help().to_string();
    for flag in [
        "--datadir",
        "--btcnetwork",
        "--btcrpcuser",
        "--btcrpccookie",
        "--btcrpcconnect",
        "--btcrpcport",
        "--apibind",
        "--apiport",
        "--rpcbind",
        "--rpcport",
        "--overwritekey",
        "--pythonteosclients",
        "--pollingdelta",
        "--zmqpubhashblock",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn tor_is_off_by_default_and_takes_the_reference_defaults_when_on() {
    assert_eq!(build(&[], "", None).unwrap().tor, None);
    let tor = build(&["--torsupport"], "", None).unwrap().tor.unwrap();
    assert_eq!(tor.control_addr, "127.0.0.1:9051".parse().unwrap());
    assert_eq!(tor.onion_port, 9814);
    assert_eq!(tor.password, None);
    let toml = "tor_support = true\ntor_control_port = 9151\nonion_hidden_service_port = 80\n";
    let config = build(&[], toml, None).unwrap();
    assert!(config.warnings.is_empty(), "the reference's Tor keys now work: {:?}", config.warnings);
    let tor = config.tor.clone().unwrap();
    assert_eq!((tor.control_addr.port(), tor.onion_port), (9151, 80));
    let tor = build(&["--torcontrolport", "9999", "--onionhiddenserviceport", "81"], toml, None).unwrap().tor.unwrap();
    assert_eq!((tor.control_addr.port(), tor.onion_port), (9999, 81), "flags beat the file");
    assert!(config.summary().contains("tor=control:127.0.0.1:9151 onion_port:80"), "{}", config.summary());
}

#[test]
fn tor_ports_must_not_be_zero() {
    let err = build(&["--torsupport", "--torcontrolport", "0"], "", None).unwrap_err();
    assert!(err.to_string().contains("tor_control_port"), "{err}");
    let err = build(&["--torsupport"], "onion_hidden_service_port = 0\n", None).unwrap_err();
    assert!(err.to_string().contains("onion_hidden_service_port"), "{err}");
}

#[test]
fn the_tor_password_comes_from_the_file_or_the_environment_never_a_flag_and_never_shows() {
    assert!(Cli::try_parse_from(["teosd", "--torcontrolpassword", "x"]).is_err());
    let config = build(&["--torsupport"], "tor_control_password = \"s3cret-tor\"\n", None).unwrap();
    assert_eq!(config.tor.as_ref().unwrap().password, Some(Secret::new("s3cret-tor".into())));
    assert!(!format!("{config:?}").contains("s3cret-tor"));
    assert!(!config.summary().contains("s3cret-tor"));

    let mut config = config;
    config.tor_password_from_env(Some("from-env".into()));
    assert_eq!(config.tor.unwrap().password, Some(Secret::new("from-env".into())), "the environment beats the file");
    let mut off = build(&[], "", None).unwrap();
    off.tor_password_from_env(Some("from-env".into()));
    assert_eq!(off.tor, None);
}

#[test]
fn the_metrics_endpoint_moves_or_switches_off() {
    let moved = build(&[], "metrics_addr = \"0.0.0.0:9999\"\n", None).unwrap();
    assert_eq!(moved.metrics_addr, Some("0.0.0.0:9999".parse().unwrap()));
    let flag = build(&["--metricsaddr", "[::1]:9000"], "metrics_addr = \"0.0.0.0:9999\"\n", None).unwrap();
    assert_eq!(flag.metrics_addr, Some("[::1]:9000".parse().unwrap()));
    for off in ["off", "", "false"] {
        assert_eq!(build(&["--metricsaddr", off], "", None).unwrap().metrics_addr, None, "{off}");
    }
    assert!(build(&[], "metrics_addr = \"off\"\n", None).unwrap().summary().contains("metrics=off"));
    let bad = build(&["--metricsaddr", "localhost"], "", None).unwrap_err();
    assert!(bad.to_string().contains("metrics_addr"), "{bad}");
}
