//! Reaching a broker: `mqtt://` and `mqtts://` URLs, TLS with a private CA and client
//! certificates (rustls, with ring as the one crypto provider), and turning connection
//! failures into sentences that name the reason.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The port of `mqtt://` when a URL names none.
pub const DEFAULT_PORT: u16 = 1883;
/// The port of `mqtts://` when a URL names none.
pub const DEFAULT_TLS_PORT: u16 = 8883;

/// Where a broker listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    /// `mqtts://`
    pub tls: bool,
}

/// Why a broker URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is not a broker URL; write mqtt://HOST[:PORT] or mqtts://HOST[:PORT], e.g. mqtts://broker.lan")]
    Scheme(String),
    #[error("{0:?} names no host")]
    NoHost(String),
    #[error("{0:?} has an invalid port (1-65535)")]
    Port(String),
    #[error("{0:?}: paths, users and queries do not belong in a broker URL (a login goes in username and password_file)")]
    Extra(String),
}

impl BrokerUrl {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]` (TLS, port 8883 by default); IPv6
    /// hosts go in brackets.
    ///
    /// ```
    /// use respawn_common::mqtt::BrokerUrl;
    /// let url = BrokerUrl::parse("mqtt://door-pi.local").unwrap();
    /// assert_eq!((url.host.as_str(), url.port, url.tls), ("door-pi.local", 1883, false));
    /// let url = BrokerUrl::parse("mqtts://[::1]").unwrap();
    /// assert_eq!((url.host.as_str(), url.port, url.tls), ("::1", 8883, true));
    /// assert!(BrokerUrl::parse("http://x").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        // A refusal goes to logs: a password in the URL is not said again there.
        let shown = without_login(text);
        let text = shown.as_str();
        let (rest, tls) = if let Some(rest) = text.strip_prefix("mqtt://") {
            (rest, false)
        } else if let Some(rest) = text.strip_prefix("mqtts://") {
            (rest, true)
        } else {
            return Err(UrlError::Scheme(text.to_owned()));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(UrlError::Extra(text.to_owned()));
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| UrlError::NoHost(text.to_owned()))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| UrlError::Port(text.to_owned()))?,
                    ),
                ),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(text.to_owned()));
        }
        let port = match port {
            None if tls => DEFAULT_TLS_PORT,
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| UrlError::Port(text.to_owned()))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// `text` with what stands before an `@` after its scheme (a login) said as `…`.
fn without_login(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), text),
    };
    match rest.rsplit_once('@') {
        Some((_, after)) => format!("{scheme}…@{after}"),
        None => text.to_owned(),
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// The files TLS needs: a CA to trust (else the system's), and for mutual TLS a client
/// certificate and its key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, String),
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{0} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    #[error("a client certificate needs both cert_file and key_file")]
    Incomplete,
    #[error("no trusted CA certificates: set ca_file, or install the system's (ca-certificates)")]
    NoRoots,
    #[error("the client certificate and key do not work together: {0}")]
    ClientAuth(String),
    #[error("TLS set-up failed: {0}")]
    Other(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    let text = crate::config_file::read_text(path);
    text.map(String::into_bytes)
        .map_err(|e| TlsError::Read(path.to_owned(), e.to_string()))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey(path.to_owned()))
}

/// The CAs to trust: those of `ca_file`, else the system's.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(ca) => {
            let (added, _) = roots.add_parsable_certificates(certificates(ca)?);
            if added == 0 {
                return Err(TlsError::NoCertificate(ca.to_owned()));
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(TlsError::NoRoots);
            }
        }
    }
    Ok(roots)
}

/// A client configuration that trusts `roots` and shows `identity` (a certificate chain and
/// its key) when it has one.
fn client_config(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TlsError> {
    // An explicit provider: the process-wide default would panic if two were linked.
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Other(e.to_string()))?
            .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::ClientAuth(mismatch_words(e))),
    }
}

/// The client certificate and its key of `files`, if it names them (both or neither).
fn identity(
    files: &TlsFiles,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsError> {
    match (&files.cert_file, &files.key_file) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some((certificates(cert)?, private_key(key)?))),
        _ => Err(TlsError::Incomplete),
    }
}

/// Builds the TLS client configuration from `files`, reading and checking every file now so
/// that a mistake shows at start-up (or in `check`), not at the first connection.
pub fn tls_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = roots(files.ca_file.as_deref())?;
    Ok(Arc::new(client_config(roots, identity(files)?)?))
}

