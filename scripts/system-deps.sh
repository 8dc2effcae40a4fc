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
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  missing+=(docker-compose)
fi
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "system-deps: installing missing Debian packages: ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: apt-get not found; install ${missing[*]} yourself (tests needing them will fail)" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
echo "system-deps: installed ${missing[*]}"
