//! Online backups: a consistent copy of the store taken while the tower runs (RocksDB's
//! checkpoint), with the files of the data directory a restore needs besides it (the admin API's
//! TLS files and `teos.toml`), into a new directory on the tower's machine. The layout and the
//! restore procedure are in `docs/operations.md`.
//!
//! Blocking (file I/O and the checkpoint): async code calls [`create`] through
//! [`crate::task::blocking`].

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use bitcoin::BlockHash;

use crate::store::{Store, StoreError};
use crate::tls;

/// The store's copy, inside the backup directory.
pub const DB_DIR: &str = "db";
/// What the backup holds, in a few lines of text (network, tip, version).
pub const INFO_FILE: &str = "backup-info.txt";

/// Files of the data directory's root a restore needs besides the store: without the TLS files
/// the operator's teos-cli would need new certificates; `teos.toml` holds the configuration.
/// Copied when they exist, mode 0600 (keys, and possibly the bitcoind password).
const DATA_DIR_FILES: [&str; 7] =
    [tls::CA.cert, tls::CA.key, tls::SERVER.cert, tls::SERVER.key, tls::CLIENT.cert, tls::CLIENT.key, "teos.toml"];

/// Why a backup was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The directory is not an absolute path (it is a path on the tower's machine, and the
    /// tower's working directory is nothing the operator should depend on).
    #[error("the backup directory must be an absolute path on the tower's machine, got {0:?}")]
    NotAbsolute(PathBuf),
    /// The path has `..` in it.
    #[error("the backup directory must not contain `..`: {0:?}")]
    ParentComponent(PathBuf),
    /// The directory exists and is not empty (or is not a directory).
    #[error("{0} already exists and is not an empty directory: choose a new one")]
    NotEmpty(PathBuf),
    /// The directory is inside the tower's data directory, where it would be lost with it.
    #[error("{path} is inside the tower's data directory {data_dir}: a backup must live elsewhere")]
    InsideDataDir {
        /// The backup directory.
        path: PathBuf,
        /// The data directory.
        data_dir: PathBuf,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source} (the backup in {dir} is incomplete: delete it)")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The backup directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The checkpoint failed, or the copy did not open as a store.
    #[error("{what}: {source} (the backup in {dir} is incomplete: delete it)")]
    Store {
        /// What was being done.
        what: &'static str,
        /// The backup directory.
        dir: PathBuf,
        /// Why.
        source: StoreError,
    },
}

/// A finished backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The backup directory.
    pub dir: PathBuf,
    /// The last block whose effects the copy holds: a restored tower catches up from there.
    pub tip: Option<(u32, BlockHash)>,
    /// Bytes in the backup directory.
    pub size_bytes: u64,
    /// The files copied from the data directory's root besides the store.
    pub files: Vec<String>,
}

/// Checks `dir` as a backup target for the data directory `data_dir`: absolute, without `..`,
/// outside the data directory, and missing or an empty directory.
pub fn check_target(dir: &Path, data_dir: &Path) -> Result<(), BackupError> {
    if !dir.is_absolute() {
        return Err(BackupError::NotAbsolute(dir.to_path_buf()));
    }
    if dir.components().any(|c| c == Component::ParentDir) {
        return Err(BackupError::ParentComponent(dir.to_path_buf()));
    }
    // Symbolic links resolved where they exist: the data directory, and the backup's deepest
    // existing ancestor.
    let data_dir = fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let mut existing = dir;
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut resolved = fs::canonicalize(existing).unwrap_or_else(|_| existing.to_path_buf());
    resolved.extend(rest.iter().rev());
    if resolved.starts_with(&data_dir) {
        return Err(BackupError::InsideDataDir { path: dir.to_path_buf(), data_dir });
    }
    match fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(BackupError::NotEmpty(dir.to_path_buf())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => Err(BackupError::NotEmpty(dir.to_path_buf())),
    }
}

/// Backs `store` (the tower's, running on `data_dir`) up into `dir`, created owner-only: the
/// checkpoint in `dir/db`, the data directory's TLS files and `teos.toml`, and
/// `backup-info.txt`; everything synced to disk. The copy is then opened read-only to read its
/// tip (and so checked to be a store this teosd opens).
pub fn create(store: &Store, data_dir: &Path, network: &str, dir: &Path) -> Result<Backup, BackupError> {
    check_target(dir, data_dir)?;
    let io_error = |what, path: &Path| {
        let dir = dir.to_path_buf();
        let path = path.to_path_buf();
        move |source| BackupError::Io { what, path, dir, source }
    };
    create_private_dir(dir).map_err(io_error("creating", dir))?;
    let db = dir.join(DB_DIR);
    store.checkpoint(&db).map_err(|source| BackupError::Store { what: "the checkpoint", dir: dir.into(), source })?;
    let mut files = Vec::new();
    for name in DATA_DIR_FILES {
        let from = data_dir.join(name);
        match copy_private(&from, &dir.join(name)) {
            Ok(()) => files.push(name.to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !from.exists() => {}
            Err(e) => return Err(io_error("copying", &from)(e)),
        }
    }
    // The onion service's key (with `tor_support`), so that a restore keeps the onion address.
    let onion_key = data_dir.join(network).join(crate::tor::ONION_KEY_FILE);
    match copy_private(&onion_key, &dir.join(crate::tor::ONION_KEY_FILE)) {
        Ok(()) => files.push(format!("{network}/{}", crate::tor::ONION_KEY_FILE)),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !onion_key.exists() => {}
        Err(e) => return Err(io_error("copying", &onion_key)(e)),
    }
    let tip = {
        let copy = Store::open_read_only(&db).map_err(|source| BackupError::Store {
            what: "opening the copy",
            dir: dir.into(),
            source,
        })?;
        copy.tip().map_err(|source| BackupError::Store { what: "reading the copy's tip", dir: dir.into(), source })?
    };
    let info = match tip {
        Some((height, hash)) => format!("network {network}\ntip_height {height}\ntip_hash {hash}\n"),
        None => format!("network {network}\ntip_height none\n"),
    };
    let info = format!("teosd {} backup\n{info}", env!("CARGO_PKG_VERSION"));
    write_private(&dir.join(INFO_FILE), info.as_bytes()).map_err(io_error("writing", &dir.join(INFO_FILE)))?;
    // Every file of the copy (RocksDB syncs what it writes; hard links share the table files'
    // data, already synced), then the directories, so that their entries are durable too.
    sync_tree(&db).map_err(io_error("syncing", &db))?;
    sync_dir(dir).map_err(io_error("syncing", dir))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent).map_err(io_error("syncing", parent))?;
    }
    let size_bytes = tree_size(dir).map_err(io_error("measuring", dir))?;
    Ok(Backup { dir: dir.to_path_buf(), tip, size_bytes, files })
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    // An empty directory that existed keeps its mode otherwise.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

