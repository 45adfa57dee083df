#!/bin/bash
# respawnctl status against 10,000 simulated agents × 10 processes on a private Mosquitto:
# for each run, wall time, largest RSS, and whether the view was complete (exit 0), said it
# was not (exit 2) or failed (exit 1). The numbers in docs/benchmarks.md come from
#
#   cargo build --release -p respawn-controller -p respawn-tests --bin respawnctl --bin respawn-sim
#   RUNS=20 scripts/fleet-status-bench.sh
#
# (AGENTS, PORT and BIN may be set too). One line per run: the arguments, rc=, wall seconds,
# largest RSS in KB, and how many lines the run wrote to stderr. With BRIDGE=1 the fleet is
# published to a site broker bridged to the measured one by examples/mosquitto/bridge.conf.
set -eu
BIN=${BIN:-target/release}; RUNS=${RUNS:-20}; AGENTS=${AGENTS:-10000}; PORT=${PORT:-18999}
DIR=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; rm -rf "$DIR"' EXIT
. "$(dirname "$0")/bench-brokers.sh"
start_broker m "$PORT"
MOSQUITTO=${PIDS[-1]}
PUBLISH_PORT=$PORT
if [ "${BRIDGE:-0}" = 1 ]; then
    PUBLISH_PORT=$((PORT + 1))
    start_broker site "$PUBLISH_PORT" "$PORT"
fi
start=$(date +%s.%N)
"$BIN/respawn-sim" --broker "mqtt://127.0.0.1:$PUBLISH_PORT" --agents "$AGENTS" --processes 10 > /dev/null
echo "published in $(echo "$(date +%s.%N) - $start" | bc) s"
if [ "${BRIDGE:-0}" = 1 ]; then
    # The bridge carries the retained state on its own time: wait until the measured broker
    # holds every agent and process (a check every second, for at most five minutes).
    whole="import json, sys; d = json.load(open('$DIR/out')); a = d['agents']
sys.exit(0 if len(a) == $AGENTS and sum(len(x['processes']) for x in a) == $AGENTS * 10 else 1)"
    for _ in $(seq 300); do
        "$BIN/respawnctl" --broker "mqtt://127.0.0.1:$PORT" status --json > "$DIR/out" 2> /dev/null \
            && python3 -c "$whole" && break
        sleep 1
    done
    echo "the whole fleet across the bridge after $(echo "$(date +%s.%N) - $start" | bc) s"
fi
for args in "status" "status --json"; do
    for _ in $(seq "$RUNS"); do
        # shellcheck disable=SC2086 # the arguments are meant to split
        /usr/bin/time -f '%e %M' -o "$DIR/t" "$BIN/respawnctl" --broker "mqtt://127.0.0.1:$PORT" $args \
            > "$DIR/out" 2> "$DIR/err" && rc=0 || rc=$?
        echo "$args rc=$rc $(tail -1 "$DIR/t") $(grep -c . "$DIR/err" || true)"
    done
done
echo "mosquitto $(grep VmRSS "/proc/$MOSQUITTO/status")"
