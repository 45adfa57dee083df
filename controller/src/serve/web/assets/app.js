// respawn hub pages: the fleet, one process, live events. Everything from the agents is put
// into the page as text (textContent), never as HTML: a log line cannot run as script.
"use strict";

const agents = new Map();
let me = { name: "", may_act: false, csrf: "" };
// Whether the hub has the broker: without it, no action can reach an agent.
let brokerUp = true;

// What text from the network may not do on the page, as in `respawnctl`'s output: control
// characters (escape sequences) and direction marks that would reorder what is shown
// ("invoice \u{202e}txt.exe"). Shown escaped; line breaks and tabs pass.
const ACTED_ON = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

function printable(text) {
  return String(text).replace(ACTED_ON, (c) => "\\u{" + c.codePointAt(0).toString(16) + "}");
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = printable(v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  // Text is made printable here, once for every caller: a version, a host or a spawn error
  // put together into a row is the agent's text as much as a `text` attribute is.
  for (const child of children) {
    if (typeof child === "string") node.append(printable(child));
    else if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// How far an agent's clock is ahead of the hub's, in ms (negative: behind): its times are
// by its clock, and are measured against now moved onto it.
function offsetOf(agent) {
  const a = agents.get(agent);
  return (a && a.clock_offset_ms) || 0;
}

// How long ago `iso` was by a clock `offset` ms ahead of this one.
function ago(iso, offset) {
  if (!iso) return "";
  return span(Math.max(0, (Date.now() + (offset || 0) - Date.parse(iso)) / 1000));
}

// A number of seconds as respawnctl says it: "42s", "3m12s", "7d".
function span(s) {
  if (s < 60) return Math.floor(s) + "s";
  // As respawnctl says it: a whole unit alone ("10m", not "10m0s").
  const two = (big, bigUnit, small, smallUnit) =>
    Math.floor(big) + bigUnit + (Math.floor(small) ? Math.floor(small) + smallUnit : "");
  if (s < 3600) return two(s / 60, "m", s % 60, "s");
  if (s < 86400) return two(s / 3600, "h", (s % 3600) / 60, "m");
  return two(s / 86400, "d", (s % 86400) / 3600, "h");
}

// A time of day by the browser's clock and zone, to the millisecond, as log lines show it;
// `iso` by a clock `offset` ms ahead.
function clock(iso, offset) {
  const d = new Date(Date.parse(iso) - (offset || 0));
  const pad = (n, width) => String(n).padStart(width || 2, "0");
  return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3);
}

// A text with how long ago `iso` was in it, which `tick` keeps going.
function since(before, iso, after, offset) {
  return el("span", { "data-since": iso || "", "data-offset": String(offset || 0), "data-before": before, "data-after": after || "", text: before + ago(iso, offset) + (after || "") });
}

function exitHow(exit) {
  const st = exit.status || {};
  const how = "code" in st ? "exit " + st.code : (st.signal || "?") + (st.core_dumped ? " (core)" : "");
  const why = exit.reason ? " (unhealthy: " + exit.reason + ")" : "";
  return how + (exit.oom_killed ? " (out of memory)" : "") + why;
}

function exitText(exit, offset) {
  return exit ? since(exitHow(exit) + " ", exit.at, " ago", offset) : null;
}



const PROBLEM_STATES = ["crash_loop", "failed", "spawn_failed"];

function severity(agent) {
  if (agent.liveness !== "online") return 2;
  if ((agent.processes || []).some((p) => PROBLEM_STATES.includes(p.state) || p.crash_loop)) return 1;
  return 0;
}

function globRegex(glob) {
  const escaped = glob.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp("^" + escaped + "$");
}

function matches(filter, agent, process) {
  if (!filter) return true;
  const [a, p] = filter.includes("/") ? filter.split("/", 2) : [filter, null];
  if (!globRegex(a || "*").test(agent)) return false;
  return process === null || p === null || globRegex(p || "*").test(process);
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  if (response.status === 401) { location.href = "/login"; throw new Error("log in"); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || body.message || response.statusText);
  return body;
}

// How long what an action did is said: the table shows how things are after that, and a
// page left open (a wall display) would go on saying "stopped" of a process since started.
// A refusal stays until the next action: nothing on the table says it.
const DONE_SAID_FOR_MS = 8000;
let sayTimer = null;

function say(text, tone) {
  const box = document.getElementById("message");
  if (!box) return;
  clearTimeout(sayTimer);
  box.textContent = printable(text);
  box.className = "banner " + (tone || "");
  box.hidden = !text;
  if (tone === "good") sayTimer = setTimeout(() => { box.hidden = true; }, DONE_SAID_FOR_MS);
}

async function act(agent, process, action, button) {
  if (action === "stop" && !confirm("Stop " + agent + "/" + process + "? It stays stopped until started.")) return;
  button.disabled = true;
  button.setAttribute("data-busy", "1");
  say(action + " " + agent + "/" + process + "…");
  try {
    const result = await api("/api/action", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": me.csrf },
      body: JSON.stringify({ agent, process, action }),
    });
    say(result.message, "good");
  } catch (e) {
    say(e.message, "bad");
  } finally {
    button.removeAttribute("data-busy");
    offWithoutBroker(button);
    // What came while the action was under way was not shown, to keep its button.
    if (document.body.dataset.page === "process") renderProcess();
  }
}

// The banner and the buttons as the hub's connection to the broker is: an action sent
// meanwhile could only time out.
function setBroker(up) {
  brokerUp = up;
  const lost = document.getElementById("broker");
  lost.textContent = "The hub has lost the broker: what you see may be out of date, and the buttons are off until it is back. Reconnecting…";
  lost.hidden = up;
  for (const b of document.querySelectorAll("button[data-action]:not([data-busy])")) offWithoutBroker(b);
}

// An action button, off while the hub has no broker.
function offWithoutBroker(b) {
  b.disabled = !brokerUp;
  b.title = brokerUp ? "" : "The hub has lost the broker";
}

// The actions that do something in the state the process is in.
function actions(p) {
  if (p.state === "stopped") return ["start"];
  if (["running", "starting", "stopping"].includes(p.state)) return ["restart", "stop"];
  return ["restart", "stop", "start"];
}

function buttons(a, p) {
  // An agent that is not online takes no command from the hub: buttons would only say so
  // after a click.
  if (!me.may_act || a.liveness !== "online") return null;
  const agent = a.agent;
  const box = el("span", { class: "actions" });
  for (const action of actions(p)) {
    const b = el("button", { type: "button", "data-action": action, text: action[0].toUpperCase() + action.slice(1) });
    offWithoutBroker(b);
    b.addEventListener("click", () => act(agent, p.name, action, b));
    box.append(b);
  }
  return box;
}

function processRow(a, p) {
  const agent = a.agent;
  const link = el("a", { href: "/process?agent=" + encodeURIComponent(agent) + "&process=" + encodeURIComponent(p.name), text: p.name + (p.remote ? " (remote)" : "") });
  let state = p.state.replace("_", " ");
  if (p.crash_loop && p.state !== "crash_loop") state += " (crash loop)";
  if (p.manually_stopped) state += " (by hand)";
  // Not before its first probe: "; unknown" after a last exit read as the exit's.
  const checked = p.health && p.health.status !== "unknown";
  const health = checked ? p.health.status + (p.health.last_error ? ": " + p.health.last_error : "") : "";
  // A stopping process's `since` is when the stop began: how long it takes is the news.
  const offset = a.clock_offset_ms || 0;
  const stopping = p.state === "stopping" && a.liveness === "online" ? since("stopping for ", p.since, "", offset) : null;
  const details = [stopping, exitText(p.last_exit, offset), p.spawn_error, health].filter(Boolean).flatMap((d, i) => (i ? ["; ", d] : [d]));
  // A crash loop is a problem whatever the state of the moment. Of an agent out of reach,
  // the state is only what it last said: not coloured as news, as respawnctl dims it.
  const reachable = a.liveness === "online";
  const tone = !reachable ? "dim" : "s-" + (p.crash_loop ? "crash_loop" : p.state);
  const said = reachable ? {} : { title: "as the agent last said; it is " + a.liveness };
  return el("tr", { "data-process": p.name },
    el("td", {}, link),
    el("td", Object.assign({ class: "state " + tone, "data-field": "state", text: state }, said)),
    // Labelled where a phone shows the row as lines of its own, without the table's head.
    el("td", { "data-field": "pid", "data-label": "pid", text: p.pid == null ? "-" : String(p.pid) }),
    // Of an agent out of reach, only what it last said is known: not that it still runs. A
    // stopping process's `since` is when the stop began.
    el("td", { "data-label": "up" }, p.pid == null || p.state === "stopping" || a.liveness !== "online" ? "-" : since("", p.since, "", offset)),
    el("td", { "data-label": "restarts", text: String(p.restarts) }),
    el("td", { class: "details" }, ...details),
    el("td", { class: "actions-cell" }, buttons(a, p)));
}

const PROCESS_COLUMNS = ["Process", "State", "PID", "Uptime", "Restarts", "Last exit", ""];

function processTable(a, rows) {
  const head = el("thead", {}, el("tr", {}, ...PROCESS_COLUMNS.map((h) => el("th", { text: h }))));
  return el("table", { class: "processes" }, head, el("tbody", {}, ...rows.map((p) => processRow(a, p))));
}

function agentCard(a) {
  const st = a.state || {};
  const hb = a.heartbeat || {};
  const offset = a.clock_offset_ms || 0;
  // To the minute from an hour on, as respawnctl says it: a week less a second is "7d".
  const off = Math.abs(offset), unit = off >= 3600000 ? 60000 : 1000;
  const clockOff = offset && "clock " + span(Math.round(off / unit) * unit / 1000) + (offset > 0 ? " ahead" : " behind");
  const details = [st.version && "v" + st.version, st.host && "on " + st.host, clockOff, hb.load1 != null && "load " + hb.load1.toFixed(2)].filter(Boolean).join(", ");
  // `started` is the hub's reckoning (its heartbeat's uptime), as in respawnctl status.
  const start = a.liveness === "online" && a.started;
  const up = start ? since((details ? ", " : "") + "up ", start, "", offset) : null;
  if (up) up.dataset.field = "up";
  const card = el("section", { class: "card" + (severity(a) ? " problem" : ""), "data-agent": a.agent },
    el("div", { class: "agent-head" },
      el("h2", { text: a.agent }),
      el("span", { class: "state s-" + a.liveness, "data-field": "liveness", text: a.liveness }),
      el("span", { class: "dim" }, details, up)));
  const rows = (a.processes || []).filter((p) => matches(currentFilter(), a.agent, p.name));
  if (rows.length) {
    card.append(processTable(a, rows));
  }
  // Named by its birth, but no state of theirs came (a broker drops what it cannot queue for
  // a reader) or could be read: the card is incomplete, as `respawnctl status` says.
  const unknown = (a.unknown_processes || []).filter((name) => matches(currentFilter(), a.agent, name));
  if (unknown.length) {
    const count = unknown.length === 1 ? "1 process" : unknown.length + " processes";
    card.append(el("p", { class: "dim", "data-field": "unknown", text: "No state for " + count + ": " + unknown.join(", ") + " (the broker did not send it, or it could not be read)" }));
  }
  return card;
}

function currentFilter() {
  const box = document.getElementById("filter");
  return box ? box.value.trim() : "";
}

function renderFleet() {
  const box = document.getElementById("agents");
  const filter = currentFilter();
  const shown = [...agents.values()]
    .filter((a) => !a.gone && (matches(filter, a.agent, null) && (!filter.includes("/") || (a.processes || []).map((p) => p.name).concat(a.unknown_processes || []).some((name) => matches(filter, a.agent, name)))))
    .sort((x, y) => severity(y) - severity(x) || x.agent.localeCompare(y.agent));
  box.replaceChildren(...shown.map(agentCard));
  const problems = shown.filter((a) => severity(a)).length;
  const counted = shown.length === 1 ? "1 agent" : shown.length + " agents";
  // A filter that leaves nothing says so, as respawnctl does, rather than a bare "0 agents".
  const known = [...agents.values()].filter((a) => !a.gone).length;
  const none = !shown.length && filter && known ? " match " + JSON.stringify(filter) + " (of " + known + "; agent or agent/process, * and ? as wildcards)" : "";
  document.getElementById("summary").textContent = counted + none + (problems ? ", " + problems + " with problems" : "");
}

// One agent changed: only its card is replaced (a button being clicked elsewhere stays),
// unless its place in the order changes.
function renderAgent(a, before) {
  const card = document.querySelector('[data-agent="' + CSS.escape(a.agent) + '"]');
  if (!card || a.gone || !before || severity(a) !== severity(before)) return renderFleet();
  card.replaceWith(agentCard(a));
}

// The hub sends each event with the words respawnctl events says it in (what, detail).
function eventText(e) {
  const who = e.agent + (e.process ? "/" + e.process : "");
  return [new Date(Date.parse(e.at) - (e.clock_offset_ms || 0)).toLocaleString(), who, e.what, e.detail].filter(Boolean).join(" · ");
}

function eventItem(e) {
  const item = el("li", { "data-kind": e.kind, "data-id": e.agent + "/" + e.id, text: eventText(e) });
  if (e.log_tail && e.log_tail.length) {
    item.append(el("pre", { text: e.log_tail.map((l) => l.stream + " " + l.text).join("\n") }));
  }
  return item;
}

function params() {
  const q = new URLSearchParams(location.search);
  return { agent: q.get("agent") || "", process: q.get("process") || "" };
}

// The output before the last exit, from its `exited` event (the hub keeps the latest 1000
// events of the fleet; older exits show without it).
let lastExitTail = null;

function renderProcess() {
  const { agent, process } = params();
  const a = agents.get(agent);
  const p = a && (a.processes || []).find((x) => x.name === process);
  const box = document.getElementById("status");
  if (!p) { box.replaceChildren(el("p", { text: "No process " + agent + "/" + process + " on the broker." })); return; }
  if (box.querySelector("button[data-busy]")) return; // an action is under way: keep its button
  const table = processTable(a, [p]);
  box.replaceChildren(el("p", {}, el("span", { class: "state s-" + a.liveness, text: a.liveness }), " agent " + agent), table);
  const exit = document.getElementById("last-exit");
  exit.replaceChildren(exitText(p.last_exit, a.clock_offset_ms) || "—");
  if (lastExitTail) exit.append(el("pre", { text: lastExitTail }));
}

function rememberExit(e) {
  if (e.kind !== "exited") return;
  // A run that said nothing has no output to show: not the run's before it.
  const tail = e.log_tail || [];
  lastExitTail = tail.length ? tail.map((l) => l.stream + " " + l.text).join("\n") : null;
}

async function loadProcessEvents() {
  const { agent, process } = params();
  const body = await api("/api/events?agent=" + encodeURIComponent(agent) + "&process=" + encodeURIComponent(process));
  document.getElementById("events").replaceChildren(...body.events.map(eventItem));
  const exit = body.events.find((e) => e.kind === "exited");
  if (exit) rememberExit(exit);
  renderProcess();
}

let logsAsked = false;
let logsShown = false;

async function loadLogs() {
  logsAsked = true;
  const { agent, process } = params();
  const box = document.getElementById("logs");
  try {
    const body = await api("/api/logs/" + encodeURIComponent(agent) + "/" + encodeURIComponent(process), {
      method: "POST",
      headers: { "X-CSRF-Token": me.csrf },
    });
    // Newest at the end and in view, as `tail` shows it; unless the reader scrolled up to
    // read something older, which a re-read must not take away.
    const atEnd = !logsShown || box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    box.textContent = body.lines.map((l) => clock(l.at, offsetOf(agent)) + " " + l.stream + " " + printable(l.text)).join("\n") || "(no output yet)";
    logsShown = true;
    if (atEnd) box.scrollTop = box.scrollHeight;
  } catch (e) {
    box.textContent = e.message;
  }
}

// A new run's output, once it has had a moment to write some: read again after the process
// started or exited, once for a stop and start close together.
let logsTimer = null;
function logsSoon() {
  if (!me.signing_key || !logsAsked) return;
  clearTimeout(logsTimer);
  logsTimer = setTimeout(loadLogs, 1000);
}

function onAgent(a) {
  agents.set(a.agent, a);
}

async function loadFleet() {
  const body = await api("/api/fleet");
  agents.clear();
  for (const a of body.agents) onAgent(a);
}

const MAX_EVENTS_SHOWN = 500;

// An event can come twice: over the stream, and in the list that a reload fetched meanwhile.
function showEvent(e) {
  const list = document.getElementById("events");
  if (list.querySelector('[data-id="' + CSS.escape(e.agent + "/" + e.id) + '"]')) return;
  list.prepend(eventItem(e));
  while (list.children.length > MAX_EVENTS_SHOWN) list.lastChild.remove();
}

// What the page shows, read again in full: at the start, and whenever the stream (re)opens
// or the hub says it started afresh, so that nothing said in between is missed.
async function reload(page) {
  const now = await api("/api/me");
  setBroker(now.broker);
  if (page === "events") {
    const body = await api("/api/events");
    document.getElementById("events").replaceChildren(...body.events.map(eventItem));
    return;
  }
  await loadFleet();
  if (page === "fleet") renderFleet();
  if (page === "process") {
    await loadProcessEvents();
    // Once the fleet is in: its lines are dated by their agent's clock moved onto this one.
    if (me.signing_key && !logsAsked) loadLogs();
  }
}

function live(page) {
  const source = new EventSource("/api/stream");
  const lost = document.getElementById("broker");
  source.addEventListener("open", () => reload(page).catch((e) => say(e.message, "bad")));
  source.addEventListener("error", async () => {
    // The browser retries by itself; a hub that restarted has forgotten the session.
    lost.hidden = false;
    lost.textContent = "Lost the hub: reconnecting…";
    try { await api("/api/me"); } catch (e) { /* api() sends to the login page on 401 */ }
  });
  source.addEventListener("agent", (m) => {
    const a = JSON.parse(m.data);
    const before = agents.get(a.agent);
    onAgent(a);
    if (page === "fleet") renderAgent(a, before);
    if (page === "process" && a.agent === params().agent) renderProcess();
  });
  source.addEventListener("event", (m) => {
    const e = JSON.parse(m.data);
    const { agent, process } = params();
    if (page === "events") showEvent(e);
    if (page === "process" && e.agent === agent && e.process === process) {
      showEvent(e);
      rememberExit(e);
      renderProcess();
      if (e.kind === "started" || e.kind === "exited") logsSoon();
    }
  });
  source.addEventListener("broker", (m) => setBroker(m.data === "up"));
  source.addEventListener("resync", () => reload(page).catch((e) => say(e.message, "bad")));
}

// Uptimes and "ago"s move on between updates.
function tick() {
  for (const cell of document.querySelectorAll("[data-since]")) {
    if (cell.dataset.since) cell.textContent = printable(cell.dataset.before + ago(cell.dataset.since, Number(cell.dataset.offset)) + cell.dataset.after);
  }
}

async function main() {
  const page = document.body.dataset.page;
  if (page === "login") return;
  me = await api("/api/me");
  const who = document.getElementById("me");
  who.textContent = me.name + (me.may_act ? "" : me.signing_key ? " (view only)" : " (view only: the hub has no signing key)");
  if (me.logins) {
    const out = el("button", { type: "button", text: "Log out" });
    out.addEventListener("click", async () => {
      await api("/logout", { method: "POST", headers: { "X-CSRF-Token": me.csrf } });
      location.href = "/login";
    });
    who.append(" ", out);
  }
  setBroker(me.broker);
  if (page === "fleet") {
    document.getElementById("filter").addEventListener("input", renderFleet);
  } else if (page === "process") {
    const { agent, process } = params();
    document.getElementById("title").textContent = printable(agent + "/" + process);
    document.title = printable("respawn — " + agent + "/" + process);
    document.getElementById("refresh-logs").addEventListener("click", loadLogs);
    if (!me.signing_key) document.getElementById("logs").textContent = "The hub has no signing key: it cannot ask the agent for output.";
  }
  setInterval(tick, 5000);
  // The stream first; each time it opens, the page reads everything again.
  live(page);
}

main().catch((e) => say(e.message, "bad"));
