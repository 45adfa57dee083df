//! The hub's HTTP side (axum): the pages and their assets (embedded, no CDN), the JSON the
//! pages read, the live event stream, signed actions, and `/metrics`. Every page and API call
//! but the login page and the assets needs a session; every change needs its CSRF token too.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{ConnectInfo, Form, Path, Query, State as Extract};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use respawn_common::messages::CommandName;
use respawn_common::signing::SigningKey;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt as _;

use super::auth::{self, Login, Session, Sessions};
use super::config::ServeConfig;
use super::hub::Hub;
use super::{Failure, Order, Update, COMMAND_TIMEOUT};
use crate::request::{Args, Job, Outcome};
use crate::settings::Settings;

const INDEX: &str = include_str!("assets/index.html");
const PROCESS: &str = include_str!("assets/process.html");
const EVENTS: &str = include_str!("assets/events.html");
const LOGIN: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// The largest request body taken: a login form, an action.
const MAX_BODY: usize = 16 * 1024;

/// Who acts when the hub has no users (it then listens on loopback only).
const LOCAL_USER: &str = "local";

/// What every handler shares.
#[derive(Clone)]
pub struct State {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    config: ServeConfig,
    key: Option<Arc<SigningKey>>,
    hub: Arc<Mutex<Hub>>,
    updates: broadcast::Sender<Update>,
    sessions: Mutex<Sessions>,
    /// Held while a password is checked.
    logins: tokio::sync::Mutex<()>,
    /// The latest lines of each process asked for, and when.
    logs: Mutex<HashMap<(String, String), (Instant, serde_json::Value)>>,
    broker: AtomicBool,
}

impl State {
    pub fn new(
        settings: Settings,
        config: ServeConfig,
        key: Option<Arc<SigningKey>>,
        hub: Arc<Mutex<Hub>>,
        updates: broadcast::Sender<Update>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                config,
                key,
                hub,
                updates,
                sessions: Mutex::new(Sessions::default()),
                logins: tokio::sync::Mutex::new(()),
                logs: Mutex::new(HashMap::new()),
                broker: AtomicBool::new(false),
            }),
        }
    }

    /// The hub's connection to the broker came or went: the pages say so, and the log.
    pub fn set_broker(&self, up: bool) {
        if self.inner.broker.swap(up, Ordering::Relaxed) != up {
            match up {
                true => eprintln!("respawnctl serve: connected to the broker"),
                false => {
                    eprintln!("respawnctl serve: lost the broker; reconnecting (the pages say so)")
                }
            }
            let _ = self.inner.updates.send(Update::Broker(up));
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.inner
            .hub
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The session the request's cookie names.
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let token = session_token(headers)?;
        self.sessions().get(token, Instant::now())
    }
}

/// The session token of the request's cookie.
fn session_token(headers: &HeaderMap) -> Option<&str> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    auth::cookie(cookies, auth::COOKIE)
}

pub async fn serve(listener: tokio::net::TcpListener, state: State) {
    let tls = state.inner.config.tls.clone();
    let app = Router::new()
        .route("/", get(page_index))
        .route("/process", get(page_process))
        .route("/events", get(page_events))
        .route("/login", get(page_login).post(login))
        .route("/logout", post(logout))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css", STYLE) }),
        )
        .route("/api/me", get(me))
        .route("/api/fleet", get(fleet))
        .route("/api/events", get(events))
        .route("/api/stream", get(stream))
        .route("/api/logs/{agent}/{process}", post(logs))
        .route("/api/action", post(action))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            loopback_only,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    match tls {
        Some(tls) => serve_on(TlsListener::new(listener, tls), app).await,
        None => serve_on(listener, app).await,
    }
}

/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections the hub serves at once; the next is accepted when one ends.
const MAX_CONNECTIONS: usize = 256;

/// Serves `app` on what `listener` accepts, each connection in a task of its own. Clients
/// that trickle their headers are cut off after [`HEADER_TIMEOUT`] and at most
/// [`MAX_CONNECTIONS`] are served at once: without both, slow or idle clients could hold the
/// hub's connections for ever (`axum::serve` sets no timer, so hyper's own header timeout
/// never applies).
async fn serve_on<L>(mut listener: L, app: Router)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (io, peer) = listener.accept().await;
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: axum::http::Request<hyper::body::Incoming>| {
                    let mut request = request.map(axum::body::Body::new);
                    request.extensions_mut().insert(ConnectInfo(Peer(peer)));
                    tower::ServiceExt::oneshot(app.clone(), request)
                },
            );
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let io = hyper_util::rt::TokioIo::new(io);
            if let Err(e) = builder.serve_connection(io, service).await {
                tracing::debug!(%peer, error = %e, "a connection ended");
            }
            drop(slot);
        });
    }
}