/// The key of [`TlsFiles`] in a configuration file that a problem is with; `None` for the
/// files as a whole.
pub type TlsKey = Option<&'static str>;

/// Every problem with `files` at once, each with the key of the file it is with: the CAs to
/// trust, and each file of the client's certificate on its own, then whether its key is the
/// certificate's, whatever is wrong with the CAs (a key that is not the certificate's is said
/// beside a CA file that is missing, not after it is back).
pub fn tls_problems(files: &TlsFiles) -> Vec<(TlsKey, TlsError)> {
    let mut problems = Vec::new();
    if let Err(e) = roots(files.ca_file.as_deref()) {
        problems.push((files.ca_file.as_ref().map(|_| "ca_file"), e));
    }
    let (cert, key) = (&files.cert_file, &files.key_file);
    let chain = cert.as_deref().map(certificates);
    let key_der = key.as_deref().map(private_key);
    match (chain, key_der) {
        (Some(Ok(chain)), Some(Ok(key_der))) => {
            // Checked without roots: only whether the two work together.
            if let Err(e) = client_config(RootCertStore::empty(), Some((chain, key_der))) {
                problems.push((Some("key_file"), e));
            }
        }
        (chain, key_der) => {
            if let Some(Err(e)) = chain {
                problems.push((Some("cert_file"), e));
            }
            if let Some(Err(e)) = key_der {
                problems.push((Some("key_file"), e));
            }
            if cert.is_some() != key.is_some() {
                problems.push((None, TlsError::Incomplete));
            }
        }
    }
    problems
}

/// Why a certificate and a key were refused together, in words (rustls says
/// "keys may not be consistent: KeyMismatch").
fn mismatch_words(e: rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            "the key is not the certificate's (its public key is another)".to_owned()
        }
        other => other.to_string(),
    }
}

/// A TLS server configuration from a certificate chain and its private key (PEM), for the
/// hub's web pages.
pub fn server_tls_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key_der) = (certificates(cert)?, private_key(key)?);
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Other(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| {
                let why = mismatch_words(e);
                TlsError::Other(format!(
                    "the certificate and key do not work together: {why}"
                ))
            })?;
    Ok(Arc::new(config))
}

