#!/usr/bin/env bash
# Installs the PostgreSQL server programs the integration tests need (initdb, pg_ctl,
# postgres) from Debian/Ubuntu packages, unless they are already installed. The tests start
# private clusters of their own; this does not need (or touch) a running system server.
set -euo pipefail

if command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    echo "PostgreSQL server programs already installed"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update
# The package also creates and may start a system cluster on port 5432; the tests ignore it.
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql
ls -d /usr/lib/postgresql/*/bin
