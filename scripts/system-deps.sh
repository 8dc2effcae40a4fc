#!/usr/bin/env bash
# Installs the Debian packages the test suite needs for its real parts, when missing:
# prometheus (the end-to-end test scrapes through a real Prometheus server), chromium
# (the dashboard is tested in a real headless browser), and for the docker tests
# docker.io (dockerd, containerd, runc), a compose CLI (Debian's docker-compose where
# no `docker compose` plugin is installed) and debootstrap (the local base image).
set -euo pipefail
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${LIVEREC_DOCKER:-1}" != "0" ]; then  # LIVEREC_DOCKER=0: the docker tests skip
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    missing+=(docker-compose)
  fi
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "system-deps: installing missing Debian packages: ${missing[*]}"
# Without apt-get, or without root and sudo, say what is missing and go on: the tests
# that need it fail (or skip) and say so. Where apt-get runs, a failed install stops.
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: WARNING: apt-get not found; install ${missing[*]} yourself (tests needing them will fail or skip)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "system-deps: WARNING: not root and no sudo; install ${missing[*]} yourself (tests needing them will fail or skip)" >&2
    exit 0
  fi
  SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
echo "system-deps: installed ${missing[*]}"
