#!/usr/bin/env bash
# tokengate developer entry point: sets up everything a fresh Debian/Ubuntu machine needs.
#   ./dev.sh demo    start the demo gateway (memory:// store) and its echo upstream
#   ./dev.sh test    run the whole test suite
#   ./dev.sh mutate  mutation testing of the security-critical modules (slow; see tests/README.md)
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PY=${PYTHON:-python3}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "need root to run: $*" >&2; exit 1; fi; }

apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "please install these packages with your system package manager: $*" >&2; exit 1
  fi
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

ensure_python() {   # $1: runtime (the demo: `pip install -e .`), test (`-e '.[test]'`: pytest, schemathesis ...)
  local want=$1      # or mutation (the test set and mutmut)
  if ! command -v "$PY" >/dev/null; then apt_install python3 python3-venv python3-pip; fi
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "tokengate needs Python 3.11 or newer; $PY is $("$PY" --version)" >&2; exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      apt_install python3-venv
      "$PY" -m venv "$VENV"
    fi
  fi
  # One stamp per set, each newer than pyproject.toml once that set is installed: a venv the demo set up
  # still gets the test extras at the first `./dev.sh test`, and either set follows a pyproject change.
  local stamp="$VENV/.installed-$want"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    if [ "$want" = mutation ]; then
      "$VENV/bin/python" -m pip install -q -e '.[test,mutation]'
      touch "$VENV/.installed-runtime" "$VENV/.installed-test"   # it includes both other sets
    elif [ "$want" = test ]; then
      "$VENV/bin/python" -m pip install -q -e '.[test]'
      touch "$VENV/.installed-runtime"   # the test set includes the runtime one
    else
      "$VENV/bin/python" -m pip install -q -e .
    fi
    touch "$stamp"
  fi
}

ensure_redis() {   # redis-cli (redis-tools) joins the test cluster; the sentinels are redis-server too
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt_install redis-server redis-tools
  fi
}

ensure_bench_tools() {   # the load-testing kit's wrk driver and its callgrind count (their tests skip without them)
  if ! command -v wrk >/dev/null || ! command -v valgrind >/dev/null; then apt_install wrk valgrind; fi
}

ensure_nginx() {   # tests/integration/deploy/test_nginx.py puts a real nginx (auth_request) in front of the gateway
  if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then apt_install nginx; fi
}

OP_DIR=tests/integration/auth/oidc/op   # the delegated-login tests' OpenID Provider (oidc-provider, npm)

ensure_node() {   # Node and the OP's locked npm packages; `npm ci` again only after a change of the lock file
  local want=()
  command -v node >/dev/null || want+=(nodejs)
  command -v npm >/dev/null || want+=(npm)
  if [ ${#want[@]} -gt 0 ]; then apt_install "${want[@]}"; fi
  if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 18) ? 0 : 1)'; then
    echo "warning: the delegated-login tests' OpenID Provider needs Node 20.18 or newer (node is $(node --version)):" \
      "they will fail" >&2   # Debian 12's nodejs is 18; Debian 13's is 20.19
  fi
  if [ -f "$OP_DIR/package-lock.json" ] && { [ ! -d "$OP_DIR/node_modules" ] || [ "$OP_DIR/package-lock.json" -nt "$OP_DIR/node_modules" ]; }; then
    (cd "$OP_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    touch "$OP_DIR/node_modules"
  fi
}

ensure_chromium() {   # the browser tests drive this one through playwright (never `playwright install`)
  if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then apt_install chromium; fi
}

case "${1:-}" in
  demo)
    ensure_python runtime
    shift
    exec "$VENV/bin/python" -m gateway.dev.demo "$@"
    ;;
  test)
    ensure_python test
    ensure_redis
    ensure_bench_tools
    ensure_nginx
    ensure_node
    ensure_chromium
    shift
    # Unbuffered: the progress a log shows is where the run is, even when it is cut off. One pytest worker
    # a core (pytest-xdist; TEST_WORKERS=0 runs in one process): most tests wait on real processes and
    # sockets, so two workers on two cores halve the run. A test file stays on one worker (its module
    # fixtures start once).
    PYTHONUNBUFFERED=1 exec "$VENV/bin/python" -m pytest -q -n "${TEST_WORKERS:-auto}" --dist loadfile "$@"
    ;;
  mutate)   # [tool.mutmut] in pyproject.toml names the modules and the tests; results stay in mutants/
    ensure_python mutation
    ensure_redis
    ensure_nginx
    shift
    "$VENV/bin/mutmut" run "$@"
    exec "$VENV/bin/mutmut" results
    ;;
  *)
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
    exit 64
    ;;
esac
