# Sourced by the fleet benchmarks: private Mosquittos on loopback. The caller sets DIR (a
# temporary directory) and PIDS (an array of the processes it kills when it exits).

# Waits until something listens on port $1 (at most 10 s).
wait_port() {
    for _ in $(seq 100); do
        (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2; exit 1
}

# start_broker NAME PORT [CENTRAL_PORT]: a Mosquitto with its defaults on PORT, its
# configuration and log in $DIR/NAME.conf and $DIR/NAME.log, its pid added to PIDS. With
# CENTRAL_PORT it is a site broker, bridged to that one by examples/mosquitto/bridge.conf.
start_broker() {
    local name=$1 port=$2 central=${3:-}
    {
        echo "listener $port 127.0.0.1"
        echo "allow_anonymous true"
        if [ "$(id -u)" = 0 ]; then echo "user root"; fi
        if [ -n "$central" ]; then
            sed "s/central.example.org:1883/127.0.0.1:$central/" \
                "$(dirname "${BASH_SOURCE[0]}")/../examples/mosquitto/bridge.conf"
        fi
    } > "$DIR/$name.conf"
    # Checked before starting: a broker of a run just ended may still hold the port, and the
    # new one would then exit while the old one answers for it.
    if (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is taken: set PORT" >&2; exit 1
    fi
    mosquitto -c "$DIR/$name.conf" > "$DIR/$name.log" 2>&1 &
    PIDS+=($!)
    wait_port "$port"
    if grep -q "Address already in use" "$DIR/$name.log"; then
        echo "port $port is taken: set PORT" >&2; exit 1
    fi
}
