//! The few commands of Tor's control protocol (Tor's `control-spec.txt`) that an onion service
//! needs: `PROTOCOLINFO`, `AUTHCHALLENGE`/`AUTHENTICATE`, `ADD_ONION`, `DEL_ONION`.
//!
//! It is a line protocol over TCP. A command is one line ending in CRLF. A reply is one or more
//! lines `<3-digit code><sep><text>`, where `sep` is `-` (more lines follow), `+` (a data block
//! follows, up to a line holding only `.`) or a space (the last line). Codes 2xx are success, 5xx
//! refusals, 6xx asynchronous events (never asked for here, skipped if they come).
//!
//! Nothing here logs or quotes what goes over the wire: commands carry the onion key or the
//! control password, and `ADD_ONION`'s reply carries a new key.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bitcoin::hashes::{hmac, sha256, Hash, HashEngine};
use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::OnionKey;
use crate::config::Secret;

/// Longest reply line accepted (Tor's are far shorter).
const MAX_LINE: u64 = 16 * 1024;
/// Most lines (data lines included) in one reply.
const MAX_REPLY_LINES: usize = 4096;
/// How long Tor has to accept the connection, and to answer each command.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

const SERVER_HASH_KEY: &[u8] = b"Tor safe cookie authentication server-to-controller hash";
const CLIENT_HASH_KEY: &[u8] = b"Tor safe cookie authentication controller-to-server hash";

/// What went wrong on the control connection. No variant holds a key or a password.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The control port did not accept the connection.
    #[error("cannot reach Tor's control port at {addr}: {source}")]
    Connect {
        /// The control port.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Reading or writing failed.
    #[error("the control connection failed: {0}")]
    Io(#[from] io::Error),
    /// Tor did not answer in time.
    #[error("Tor did not answer {0} within {REPLY_TIMEOUT:?}")]
    Timeout(&'static str),
    /// Tor closed the connection.
    #[error("Tor closed the control connection")]
    Closed,
    /// A reply that does not follow the protocol (what was wrong, never what was said).
    #[error("malformed reply from Tor: {0}")]
    Malformed(&'static str),
    /// Tor answered a command with an error.
    #[error("Tor refused {command}: {code} {message}")]
    Rejected {
        /// The command's verb.
        command: &'static str,
        /// Tor's status code (5xx).
        code: u16,
        /// Tor's message.
        message: String,
    },
    /// None of the authentication methods Tor offers can be used.
    #[error("cannot authenticate to Tor: {0}")]
    NoAuthMethod(String),
    /// Tor's authentication cookie could not be read.
    #[error("cannot read Tor's authentication cookie {path}: {source}")]
    Cookie {
        /// The cookie file Tor named.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The cookie file is not 32 bytes.
    #[error("Tor's authentication cookie {path} is {len} bytes, not 32")]
    CookieSize {
        /// The cookie file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// Tor's SAFECOOKIE answer does not prove that it knows the cookie.
    #[error("the control port's SAFECOOKIE answer does not match the cookie: is it the Tor meant?")]
    ServerHash,
}

impl ControlError {
    /// Whether trying again soon may help (Tor not up yet, restarting), as opposed to a setting
    /// or permission the operator must fix.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ControlError::Connect { .. } | ControlError::Io(_) | ControlError::Timeout(_) | ControlError::Closed
        )
    }
}

/// One reply: its status code and the text of its lines (a data block is appended to its line
/// after a `\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code (the same on every line).
    pub code: u16,
    /// Each line's text, after the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// The value of the first `key=value` line.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.lines.iter().find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
    }
}

/// What `PROTOCOLINFO` says about authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolInfo {
    /// `NULL`, `HASHEDPASSWORD`, `COOKIE`, `SAFECOOKIE`.
    pub methods: Vec<String>,
    /// Where the cookie is, when a cookie method is offered.
    pub cookie_file: Option<PathBuf>,
}

/// How the connection was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// The control port asks for nothing.
    Null,
    /// `HashedControlPassword`.
    Password,
    /// `CookieAuthentication`, with the challenge-response that proves both sides know it.
    SafeCookie,
    /// `CookieAuthentication`, the cookie sent as is.
    Cookie,
}

