#!/bin/bash
# respawn on a real clustered broker: three rmqtt nodes (rmqttd 0.24.0, Raft cluster) on
# loopback, an agent on node 1, respawnctl on nodes 2 and 3. One line per property, PASS or
# FAIL, as docs/scaling.md's table reports them:
#
#   apt-get install cmake protobuf-compiler
#   cargo install rmqttd --version 0.24.0 --locked --root /opt/rmqtt    # ~30 min on 2 cores
#   cargo build --release -p respawn-agent -p respawn-controller
#   scripts/cluster-check.sh
#
# MODE: rmqtt's cluster kind, `raft` (default: subscriptions and routes replicated through
# Raft) or `broadcast` (each node keeps its own, publishes go to every node).
# RMQTTD (default: rmqttd on the PATH, else /opt/rmqtt/bin/rmqttd), BIN (target/release) and
# BASE (28830: nodes listen for MQTT on BASE+1..3, cluster ports up to BASE+33; keep them
# below the ephemeral range, 32768 and up, or a node may find its Raft port taken) may be set.
set -u
RMQTTD=${RMQTTD:-$(command -v rmqttd || echo /opt/rmqtt/bin/rmqttd)}
BIN=${BIN:-target/release}; BASE=${BASE:-28830}; MODE=${MODE:-raft}
case $MODE in raft | broadcast) ;; *) echo "MODE is raft or broadcast" >&2; exit 1 ;; esac
[ -x "$RMQTTD" ] || { echo "no rmqttd at $RMQTTD: see the top of $0" >&2; exit 1; }
DIR=$(mktemp -d)
PIDS=()
trap 'kill -CONT "${PIDS[@]}" 2>/dev/null; kill -9 "${PIDS[@]}" 2>/dev/null; rm -rf "$DIR"' EXIT
FAILED=0
pass() { echo "PASS  $*"; }
fail() { echo "FAIL  $*"; FAILED=1; }
node() { echo "mqtt://127.0.0.1:$((BASE + $1))"; }
# until SECONDS COMMAND...: runs COMMAND every 0.2 s until it succeeds; fails after SECONDS.
until_ok() {
    local end=$((SECONDS + $1)); shift
    while [ $SECONDS -lt $end ]; do "$@" && return 0; sleep 0.2; done
    return 1
}
ctl() { local n=$1; shift; "$BIN/respawnctl" --broker "$(node "$n")" "$@"; }
liveness() { # liveness NODE: pi-1's liveness as respawnctl on NODE sees it
    ctl "$1" status pi-1 --json 2>/dev/null \
        | python3 -c "import json,sys; a=json.load(sys.stdin)['agents']; print(a[0]['liveness'] if a else 'absent')" 2>/dev/null
}
is() { [ "$(liveness "$1")" = "$2" ]; }

# Each node: MQTT on loopback (anonymous, as the tests' Mosquitto), the retainer in memory,
# the Raft cluster, shared subscriptions, and an ACL: the operator reads and commands
# everything, an agent only its own topics (`%u`, its username, is its agent id).
for i in 1 2 3; do
    d=$DIR/node$i; mkdir -p "$d/plugins" "$d/log"
    cat > "$d/rmqtt.toml" <<EOF
node.id = $i
rpc.server_addr = "127.0.0.1:$((BASE + 10 + i))"
rpc.server_workers = 2
log.to = "file"
log.level = "info"
log.dir = "$d/log"
log.file = "rmqtt.log"
plugins.dir = "$d/plugins/"
plugins.default_startups = ["rmqtt-retainer", "rmqtt-cluster-$MODE", "rmqtt-shared-subscription", "rmqtt-acl"]
listener.tcp.external.addr = "127.0.0.1:$((BASE + i))"
listener.tcp.external.workers = 2
listener.tcp.external.max_connections = 100000
listener.tcp.external.max_handshaking_limit = 500
listener.tcp.external.max_packet_size = "1m"
listener.tcp.external.backlog = 1024
listener.tcp.external.allow_anonymous = true
listener.tcp.external.max_inflight = 16
# What a node queues for a slow client: the default 1,000 dropped four of five process states
# of a 1,000-agent fleet from a first reading.
listener.tcp.external.max_mqueue_len = 100000
listener.tcp.external.max_qos_allowed = 2
listener.tcp.external.session_expiry_interval = "2h"
# A message's own expiry only: rmqtt's example 5m expires retained states that have none
# (an agent's birth and process states vanished after five minutes).
listener.tcp.external.message_expiry_interval = "0s"
EOF
    cat > "$d/plugins/rmqtt-cluster-$MODE.toml" <<EOF
