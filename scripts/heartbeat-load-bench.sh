#!/bin/bash
# What a quiet fleet costs its broker: AGENTS (10,000) live simulated agents × 10 processes on
# a private Mosquitto, nothing happening but their heartbeats (every HEARTBEAT, 30 s), and the
# CPU time Mosquitto and the simulator use over MEASURE (120) s once all are connected and
# SETTLE (40) s have passed. Each simulator of SIMS (default target/release/respawn-sim) is
# run in turn, ROUNDS (2) times, so that builds are compared within one run:
#
#   cargo build --release -p respawn-tests --bin respawn-sim
#   SIMS="/tmp/old/respawn-sim target/release/respawn-sim" scripts/heartbeat-load-bench.sh
#
# Prints one line a run: simulator, Mosquitto CPU ms, simulator CPU ms, messages Mosquitto
# received in the window ($SYS), Mosquitto RSS.
set -eu
SIMS=${SIMS:-target/release/respawn-sim}; AGENTS=${AGENTS:-10000}; ROUNDS=${ROUNDS:-2}
HEARTBEAT=${HEARTBEAT:-30s}; MEASURE=${MEASURE:-120}; SETTLE=${SETTLE:-40}
PORT=${PORT:-18990}
DIR=$(mktemp -d)
PIDS=()
trap 'kill -9 "${PIDS[@]}" 2>/dev/null; rm -rf "$DIR"' EXIT
ulimit -n "$(ulimit -Hn)"
. "$(dirname "$0")/bench-brokers.sh"
# User and system CPU time of process $1, in milliseconds.
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) * 1000 / hz}' "/proc/$1/stat"; }
# Messages the broker has received since it started, as it says on $SYS.
received() {
    mosquitto_sub -p "$PORT" -C 1 -W 5 -t '$SYS/broker/messages/received' 2>/dev/null || echo 0
}
for round in $(seq "$ROUNDS"); do
    for sim in $SIMS; do
        PIDS=()
        start_broker "m$round" "$PORT"
        broker=${PIDS[-1]}
        "$sim" --live --broker "mqtt://127.0.0.1:$PORT" --agents "$AGENTS" --processes 10 \
            --heartbeat "$HEARTBEAT" > "$DIR/sim.out" 2> "$DIR/sim.err" &
        PIDS+=($!); fleet=$!
        for _ in $(seq 6000); do
            grep -q '^online' "$DIR/sim.out" && break
            sleep 0.1
        done
        grep -q '^online' "$DIR/sim.out" || { echo "not all online" >&2; cat "$DIR/sim.err" >&2; exit 1; }
        sleep "$SETTLE"
        b0=$(cpu_ms "$broker"); s0=$(cpu_ms "$fleet"); m0=$(received)
        sleep "$MEASURE"
        b1=$(cpu_ms "$broker"); s1=$(cpu_ms "$fleet"); m1=$(received)
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$broker/status")
        echo "round $round $sim: mosquitto $((${b1%.*} - ${b0%.*})) ms CPU, simulator $((${s1%.*} - ${s0%.*})) ms CPU, $((m1 - m0)) messages received in ${MEASURE} s, mosquitto RSS $((rss / 1024)) MB"
        kill -9 "${PIDS[@]}" 2>/dev/null || true
        wait 2>/dev/null || true
    done
done
