#!/usr/bin/env bash
# Starts a Docker engine for the docker tests when none answers, and stops only what it
# started.
#   scripts/docker-engine.sh start        engine up (or already up); exit 1 with the reason if not
#   scripts/docker-engine.sh stop         stop the engine this script started, if any
#   scripts/docker-engine.sh status       say whether an engine answers
#   scripts/docker-engine.sh run -- CMD   start (a failure is reported, not fatal), run CMD,
#                                         stop the engine if this run started it (not one
#                                         another run or `start` started); exits with CMD's
#                                         status
# The socket is DOCKER_HOST's (unix://PATH) or /var/run/docker.sock. Starting needs root
# and dockerd (Debian's docker.io: scripts/system-deps.sh). LIVEREC_DOCKER=0: `run` only
# runs CMD. Images stay in the data root (LIVEREC_DOCKER_DATA_ROOT, default
# /var/lib/docker) between runs: the cache of scripts/build-images.sh.
set -euo pipefail

sock=/var/run/docker.sock
if [[ ${DOCKER_HOST:-} == unix://* ]]; then sock=${DOCKER_HOST#unix://}; fi
state_dir=/run/liverec-docker-engine
name=$(basename "$sock" .sock)
pidfile=$state_dir/$name.pid        # written only for an engine this script started
logfile=${LIVEREC_DOCKERD_LOG:-/tmp/liverec-dockerd-$name.log}

say() { echo "docker-engine: $*" >&2; }

started=0  # 1 once this invocation launched dockerd (what `run` may stop)

answers() { timeout 10 docker -H "unix://$sock" version >/dev/null 2>&1; }

start() {
  if answers; then
    say "an engine answers at $sock"
    return 0
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    say "no engine at $sock and no dockerd installed (scripts/system-deps.sh installs docker.io)"
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    say "no engine at $sock and starting dockerd needs root"
    return 1
  fi
  mkdir -p "$state_dir"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    # Another run's engine, still starting or too loaded to answer in 10 s: wait for
    # it rather than start a second one over its pidfile.
    say "waiting for the dockerd another run started (pid $(cat "$pidfile"))"
    for _ in $(seq 1 60); do
      if answers; then say "an engine answers at $sock"; return 0; fi
      sleep 1
    done
    say "the dockerd another run started (pid $(cat "$pidfile")) does not answer"
    return 1
  fi
  say "starting dockerd on $sock (log: $logfile)"
  # setsid: the engine must not get the terminal's signals meant for the test run.
  setsid dockerd -H "unix://$sock" --pidfile "$pidfile.dockerd" \
    --data-root "${LIVEREC_DOCKER_DATA_ROOT:-/var/lib/docker}" \
    >"$logfile" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  started=1
  for _ in $(seq 1 60); do
    if answers; then
      say "engine up in ${SECONDS}s (pid $(cat "$pidfile"))"
      return 0
    fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      rm -f "$pidfile"
      say "dockerd exited during start-up:"
      tail -n 15 "$logfile" >&2
      return 1
    fi
    sleep 1
  done
  say "dockerd did not answer within 60 s; stopping it"
  stop
  return 1
}

stop() {
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    say "stopping the dockerd this script started (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "dockerd (pid $pid) still runs after 30 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status)
    if answers; then say "an engine answers at $sock"; else say "no engine at $sock"; exit 1; fi ;;
  run)
    shift
    [ "${1:-}" = -- ] && shift
    [ $# -gt 0 ] || { say "run needs a command"; exit 2; }
    if [ "${LIVEREC_DOCKER:-1}" = 0 ]; then exec "$@"; fi
    # Before start: an interrupt while dockerd starts up must stop it too (setsid
    # keeps the terminal's signals from it).
    trap '[ "$started" = 0 ] || stop; exit 130' INT TERM
    start || say "the docker tests will be skipped and Kafka tests use the local broker"
    rc=0
    "$@" || rc=$?
    if [ "$started" = 1 ]; then stop; fi
    exit "$rc"
    ;;
  *) echo "usage: $0 start|stop|status|run -- CMD..." >&2; exit 2 ;;
esac