/// The broker password, alone in a file read by `read` (a trailing newline is ignored).
pub fn read_password(
    path: &Path,
    read: impl Fn(&Path) -> std::io::Result<String>,
) -> Result<String, String> {
    let text =
        read(path).map_err(|e| format!("cannot read the password file {}: {e}", path.display()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    match password.is_empty() {
        true => Err(format!("the password file {} is empty", path.display())),
        false => Ok(password.to_owned()),
    }
}

/// Whether `host` can be checked against a certificate (a DNS name or an IP address).
pub fn valid_server_name(host: &str) -> bool {
    ServerName::try_from(host.to_owned()).is_ok()
}

/// The rumqttc transport for `url`: TLS set up from `files` for `mqtts://` (an error, never
/// a quiet fallback to plain TCP, when that fails), plain TCP for `mqtt://`.
pub fn transport(url: &BrokerUrl, files: &TlsFiles) -> Result<rumqttc::Transport, TlsError> {
    if !url.tls {
        return Ok(rumqttc::Transport::tcp());
    }
    let config = tls_config(files)?;
    Ok(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(config),
    ))
}

/// Whether the broker granted a subscription (a SUBACK's code for one filter).
pub fn granted(code: &rumqttc::v5::mqttbytes::v5::SubscribeReasonCode) -> bool {
    matches!(
        code,
        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
    )
}

/// Who a refused client tried to log in as, to follow "refused the connection": a refusal
/// of the wrong user, or of none, reads differently from one of a wrong password.
pub fn login_words(options: &rumqttc::v5::MqttOptions) -> String {
    match options.credentials() {
        Some(login) if login.password.is_empty() => {
            format!(" as {:?}, with no password", login.username)
        }
        Some(login) => format!(" as {:?}", login.username),
        None => " without a username".to_owned(),
    }
}

/// Why a broker refused a connection, in words. Mosquitto answers `not authorized` to a
/// missing or mistyped username or password too, not only to a client its ACL shuts out.
pub fn refusal(code: rumqttc::v5::mqttbytes::v5::ConnectReturnCode) -> String {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as Code;
    let words = match code {
        Code::BadUserNamePassword => "bad username or password",
        Code::NotAuthorized => {
            "not authorized (Mosquitto also answers this to a missing or mistyped username or password)"
        }
        Code::Banned => "banned",
        Code::BadClientId | Code::ClientIdentifierNotValid => "client id not accepted",
        Code::QuotaExceeded => "quota exceeded (too many sessions or connections)",
        Code::ServerBusy | Code::ServerUnavailable | Code::ServiceUnavailable => {
            "the broker is busy or unavailable"
        }
        Code::UnsupportedProtocolVersion | Code::RefusedProtocolVersion => {
            "it does not speak MQTT 5"
        }
        Code::PacketTooLarge => "packet too large",
        other => return format!("{other:?}"),
    };
    words.to_owned()
}

/// A connection failure to `broker` in words, naming certificate problems plainly; `first`:
/// no connection to it has worked yet (a hang-up then may be a TLS port).
pub fn describe(
    error: &(dyn std::error::Error + 'static),
    broker: &BrokerUrl,
    first: bool,
) -> String {
    let host = broker.host.as_str();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut cut_off = false;
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return describe_tls(tls, host);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return describe_tls(tls, host);
            }
            cut_off |= hung_up(io);
        }
        current = e.source();
    }
    // rumqttc keeps the I/O error of a packet it could not read out of the source chain.
    use rumqttc::v5::{mqttbytes::Error as Packet, ConnectionError, StateError};
    match error.downcast_ref::<ConnectionError>() {
        Some(ConnectionError::MqttState(StateError::Deserialization(Packet::Io(io)))) => {
            cut_off |= hung_up(io);
        }
        // What answered is no MQTT 5 broker (an HTTP server, an MQTT 3 one, …).
        Some(ConnectionError::MqttState(StateError::Deserialization(_))) if first => {
            return format!("{error} (is this an MQTT 5 broker?)");
        }
        Some(ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. })) => {
            use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode as Reason;
            return match reason_code {
                Reason::ServerShuttingDown => "the broker shut down".to_owned(),
                Reason::SessionTakenOver => {
                    "another client connected with this client id".to_owned()
                }
                other => format!("the broker ended the connection ({other:?})"),
            };
        }
        Some(ConnectionError::MqttState(StateError::ConnectionAborted)) => cut_off = true,
        Some(ConnectionError::MqttState(StateError::AwaitPingResp)) => {
            return "the broker stopped answering (no reply to a keep-alive ping)".to_owned();
        }
        _ => {}
    }
    // A TLS listener hangs up on an MQTT CONNECT in the clear.
    if cut_off && first && !broker.tls {
        return format!(
            "{error} (if this port takes TLS, the url is mqtts://{host}:{})",
            broker.port
        );
    }
    // A plain one hangs up on a TLS greeting: in the handshake, where a broker that refuses
    // the client's certificate or is at its connection limit may cut it too.
    let in_handshake = matches!(
        error.downcast_ref::<ConnectionError>(),
        Some(ConnectionError::Tls(rumqttc::TlsError::Io(_)))
    );
    if cut_off && first && in_handshake {
        return format!(
            "{error} (cut off in the TLS handshake: if this port is plain MQTT, without TLS, the url is mqtt://{host}:{}; else the broker may refuse this client's certificate, or be at its connection limit)",
            broker.port
        );
    }
    // Under TLS 1.3 the broker's verdict on the client certificate arrives with the first
    // read, and rumqttc passes it on as text.
    let text = error.to_string();
    if let Some(alert) = text.split("received fatal alert: ").nth(1) {
        let alert = alert.split_whitespace().next().unwrap_or_default();
        if CERTIFICATE_ALERTS.contains(&alert) {
            return format!("the broker refused this client's certificate ({alert})");
        }
    }
    // rumqttc's words for it ("Mqtt state: Connection closed by peer abruptly") are its own.
    match cut_off {
        true => "the broker hung up (it stopped or restarted, or the network cut the connection)"
            .to_owned(),
        false => text,
    }
}

/// Whether the other side hung up: reset, closed in the middle of a packet, or closed before
/// a write (a broker that dropped a connection silent for too long: a stopped process that
/// resumes writes into a broken pipe).
fn hung_up(io: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
    matches!(io.kind(), BrokenPipe | ConnectionReset | UnexpectedEof)
}

