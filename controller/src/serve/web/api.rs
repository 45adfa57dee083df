//! The JSON the pages read, the live event stream, the signed actions and output a page asks
//! for, and `/metrics`: each call for a logged-in session (a change with its CSRF token too),
//! `/metrics` with its bearer token when one is set.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path, Query, State as Extract};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use respawn_common::messages::CommandName;
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt as _;

use super::{changer, reader, refuse, CachedLines, State};
use crate::output::ShownEvent;
use crate::request::{Args, Job, Outcome};
use crate::serve::auth::Session;
use crate::serve::{Failure, Order, Update, COMMAND_TIMEOUT};
use respawn_common::signing::same_secret;

/// The API's routes, and `/metrics`.
pub(super) fn routes() -> Router<State> {
    Router::new()
        .route("/api/me", get(me))
        .route("/api/fleet", get(fleet))
        .route("/api/events", get(events))
        .route("/api/stream", get(stream))
        .route("/api/logs/{agent}/{process}", post(logs))
        .route("/api/action", post(action))
        .route("/metrics", get(metrics))
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
    let shown = |event| ShownEvent::new(event, hub.clock_of(&event.agent));
    let events: Vec<ShownEvent> = events.into_iter().map(shown).collect();
    Json(serde_json::json!({ "events": events })).into_response()
}

/// The most live streams one user may have open at once: a page each, and a user's pages
/// cannot take all of the hub's connections.
const STREAMS_PER_USER: usize = 16;

/// How often a live stream looks whether its session still holds, when nothing happens.
const STREAM_CHECK: Duration = Duration::from_secs(15);

