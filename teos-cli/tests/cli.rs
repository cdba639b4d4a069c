//! The `teos-cli` binary without a tower: argument checks happen before connecting, and every
//! failure is one line on stderr with a non-zero exit, never a panic.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

fn teos_cli(datadir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_teos-cli"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TEOS_")) {
        cmd.env_remove(key);
    }
    cmd.arg("--datadir").arg(datadir).args(args).output().expect("running teos-cli")
}

/// Exit code and the single line of stderr; stdout must be empty.
fn failure(output: &Output) -> (i32, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&output.stdout));
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    (output.status.code().expect("exit code"), stderr.trim_end().to_string())
}

/// A data directory with a usable (self-signed) set of TLS files.
fn datadir_with_certificates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("ca.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.path().join("client.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.path().join("client-key.pem"), certified.signing_key.serialize_pem()).unwrap();
    dir
}

#[test]
fn malformed_user_ids_are_refused_before_connecting() {
    let empty = tempfile::tempdir().unwrap();
    for (id, needle) in [
        ("xyz", "not hex encoded"),
        ("0203", "expected a 33-byte compressed public key"),
        (&format!("04{}", "11".repeat(32)), "starts with 02 or 03"),
    ] {
        let (code, line) = failure(&teos_cli(empty.path(), &["getuser", id]));
        assert_eq!(code, 2, "{line}");
        assert!(line.starts_with("teos-cli: invalid user id") && line.contains(needle), "{line}");
    }
}

#[test]
fn malformed_locators_are_refused_before_connecting() {
    let empty = tempfile::tempdir().unwrap();
    for (locator, needle) in [("nothex", "not hex encoded"), ("abcd", "expected 16 bytes")] {
        let (code, line) = failure(&teos_cli(empty.path(), &["getappointments", locator]));
        assert_eq!(code, 2, "{line}");
        assert!(line.starts_with("teos-cli: invalid locator") && line.contains(needle), "{line}");
    }
}

#[test]
fn missing_arguments_and_unknown_commands_are_usage_errors() {
    let empty = tempfile::tempdir().unwrap();
    for args in [&["getuser"][..], &["getappointments"], &["frobnicate"], &[]] {
        let output = teos_cli(empty.path(), args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
    }
}

#[test]
fn missing_certificates_are_named() {
    let empty = tempfile::tempdir().unwrap();
    let (code, line) = failure(&teos_cli(empty.path(), &["gettowerinfo"]));
    assert_eq!(code, 1);
    assert!(line.contains("missing") && line.contains("ca.pem") && line.contains("--datadir"), "{line}");
}

#[test]
fn a_malformed_config_file_is_named() {
    let dir = datadir_with_certificates();
    std::fs::write(dir.path().join("teos.toml"), "rpc_port = \"high\"").unwrap();
    let (code, line) = failure(&teos_cli(dir.path(), &["gettowerinfo"]));
    assert_eq!(code, 1);
    assert!(line.contains("teos.toml"), "{line}");
}

#[test]
fn a_tower_that_is_not_running_is_reported_as_such() {
    let dir = datadir_with_certificates();
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for command in ["gettowerinfo", "getusers", "stop"] {
        let (code, line) = failure(&teos_cli(dir.path(), &["--rpcport", &port.to_string(), command]));
        assert_eq!(code, 1);
        assert!(line.starts_with("teos-cli: Could not connect to tower. Is teosd running?"), "{line}");
    }
}

#[test]
fn completions_are_printed_for_each_shell() {
    let empty = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let output = teos_cli(empty.path(), &["completions", shell]);
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains("teos-cli") && script.contains("getallappointments"), "{shell}");
    }
    assert_eq!(teos_cli(empty.path(), &["completions", "tcsh"]).status.code(), Some(2));
}
