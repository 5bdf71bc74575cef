#!/usr/bin/env bash
# Make sure the Debian packages OneCard needs are installed.
# As root: installs what is missing with apt-get. Otherwise: prints the exact apt-get line and stops.
set -euo pipefail

missing=()
need() { # need PACKAGE TEST-COMMAND...
  local pkg=$1; shift
  if ! "$@" >/dev/null 2>&1; then missing+=("$pkg"); fi
}

py=${PYTHON:-python3}
need pcscd            sh -c 'command -v pcscd || test -x /usr/sbin/pcscd'
need vsmartcard-vpcd  test -e /usr/lib/pcsc/drivers/serial/libifdvpcd.so
need libpcsclite-dev  test -e /usr/include/PCSC/winscard.h
need swig             sh -c 'command -v swig'
need gcc              sh -c 'command -v gcc'
need opensc           sh -c 'command -v opensc-tool'
need chromium         test -x /usr/bin/chromium
need fonts-noto-cjk   test -e /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc  # Chinese on the kiosk screen
need espeak-ng        sh -c 'command -v espeak-ng'  # the kiosk's spoken prompts (voices cmn, en-us)
need nginx            test -x /usr/sbin/nginx
need systemd          sh -c 'command -v systemd-analyze'
need postgresql-client sh -c 'command -v pg_dump && command -v pg_restore'
need prometheus       sh -c 'command -v promtool'  # checks deploy/monitoring's alert rules in the tests
need npm              sh -c 'command -v npm'  # installs the tests' axe-core (package.json)
need valgrind         sh -c 'command -v valgrind'  # bench/bench_worker_instructions.py counts instructions
need python3-venv     "$py" -c 'import ensurepip, venv'
need python3-dev      "$py" -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))'

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

line="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  echo "system-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  $line
else
  echo "system-deps: OneCard needs these Debian packages: ${missing[*]}" >&2
  echo "Run this as root, then run make again:" >&2
  echo "  sudo apt-get update && sudo $line" >&2
  exit 1
fi
