#!/bin/sh
# A stand-in for the door opener: logs a heartbeat line and keeps a background helper
# (which the agent stops together with it, as a process group).
sleep 100000 &
echo "doorbot listening on port ${PORT:-4567} (helper pid $!)"
trap 'echo "doorbot: SIGTERM, closing the door"; kill $!; exit 0' TERM
while true; do
    echo "doorbot: all quiet"
    sleep 30 &
    wait $!
done