/// An onion service just added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedOnion {
    /// The address without `.onion` (56 base32 characters).
    pub service_id: String,
    /// The key Tor generated, when it was asked to.
    pub new_key: Option<OnionKey>,
}

/// An open control connection. Services it adds live as long as it does.
#[derive(Debug)]
pub struct ControlConnection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl ControlConnection {
    /// Connects to the control port.
    pub async fn connect(addr: SocketAddr) -> Result<ControlConnection, ControlError> {
        let stream = match tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(ControlError::Connect { addr, source }),
            Err(_) => return Err(ControlError::Timeout("the connection")),
        };
        let (read, writer) = stream.into_split();
        Ok(ControlConnection { reader: BufReader::new(read), writer })
    }

    /// Sends one command line and reads its reply; a non-2xx reply is [`ControlError::Rejected`].
    pub async fn command(&mut self, verb: &'static str, line: &str) -> Result<Reply, ControlError> {
        if line.contains(['\r', '\n']) {
            return Err(ControlError::Malformed("a command may not hold a line break"));
        }
        let exchange = async {
            self.writer.write_all(format!("{line}\r\n").as_bytes()).await?;
            self.read_reply().await
        };
        let reply = tokio::time::timeout(REPLY_TIMEOUT, exchange).await.map_err(|_| ControlError::Timeout(verb))??;
        if reply.code / 100 != 2 {
            let message = reply.lines.last().cloned().unwrap_or_default();
            return Err(ControlError::Rejected { command: verb, code: reply.code, message });
        }
        Ok(reply)
    }

    /// Reads the next reply, skipping asynchronous events.
    pub async fn read_reply(&mut self) -> Result<Reply, ControlError> {
        loop {
            let reply = self.read_one_reply().await?;
            if reply.code / 100 != 6 {
                return Ok(reply);
            }
        }
    }

    async fn read_one_reply(&mut self) -> Result<Reply, ControlError> {
        let mut code = None;
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            let (this_code, separator, text) = split_reply_line(&line)?;
            if code.is_some_and(|code| code != this_code) {
                return Err(ControlError::Malformed("status code changed within a reply"));
            }
            code = Some(this_code);
            match separator {
                b'+' => {
                    let data = self.read_data_block().await?;
                    lines.push(format!("{text}\n{data}"));
                }
                _ => lines.push(text.to_string()),
            }
            if lines.len() > MAX_REPLY_LINES {
                return Err(ControlError::Malformed("reply too long"));
            }
            if separator == b' ' {
                return Ok(Reply { code: this_code, lines });
            }
        }
    }

    /// The lines of a data block up to its `.` line, dot-unstuffed, joined with `\n`.
    async fn read_data_block(&mut self) -> Result<String, ControlError> {
        let mut data = Vec::new();
        loop {
            let line = self.read_line().await?;
            if line == "." {
                return Ok(data.join("\n"));
            }
            data.push(line.strip_prefix('.').map(str::to_string).unwrap_or(line));
            if data.len() > MAX_REPLY_LINES {
                return Err(ControlError::Malformed("data block too long"));
            }
        }
    }

    /// One line without its CRLF.
    async fn read_line(&mut self) -> Result<String, ControlError> {
        let mut buf = Vec::new();
        let read = (&mut self.reader).take(MAX_LINE).read_until(b'\n', &mut buf).await?;
        if read == 0 {
            return Err(ControlError::Closed);
        }
        if buf.pop() != Some(b'\n') {
            return Err(if read as u64 == MAX_LINE {
                ControlError::Malformed("line too long")
            } else {
                ControlError::Closed
            });
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        String::from_utf8(buf).map_err(|_| ControlError::Malformed("a line is not UTF-8"))
    }

    /// Waits until Tor closes the connection (or it fails), discarding anything it sends.
    pub async fn closed(&mut self) -> ControlError {
        loop {
            if let Err(e) = self.read_line().await {
                return e;
            }
        }
    }

    /// `PROTOCOLINFO 1`: the authentication methods on offer.
    pub async fn protocol_info(&mut self) -> Result<ProtocolInfo, ControlError> {
        let reply = self.command("PROTOCOLINFO", "PROTOCOLINFO 1").await?;
        parse_protocol_info(&reply)
    }

    /// Authenticates with the first usable method Tor offers: none needed, then the password
    /// (when one is configured and Tor takes one), then SAFECOOKIE, then COOKIE.
    pub async fn authenticate(&mut self, password: Option<&Secret>) -> Result<AuthMethod, ControlError> {
        let info = self.protocol_info().await?;
        let offers = |method: &str| info.methods.iter().any(|m| m == method);
        if offers("NULL") {
            self.command("AUTHENTICATE", "AUTHENTICATE").await?;
            return Ok(AuthMethod::Null);
        }
        if let (Some(password), true) = (password, offers("HASHEDPASSWORD")) {
            self.command("AUTHENTICATE", &format!("AUTHENTICATE {}", quote(password.expose()))).await?;
            return Ok(AuthMethod::Password);
        }
        if let (Some(path), true) = (&info.cookie_file, offers("SAFECOOKIE") || offers("COOKIE")) {
            let cookie = read_cookie(path).await?;
            if offers("SAFECOOKIE") {
                self.safe_cookie(&cookie).await?;
                return Ok(AuthMethod::SafeCookie);
            }
            self.command("AUTHENTICATE", &format!("AUTHENTICATE {}", hex::encode(cookie))).await?;
            return Ok(AuthMethod::Cookie);
        }
        let offered = info.methods.join(",");
        Err(ControlError::NoAuthMethod(if offers("HASHEDPASSWORD") && password.is_none() {
            format!("Tor offers {offered}: set tor_control_password (teos.toml or TEOS_TOR_CONTROL_PASSWORD)")
        } else {
            format!("Tor offers {offered}, none of which teosd can use")
        }))
    }

    /// SAFECOOKIE: both sides prove they know the cookie without sending it.
    async fn safe_cookie(&mut self, cookie: &[u8; 32]) -> Result<(), ControlError> {
        let mut client_nonce = [0u8; 32];
        OsRng.fill_bytes(&mut client_nonce);
        let line = format!("AUTHCHALLENGE SAFECOOKIE {}", hex::encode(client_nonce));
        let reply = self.command("AUTHCHALLENGE", &line).await?;
        let text = reply.lines.last().map(String::as_str).unwrap_or_default();
        let field = |key: &str| {
            text.split_whitespace().find_map(|token| token.strip_prefix(key)?.strip_prefix('='))?.parse_hex()
        };
        let (Some(server_hash), Some(server_nonce)) = (field("SERVERHASH"), field("SERVERNONCE")) else {
            return Err(ControlError::Malformed("AUTHCHALLENGE answer without SERVERHASH and SERVERNONCE"));
        };
        let message = [&cookie[..], &client_nonce, &server_nonce].concat();
        if !constant_time_eq(&safe_cookie_hash(SERVER_HASH_KEY, &message), &server_hash) {
            return Err(ControlError::ServerHash);
        }
        let client_hash = safe_cookie_hash(CLIENT_HASH_KEY, &message);
        self.command("AUTHENTICATE", &format!("AUTHENTICATE {}", hex::encode(client_hash))).await?;
        Ok(())
    }

    /// `ADD_ONION`: an onion service on `onion_port` forwarding to `target`, with `key` or a new
    /// key (returned). It lives as long as this connection.
    pub async fn add_onion(
        &mut self,
        key: Option<&OnionKey>,
        onion_port: u16,
        target: SocketAddr,
    ) -> Result<AddedOnion, ControlError> {
        let key_arg = match key {
            Some(key) => format!("ED25519-V3:{}", key.to_base64()),
            None => "NEW:ED25519-V3".to_string(),
        };
        let reply = self.command("ADD_ONION", &format!("ADD_ONION {key_arg} Port={onion_port},{target}")).await?;
        let service_id =
            reply.value("ServiceID").ok_or(ControlError::Malformed("ADD_ONION answer without ServiceID"))?;
        if !is_service_id(service_id) {
            return Err(ControlError::Malformed("ADD_ONION answer with a ServiceID that is no v3 onion address"));
        }
        let new_key = match key {
            Some(_) => None,
            None => {
                let blob = reply.value("PrivateKey").and_then(|v| v.strip_prefix("ED25519-V3:"));
                Some(
                    blob.and_then(OnionKey::from_base64)
                        .ok_or(ControlError::Malformed("ADD_ONION answer without a readable ED25519-V3 PrivateKey"))?,
                )
            }
        };
        Ok(AddedOnion { service_id: service_id.to_string(), new_key })
    }

    /// `DEL_ONION`: removes the service at once (closing the connection does the same).
    pub async fn del_onion(&mut self, service_id: &str) -> Result<(), ControlError> {
        self.command("DEL_ONION", &format!("DEL_ONION {service_id}")).await.map(|_| ())
    }
}

