//! A real `tor` daemon for the onion service tests, kept offline: `DisableNetwork 1` (it makes
//! no connection and publishes no descriptor, but its control port answers `ADD_ONION` all the
//! same), no SOCKS port, a control port on loopback and a scratch data directory.
//!
//! The binary is `TOR_EXE` if set, else `tor` on the `PATH` or in `/usr/sbin`/`/usr/bin`
//! (Debian's `tor` package, which `scripts/env.sh` installs). Without one, [`TorProcess::start`]
//! fails: these tests are meant to run, in CI too.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `tor` has to open its control port.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How the control port lets controllers in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TorAuth {
    /// `CookieAuthentication 1`: the cookie in `<datadir>/control_auth_cookie`.
    Cookie,
    /// `HashedControlPassword` of this password.
    Password(String),
    /// Nothing asked.
    Null,
}

/// Why `tor` could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TorError {
    /// No binary found.
    #[error("no tor binary: install Debian's `tor` package (scripts/env.sh does) or set TOR_EXE")]
    NotInstalled,
    /// Running it failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// It exited or never opened the control port.
    #[error("tor did not open its control port: {0}")]
    NotReady(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TorError {
    let context = context.into();
    move |source| TorError::Io { context, source }
}

/// The `tor` binary to run, if there is one.
pub fn tor_exe() -> Option<PathBuf> {
    if let Some(exe) = std::env::var_os("TOR_EXE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(exe)).filter(|exe| exe.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("tor"))
        .find(|candidate| candidate.is_file())
}

/// A running `tor`; killed when dropped.
#[derive(Debug)]
pub struct TorProcess {
    child: Option<Child>,
    exe: PathBuf,
    /// Its data directory (the cookie is `control_auth_cookie` there).
    pub data_dir: PathBuf,
    /// Its control port on 127.0.0.1.
    pub control_port: u16,
    auth: TorAuth,
}

impl TorProcess {
    /// Starts `tor` with `data_dir` (created) and its control port on `control_port`; returns
    /// once the port is open.
    pub fn start(data_dir: &Path, control_port: u16, auth: TorAuth) -> Result<TorProcess, TorError> {
        let exe = tor_exe().ok_or(TorError::NotInstalled)?;
        let mut tor = TorProcess { child: None, exe, data_dir: data_dir.to_path_buf(), control_port, auth };
        tor.spawn()?;
        Ok(tor)
    }

    /// Kills it (as a crash would); [`TorProcess::restart`] brings it back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same data directory, port and authentication.
    pub fn restart(&mut self) -> Result<(), TorError> {
        self.kill();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), TorError> {
        std::fs::create_dir_all(&self.data_dir).map_err(io("creating tor's data directory"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io("restricting tor's data directory"))?;
        }
        let ready_file = self.data_dir.join("control_port");
        let _ = std::fs::remove_file(&ready_file);
        let log = self.data_dir.join("tor.log");
        let torrc = self.data_dir.join("torrc");
        let mut config = format!(
            "DataDirectory {}\nDisableNetwork 1\nSocksPort 0\nControlPort 127.0.0.1:{}\n\
             ControlPortWriteToFile {}\nLog notice file {}\nAvoidDiskWrites 1\n",
            self.data_dir.display(),
            self.control_port,
            ready_file.display(),
            log.display()
        );
        match &self.auth {
            TorAuth::Cookie => config.push_str("CookieAuthentication 1\n"),
            TorAuth::Password(password) => {
                config.push_str(&format!("HashedControlPassword {}\n", self.hash_password(password)?))
            }
            TorAuth::Null => {}
        }
        std::fs::write(&torrc, config).map_err(io("writing torrc"))?;
        let child = Command::new(&self.exe)
            .arg("-f")
            .arg(&torrc)
            .args(["--defaults-torrc", "/dev/null"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io(format!("running {}", self.exe.display())))?;
        self.child = Some(child);
        // Inside a multi-threaded tokio runtime, the other workers keep running meanwhile (the
        // in-process regtest node keeps serving).
        if tokio::runtime::Handle::try_current().is_ok() {
            return tokio::task::block_in_place(|| self.wait_until_ready(&ready_file, &log));
        }
        self.wait_until_ready(&ready_file, &log)
    }

    /// Waits for the file tor writes once its control port listens.
    fn wait_until_ready(&mut self, ready_file: &Path, log: &Path) -> Result<(), TorError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let expected = format!("PORT=127.0.0.1:{}", self.control_port);
        loop {
            if std::fs::read_to_string(ready_file).is_ok_and(|text| text.contains(&expected)) {
                return Ok(());
            }
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                let why = exited.map_or("timed out".to_string(), |status| format!("exited: {status}"));
                return Err(TorError::NotReady(format!("{why}; log:\n{log}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `tor --hash-password`.
    fn hash_password(&self, password: &str) -> Result<String, TorError> {
        let out = Command::new(&self.exe)
            .args(["--quiet", "--hash-password", password])
            .stdin(Stdio::null())
            .output()
            .map_err(io("tor --hash-password"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .map(str::trim)
            .find(|line| line.starts_with("16:"))
            .map(str::to_string)
            .ok_or_else(|| TorError::NotReady(format!("tor --hash-password printed no hash: {text}")))
    }
}

impl Drop for TorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
