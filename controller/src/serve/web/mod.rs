//! The hub's HTTP side (axum): the routes, the pages and their assets (embedded, no CDN),
//! logging in and out, and the checks every request passes. Every page and API call but the
//! login page, the assets and `/metrics` (which takes its own token, or none) needs a
//! session; every change needs its CSRF token too.
//!
//! - `api` — the JSON the pages read, the event stream, actions, output, `/metrics`.
//! - `hosts` — the names a request may address the hub by.
//! - `listen` — how connections come in: their limit, their deadlines, TLS.

mod api;
mod forwarded;
mod held;
mod hosts;
mod listen;

pub use forwarded::TrustedProxies;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{ConnectInfo, Form, State as Extract};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use respawn_common::signing::{same_secret, SigningKey};
use serde::Deserialize;
use tokio::sync::broadcast;

pub(super) use api::outcome_text;
use hosts::HostNames;
use listen::{body_in_time, serve_on, Peer, TlsListener};

use super::auth::{self, Login, Session, Sessions};
use super::config::ServeConfig;
use super::hub::Hub;
use super::Update;
use crate::settings::Settings;

const INDEX: &str = include_str!("assets/index.html");
const PROCESS: &str = include_str!("assets/process.html");
const EVENTS: &str = include_str!("assets/events.html");
const LOGIN: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");
const ICON: &str = include_str!("assets/icon.svg");

/// The largest request body taken: a login form, an action.
const MAX_BODY: usize = 16 * 1024;

/// Who acts when the hub has no users (it then listens on loopback only).
const LOCAL_USER: &str = "local";

/// What every handler shares.
#[derive(Clone)]
pub struct State {
    inner: Arc<Inner>,
}

/// The lines a process page asked for, shown to the pages that ask next while they are fresh
/// and the process is still where it was then ([`api::Run`]).
struct CachedLines {
    at: Instant,
    run: api::Run,
    body: serde_json::Value,
}

/// One at a time: held by the one under way, waited for by the others.
type Turns = Arc<tokio::sync::Mutex<()>>;

struct Inner {
    settings: Settings,
    config: ServeConfig,
    hosts: HostNames,
    refused_names: Mutex<hosts::RefusalLog>,
    key: Option<Arc<SigningKey>>,
    hub: Arc<Mutex<Hub>>,
    updates: broadcast::Sender<Update>,
    sessions: Mutex<Sessions>,
    /// The name of the session cookie ([`auth::cookie_name`]).
    cookie: String,
    /// Held while a password is checked.
    logins: tokio::sync::Mutex<()>,
    /// The latest lines of each process asked for: when, of which run, and what.
    logs: Mutex<HashMap<(String, String), CachedLines>>,
    /// The asks for a process's lines under way: those that come meanwhile wait for its
    /// answer instead of sending commands of their own.
    logs_asked: Mutex<HashMap<(String, String), Turns>>,
    broker: AtomicBool,
    /// The live streams open, by user.
    streams: held::Holdings<String>,
    /// The latest `/metrics` page, and when its making began: a scrape that came before then
    /// is answered with it, so that scrapes at once share one page (20 MB at 50,000
    /// processes, made while the hub waits) instead of each making its own.
    metrics_page: tokio::sync::Mutex<Option<(Instant, axum::body::Bytes)>>,
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
                hosts: HostNames::of_this_machine(config.has_users(), &config.hosts),
                refused_names: Mutex::new(hosts::RefusalLog::default()),
                cookie: auth::cookie_name(config.listen.port()),
                config,
                key,
                hub,
                updates,
                sessions: Mutex::new(Sessions::default()),
                logins: tokio::sync::Mutex::new(()),
                logs: Mutex::new(HashMap::new()),
                logs_asked: Mutex::new(HashMap::new()),
                broker: AtomicBool::new(false),
                streams: held::Holdings::default(),
                metrics_page: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The hub's connection to the broker came, or went (with why): the pages say so, and
    /// the log, once.
    pub fn set_broker(&self, lost: Result<(), &dyn std::fmt::Display>) {
        let up = lost.is_ok();
        if self.inner.broker.swap(up, Ordering::Relaxed) != up {
            match lost {
                Ok(()) => eprintln!("respawnctl serve: connected to the broker"),
                Err(why) => eprintln!(
                    "respawnctl serve: lost the broker: {why}; reconnecting (the pages say so)"
                ),
            }
            let _ = self.inner.updates.send(Update::Broker(up));
        }
    }

    /// Names a refused name in the log, as [`hosts::RefusalLog`] allows.
    fn say_refused(&self, refusal: &hosts::Refusal) {
        let mut log = (self.inner.refused_names)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(line) = log.line(refusal, Instant::now()) {
            eprintln!("respawnctl serve: {line}");
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
        let token = self.session_token(headers)?;
        self.sessions().get(token, Instant::now())
    }

    /// The session token of the request's cookie.
    fn session_token<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
        auth::cookie(cookies, &self.inner.cookie)
    }