trait ParseHex {
    fn parse_hex(&self) -> Option<[u8; 32]>;
}

impl ParseHex for str {
    fn parse_hex(&self) -> Option<[u8; 32]> {
        hex::decode(self).ok()?.try_into().ok()
    }
}

fn safe_cookie_hash(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut engine = hmac::HmacEngine::<sha256::Hash>::new(key);
    engine.input(message);
    hmac::Hmac::<sha256::Hash>::from_engine(engine).to_byte_array()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

async fn read_cookie(path: &std::path::Path) -> Result<[u8; 32], ControlError> {
    let bytes =
        tokio::fs::read(path).await.map_err(|source| ControlError::Cookie { path: path.to_path_buf(), source })?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| ControlError::CookieSize { path: path.to_path_buf(), len })
}

/// `(code, separator, text)` of one reply line.
pub(crate) fn split_reply_line(line: &str) -> Result<(u16, u8, &str), ControlError> {
    let bytes = line.as_bytes();
    if bytes.len() < 4 || !bytes[..3].iter().all(u8::is_ascii_digit) {
        return Err(ControlError::Malformed("a line without a status code"));
    }
    let code = line[..3].parse().map_err(|_| ControlError::Malformed("a line without a status code"))?;
    match bytes[3] {
        separator @ (b' ' | b'-' | b'+') => Ok((code, separator, &line[4..])),
        _ => Err(ControlError::Malformed("a status code without a separator")),
    }
}