async fn stream(Extract(state): Extract<State>, headers: HeaderMap) -> Response {
    let session = match reader(&state, &headers) {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(slot) = (state.inner.streams).take(session.user.clone(), STREAMS_PER_USER) else {
        let message =
            format!("{STREAMS_PER_USER} live pages are open for this user already: close some");
        return refuse(StatusCode::TOO_MANY_REQUESTS, &message);
    };
    let token = state.session_token(&headers).unwrap_or_default().to_owned();
    let (watcher, hub) = (state.clone(), state.clone());
    // The stream ends with its session: logged out or expired, a page learns nothing more.
    // It looks at each update, and every STREAM_CHECK when none comes.
    let live = move |_: &Option<Result<Update, _>>| {
        watcher.sessions().get(&token, Instant::now()).is_some()
    };
    let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(STREAM_CHECK));
    let updates = BroadcastStream::new(state.inner.updates.subscribe())
        .map(Some)
        .merge(ticks.map(|_| None))
        .take_while(live)
        .filter_map(move |update| {
            let _held = &slot;
            let event = match update? {
                Ok(Update::Agent(id)) => {
                    let json = hub.hub().agent_json(&id);
                    SseEvent::default().event("agent").data(json)
                }
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
            Some(Ok::<_, Infallible>(event))
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

/// Where a process is, as its retained state says: its pid, and since when it is in its
/// state. Lines read before it changed are an old run's (a page reads them again when the
/// process starts or exits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Run(Option<(Option<u32>, SystemTime)>);

impl Run {
    fn of(state: &State, agent: &str, process: &str) -> Self {
        let hub = state.hub();
        let status = hub
            .fleet()
            .agent(agent)
            .and_then(|a| a.processes.get(process));
        Self(status.map(|s| (s.pid, s.since)))
    }
}

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
    let cached = || {
        let run = Run::of(&state, &agent, &process);
        let mut cache = state
            .inner
            .logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cache.retain(|_, cached| cached.at.elapsed() < LOGS_FRESH);
        let fresh = cache.get(&key).filter(|cached| cached.run == run);
        fresh.map(|cached| Json(cached.body.clone()).into_response())
    };
    if let Some(answer) = cached() {
        return answer;
    }
    // One ask per process at a time; those that came meanwhile take its answer.
    let asked = {
        let mut asked = (state.inner.logs_asked.lock()).unwrap_or_else(PoisonError::into_inner);
        Arc::clone(asked.entry(key.clone()).or_default())
    };
    let turn = asked.lock().await;
    let answer = match cached() {
        Some(answer) => answer,
        None => ask_logs(&state, &session, &agent, &process, key.clone()).await,
    };
    drop(turn);
    let mut asked_now = (state.inner.logs_asked.lock()).unwrap_or_else(PoisonError::into_inner);
    // The map's and this one: nobody else waits.
    if Arc::strong_count(&asked) <= 2 {
        asked_now.remove(&key);
    }
    answer
}

/// Asks `agent` for the last lines of `process`, and keeps them for those who ask next.
async fn ask_logs(
    state: &State,
    session: &Session,
    agent: &str,
    process: &str,
    key: (String, String),
) -> Response {
    let args = Args {
        lines: Some(100),
        ..Args::default()
    };
    // Of the run before the ask: lines of a run that began meanwhile are asked for again.
    let run = Run::of(state, agent, process);
    match command(state, session, CommandName::Logs, agent, process, args).await {
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
            let at = Instant::now();
            let cached = CachedLines {
                at,
                run,
                body: body.clone(),
            };
            cache.insert(key, cached);
            Json(body).into_response()
        }
        Ok(other) => refuse(
            StatusCode::BAD_GATEWAY,
            &outcome_text(CommandName::Logs, agent, process, &other),
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
    body: Result<Json<ActionBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    // Who asks, and whether they may act, come first: a stranger or a viewer learns nothing
    // of what the body should hold.
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
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => {
            // In the asker's terms, not serde's ("invalid length 0, expected struct …").
            use axum::extract::rejection::JsonRejection::*;
            let why = match &rejection {
                MissingJsonContentType(_) => "sent as Content-Type: application/json",
                JsonSyntaxError(_) => "JSON",
                JsonDataError(_) => "an object whose agent, process and action are strings",
                _ => "readable",
            };
            return refuse(
                rejection.status(),
                &format!("the body must be {why}: {{\"agent\": …, \"process\": …, \"action\": \"restart\", \"stop\" or \"start\"}}"),
            );
        }
    };
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
    // Logged as asked, before it is sent: a page closed meanwhile ends this handler, not the
    // command.
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
    // And with what it came to: a request for a process there is not read as if sent (found
    // by a new-user run).
    let (said, response) = match outcome {
        Ok(outcome) => {
            let ok = matches!(outcome, Outcome::Succeeded(_));
            let status = match ok {
                true => StatusCode::OK,
                false => StatusCode::BAD_GATEWAY,
            };
            let text = outcome_text(name, &body.agent, &body.process, &outcome);
            let reply = Json(serde_json::json!({ "ok": ok, "message": text }));
            (text, (status, reply).into_response())
        }
        Err(Failure::NoProcess(message)) => {
            let response = refuse(StatusCode::NOT_FOUND, &message);
            (message, response)
        }
        Err(Failure::Broker(message)) => {
            let response = refuse(StatusCode::BAD_GATEWAY, &message);
            (message, response)
        }
    };
    tracing::info!(user = %session.user, action = name.as_str(), agent = %body.agent, process = %body.process, result = %said, "action done");
    response
}

pub(in crate::serve) fn outcome_text(
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
        let refusal = match given {
            None => Some("a bearer token is needed (Authorization: Bearer, metrics_token_file)\n"),
            Some(given) if same_secret(given, token) => None,
            Some(_) => Some("the bearer token is not this hub's metrics_token_file\n"),
        };
        if let Some(refusal) = refusal {
            return (StatusCode::UNAUTHORIZED, refusal).into_response();
        }
    }
    let asked = Instant::now();
    let mut latest = state.inner.metrics_page.lock().await;
    let page = match &*latest {
        Some((began, page)) if *began >= asked => page.clone(),
        _ => {
            let began = Instant::now();
            let broker = state.inner.broker.load(Ordering::Relaxed);
            let hub = std::sync::Arc::clone(&state.inner.hub);
            // Off the threads that serve requests: the page of a large fleet takes a while.
            let made = tokio::task::spawn_blocking(move || {
                let hub = hub.lock().unwrap_or_else(PoisonError::into_inner);
                hub.metrics(SystemTime::now(), broker)
            });
            let Ok(text) = made.await else {
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            };
            let page = axum::body::Bytes::from(text);
            *latest = Some((began, page.clone()));
            page
        }
    };
    drop(latest);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        page,
    )
        .into_response()
}