node_grpc_addrs = ["1@127.0.0.1:$((BASE + 11))", "2@127.0.0.1:$((BASE + 12))", "3@127.0.0.1:$((BASE + 13))"]
EOF
    [ "$MODE" = raft ] && cat >> "$d/plugins/rmqtt-cluster-raft.toml" <<EOF
raft_peer_addrs = ["1@127.0.0.1:$((BASE + 21))", "2@127.0.0.1:$((BASE + 22))", "3@127.0.0.1:$((BASE + 23))"]
laddr = "127.0.0.1:$((BASE + 20 + i))"
# Without it a node restarted within a minute cannot bind its Raft port (TIME_WAIT).
raft.grpc_reuseaddr = true
EOF
    cat > "$d/plugins/rmqtt-retainer.toml" <<EOF
storage.type = "ram"
max_retained_messages = 0
max_payload_size = "1MB"
EOF
    cat > "$d/plugins/rmqtt-shared-subscription.toml" <<EOF
strategy = "round_robin_per_group"
EOF
    cat > "$d/plugins/rmqtt-http-api.toml" <<EOF
http_laddr = "127.0.0.1:$((BASE + 30 + i))"
storage.type = "redb"
storage.redb.path = "$d/http-api.redb"
EOF
    cat > "$d/plugins/rmqtt-acl.toml" <<EOF
rules = [
    ["allow", "all", "connect"],
    ["allow", { user = "operator" }, "pubsub", ["#"]],
    ["allow", "all", "pubsub", ["respawn/v1/%u/#"]],
    ["deny", "all", "pubsub", ["#"]],
]
EOF
    # One after the other: the first leads, the others join it.
    (cd "$d" && exec "$RMQTTD" -f "$d/rmqtt.toml" > "$d/out.log" 2>&1) &
    PIDS+=($!)
    until_ok 30 bash -c "echo > /dev/tcp/127.0.0.1/$((BASE + i))" 2>/dev/null \
        || { echo "node $i did not start:" >&2; tail "$d/out.log" "$d/log/rmqtt.log" >&2; exit 1; }
done
echo "three rmqtt nodes ($MODE) on 127.0.0.1:$((BASE + 1))-$((BASE + 3)) ($("$RMQTTD" -V 2>&1 | head -1))"

"$BIN/respawnctl" keygen --out "$DIR/operator.key" --name operator > /dev/null 2>&1
export RESPAWN_USERNAME=operator
# The agent: a heartbeat every second (it expires after three), a keep-alive long enough that
# an expired heartbeat shows before the Last Will does.
cat > "$DIR/agent.toml" <<EOF
[agent]
id = "pi-1"
state_dir = "$DIR/state"
[mqtt]
url = "$(node 1)"
username = "pi-1"
heartbeat = "1s"
keep_alive = "20s"
[[operator]]
name = "operator"
public_key = "$(cat "$DIR/operator.key.pub")"
[[process]]
name = "worker"
command = ["sleep", "100000"]
[[process]]
name = "flaky"
command = ["sh", "-c", "echo oops >&2; sleep 1; exit 3"]
backoff = { initial = "1s", max = "1s" }
crash_loop = { max_exits = 1000 }
EOF
"$BIN/respawn-agent" --config "$DIR/agent.toml" > "$DIR/agent.log" 2>&1 &
AGENT=$!; PIDS+=($AGENT)

if until_ok 30 is 2 online && [ "$(ctl 2 status pi-1 --json | python3 -c "import json,sys; print(len(json.load(sys.stdin)['agents'][0]['processes']))")" = 2 ]; then
    pass "retained state and presence: the agent on node 1, its birth and two process states read on node 2"
else
    fail "retained state and presence: node 2 sees pi-1 as '$(liveness 2)'"
fi

if out=$(ctl 2 --key "$DIR/operator.key" restart pi-1/worker 2>&1) && grep -q "^restarted" <<< "$out"; then
    pass "signed restart from node 2 to the agent on node 1, and its reply: $out"
else
    fail "signed restart from node 2: $out"
fi

"$BIN/respawnctl" --broker "$(node 3)" events --json > "$DIR/events.out" 2>&1 &
EVENTS=$!; PIDS+=($EVENTS)
if until_ok 20 grep -q '"exited"' "$DIR/events.out"; then
    pass "events on node 3: flaky's crashes, with exit code and output"