/// The `AUTH` line of a `PROTOCOLINFO` reply: `AUTH METHODS=A,B [COOKIEFILE="path"]`.
pub(crate) fn parse_protocol_info(reply: &Reply) -> Result<ProtocolInfo, ControlError> {
    let auth = reply
        .lines
        .iter()
        .find_map(|line| line.strip_prefix("AUTH "))
        .ok_or(ControlError::Malformed("PROTOCOLINFO answer without an AUTH line"))?;
    let mut info = ProtocolInfo { methods: Vec::new(), cookie_file: None };
    let mut rest = auth.trim_start();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').ok_or(ControlError::Malformed("AUTH line with a bare word"))?;
        let (value, after) = if after.starts_with('"') {
            unquote(after).ok_or(ControlError::Malformed("AUTH line with an unterminated string"))?
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        match key {
            "METHODS" => info.methods = value.split(',').filter(|m| !m.is_empty()).map(str::to_string).collect(),
            "COOKIEFILE" => info.cookie_file = Some(PathBuf::from(value)),
            _ => {}
        }
        rest = after.trim_start();
    }
    Ok(info)
}

/// A control-protocol quoted string at the start of `text` (which begins with `"`): its value
/// and what follows the closing quote.
pub(crate) fn unquote(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 1..])),
            '\\' => value.push(match chars.next()?.1 {
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                other => other,
            }),
            c => value.push(c),
        }
    }
    None
}

/// `value` as a control-protocol quoted string.
pub(crate) fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// 56 characters of lowercase base32: a v3 onion address without `.onion`.
pub(crate) fn is_service_id(id: &str) -> bool {
    id.len() == 56 && id.bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}
