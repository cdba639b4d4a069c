//! `contrib/systemd/teosd.service`: the settings teosd relies on are there, and
//! `systemd-analyze verify` accepts the unit (skipped, saying why, where systemd-analyze is
//! missing).

use std::path::{Path, PathBuf};
use std::process::Command;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd/teosd.service")
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

#[test]
fn the_unit_waits_for_readiness_and_is_hardened() {
    let unit = std::fs::read_to_string(unit_path()).expect("reading the unit");
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for expected in [
        "Type=notify",
        "ExecStart=/usr/local/bin/teosd --datadir /var/lib/teos",
        "StateDirectory=teos",
        "After=bitcoind.service network-online.target",
        "Restart=on-failure",
        "WatchdogSec=300",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "PrivateTmp=true",
        "NoNewPrivileges=true",
        "PrivateDevices=true",
        "MemoryDenyWriteExecute=true",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ] {
        assert!(lines.contains(&expected), "missing `{expected}`");
    }
    assert!(lines.iter().any(|l| l.starts_with("Wants=")), "missing Wants=");
    assert!(lines.iter().any(|l| l.starts_with("TimeoutStopSec=")), "missing TimeoutStopSec=");
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Some(analyze) = find_in_path("systemd-analyze") else {
        eprintln!("skipping: systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    // verify checks that ExecStart's binary exists: point it at one that does.
    let exe = std::env::current_exe().expect("test executable");
    let unit = std::fs::read_to_string(unit_path()).expect("reading the unit");
    let unit = unit.replace("ExecStart=/usr/local/bin/teosd", &format!("ExecStart={}", exe.display()));
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("teosd.service");
    std::fs::write(&copy, unit).expect("writing the unit");
    let output = Command::new(analyze).arg("verify").arg(&copy).output().expect("running systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify failed:\n{stderr}");
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("teosd.service")).collect();
    assert!(complaints.is_empty(), "systemd-analyze verify complained:\n{stderr}");
}
