#!/usr/bin/env bash
# Installs the Debian packages the test suite drives, when they are missing.
# `npm test` runs this first, so the README's test command (and `.ci/run`)
# passes on a fresh machine. Nothing here downloads anything but Debian
# packages; on a machine that has them all it does nothing.
#
# Add a package the tests need to PACKAGES: its name, then what proves it is
# installed (a command on PATH, or an absolute path, globs allowed).
set -euo pipefail

PACKAGES=(
  "chromium     chromium"                            # console tests (test/e2e/)
  "pebble       pebble"                              # ACME tests: pebble and pebble-challtestsrv
  "postgresql   /usr/lib/postgresql/*/bin/postgres"  # replica store tests
  "nats-server  nats-server"                         # replica bus tests
  "nginx        /usr/sbin/nginx"                     # bench smoke test: the upstream and a peer proxy
  "caddy        caddy"                               # bench smoke test: the peer proxy
  "wrk          wrk"                                 # bench smoke test: the load generator
  "curl         curl"                                # bench smoke test: the download
)

present() {
  local probe=$1
  if [[ $probe == /* ]]; then
    compgen -G "$probe" >/dev/null
  else
    command -v "$probe" >/dev/null 2>&1
  fi
}

missing=()
for entry in "${PACKAGES[@]}"; do
  read -r package probe <<<"$entry"
  present "$probe" || missing+=("$package")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

echo "test dependencies missing, installing: ${missing[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "apt-get not found: install ${missing[*]} yourself (the tests drive the real programs)" >&2
  exit 1
fi
run_as_root=()
if [[ $EUID -ne 0 ]]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "not root and no sudo: install ${missing[*]} as root (apt-get install ${missing[*]})" >&2
    exit 1
  fi
  run_as_root=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${run_as_root[@]}" apt-get update -qq
"${run_as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
