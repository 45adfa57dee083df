#!/bin/bash
# The hub with Home Assistant discovery on, under a burst: AGENTS (500) agents of 10 processes
# each publish their birth and then their processes' states (retained, QoS 1, as fast as
# paho sends them) to a private Mosquitto while `respawnctl serve` runs with [homeassistant].
# Prints, for each build in HUB_BINS (default target/debug/respawnctl), how long from the
# first message until /metrics has every process: as docs/benchmarks.md reports it.
#
#   cargo build -p respawn-controller
#   HUB_BINS="/tmp/old/respawnctl target/debug/respawnctl" scripts/ha-burst-bench.sh
#
# Needs mosquitto and python3 with paho-mqtt 2. PORT (18960) and RUNS (3) may be set.
set -eu
AGENTS=${AGENTS:-500}; RUNS=${RUNS:-3}; PORT=${PORT:-18960}; HUB_PORT=$((PORT + 1))
HUB_BINS=${HUB_BINS:-target/debug/respawnctl}
DIR=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; rm -rf "$DIR"' EXIT
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$PORT" > "$DIR/mosquitto.conf"
[ "$(id -u)" = 0 ] && echo "user root" >> "$DIR/mosquitto.conf"
mosquitto -c "$DIR/mosquitto.conf" > "$DIR/mosquitto.log" 2>&1 &
PIDS+=($!)
printf 'listen = "127.0.0.1:%s"\n\n[homeassistant]\nallow = ["fk-0000/*"]\n' "$HUB_PORT" > "$DIR/serve.toml"
cat > "$DIR/burst.py" <<'PY'
import json, sys, time, re, urllib.request
import paho.mqtt.client as mqtt
port, hub, agents, clear = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "clear"
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.max_inflight_messages_set(1000)
c.connect("127.0.0.1", port)
c.loop_start()
start = time.time()
infos = []
for i in range(agents):
    agent, names = f"fk-{i:04d}", [f"svc{j}.x" for j in range(10)]
    birth = {"v": 1, "agent": agent, "state": "online", "version": "0.1.0", "host": "h", "processes": names}
    infos.append(c.publish(f"respawn/v1/{agent}/state", b"" if clear else json.dumps(birth), qos=1, retain=True))
    for name in names:
        state = {"v": 1, "agent": agent, "name": name, "state": "running", "pid": 100,
                 "since": "2026-12-07T00:00:00Z", "restarts": i % 7}
        infos.append(c.publish(f"respawn/v1/{agent}/proc/{name}", b"" if clear else json.dumps(state), qos=1, retain=True))
for info in infos:
    info.wait_for_publish(30)
c.loop_stop()
if clear:
    sys.exit(0)
while time.time() - start < 300:
    try:
        page = urllib.request.urlopen(f"http://{hub}/metrics").read().decode()
    except OSError:
        page = ""
    if len(re.findall(r"^respawn_process_up\{", page, re.M)) >= agents * 10:
        print(f"{time.time() - start:.1f}")
        sys.exit(0)
    time.sleep(0.1)
print("timeout")
PY
sleep 0.5
for run in $(seq "$RUNS"); do
    for bin in $HUB_BINS; do
        python3 "$DIR/burst.py" "$PORT" "127.0.0.1:$HUB_PORT" "$AGENTS" clear
        "$bin" --broker "mqtt://127.0.0.1:$PORT" serve --config "$DIR/serve.toml" > "$DIR/hub.log" 2>&1 &
        hub=$!
        for _ in $(seq 100); do grep -q "connected to the broker" "$DIR/hub.log" && break; sleep 0.1; done
        echo "run $run $bin: $(python3 "$DIR/burst.py" "$PORT" "127.0.0.1:$HUB_PORT" "$AGENTS" go) s"
        kill "$hub"; wait "$hub" 2>/dev/null || true
    done
done
