//! `scripts/env.sh`'s prerequisite check, run against scratch directory trees made to look like
//! machines (through `TEOS_SYSROOT`): it must name exactly the packages whose files a build step
//! loads are missing. The machine that once broke the README's first command had
//! `libclang-cpp.so.14` (from `libclang-cpp14`) but no `libclang.so`, which is what bindgen loads.

use std::path::Path;
use std::process::Command;

/// What `teos_missing_packages` prints for a machine whose files are `files` (relative paths).
fn missing_on(files: &[&str]) -> Vec<String> {
    let root = tempfile::tempdir().unwrap();
    for file in files {
        let path = root.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/env.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source '{}' && teos_missing_packages", script.display()))
        .env("TEOS_ENV_FUNCTIONS_ONLY", "1")
        .env("TEOS_SYSROOT", root.path())
        .env_remove("LIBCLANG_PATH")
        .env_remove("TEOS_ROCKSDB_FROM_SOURCE")
        .output()
        .expect("running bash");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

const COMPLETE: [&str; 5] = [
    "usr/bin/protoc",
    "usr/bin/curl",
    "usr/bin/tor",
    "usr/lib/llvm-14/lib/libclang-14.so.1",
    "usr/lib/x86_64-linux-gnu/librocksdb.so",
];

#[test]
fn a_complete_machine_lacks_nothing() {
    assert!(missing_on(&COMPLETE).is_empty());
}

#[test]
fn libclang_cpp_alone_is_not_libclang() {
    let files = [
        "usr/bin/protoc",
        "usr/bin/curl",
        "usr/bin/tor",
        "usr/lib/llvm-14/lib/libclang-cpp.so.14",
        "usr/lib/x86_64-linux-gnu/librocksdb.so",
    ];
    assert_eq!(missing_on(&files), vec!["libclang-dev"]);
    let files = [
        "usr/bin/protoc",
        "usr/bin/curl",
        "usr/sbin/tor",
        "usr/lib/x86_64-linux-gnu/libclang-cpp.so.14",
        "usr/lib/x86_64-linux-gnu/librocksdb.so",
    ];
    assert_eq!(missing_on(&files), vec!["libclang-dev"]);
}

#[test]
fn every_name_bindgen_loads_counts_as_libclang() {
    for libclang in [
        "usr/lib/llvm-14/lib/libclang.so",
        "usr/lib/llvm-16/lib/libclang.so.1",
        "usr/lib/llvm-14/lib/libclang-14.so",
        "usr/lib/x86_64-linux-gnu/libclang-14.so.1",
    ] {
        let files =
            ["usr/bin/protoc", "usr/bin/curl", "usr/bin/tor", libclang, "usr/lib/x86_64-linux-gnu/librocksdb.so"];
        assert!(missing_on(&files).is_empty(), "{libclang}");
    }
}

#[test]
fn a_bare_machine_lacks_each_package_once() {
    assert_eq!(missing_on(&[]), vec!["protobuf-compiler", "libclang-dev", "librocksdb-dev", "curl", "tor"]);
    // Only the static archive of RocksDB is not what ROCKSDB_LIB_DIR links.
    let files = [
        "usr/bin/protoc",
        "usr/bin/curl",
        "usr/bin/tor",
        "usr/lib/llvm-14/lib/libclang.so",
        "usr/lib/x86_64-linux-gnu/librocksdb.a",
    ];
    assert_eq!(missing_on(&files), vec!["librocksdb-dev"]);
}

#[test]
fn tor_counts_in_either_debian_location_and_only_as_an_executable() {
    let base =
        ["usr/bin/protoc", "usr/bin/curl", "usr/lib/llvm-14/lib/libclang.so", "usr/lib/x86_64-linux-gnu/librocksdb.so"];
    assert_eq!(missing_on(&base), vec!["tor"]);
    for tor in ["usr/bin/tor", "usr/sbin/tor"] {
        let files: Vec<&str> = base.iter().copied().chain([tor]).collect();
        assert!(missing_on(&files).is_empty(), "{tor}");
    }
    let files: Vec<&str> = base.iter().copied().chain(["usr/share/tor/geoip"]).collect();
    assert_eq!(missing_on(&files), vec!["tor"], "tor's data files are not the daemon");
}
