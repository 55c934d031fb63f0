#!/usr/bin/env bash
# keep-running.sh <command>…: runs the command, and again 1 s after each exit,
# as a service manager would (systemd's Restart=always). The lab runs the Dask
# workers under it: a Dask worker that loses its scheduler exits, and comes
# back once the scheduler does.
#
# SIGTERM or SIGINT stops the command and this loop.
child=""
trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; wait; exit 0' TERM INT
while true; do
  "$@" &
  child=$!
  wait "$child"
  status=$?
  echo "keep-running: '$1' exited with status $status; starting it again in 1 s" >&2
  sleep 1 &
  wait $!
done
