#!/usr/bin/env bash
# Install everything the test suite needs, then run lint, type checks and the whole suite.
# Used as-is by CI (.ci/run). Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# System packages: ZooKeeper (real-server interop tests), iproute2 + iptables (network
# namespace fault tests), serf (memberlist wire tests). Installed only when missing and only as root.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    need=()
    [ -e /usr/share/java/zookeeper.jar ] || need+=(zookeeper)
    command -v ip >/dev/null 2>&1 || need+=(iproute2)
    command -v iptables >/dev/null 2>&1 || need+=(iptables)
    # serf (a memberlist agent) for the gossip wire tests; memberlist's source documents the format.
    command -v serf >/dev/null 2>&1 || need+=(serf golang-github-hashicorp-memberlist-dev)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
    if [ ${#need[@]} -gt 0 ]; then
        log "apt-get install ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "pulse needs Python 3.11 or newer" >&2; exit 1; }

VENV=${PULSE_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    "$PY" -m venv "$VENV"
fi
log "pip install -e .[test,docs]"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -e '.[test,docs]'
export PATH="$PWD/$VENV/bin:$PATH"

# Third-party Dubbo 2 peers for the interop tests. Both install a package named "dubbo", so
# each gets a directory of its own outside the project (tests/e2e/dubbo_procs.py finds them).
PEERS=${PULSE_DUBBO_PEERS:-$HOME/.cache/pulse-dubbo-peers}
[ -d "$PEERS/apache/dubbo" ] || "$VENV/bin/python" -m pip install -q --no-deps \
    --target "$PEERS/apache" python-dubbo-support-python3==0.0.2
[ -d "$PEERS/feiyuw/dubbo" ] || "$VENV/bin/python" -m pip install -q --no-deps \
    --target "$PEERS/feiyuw" dubbo-py==0.2.2
export PULSE_DUBBO_PEERS="$PEERS"

log "ruff"
ruff check .
log "mypy (strict, package and tests)"
mypy
log "docs (mkdocs build --strict: broken links and references fail)"
mkdir -p build
if ! NO_MKDOCS_2_WARNING=1 mkdocs build --strict >build/mkdocs.log 2>&1; then
    grep -E "WARNING|ERROR|Aborted" build/mkdocs.log >&2
    exit 1
fi
log "packaging (the wheel ships LICENSE and py.typed)"
wheel_dir=$(mktemp -d)
"$VENV/bin/python" -m pip wheel -q --no-deps -w "$wheel_dir" . >/dev/null
"$VENV/bin/python" - "$wheel_dir" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
names = zipfile.ZipFile(wheel).namelist()
missing = [want for want in ("licenses/LICENSE", "pulse/py.typed")
           if not any(name.endswith(want) for name in names)]
sys.exit(f"{wheel.name} lacks {missing}" if missing else 0)
PY
rm -rf "$wheel_dir"
log "pytest"
set +e
# Most end-to-end tests wait on real time (timeouts, processes, peers), so three workers
# share two cores well: about 5 minutes instead of 13. PULSE_TEST_WORKERS=0 runs in one process.
workers=${PULSE_TEST_WORKERS:-3}
if [ "$workers" = 0 ]; then
    pytest -q -p no:cacheprovider "$@"
else
    pytest -q -p no:cacheprovider -n "$workers" "$@"
fi
status=$?
set -e
if [ "$status" = 5 ]; then
    echo "pytest collected no tests: treating as a failure" >&2
    exit 1
fi
exit "$status"
