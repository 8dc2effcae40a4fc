#!/usr/bin/env bash
# Builds local stand-ins for the images the compose stack and the Kafka test fixture use,
# from what a machine without an image registry reaches (Debian's mirror, PyPI, Maven
# Central):
#   base        Debian 12 (bookworm) with Python 3.11, by debootstrap + docker import
#               (stand-in for python:3.11-slim)
#   liverec     the application image from ./Dockerfile (pip install from pyproject.toml)
#   kafka       Apache Kafka 4.1.1 (KRaft) from its Maven Central jars
#               (deploy/docker/kafka; stand-in for apache/kafka:4.1.1)
#   prometheus  Debian's prometheus package (deploy/docker/prometheus; for prom/prometheus)
# Grafana has no Debian package: the compose file runs it only under the `grafana` profile.
#
# Usage: scripts/build-images.sh [base|liverec|kafka|prometheus]...   (default: all four)
# Images are cached by tag (base) and by Docker's build cache (the rest): a second run
# with nothing changed takes seconds. The variables that point docker-compose.yml at
# these images are printed at the end and written to deploy/docker/local-images.env:
#   docker compose --env-file deploy/docker/local-images.env up -d
# Environment: DOCKER_HOST as for docker; DEBIAN_MIRROR (default: this machine's apt
# source); LIVEREC_REBUILD_BASE=1 to rebuild the base.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_TAG=${LIVEREC_LOCAL_BASE_TAG:-liverec-local/python:3.11-bookworm}
LIVEREC_TAG=${LIVEREC_IMAGE:-liverec:latest}
KAFKA_TAG=${LIVEREC_LOCAL_KAFKA_TAG:-liverec-local/kafka:4.1.1}
PROMETHEUS_TAG=${LIVEREC_LOCAL_PROMETHEUS_TAG:-liverec-local/prometheus:bookworm}
ENV_FILE=deploy/docker/local-images.env
MVN_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies

say() { echo "build-images: $*" >&2; }
die() { say "$*"; exit 1; }