fn private_file(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn copy_private(from: &Path, to: &Path) -> io::Result<()> {
    let mut source = fs::File::open(from)?;
    let mut target = private_file(to)?;
    io::copy(&mut source, &mut target)?;
    target.sync_all()
}

fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = private_file(path)?;
    io::Write::write_all(&mut file, contents)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            fs::File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

fn tree_size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { tree_size(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Appointment, Locator};
    use crate::store::{StoredAppointment, UserRecord};
    use crate::test_utils::user;

    fn stored(n: u8) -> StoredAppointment {
        StoredAppointment {
            appointment: Appointment {
                locator: Locator::from_slice(&[n; 16]).unwrap(),
                encrypted_blob: vec![n; 100],
                to_self_delay: 42,
            },
            user_signature: "y".repeat(104),
            start_block: 7,
        }
    }

    #[test]
    fn a_backup_holds_what_was_committed_before_it_and_nothing_after() {
        let data = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let store = Store::open(&data.path().join("regtest/db"), 8).unwrap();
        std::fs::write(data.path().join("ca.pem"), "certificate").unwrap();
        std::fs::write(data.path().join("client-key.pem"), "secret").unwrap();
        let record = UserRecord {
            available_slots: 9,
            subscription_start: 1,
            subscription_expiry: 99,
            number: 1,
            dialect: Default::default(),
        };
        let mut batch = store.batch();
        batch.put_user(&user(1), None, &record);
        batch.put_appointment(&user(1), &record, &stored(1), true);
        batch.set_tip(120, &BlockHash::from_raw_hash(bitcoin::hashes::Hash::from_byte_array([3; 32])));
        store.commit(batch).unwrap();

        let dir = elsewhere.path().join("backups/first");
        let backup = create(&store, data.path(), "regtest", &dir).unwrap();
        assert_eq!(backup.tip.map(|(h, _)| h), Some(120));
        assert_eq!(backup.files, vec!["ca.pem".to_string(), "client-key.pem".to_string()]);
        assert!(backup.size_bytes > 0);
        // Written after the backup: not in it.
        let mut batch = store.batch();
        batch.put_appointment(&user(1), &record, &stored(2), true);
        store.commit(batch).unwrap();

        let copy = Store::open(&dir.join(DB_DIR), 8).unwrap();
        assert_eq!(copy.user(&user(1)).unwrap(), Some(record));
        assert_eq!(copy.user_locators(&user(1)).unwrap(), vec![stored(1).appointment.locator]);
        assert_eq!(copy.tip().unwrap().map(|(h, _)| h), Some(120));
        assert_eq!(std::fs::read_to_string(dir.join("client-key.pem")).unwrap(), "secret");
        let info = std::fs::read_to_string(dir.join(INFO_FILE)).unwrap();
        assert!(info.contains("network regtest\ntip_height 120\n"), "{info}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(&dir.join("client-key.pem")), 0o600);
        }
        // The same directory again: refused, and the first backup is untouched.
        assert!(matches!(create(&store, data.path(), "regtest", &dir), Err(BackupError::NotEmpty(_))));
        assert_eq!(Store::open_read_only(&dir.join(DB_DIR)).unwrap().user_locators(&user(1)).unwrap().len(), 1);
    }

    #[test]
    fn targets_must_be_absolute_new_or_empty_and_outside_the_data_directory() {
        let data = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let check = |p: &Path| check_target(p, data.path());
        assert!(matches!(check(Path::new("backups/today")), Err(BackupError::NotAbsolute(_))));
        assert!(matches!(check(&other.path().join("a/../b")), Err(BackupError::ParentComponent(_))));
        assert!(matches!(check(&data.path().join("backup")), Err(BackupError::InsideDataDir { .. })));
        assert!(matches!(check(data.path()), Err(BackupError::InsideDataDir { .. })));
        assert!(check(other.path()).is_ok(), "an empty directory");
        assert!(check(&other.path().join("new/deeper")).is_ok(), "a new one");
        std::fs::write(other.path().join("file"), "x").unwrap();
        assert!(matches!(check(other.path()), Err(BackupError::NotEmpty(_))));
        assert!(matches!(check(&other.path().join("file")), Err(BackupError::NotEmpty(_))));
        assert!(matches!(
            create(&Store::in_memory(), data.path(), "regtest", &other.path().join("mem")),
            Err(BackupError::Store { .. })
        ));
    }
}
