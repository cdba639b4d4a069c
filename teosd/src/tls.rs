//! The admin API's mutual-TLS material, in the data directory's root (the reference tower's file
//! names): a CA (`ca.pem`, `ca-key.pem`), the server's certificate (`server.pem`,
//! `server-key.pem`) and the one client certificate teos-cli uses (`client.pem`,
//! `client-key.pem`), all ECDSA P-256, with the SANs `localhost`, `127.0.0.1` and `teos`.
//!
//! On first start everything is created; afterwards existing files are reused. A pair with a
//! missing file is created again (and if that is the CA, the two certificates it issued too, since
//! they would no longer chain to it). Private keys are written with mode 0600, through a temporary
//! file renamed into place. A file that cannot be read or parsed is an error naming it; nothing
//! that exists is ever silently replaced.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// The names the certificates are valid for; teos-cli connects with the TLS name `localhost`.
pub const SUBJECT_ALT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "teos"];

/// One certificate and its key, as two files in the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairFiles {
    /// The certificate (PEM).
    pub cert: &'static str,
    /// The private key (PKCS#8 PEM), mode 0600.
    pub key: &'static str,
}

/// The CA that issues the server's and the client's certificates.
pub const CA: PairFiles = PairFiles { cert: "ca.pem", key: "ca-key.pem" };
/// The admin server's certificate.
pub const SERVER: PairFiles = PairFiles { cert: "server.pem", key: "server-key.pem" };
/// The client certificate teos-cli presents (copy it, its key and `ca.pem` to run the CLI
/// elsewhere).
pub const CLIENT: PairFiles = PairFiles { cert: "client.pem", key: "client-key.pem" };

/// Why the TLS material could not be loaded or created. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error(
        "{path} is not a valid {what} ({reason}); restore it from a backup, or delete the {pair} pair \
         to have teosd create a new one"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
        /// The parser's complaint.
        reason: String,
        /// The pair's certificate file name.
        pair: &'static str,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Key or certificate generation failed.
    #[error("cannot create the {what}: {source}")]
    Generate {
        /// What was being created.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
}

/// What the admin server needs: the CA that client certificates must chain to, and its own
/// certificate and key. The key never shows in `Debug`.
#[derive(Clone)]
pub struct TlsMaterial {
    /// `ca.pem`.
    pub ca_cert: String,
    /// `server.pem`.
    pub server_cert: String,
    server_key: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").field("server_key", &"****").finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// The server's TLS settings: present `server.pem`, and require a client certificate issued
    /// by the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.server_cert, &self.server_key))
            .client_ca_root(Certificate::from_pem(&self.ca_cert))
    }
}

/// Loads the TLS material from `dir`, creating what is missing. Blocking (file I/O).
pub fn load_or_create(dir: &Path) -> Result<TlsMaterial, TlsError> {
    let (ca_cert, ca, ca_created) = match read_pair(dir, CA)? {
        Some((cert, key)) => {
            let issuer =
                Issuer::from_ca_cert_pem(&cert, key).map_err(|e| corrupt(dir, CA, CA.cert, "certificate", e))?;
            (cert, issuer, false)
        }
        None => {
            let (cert, issuer) = create_ca(dir)?;
            (cert, issuer, true)
        }
    };
    let (server_cert, server_key) = load_or_issue(dir, SERVER, &ca, ca_created)?;
    load_or_issue(dir, CLIENT, &ca, ca_created)?;
    Ok(TlsMaterial { ca_cert, server_cert, server_key })
}

fn corrupt(dir: &Path, pair: PairFiles, file: &str, what: &'static str, reason: impl ToString) -> TlsError {
    TlsError::Corrupt { path: dir.join(file), what, reason: reason.to_string(), pair: pair.cert }
}

/// Both files of a pair, or `None` if either is missing (logged).
fn read_pair(dir: &Path, pair: PairFiles) -> Result<Option<(String, KeyPair)>, TlsError> {
    let (Some(cert), Some(key)) = (read_optional(&dir.join(pair.cert))?, read_optional(&dir.join(pair.key))?) else {
        return Ok(None);
    };
    warn_if_readable_by_others(&dir.join(pair.key));
    let key = KeyPair::from_pem(&key).map_err(|e| corrupt(dir, pair, pair.key, "private key", e))?;
    Ok(Some((cert, key)))
}

fn read_optional(path: &Path) -> Result<Option<String>, TlsError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Read { path: path.to_path_buf(), source }),
    }
}