else
    fail "events on node 3: $(head -3 "$DIR/events.out")"
fi

# Two alerters' shared subscription, one reader on each of two nodes: each event to one.
for n in 2 3; do
    mosquitto_sub -h 127.0.0.1 -p $((BASE + n)) -u operator -V mqttv5 -q 1 \
        -t "\$share/alerts/respawn/v1/+/event" > "$DIR/shared$n.out" 2>&1 &
    PIDS+=($!)
done
sleep_events() { [ "$(cat "$DIR/shared2.out" "$DIR/shared3.out" | wc -l)" -ge 8 ]; }
if until_ok 30 sleep_events; then
    total=$(cat "$DIR/shared2.out" "$DIR/shared3.out" | wc -l)
    unique=$(cat "$DIR/shared2.out" "$DIR/shared3.out" | python3 -c "import json,sys; print(len({json.loads(l)['id'] for l in sys.stdin}))")
    counts="node 2: $(wc -l < "$DIR/shared2.out"), node 3: $(wc -l < "$DIR/shared3.out")"
    if [ "$total" = "$unique" ]; then
        pass "shared subscription across nodes: $total events, each to one reader ($counts)"
    else
        fail "shared subscription across nodes: $total deliveries of $unique events ($counts)"
    fi
else
    fail "shared subscription across nodes: $(cat "$DIR/shared2.out" "$DIR/shared3.out" | wc -l) events in 30 s"
fi

# ACL: the agent's username may not speak for another agent.
mosquitto_pub -h 127.0.0.1 -p $((BASE + 1)) -u pi-1 -V mqttv5 -q 1 -r \
    -t respawn/v1/pi-2/state -m '{"v":1,"state":"online"}' > /dev/null 2>&1
mosquitto_pub -h 127.0.0.1 -p $((BASE + 1)) -u pi-1 -V mqttv5 -q 1 -r \
    -t respawn/v1/pi-1/probe -m allowed > /dev/null 2>&1
own=$(mosquitto_sub -h 127.0.0.1 -p $((BASE + 2)) -u operator -V mqttv5 -t respawn/v1/pi-1/probe \
    -C 1 -W 5 2>&1)
# mosquitto_sub exits 27 when its -W timeout passes with nothing received.
mosquitto_sub -h 127.0.0.1 -p $((BASE + 2)) -u operator -V mqttv5 -t 'respawn/v1/pi-2/#' \
    -C 1 -W 3 > /dev/null 2>&1
other=$?
if [ "$own" = allowed ] && [ $other = 27 ]; then
    pass "ACL per agent (%u): pi-1 publishes under its own id, not for pi-2; the operator reads and commands all"
else
    fail "ACL: pi-1's own topic read back '$own'; reading pi-2's topics ended with $other (27: nothing there)"
fi
mosquitto_pub -h 127.0.0.1 -p $((BASE + 1)) -u pi-1 -V mqttv5 -r -t respawn/v1/pi-1/probe -n

# What subscribing costs: a hundred agents' heartbeats in one SUBSCRIBE (respawnctl reads
# again what a first reading lacked a hundred agents at a time).
filters=()
for n in $(seq 100); do filters+=(-t "respawn/v1/pi-$n/heartbeat"); done
start=$(date +%s.%N)
mosquitto_sub -h 127.0.0.1 -p $((BASE + 2)) -u operator -V mqttv5 "${filters[@]}" \
    -C 1 -W 60 > /dev/null 2>&1
echo "INFO  a SUBSCRIBE of 100 filters answered (pi-1's retained heartbeat) in $(echo "$(date +%s.%N) - $start" | bc | cut -c1-5) s"

# The end marker of a reading: does it come after the retained messages it follows? (A
# reading waits for those that come after it, and reads again what still lacks.)
again=0; late=0
for _ in $(seq 10); do
    ctl 2 -v status > /dev/null 2> "$DIR/status.err"
    grep -q "read again" "$DIR/status.err" && again=$((again + 1))
    grep -q "retained messages after the end marker" "$DIR/status.err" && late=$((late + 1))
done
echo "INFO  snapshot order: in $late of 10 readings on node 2 retained messages came after the end marker; $again read again what they lacked"

# A hung agent: its heartbeat expires (retained message expiry), then the broker fires its
# Last Will when the keep-alive runs out.
kill -STOP $AGENT
stopped=$SECONDS
if until_ok 15 is 2 stale; then
    pass "message expiry: the hung agent's retained heartbeat expired on node 2 ($((SECONDS - stopped)) s): stale"