/// The address a request came from, for the login limit.
#[derive(Clone, Copy, Debug)]
struct Peer(SocketAddr);

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTPS: connections accepted on a TCP listener, each handshake in a task of its own (a
/// slow or silent client holds up nobody else), the finished ones handed to axum.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn new(listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (done, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let (stream, from) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, typically: wait rather than spin.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = done.send((tls, from)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%from, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%from, "TLS handshake timed out"),
                    }
                });
            }
        });
        Self { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// Security headers for every page: nothing from elsewhere, no framing.
fn page(body: String) -> Response {
    let mut response = Html(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn set_cookie(token: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let value = format!(
        "{}={token}; HttpOnly; SameSite=Strict; Path=/{secure}",
        auth::COOKIE
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A page for a session; without users, a first visit opens one for the local user.
fn guarded(state: &State, headers: &HeaderMap, body: &str) -> Response {
    if state.session(headers).is_some() {
        return page(body.to_owned());
    }
    if state.inner.config.has_users() {
        return Redirect::to("/login").into_response();
    }
    let token = state.sessions().open(LOCAL_USER, true, Instant::now());
    let mut response = page(body.to_owned());
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&token, state.inner.config.tls.is_some()),
    );
    response
}

/// Without users, the hub answers only requests made to a loopback name: a web page
/// elsewhere whose own name was made to resolve to 127.0.0.1 (DNS rebinding) gets nothing.
async fn loopback_only(
    Extract(state): Extract<State>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !state.inner.config.has_users() && !is_loopback_host(host) {
        return refuse(
            StatusCode::FORBIDDEN,
            "without users the hub answers only to 127.0.0.1, [::1] or localhost",
        );
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if state.inner.config.tls.is_some() {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// Whether a `Host` header names this machine's loopback interface.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn page_index(Extract(state): Extract<State>, headers: HeaderMap) -> Response {
    guarded(&state, &headers, INDEX)
}

async fn page_process(Extract(state): Extract<State>, headers: HeaderMap) -> Response {
    guarded(&state, &headers, PROCESS)
}

async fn page_events(Extract(state): Extract<State>, headers: HeaderMap) -> Response {
    guarded(&state, &headers, EVENTS)
}

async fn page_login(Extract(state): Extract<State>) -> Response {
    if !state.inner.config.has_users() {
        return Redirect::to("/").into_response();
    }
    page(LOGIN.replace("<!--message-->", ""))
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

async fn login(
    Extract(state): Extract<State>,
    ConnectInfo(Peer(from)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    // Another site's form posting wrong passwords from visitors' browsers would lock them
    // out: a login comes from the hub's own page.
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "cross-site")
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "a login comes from the hub's own page",
        );
    }
    let now = Instant::now();
    let from = from.ip();
    let outcome = if !state.sessions().may_try(from, now) {
        Login::Wait
    } else {
        // One hash check at a time, outside every lock: a flood of logins waits its turn
        // and slows only the logins.
        let _turn = state.inner.logins.lock().await;
        let checker = state.clone();
        let user = tokio::task::spawn_blocking(move || {
            let users = &checker.inner.config.users;
            auth::check_password(users, &form.name, &form.password).cloned()
        })
        .await
        .ok()
        .flatten();
        state.sessions().settle(user.as_ref(), from, Instant::now())
    };
    let refused = |status, message: &str| {
        let body = LOGIN.replace(
            "<!--message-->",
            &format!("<p class=\"error\">{message}</p>"),
        );
        let mut response = page(body);
        *response.status_mut() = status;
        response
    };
    match outcome {
        Login::Welcome(token) => {
            let mut response = Redirect::to("/").into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                set_cookie(&token, state.inner.config.tls.is_some()),
            );
            response
        }
        Login::Refused => refused(StatusCode::UNAUTHORIZED, "Wrong name or password."),
        Login::Wait => refused(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed logins from here: wait a minute.",
        ),
    }
}

/// Why a request is refused, as JSON for the pages.
fn refuse(status: StatusCode, message: &str) -> Response {
    Refusal(status, message.to_owned()).into_response()
}

/// A refused request.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// The session of a change: logged in, with its CSRF token in `X-CSRF-Token`.
fn changer(state: &State, headers: &HeaderMap) -> Result<Session, Refusal> {
    let Some(session) = state.session(headers) else {
        return Err(Refusal(StatusCode::UNAUTHORIZED, "log in first".into()));
    };
    let token = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if token.is_empty() || !same(token, &session.csrf) {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "the page is out of date (no valid CSRF token): reload it".into(),
        ));
    }
    Ok(session)
}

async fn logout(Extract(state): Extract<State>, headers: HeaderMap) -> Response {
    if let Err(refusal) = changer(&state, &headers) {
        return refusal.into_response();
    }
    if let Some(token) = session_token(&headers) {
        state.sessions().close(token);
    }
    let mut response = Json(serde_json::json!({ "ok": true })).into_response();
    let gone = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        auth::COOKIE
    );
    if let Ok(gone) = HeaderValue::from_str(&gone) {
        response.headers_mut().insert(header::SET_COOKIE, gone);
    }
    response
}

