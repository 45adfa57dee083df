//! Delivering a batch to a target: every target is a [`Sender`]; the chat services are one
//! implementation — the service's request ([`super::format`]) over HTTPS — so that the
//! alerter neither knows nor cares which service it talks to.

use std::sync::Arc;
use std::time::Duration;

use super::config::{redact, TargetConfig};
use super::format::{self, HttpRequest, HttpResponse};
use super::outbox::{Batch, Delivery};

/// Something alerts can be delivered to.
pub trait Sender: Send + Sync {
    /// Tries once; says what became of it.
    fn send(&self, batch: &Batch) -> Delivery;
}

/// Makes HTTP requests.
pub trait Transport: Send + Sync {
    /// The response, whatever its status; `Err` when there was none (network, TLS, timeout).
    fn exchange(&self, request: &HttpRequest) -> Result<HttpResponse, String>;
}

/// A chat service or webhook, reached over HTTP.
pub struct ChatSender {
    target: TargetConfig,
    http: Arc<dyn Transport>,
}

impl ChatSender {
    pub fn new(target: TargetConfig, http: Arc<dyn Transport>) -> Self {
        Self { target, http }
    }
}

impl Sender for ChatSender {
    fn send(&self, batch: &Batch) -> Delivery {
        let request = format::request(&self.target.channel, batch);
        match self.http.exchange(&request) {
            Ok(response) => format::interpret(&response),
            Err(e) => Delivery::Transient(e),
        }
    }
}

/// HTTP(S) with ureq: rustls with the ring provider (the one respawn uses everywhere) and the
/// system's CAs, no redirects, every answer returned whatever its status.
pub struct Http {
    agent: ureq::Agent,
}

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

impl Http {
    pub fn new() -> Self {
        let roots: Vec<ureq::tls::Certificate<'static>> = rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned())
            .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .timeout_connect(Some(Duration::from_secs(10)))
            .user_agent(concat!("respawnctl/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            agent: config.into(),
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Transport for Http {
    fn exchange(&self, request: &HttpRequest) -> Result<HttpResponse, String> {
        // Webhook URLs and tokens are secrets: errors name the host only.
        let fail = |e: ureq::Error| format!("{}: {e}", redact(&request.url));
        let mut response = match request.method {
            "PUT" => {
                let mut builder = self.agent.put(&request.url);
                for (name, value) in &request.headers {
                    builder = builder.header(name, value);
                }
                builder.send(&request.body[..]).map_err(fail)?
            }
            _ => {
                let mut builder = self.agent.post(&request.url);
                for (name, value) in &request.headers {
                    builder = builder.header(name, value);
                }
                builder.send(&request.body[..]).map_err(fail)?
            }
        };
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = response.status().as_u16();
        // An answer is read for its error message only: a little is enough.
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        Ok(HttpResponse {
            status,
            retry_after,
            body,
        })
    }
}
