#!/bin/bash
# respawnctl status against 10,000 simulated agents × 10 processes on a private Mosquitto:
# for each run, wall time, largest RSS, and whether the view was complete (exit 0), said it
# was not (exit 2) or failed (exit 1). The numbers in docs/benchmarks.md come from
#
#   cargo build --release -p respawn-controller -p respawn-tests --bin respawnctl --bin respawn-sim
#   RUNS=20 scripts/fleet-status-bench.sh
#
# (AGENTS, PORT and BIN may be set too). One line per run: the arguments, rc=, wall seconds,
# largest RSS in KB, and how many lines the run wrote to stderr.
set -eu
BIN=${BIN:-target/release}; RUNS=${RUNS:-20}; AGENTS=${AGENTS:-10000}; PORT=${PORT:-18999}
DIR=$(mktemp -d)
trap 'kill $(cat $DIR/pid) 2>/dev/null; rm -rf $DIR' EXIT
{
    echo "listener $PORT 127.0.0.1"
    echo "allow_anonymous true"
    [ "$(id -u)" = 0 ] && echo "user root"
} > "$DIR/m.conf"
mosquitto -c "$DIR/m.conf" > "$DIR/m.log" 2>&1 &
echo $! > "$DIR/pid"
for _ in $(seq 100); do
    (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
    sleep 0.1
done
"$BIN/respawn-sim" --broker "mqtt://127.0.0.1:$PORT" --agents "$AGENTS" --processes 10 > /dev/null
for args in "status" "status --json"; do
    for _ in $(seq "$RUNS"); do
        # shellcheck disable=SC2086 # the arguments are meant to split
        /usr/bin/time -f '%e %M' -o "$DIR/t" "$BIN/respawnctl" --broker "mqtt://127.0.0.1:$PORT" $args \
            > "$DIR/out" 2> "$DIR/err" && rc=0 || rc=$?
        echo "$args rc=$rc $(tail -1 "$DIR/t") $(grep -c . "$DIR/err" || true)"
    done
done
echo "mosquitto $(grep VmRSS "/proc/$(cat "$DIR/pid")/status")"
