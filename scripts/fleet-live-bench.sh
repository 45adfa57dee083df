#!/bin/bash
# A fleet of live simulated agents (respawn-sim --live: each its own MQTT connection with a
# Last Will, answering signed commands) on a private Mosquitto, measured as docs/benchmarks.md
# reports it:
#
#   cargo build --release -p respawn-controller -p respawn-tests --bin respawnctl --bin respawn-sim
#   scripts/fleet-live-bench.sh
#
# 1. AGENTS (10,000) agents × 10 processes connect; the simulator's and Mosquitto's memory.
# 2. `respawnctl status`, RUNS times: rc (0 complete, 2 said incomplete), seconds, largest RSS.
# 3. `respawnctl restart 'sim-00*/worker'` (1,000 agents), RUNS times: rc, seconds until every
#    reply, largest RSS, restarted lines.
# 4. The hub (`respawnctl serve`), HUB_RUNS (3) times: from its start until /metrics (polled
#    every 0.1 s) has every agent up, its RSS then, and 10 scrapes of /metrics: seconds, bytes.
#    HUB_BINS (default $BIN/respawnctl) may name several builds, started in turn each run.
# 5. `respawnctl alerts` with a webhook target (a local HTTP sink) and its defaults, its first
#    view of the fleet timed; then a site of SITE (1,000) more agents connects and its simulator
#    is killed at once: how many chat messages, and when the last one came.
# BIN, RUNS, AGENTS, SITE and PORT may be set; BRIDGE=1 puts the agents behind a bridge.
set -eu
BIN=${BIN:-target/release}; RUNS=${RUNS:-10}; AGENTS=${AGENTS:-10000}; SITE=${SITE:-1000}
PORT=${PORT:-18997}; SINK_PORT=$((PORT + 1)); HUB_PORT=$((PORT + 3))
HUB_RUNS=${HUB_RUNS:-3}; HUB_BINS=${HUB_BINS:-$BIN/respawnctl}
DIR=$(mktemp -d)
PIDS=()
trap 'kill -9 "${PIDS[@]}" 2>/dev/null; rm -rf "$DIR"' EXIT
# Every agent is a file descriptor in the broker and in the simulator.
ulimit -n "$(ulimit -Hn)"
. "$(dirname "$0")/bench-brokers.sh"
start_broker m "$PORT"
MOSQUITTO=${PIDS[-1]}
# Waits (at most $2 s) until file $1 has a line matching $3.
wait_line() {
    for _ in $(seq $(($2 * 10))); do
        grep -q "$3" "$1" 2>/dev/null && return
        sleep 0.1
    done
    echo "no line matching '$3' in $1 within $2 s" >&2; cat "$1" >&2; exit 1
}
rss() { awk '/VmRSS/ {print $2 " kB"}' "/proc/$1/status"; }
BROKER="mqtt://127.0.0.1:$PORT"
# With BRIDGE=1 the agents connect to a site broker bridged to the measured one by
# examples/mosquitto/bridge.conf; respawnctl and the alerter stay on the measured one.
AGENTS_BROKER=$BROKER
if [ "${BRIDGE:-0}" = 1 ]; then
    SITE_PORT=$((PORT + 2))
    start_broker site "$SITE_PORT" "$PORT"
    AGENTS_BROKER="mqtt://127.0.0.1:$SITE_PORT"
fi
"$BIN/respawnctl" keygen --out "$DIR/alice.key" --name alice > /dev/null 2>&1

echo "== $AGENTS live agents × 10 processes"
"$BIN/respawn-sim" --live --broker "$AGENTS_BROKER" --agents "$AGENTS" --processes 10 \
    --operator "$DIR/alice.key.pub" > "$DIR/fleet.out" 2> "$DIR/fleet.err" &
PIDS+=($!); FLEET=$!
wait_line "$DIR/fleet.out" 600 "^online"
cat "$DIR/fleet.out"
# Through a bridge the state crosses on its own time: wait until the measured broker shows
# every agent online (a check every second, for at most five minutes).
count_online() {
    "$BIN/respawnctl" --broker "$BROKER" status --json 2> /dev/null \
        | python3 -c "import json, sys; print(sum(a['liveness'] == 'online' for a in json.load(sys.stdin)['agents']))" 2> /dev/null || true
}
for _ in $(seq 300); do
    [ "$(count_online)" = "$AGENTS" ] && break
    sleep 1
done
echo "every agent online on the measured broker"
echo "simulator $(rss $FLEET), mosquitto $(rss $MOSQUITTO)"

echo "== respawnctl status (rc seconds max-RSS-kB)"
for _ in $(seq "$RUNS"); do
    /usr/bin/time -f '%e %M' -o "$DIR/t" "$BIN/respawnctl" --broker "$BROKER" status \
        > "$DIR/out" 2> "$DIR/err" && rc=0 || rc=$?
    echo "status rc=$rc $(tail -1 "$DIR/t")"
