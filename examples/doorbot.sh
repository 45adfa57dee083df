#!/bin/sh
# A stand-in for the door opener: logs a heartbeat line and keeps a background helper, which
# it stops on SIGTERM (and which the agent would kill with the process group anyway).
sleep 100000 &
helper=$!
echo "doorbot listening on port ${PORT:-4567} (helper pid $helper)"
trap 'echo "doorbot: SIGTERM, closing the door"; kill "$helper" 2>/dev/null; exit 0' TERM
while true; do
    echo "doorbot: all quiet"
    sleep 30 &
    wait $!
done