/// The session of a read: logged in.
fn reader(state: &State, headers: &HeaderMap) -> Result<Session, Refusal> {
    state
        .session(headers)
        .ok_or_else(|| Refusal(StatusCode::UNAUTHORIZED, "log in first".into()))
}

async fn me(Extract(state): Extract<State>, headers: HeaderMap) -> Response {
    match reader(&state, &headers) {
        Ok(session) => Json(serde_json::json!({
            "name": session.user,
            "may_act": session.may_act && state.inner.key.is_some(),
            "signing_key": state.inner.key.is_some(),
            "csrf": session.csrf,
            "broker": state.inner.broker.load(Ordering::Relaxed),
            "logins": state.inner.config.has_users(),
        }))
        .into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn fleet(Extract(state): Extract<State>, headers: HeaderMap) -> Response {
    if let Err(refusal) = reader(&state, &headers) {
        return refusal.into_response();
    }
    let hub = state.hub();
    Json(crate::output::status_json(hub.fleet())).into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    agent: Option<String>,
    process: Option<String>,
}

async fn events(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Response {
    if let Err(refusal) = reader(&state, &headers) {
        return refusal.into_response();
    }
    let hub = state.hub();
    let events = hub.events(query.agent.as_deref(), query.process.as_deref(), 200);
    Json(serde_json::json!({ "events": events })).into_response()
}

async fn stream(Extract(state): Extract<State>, headers: HeaderMap) -> Response {
    if let Err(refusal) = reader(&state, &headers) {
        return refusal.into_response();
    }
    let token = session_token(&headers).unwrap_or_default().to_owned();
    let watcher = state.clone();
    // The stream ends with its session: logged out or expired, a page learns nothing more.
    let live =
        move |_: &Result<Update, _>| watcher.sessions().get(&token, Instant::now()).is_some();
    let updates = BroadcastStream::new(state.inner.updates.subscribe())
        .take_while(live)
        .map(|update| {
            let event = match update {
                Ok(Update::Agent(json)) => SseEvent::default().event("agent").data(json),
                Ok(Update::Event(json)) => SseEvent::default().event("event").data(json),
                Ok(Update::Broker(up)) => {
                    SseEvent::default()
                        .event("broker")
                        .data(if up { "up" } else { "down" })
                }
                Ok(Update::Resync) => SseEvent::default().event("resync").data("afresh"),
                // Too slow a reader missed updates: it reads the whole fleet again.
                Err(_) => SseEvent::default().event("resync").data("missed updates"),
            };
            Ok::<_, Infallible>(event)
        });
    Sse::new(updates)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Sends `command` to `agent`'s `process` for the user of `session`, signed by the hub.
async fn command(
    state: &State,
    session: &Session,
    command: CommandName,
    agent: &str,
    process: &str,
    args: Args,
) -> Result<Outcome, Failure> {
    let order = Order {
        settings: &state.inner.settings,
        key: state.inner.key.as_deref(),
        hub: &state.inner.hub,
        requester: &session.user,
    };
    order.send(command, agent, process, args).await
}

/// How long the lines a process page asked for are shown to others who ask: each request
/// is a signed command the agent audits.
const LOGS_FRESH: Duration = Duration::from_secs(5);

async fn logs(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    Path((agent, process)): Path<(String, String)>,
) -> Response {
    // A POST with the CSRF token: asking sends a command, which no other site may cause.
    let session = match changer(&state, &headers) {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    if state.inner.key.is_none() {
        return refuse(
            StatusCode::FORBIDDEN,
            "the hub has no signing key (signing_key in serve.toml, or --key): it sends no commands, not even for output",
        );
    }
    let key = (agent.clone(), process.clone());
    {
        let mut cache = state
            .inner
            .logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cache.retain(|_, (at, _)| at.elapsed() < LOGS_FRESH);
        if let Some((_, body)) = cache.get(&key) {
            return Json(body.clone()).into_response();
        }
    }
    let args = Args {
        lines: Some(100),
        ..Args::default()
    };
    match command(&state, &session, CommandName::Logs, &agent, &process, args).await {
        Ok(Outcome::Succeeded(reply)) => {
            let body = serde_json::json!({
                "lines": reply.lines.unwrap_or_default(),
                "truncated": reply.truncated,
            });
            let mut cache = state
                .inner
                .logs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            cache.insert(key, (Instant::now(), body.clone()));
            Json(body).into_response()
        }
        Ok(other) => refuse(
            StatusCode::BAD_GATEWAY,
            &outcome_text(CommandName::Logs, &agent, &process, &other),
        ),
        Err(Failure::NoProcess(message)) => refuse(StatusCode::NOT_FOUND, &message),
        Err(Failure::Broker(message)) => refuse(StatusCode::BAD_GATEWAY, &message),
    }
}

#[derive(Deserialize)]
struct ActionBody {
    agent: String,
    process: String,
    action: String,
}

async fn action(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    Json(body): Json<ActionBody>,
) -> Response {
    let session = match changer(&state, &headers) {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    if !session.may_act {
        return refuse(
            StatusCode::FORBIDDEN,
            &format!("{} may only look", session.user),
        );
    }
    if state.inner.key.is_none() {
        return refuse(
            StatusCode::FORBIDDEN,
            "the hub has no signing key (signing_key in serve.toml, or --key): it sends no commands",
        );
    }
    let name = match body.action.as_str() {
        "restart" => CommandName::Restart,
        "stop" => CommandName::Stop,
        "start" => CommandName::Start,
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "the action is restart, stop or start",
            )
        }
    };
    tracing::info!(user = %session.user, action = name.as_str(), agent = %body.agent, process = %body.process, "action");
    let outcome = command(
        &state,
        &session,
        name,
        &body.agent,
        &body.process,
        Args::default(),
    )
    .await;
    match outcome {
        Ok(outcome) => {
            let ok = matches!(outcome, Outcome::Succeeded(_));
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::BAD_GATEWAY
            };
            let text = outcome_text(name, &body.agent, &body.process, &outcome);
            (
                status,
                Json(serde_json::json!({ "ok": ok, "message": text })),
            )
                .into_response()
        }
        Err(Failure::NoProcess(message)) => refuse(StatusCode::NOT_FOUND, &message),
        Err(Failure::Broker(message)) => refuse(StatusCode::BAD_GATEWAY, &message),
    }
}

/// Whether two secrets are equal, in a time that does not say where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub(super) fn outcome_text(
    command: CommandName,
    agent: &str,
    process: &str,
    outcome: &Outcome,
) -> String {
    let job = Job::new(agent, Some(process), None);
    let plain = crate::output::Style { color: false };
    crate::output::outcome_line(command, &job, outcome, COMMAND_TIMEOUT, plain)
}

async fn metrics(Extract(state): Extract<State>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.inner.config.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|given| same(given, token)) {
            return (StatusCode::UNAUTHORIZED, "a bearer token is needed\n").into_response();
        }
    }
    let broker = state.inner.broker.load(Ordering::Relaxed);
    let text = state.hub().metrics(SystemTime::now(), broker);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_are_loopback_hosts() {
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "127.0.0.2",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:8080",
            "192.168.1.10:8080",
            "[fe80::1]:8080",
            "localhost.evil.example",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