done

echo "== respawnctl restart 'sim-00*/worker' (rc seconds max-RSS-kB restarted)"
for _ in $(seq "$RUNS"); do
    /usr/bin/time -f '%e %M' -o "$DIR/t" "$BIN/respawnctl" --broker "$BROKER" \
        --key "$DIR/alice.key" restart 'sim-00*/worker' > "$DIR/out" 2> "$DIR/err" && rc=0 || rc=$?
    echo "restart rc=$rc $(tail -1 "$DIR/t") $(grep -c '^restarted' "$DIR/out" || true)"
done

echo "== the hub: every agent up in /metrics (seconds, RSS), then 10 scrapes (seconds bytes)"
metrics() { curl -s -o "$DIR/metrics" -w '%{time_total} %{size_download}' "http://127.0.0.1:$HUB_PORT/metrics"; }
for _ in $(seq "$HUB_RUNS"); do
    for hub in $HUB_BINS; do
        start=$(date +%s.%N)
        "$hub" --broker "$BROKER" serve --listen "127.0.0.1:$HUB_PORT" > "$DIR/hub.out" 2>&1 &
        HUB=$!; PIDS+=($HUB)
        wait_port "$HUB_PORT"
        for _ in $(seq 1200); do
            metrics > /dev/null || true
            [ "$(grep -c '^respawn_agent_up{.*} 1$' "$DIR/metrics")" = "$AGENTS" ] && break
            sleep 0.1
        done
        up=$(echo "$(date +%s.%N) - $start" | bc)
        echo "hub $hub: every agent up in /metrics after $up s, $(rss $HUB)"
        scrapes=""
        for _ in $(seq 10); do scrapes="$scrapes $(metrics)"; done
        echo "hub $hub: scrapes$scrapes, then $(rss $HUB)"
        kill $HUB; wait $HUB 2>/dev/null || true
    done
done

echo "== site outage: $SITE agents at once, alerts with their defaults"
cat > "$DIR/sink.py" <<EOF
import http.server, time
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        print(f"{time.time():.3f} POST {self.path}", flush=True)
        self.send_response(200); self.end_headers()
    def log_message(self, *args): pass
http.server.HTTPServer(("127.0.0.1", $SINK_PORT), Sink).serve_forever()
EOF
python3 "$DIR/sink.py" > "$DIR/sink.log" 2>&1 &
PIDS+=($!)
wait_port "$SINK_PORT"
cat > "$DIR/alerts.toml" <<EOF
[alerts]
state_file = "$DIR/alerts.json"

[[target]]
kind = "webhook"
url = "http://127.0.0.1:$SINK_PORT/hook"
EOF
start=$(date +%s.%N)
"$BIN/respawnctl" --broker "$BROKER" alerts --config "$DIR/alerts.toml" > "$DIR/alerts.out" 2> "$DIR/alerts.err" &
PIDS+=($!); ALERTER=$!
wait_line "$DIR/alerts.err" 120 "watching the fleet"
echo "alerter first view of $AGENTS agents in $(echo "$(date +%s.%N) - $start" | bc) s, $(rss $ALERTER)"
"$BIN/respawn-sim" --live --broker "$AGENTS_BROKER" --agents "$SITE" --first "$AGENTS" --processes 10 \
    > "$DIR/site.out" 2> /dev/null &
SITE_SIM=$!; PIDS+=($SITE_SIM)
wait_line "$DIR/site.out" 300 "^online"
# The alerter must know the site's agents as online before they can be lost.
for _ in $(seq 600); do
    [ "$(count_online)" = $((AGENTS + SITE)) ] && break
    sleep 0.5
done
kill -9 $SITE_SIM
cut=$(date +%s.%N)
echo "site cut at $(date -u +%T)"
# Alerts wait out their grace (60 s) and group window (5 s): watch until 30 s pass without a
# new message after the first one, for at most five minutes.
quiet=0; seen=0
for _ in $(seq 300); do
    sleep 1
    now=$(grep -c POST "$DIR/sink.log" || true)
    if [ "$now" -gt 0 ] && [ "$now" = "$seen" ]; then quiet=$((quiet + 1)); else quiet=0; fi
    seen=$now
    [ "$quiet" -ge 30 ] && break
done
echo "chat messages: $(grep -c POST "$DIR/sink.log" || true)"
if [ -s "$DIR/sink.log" ]; then
    echo "last one $(echo "$(tail -1 "$DIR/sink.log" | cut -d' ' -f1) - $cut" | bc) s after the cut"
fi
echo "alerter $(rss $ALERTER), mosquitto $(rss $MOSQUITTO)"
grep -c "delivered" "$DIR/alerts.err" | sed 's/^/alerter deliveries logged: /'