    /// The cookie that holds the session `token`, or (`None`) ends it.
    fn set_cookie(&self, token: Option<&str>) -> HeaderValue {
        let secure = match self.inner.config.tls.is_some() {
            true => "; Secure",
            false => "",
        };
        let (value, gone) = match token {
            Some(token) => (token, ""),
            None => ("", "; Max-Age=0"),
        };
        let cookie = &self.inner.cookie;
        let value = format!("{cookie}={value}; HttpOnly; SameSite=Strict; Path=/{secure}{gone}");
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

pub async fn serve(listener: tokio::net::TcpListener, state: State) {
    let tls = state.inner.config.tls.clone();
    let proxies = state.inner.config.trusted_proxies.clone();
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
        .route(
            "/assets/icon.svg",
            get(|| async { asset("image/svg+xml", ICON) }),
        )
        .merge(api::routes())
        // Said in words, as every other refusal: axum's own are empty.
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{method} is not how this is asked for (see the Allow header)"),
            )
        })
        .fallback(|| async { refuse(StatusCode::NOT_FOUND, "no such page") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            known_hosts_only,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(|request, next| {
            body_in_time(MAX_BODY, request, next)
        }))
        .with_state(state);
    match tls {
        Some(tls) => {
            let listener = TlsListener::new(listener, tls, proxies.clone());
            serve_on(listener, app, proxies).await
        }
        None => serve_on(listener, app, proxies).await,
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
    // Nothing of the hub's addresses goes to another site; to the hub itself its own origin
    // goes, which `no-referrer` would make `null` on the login form's post.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
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
    response
        .headers_mut()
        .insert(header::SET_COOKIE, state.set_cookie(Some(&token)));
    response
}

/// The hub answers only requests addressed to one of its names (`hosts`).
async fn known_hosts_only(
    Extract(state): Extract<State>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(refusal) = (state.inner.hosts).check_request(request.uri(), request.headers()) {
        state.say_refused(&refusal);
        return refuse(StatusCode::FORBIDDEN, &refusal.message());
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

/// One login's turn: whether `from` may try, the password's check, and its outcome counted.
async fn login_turn(state: State, from: std::net::IpAddr, form: LoginForm) -> Login {
    let _turn = state.inner.logins.lock().await;
    if !state.sessions().may_try(from, Instant::now()) {
        return Login::Wait;
    }
    let checker = state.clone();
    let user = tokio::task::spawn_blocking(move || {
        let users = &checker.inner.config.users;
        auth::check_password(users, &form.name, &form.password).cloned()
    })
    .await
    .ok()
    .flatten();
    state.sessions().settle(user.as_ref(), from, Instant::now())
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
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or("null"));
    let cross_site = text(header::HeaderName::from_static("sec-fetch-site")) == Some("cross-site");
    let foreign = text(header::ORIGIN)
        .is_some_and(|origin| !state.inner.hosts.is_own_origin(origin, text(header::HOST)));
    if cross_site || foreign {
        return refuse(
            StatusCode::FORBIDDEN,
            "a login comes from the hub's own page",
        );
    }
    let from = state
        .inner
        .config
        .trusted_proxies
        .client(from.ip(), &headers);
    // One hash check at a time, outside every other lock: a flood of logins waits its turn
    // and slows only the logins. Whether the address may try is asked in that turn, so that a
    // burst of logins sees the failures of those before it. The turn is a task of its own: a
    // client that goes away does not end it, or its check would run on unwaited for, beside
    // the next turn's, and its failure never count.
    let turn = tokio::spawn(login_turn(state.clone(), from, form));
    let outcome = turn.await.unwrap_or(Login::Refused);
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
            response
                .headers_mut()
                .insert(header::SET_COOKIE, state.set_cookie(Some(&token)));
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

/// The refusal of a request without a session: on a hub without users there is no login,
/// only the session a page gives the browser that opens it.
fn no_session(state: &State) -> Refusal {
    let words = match state.inner.config.has_users() {
        true => "log in first",
        false => "no session: open the hub's page first (it gives the browser a session, and the CSRF token its changes carry)",
    };
    Refusal(StatusCode::UNAUTHORIZED, words.into())
}

/// The session of a change: logged in, with its CSRF token in `X-CSRF-Token`.
fn changer(state: &State, headers: &HeaderMap) -> Result<Session, Refusal> {
    let Some(session) = state.session(headers) else {
        return Err(no_session(state));
    };
    let token = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if token.is_empty() || !same_secret(token, &session.csrf) {
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
    if let Some(token) = state.session_token(&headers) {
        state.sessions().close(token);
    }
    let mut response = Json(serde_json::json!({ "ok": true })).into_response();
    let gone = state.set_cookie(None);
    response.headers_mut().insert(header::SET_COOKIE, gone);
    response
}

/// The session of a read: logged in.
fn reader(state: &State, headers: &HeaderMap) -> Result<Session, Refusal> {
    state.session(headers).ok_or_else(|| no_session(state))
}
