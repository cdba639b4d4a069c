//! The `teosd` binary on its own (no bitcoind): data dir and key creation, clean SIGTERM,
//! configuration errors.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn teosd(datadir: &std::path::Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_teosd"));
    cmd.arg("--datadir").arg(datadir).args(["--btcnetwork", "regtest", "--btcrpcport", "1", "--apiport", "0"]);
    cmd.args(extra).env_remove("RUST_LOG").env("NO_COLOR", "1");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TEOS_")) {
        cmd.env_remove(key);
    }
    cmd
}

/// Streams the child's stderr lines into a channel.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(rx: &mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no `{needle}` in {seen:#?}"));
        let found = line.contains(needle);
        seen.push(line);
        if found {
            return seen;
        }
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// Kills the child if a test fails before it stopped.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_and_stop(datadir: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut child = Guard(teosd(datadir, extra).stderr(Stdio::piped()).spawn().unwrap());
    let rx = stderr_lines(&mut child.0);
    let mut lines = wait_for(&rx, "waiting for bitcoind");
    sigterm(&child.0);
    let status = child.0.wait().unwrap();
    lines.extend(rx.iter());
    assert!(status.success(), "exit {status:?}: {lines:#?}");
    lines
}

fn tower_id(lines: &[String]) -> String {
    let line = lines.iter().find(|l| l.contains("tower key loaded")).unwrap();
    let at = line.find("tower_id=").unwrap() + "tower_id=".len();
    line[at..at + 66].to_string()
}

#[test]
fn creates_datadir_and_key_then_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let datadir = dir.path().join("teos");
    let lines = start_and_stop(&datadir, &[]);
    assert!(datadir.join("regtest/db/CURRENT").exists());
    let first = tower_id(&lines);
    // Same key on restart; a new one with --overwritekey; the log never shows a secret.
    assert_eq!(tower_id(&start_and_stop(&datadir, &[])), first);
    let rotated = start_and_stop(&datadir, &["--overwritekey"]);
    assert_ne!(tower_id(&rotated), first);
    assert!(lines.iter().any(|l| l.contains("connecting to bitcoind")));
}

#[test]
fn broken_config_exits_non_zero_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("teos.toml"), "api_port = \"lots\"\n").unwrap();
    let out = teosd(dir.path(), &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("teos.toml") && stderr.contains("api_port"), "{stderr}");

    std::fs::write(dir.path().join("teos.toml"), "no_such_key = 1\n").unwrap();
    let out = teosd(dir.path(), &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_key"));
}

#[test]
fn password_flag_is_refused_and_env_config_applies() {
    let dir = tempfile::tempdir().unwrap();
    let out = teosd(dir.path(), &["--btcrpcuser", "u", "--btcrpcpassword", "hunter2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("command line") && !stderr.contains("hunter2"), "{stderr}");

    // TEOS_* environment beats the file; a flag beats the environment.
    std::fs::write(dir.path().join("teos.toml"), "btc_network = \"mainnet\"\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_teosd"));
    cmd.arg("--datadir").arg(dir.path()).env("TEOS_BTC_NETWORK", "nonet");
    let out = cmd.output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown network `nonet`"));
    let out = cmd.args(["--btcnetwork", "alsonot"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown network `alsonot`"));
}

#[test]
fn help_lists_the_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_teosd")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--datadir", "--btcnetwork", "--btcrpccookie", "--apiport", "--overwritekey", "TEOS_BTC_NETWORK"] {
        assert!(help.contains(flag), "{flag}");
    }
}

/// The environment the running teosd (pid `pid`) sees.
fn environment_of(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect()
}

#[test]
fn runs_with_two_malloc_arenas_unless_the_operator_set_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    for (given, expected) in [(None, "MALLOC_ARENA_MAX=2"), (Some("4"), "MALLOC_ARENA_MAX=4")] {
        let mut cmd = teosd(&dir.path().join("teos"), &[]);
        match given {
            Some(value) => cmd.env("MALLOC_ARENA_MAX", value),
            None => cmd.env_remove("MALLOC_ARENA_MAX"),
        };
        let mut child = Guard(cmd.stderr(Stdio::piped()).spawn().unwrap());
        let rx = stderr_lines(&mut child.0);
        wait_for(&rx, "waiting for bitcoind");
        // Same process (executed again in place), with the limit in its environment.
        let environment = environment_of(child.0.id());
        assert_eq!(environment.iter().filter(|v| v.starts_with("MALLOC_ARENA_MAX=")).collect::<Vec<_>>(), [expected]);
        sigterm(&child.0);
        assert!(child.0.wait().unwrap().success());
    }
}