fn create_ca(dir: &Path) -> Result<(String, Issuer<'static, KeyPair>), TlsError> {
    let generate = |source| TlsError::Generate { what: "admin API CA", source };
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    params.distinguished_name.push(DnType::CommonName, "teos Root CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).map_err(generate)?.pem();
    write_pair(dir, CA, &cert, &key.serialize_pem())?;
    tracing::info!(dir = %dir.display(), "created the admin API's certificate authority (ca.pem)");
    Ok((cert, Issuer::new(params, key)))
}

/// Loads a pair issued by `ca`, or issues it if a file is missing or the CA is new.
fn load_or_issue(
    dir: &Path,
    pair: PairFiles,
    ca: &Issuer<'_, KeyPair>,
    ca_created: bool,
) -> Result<(String, String), TlsError> {
    if !ca_created {
        if let Some((cert, key)) = read_pair(dir, pair)? {
            // Parsing it as an issuer checks that it is a well-formed X.509 certificate.
            Issuer::from_ca_cert_pem(&cert, &key).map_err(|e| corrupt(dir, pair, pair.cert, "certificate", e))?;
            return Ok((cert, key.serialize_pem()));
        }
    }
    let (what, name, usage) = if pair == SERVER {
        ("admin API server certificate", "teos grpc Server", ExtendedKeyUsagePurpose::ServerAuth)
    } else {
        ("admin API client certificate", "teos grpc Client", ExtendedKeyUsagePurpose::ClientAuth)
    };
    let generate = |source| TlsError::Generate { what, source };
    let key = KeyPair::generate().map_err(generate)?;
    let names: Vec<String> = SUBJECT_ALT_NAMES.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).map_err(generate)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, ca).map_err(generate)?.pem();
    let key = key.serialize_pem();
    write_pair(dir, pair, &cert, &key)?;
    tracing::info!(dir = %dir.display(), file = pair.cert, "created the {what}");
    Ok((cert, key))
}

fn write_pair(dir: &Path, pair: PairFiles, cert: &str, key: &str) -> Result<(), TlsError> {
    write_file(&dir.join(pair.key), key, 0o600)?;
    write_file(&dir.join(pair.cert), cert, 0o644)
}

/// Writes through `<path>.tmp`, renamed into place, so a crash never leaves half a file.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    let failed = |source| TlsError::Write { path: path.to_path_buf(), source };
    let tmp = path.with_extension("pem.tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(failed)?;
    file.write_all(contents.as_bytes()).and_then(|()| file.sync_all()).map_err(failed)?;
    drop(file);
    fs::rename(&tmp, path).map_err(failed)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "private key is readable by other users: chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const ALL: [&str; 6] = ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem"];

    fn contents(dir: &Path) -> Vec<String> {
        ALL.iter().map(|f| fs::read_to_string(dir.join(f)).unwrap()).collect()
    }

    #[test]
    fn first_start_creates_every_file_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let material = load_or_create(dir.path()).unwrap();
        for file in ALL {
            let mode = fs::metadata(dir.path().join(file)).unwrap().permissions().mode() & 0o777;
            let expected = if file.ends_with("-key.pem") { 0o600 } else { 0o644 };
            assert_eq!(mode, expected, "{file}");
        }
        assert_eq!(material.ca_cert, fs::read_to_string(dir.path().join("ca.pem")).unwrap());
        assert_eq!(material.server_cert, fs::read_to_string(dir.path().join("server.pem")).unwrap());
        assert!(!format!("{material:?}").contains("PRIVATE KEY"));
        assert!(fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
    }

    #[test]
    fn existing_files_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let before = contents(dir.path());
        let material = load_or_create(dir.path()).unwrap();
        assert_eq!(contents(dir.path()), before);
        assert_eq!(material.server_cert, before[2]);
    }

    #[test]
    fn a_missing_leaf_is_issued_again_by_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let before = contents(dir.path());
        fs::remove_file(dir.path().join("client-key.pem")).unwrap();
        load_or_create(dir.path()).unwrap();
        let after = contents(dir.path());
        assert_eq!(after[..4], before[..4], "CA and server untouched");
        assert_ne!(after[4], before[4], "client certificate issued again");
    }

    #[test]
    fn a_missing_ca_key_recreates_the_ca_and_everything_it_issued() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let before = contents(dir.path());
        fs::remove_file(dir.path().join("ca-key.pem")).unwrap();
        load_or_create(dir.path()).unwrap();
        let after = contents(dir.path());
        for i in 0..6 {
            assert_ne!(after[i], before[i], "{}", ALL[i]);
        }
    }

    #[test]
    fn corrupt_files_are_named_in_the_error_and_left_alone() {
        for (file, what) in [("ca-key.pem", "private key"), ("ca.pem", "certificate"), ("server.pem", "certificate")] {
            let dir = tempfile::tempdir().unwrap();
            load_or_create(dir.path()).unwrap();
            fs::write(dir.path().join(file), "garbage").unwrap();
            let err = load_or_create(dir.path()).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, TlsError::Corrupt { .. }), "{text}");
            assert!(text.contains(file) && text.contains(what), "{text}");
            assert_eq!(fs::read_to_string(dir.path().join(file)).unwrap(), "garbage");
        }
    }

    #[test]
    fn an_unreadable_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        // A directory where a file should be cannot be read as one, even by root.
        fs::remove_file(dir.path().join("server.pem")).unwrap();
        fs::create_dir(dir.path().join("server.pem")).unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("server.pem"), "{err}");
    }
}