/// How long the connections lasted, as far as it tells a client id taken over: Mosquitto
/// closes the older of two connections with one client id without a word (no DISCONNECT with
/// "session taken over"), and two clients of one id (a second alerter beside the service, two
/// Pis both named `raspberrypi` and so one agent id) take turns for ever, each told only that
/// the broker hung up.
#[derive(Debug, Default)]
pub struct ShortLives {
    in_a_row: u32,
}

/// A connection closed this soon after it opened is short-lived.
const SHORT_LIVED: std::time::Duration = std::time::Duration::from_secs(5);

/// Short-lived connections in a row that look like a client id taken over.
const TAKEN_OVER_AFTER: u32 = 3;

impl ShortLives {
    /// How many connections in a row ended within seconds of opening, the one that `lasted`
    /// this long included, once they are enough to look like another client of this client
    /// id. (A failed attempt to connect is no connection: it is not counted.)
    pub fn ended(&mut self, lasted: std::time::Duration) -> Option<u32> {
        self.in_a_row = match lasted < SHORT_LIVED {
            true => self.in_a_row + 1,
            false => 0,
        };
        (self.in_a_row >= TAKEN_OVER_AFTER).then_some(self.in_a_row)
    }
}

/// The TLS alerts a broker sends about a client certificate, as rustls names them.
const CERTIFICATE_ALERTS: &[&str] = &[
    "BadCertificate",
    "UnknownCA",
    "CertificateExpired",
    "CertificateRevoked",
    "CertificateUnknown",
    "CertificateRequired",
    "AccessDenied",
    "UnsupportedCertificate",
];