# Temp dirs of this run (the debootstrap tree is root's and large): removed however the
# script ends -- die's exit, an error, Ctrl-C -- not only when a function returns.
tmps=()
cleanup() { if ((${#tmps[@]})); then rm -rf "${tmps[@]}"; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v docker >/dev/null || die "the docker CLI is not installed (scripts/system-deps.sh installs docker.io)"
docker version >/dev/null 2>&1 || die "no Docker engine answers${DOCKER_HOST:+ at $DOCKER_HOST} (scripts/docker-engine.sh start)"

# BuildKit (RUN --mount) is needed: buildx where installed, else an engine's own CLI of
# the 20.x/22.x line (Debian's docker.io), which has BuildKit built in.
BUILD=()
if docker buildx version >/dev/null 2>&1; then
  BUILD=(docker buildx build --load)
else
  while read -r cli; do
    major=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
    if [[ $major =~ ^[0-9]+$ ]] && (( major < 23 )); then
      BUILD=(env DOCKER_BUILDKIT=1 "$cli" build)
      break
    fi
  done < <(type -ap docker)
fi
((${#BUILD[@]})) || die "no BuildKit-capable docker CLI: install docker-buildx (or Debian's docker.io)"

# Builds reach the package indexes through the host's network, with its CA bundle and
# pip configuration (a TLS-intercepting proxy's CA, an index mirror) as build secrets.
BUILD+=(--network host --progress plain)
[ -f /etc/ssl/certs/ca-certificates.crt ] && BUILD+=(--secret id=cacerts,src=/etc/ssl/certs/ca-certificates.crt)
[ -f /etc/pip.conf ] && BUILD+=(--secret id=pipconf,src=/etc/pip.conf)

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

timed() {  # timed NAME CMD...: runs CMD, logging to a file, and reports its wall time
  local name=$1 start log rc=0
  shift
  start=$(date +%s)
  log=$(mktemp "/tmp/build-images.$name.XXXXXX.log")
  "$@" >"$log" 2>&1 || rc=$?
  if ((rc)); then
    tail -n 40 "$log" >&2
    die "$name failed (exit $rc); full log: $log"
  fi
  say "$name: done in $(( $(date +%s) - start )) s (log: $log)"
  rm -f "$log"
}

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  # The first Debian archive URI in this machine's apt sources (deb822 or one-line form).
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' | grep -v -- '-security' | head -n1 || true)
  [ -n "$uri" ] || uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "deb" {print ($2 ~ /^\[/ ? $3 : $2)}' | grep -i debian | grep -v -- '-security' | head -n1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

build_base() {
  if image_exists "$BASE_TAG" && [ "${LIVEREC_REBUILD_BASE:-0}" != 1 ]; then
    say "base: $BASE_TAG present"
    return
  fi
  command -v debootstrap >/dev/null || die "debootstrap is not installed (scripts/system-deps.sh installs it)"
  [ "$(id -u)" -eq 0 ] || die "debootstrap needs root to build the base image"
  local root mirror
  mirror=$(debian_mirror)
  root=$(mktemp -d /tmp/liverec-base.XXXXXX)
  tmps+=("$root")
  say "base: debootstrap bookworm from $mirror"
  timed debootstrap debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror"
  # As the official Debian images: no services start inside builds, apt keeps no caches.
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    > "$root/etc/apt/apt.conf.d/90liverec-no-recommends"
  printf 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };\n' \
    > "$root/etc/apt/apt.conf.d/docker-clean"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  # pipefail: a failed tar must not leave a truncated base cached under its tag
  timed "base-import" bash -o pipefail -c "tar -C '$root' -c . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD [\"python3\"]' - '$BASE_TAG'"
  rm -rf "$root"
}

build_liverec() {
  timed "liverec" "${BUILD[@]}" --build-arg "LIVEREC_BASE_IMAGE=$BASE_TAG" -t "$LIVEREC_TAG" .
}

kafka_jars() {  # resolves the image's jars with Maven into a cache dir; prints it
  local cache=${XDG_CACHE_HOME:-$HOME/.cache}/liverec/kafka-image-4.1.1 tmp
  if [ ! -f "$cache/.complete" ] || [ deploy/docker/kafka/pom.xml -nt "$cache/.complete" ]; then
    command -v mvn >/dev/null || die "Maven ('mvn') is needed once to fetch the Kafka jars"
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT  # this runs in $(...): its own shell, its own EXIT
    timed "kafka-jars" mvn -B -q -f deploy/docker/kafka/pom.xml "$MVN_PLUGIN" \
      -DincludeScope=runtime "-DoutputDirectory=$tmp"
    rm -rf "$cache" && mkdir -p "$(dirname "$cache")" && mv "$tmp" "$cache"
    touch "$cache/.complete"
  fi
  echo "$cache"
}

build_kafka() {
  local jars ctx
  jars=$(kafka_jars)
  ctx=$(mktemp -d /tmp/liverec-kafka-ctx.XXXXXX)
  tmps+=("$ctx")
  cp -p deploy/docker/kafka/* "$ctx/"
  mkdir "$ctx/libs"
  cp -p "$jars"/*.jar "$ctx/libs/"
  # COPY keeps the context's modes, and the broker runs as appuser: jars that Maven
  # copied from a repository written under umask 027 (every `liverec` command's, e.g.
  # `liverec broker start` fetching the same jars) would be unreadable in the image.
  chmod -R u+rwX,go+rX "$ctx"
  timed "kafka" "${BUILD[@]}" --build-arg "LIVEREC_BASE_IMAGE=$BASE_TAG" -t "$KAFKA_TAG" "$ctx"
  rm -rf "$ctx"
}

build_prometheus() {
  timed "prometheus" "${BUILD[@]}" --build-arg "LIVEREC_BASE_IMAGE=$BASE_TAG" \
    -t "$PROMETHEUS_TAG" deploy/docker/prometheus
}

targets=("$@")
((${#targets[@]})) || targets=(base liverec kafka prometheus)
for t in "${targets[@]}"; do
  case $t in
    base|liverec|kafka|prometheus) ;;
    *) die "unknown image '$t' (base, liverec, kafka, prometheus)" ;;
  esac
done
start=$(date +%s)
needs_base=0
for t in "${targets[@]}"; do [ "$t" = base ] || needs_base=1; done
if ((needs_base)) && ! printf '%s\n' "${targets[@]}" | grep -qx base; then
  targets=(base "${targets[@]}")
fi
for t in "${targets[@]}"; do "build_$t"; done

# Only the images that exist (this run built some; earlier runs may have built others):
# a variable naming a missing image would make compose try to pull it.
{
  echo "# Written by scripts/build-images.sh: points docker-compose.yml at the local images."
  for pair in "LIVEREC_BASE_IMAGE=$BASE_TAG" "LIVEREC_IMAGE=$LIVEREC_TAG" \
              "LIVEREC_KAFKA_IMAGE=$KAFKA_TAG" "LIVEREC_PROMETHEUS_IMAGE=$PROMETHEUS_TAG"; do
    if image_exists "${pair#*=}"; then echo "$pair"; fi
  done
} > "$ENV_FILE"
say "all done in $(( $(date +%s) - start )) s"
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' \
  | grep -F -e "$BASE_TAG" -e "$LIVEREC_TAG" -e "$KAFKA_TAG" -e "$PROMETHEUS_TAG" >&2 || true
cat "$ENV_FILE"
