#!/usr/bin/env bash
# The tests, all of them: the Rust suite (each test binary starts private PostgreSQL
# clusters with TLS; the machine's own PostgreSQL is never touched), then the Python
# client's tests against the release binary, from a virtual environment of their own.
# This is the README's test command, and what .ci/run runs after fmt and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."

# The release binary first: tests/package_deb.rs packages it (built once, here).
cargo build --release
cargo test

venv=clients/python/.venv
if [ ! -x "$venv/bin/python" ]; then
    if ! python3 -m venv "$venv"; then # Debian's python3 ships ensurepip apart
        rm -rf "$venv"
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv
        python3 -m venv "$venv"
    fi
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -e 'clients/python[test]'
pytest_status=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider clients/python/tests || pytest_status=$?
if [ "$pytest_status" = 5 ]; then
    echo "scripts/test.sh: pytest collected no tests in clients/python/tests" >&2
    exit 1
fi
exit "$pytest_status"