else
    fail "message expiry: node 2 still shows '$(liveness 2)' 15 s after the agent hung (heartbeat expires after 3 s)"
fi
if until_ok 45 is 2 lost; then
    pass "Last Will: fired by node 1 when the keep-alive ran out, read on node 2 ($((SECONDS - stopped)) s): lost"
else
    fail "Last Will: node 2 shows '$(liveness 2)' 45 s after the agent hung (keep-alive 20 s)"
fi
kill -CONT $AGENT

# A fleet of SIM live simulated agents on node 1 (each logs in as its id, for the ACL), read
# and commanded from node 2: RUNS times each, rc, seconds and largest RSS.
SIM=${SIM:-1000}; RUNS=${RUNS:-5}
if [ "$SIM" -gt 0 ]; then
    ulimit -n "$(ulimit -Hn)"
    "$BIN/respawn-sim" --live --broker "$(node 1)" --agents "$SIM" --processes 10 \
        --heartbeat 10s --username-is-id --operator "$DIR/operator.key.pub" > "$DIR/sim.out" 2> "$DIR/sim.err" &
    PIDS+=($!)
    until_ok 300 grep -q "^online" "$DIR/sim.out" || { fail "simulator: $(cat "$DIR/sim.err")"; exit 1; }
    online() {
        ctl 2 status --json 2> /dev/null | python3 -c "import json,sys; print(sum(a['liveness'] == 'online' for a in json.load(sys.stdin)['agents']))" 2> /dev/null
    }
    all_online() { [ "$(online)" = $((SIM + 1)) ]; }
    if until_ok 120 all_online; then
        echo "INFO  $SIM simulated agents on node 1: $(cat "$DIR/sim.out"), all online on node 2"
    else
        fail "$SIM simulated agents on node 1: $(online) online on node 2 after 120 s"
    fi
    # Each reading whole: every agent (and the real one) online, every process there.
    whole=0
    for _ in $(seq "$RUNS"); do
        /usr/bin/time -f '%e s %M kB' -o "$DIR/t" "$BIN/respawnctl" --broker "$(node 2)" \
            status --json > "$DIR/out" 2> "$DIR/err" && rc=0 || rc=$?
        seen=$(python3 -c "import json,sys; a=json.load(sys.stdin)['agents']; print(sum(x['liveness'] == 'online' for x in a), sum(len(x['processes']) for x in a))" < "$DIR/out" 2> /dev/null)
        [ "$rc" = 0 ] && [ "$seen" = "$((SIM + 1)) $((SIM * 10 + 2))" ] && whole=$((whole + 1))
        echo "INFO  status of $SIM agents × 10 on node 2: rc=$rc $(tail -1 "$DIR/t"), online and processes: ${seen:-none} $(head -c 120 "$DIR/err")"
    done
    if [ "$whole" = "$RUNS" ]; then
        pass "status of $SIM live agents on node 1, read on node 2: whole in $whole of $RUNS"
    else
        fail "status of $SIM live agents on node 1, read on node 2: whole in $whole of $RUNS"
    fi
    # rmqtt's ACL refuses a few agents' subscriptions to their commands now and then; they
    # ask again at each heartbeat, as the agent does.
    standing() { tail -1 "$DIR/sim.err" | grep -q "(standing 0)"; }
    until_ok 60 standing
    echo "INFO  simulator: $(tail -1 "$DIR/sim.err")"
    every=0
    for _ in $(seq "$RUNS"); do
        /usr/bin/time -f '%e s %M kB' -o "$DIR/t" "$BIN/respawnctl" --broker "$(node 2)" \
            --key "$DIR/operator.key" restart 'sim-*/worker' > "$DIR/out" 2> "$DIR/err" && rc=0 || rc=$?
        restarted=$(grep -c '^restarted' "$DIR/out")
        [ "$rc" = 0 ] && [ "$restarted" = "$SIM" ] && every=$((every + 1))
        echo "INFO  restart 'sim-*/worker' from node 2: rc=$rc $(tail -1 "$DIR/t"), $restarted restarted $(grep -v '^restarted' "$DIR/out" | head -2 | tr '\n' ' ')$(head -c 120 "$DIR/err")"
    done
    if [ "$every" = "$RUNS" ]; then
        pass "restart 'sim-*/worker' of $SIM agents from node 2: every reply in $every of $RUNS"
    else
        fail "restart 'sim-*/worker' of $SIM agents from node 2: every reply in $every of $RUNS"
    fi
fi

exit $FAILED