fn describe_tls(error: &rustls::Error, host: &str) -> String {
    use rustls::{CertificateError as Cert, Error as E};
    match error {
        // A CA with the same name as the issuer but another key is still the wrong CA.
        E::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
            "the broker's certificate is not signed by a trusted CA (check ca_file)".into()
        }
        E::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
            "the broker's certificate has expired".into()
        }
        E::InvalidCertificate(Cert::NotValidYet | Cert::NotValidYetContext { .. }) => {
            "the broker's certificate is not valid yet (is this machine's clock right?)".into()
        }
        E::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            format!("the broker's certificate is not valid for {host:?}")
        }
        E::InvalidCertificate(other) => format!("the broker's certificate is not valid: {other:?}"),
        E::AlertReceived(alert) if CERTIFICATE_ALERTS.contains(&format!("{alert:?}").as_str()) => {
            format!("the broker refused this client's certificate ({alert:?})")
        }
        other => format!("TLS: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_that_says_it_goes_is_told_apart_from_a_cut() {
        use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode as Reason;
        use rumqttc::v5::{ConnectionError, StateError};
        let broker = BrokerUrl::parse("mqtt://pi:1883").unwrap();
        let said = |reason_code| {
            let error = ConnectionError::MqttState(StateError::ServerDisconnect {
                reason_code,
                reason_string: None,
            });
            describe(&error, &broker, false)
        };
        assert_eq!(said(Reason::ServerShuttingDown), "the broker shut down");
        assert_eq!(
            said(Reason::KeepAliveTimeout),
            "the broker ended the connection (KeepAliveTimeout)"
        );
    }

    #[test]
    fn a_refusal_says_why_and_names_a_code_it_has_no_words_for() {
        use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as Code;
        assert!(refusal(Code::NotAuthorized).contains("username or password"));
        assert_eq!(
            refusal(Code::QuotaExceeded),
            "quota exceeded (too many sessions or connections)"
        );
        assert_eq!(refusal(Code::UseAnotherServer), "UseAnotherServer");
    }

    #[test]
    fn urls_parse_and_print_back() {
        for (text, host, port) in [
            ("mqtt://broker", "broker", 1883),
            ("mqtt://10.0.0.2:1884/", "10.0.0.2", 1884),
            ("mqtt://[fe80::1]", "fe80::1", 1883),
        ] {
            let url = BrokerUrl::parse(text).unwrap();
            assert_eq!((url.host.as_str(), url.port), (host, port), "{text}");
            assert_eq!(BrokerUrl::parse(&url.to_string()).unwrap(), url);
        }
    }

    #[test]
    fn certificate_problems_are_named() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        );
        let b = BrokerUrl::parse("mqtts://b").unwrap();
        assert_eq!(
            describe(&io, &b, true),
            "the broker's certificate has expired"
        );
        let text = std::io::Error::other("IO: received fatal alert: CertificateRequired");
        assert_eq!(
            describe(&text, &b, true),
            "the broker refused this client's certificate (CertificateRequired)"
        );
        let other = std::io::Error::other("connection refused");
        assert_eq!(describe(&other, &b, true), "connection refused");
    }

    #[test]
    fn a_plain_connection_cut_off_asks_whether_the_port_takes_tls() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let plain = BrokerUrl::parse("mqtt://broker.lan:8883").unwrap();
        assert!(
            describe(&reset, &plain, true)
                .ends_with("(if this port takes TLS, the url is mqtts://broker.lan:8883)"),
            "{}",
            describe(&reset, &plain, true)
        );
        assert!(
            !describe(&reset, &plain, false).contains("mqtts://"),
            "a broker that worked and went away is no TLS port"
        );
        // And a plain listener hangs up on a TLS greeting, in the handshake; a hang-up after
        // it (a broker restarting as it is reached) is no sign of that.
        let tls = BrokerUrl::parse("mqtts://broker.lan:1883").unwrap();
        let eof = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        let in_handshake = rumqttc::v5::ConnectionError::Tls(rumqttc::TlsError::Io(eof()));
        assert!(
            describe(&in_handshake, &tls, true).contains(
                "(cut off in the TLS handshake: if this port is plain MQTT, without TLS, the url is mqtt://broker.lan:1883;"
            ),
            "{}",
            describe(&in_handshake, &tls, true)
        );
        assert!(!describe(&eof(), &tls, true).contains("mqtt://"));
        // rumqttc's own words for the cut are not passed on.
        let aborted =
            rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ConnectionAborted);
        let broken_pipe =
            rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::Deserialization(
                rumqttc::v5::mqttbytes::Error::Io(std::io::ErrorKind::BrokenPipe.into()),
            ));
        for cut in [
            &reset as &(dyn std::error::Error + 'static),
            &aborted,
            &broken_pipe,
        ] {
            assert!(
                describe(cut, &plain, false).starts_with("the broker hung up"),
                "{}",
                describe(cut, &plain, false)
            );
        }
        let tls = BrokerUrl::parse("mqtts://broker.lan:8883").unwrap();
        assert!(!describe(&reset, &tls, true).contains("mqtts://"));
        let garbage =
            rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::Deserialization(
                rumqttc::v5::mqttbytes::Error::InvalidPropertyType(46),
            ));
        assert!(describe(&garbage, &plain, true).ends_with("(is this an MQTT 5 broker?)"));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        assert!(matches!(
            BrokerUrl::parse("broker:1883"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("tcp://b"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://"),
            Err(UrlError::NoHost(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://b:0"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://b:99999"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://b:x"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://u@b"),
            Err(UrlError::Extra(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://b/topic"),
            Err(UrlError::Extra(_))
        ));
        // Found by a review: the refusal, which goes to logs, said the password again.
        let refused = BrokerUrl::parse("mqtt://alice:SECRET@127.0.0.1:1883").unwrap_err();
        assert_eq!(
            refused,
            UrlError::Extra("mqtt://…@127.0.0.1:1883".into()),
            "{refused}"
        );
        for url in [
            "tcp://alice:SECRET@h",
            "MQTT://alice:SECRET@h",
            "mqtt:/alice:SECRET@h",
        ] {
            let refused = BrokerUrl::parse(url).unwrap_err().to_string();
            assert!(!refused.contains("SECRET"), "{refused}");
        }
    }

    /// Found by a review: two alerters of one client id took turns on the broker for ever,
    /// each saying only that the broker hung up.
    #[test]
    fn connections_that_keep_ending_as_they_open_are_counted() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        let mut lives = ShortLives::default();
        for i in 0..3 {
            assert_eq!(lives.ended(ms(400)), (i == 2).then_some(3));
        }
        assert_eq!(lives.ended(ms(300)), Some(4));
        // A connection that lasted is no takeover: the count starts again.
        assert_eq!(lives.ended(ms(57_000)), None);
        assert_eq!(lives.ended(ms(100)), None);
    }
}
