"""A private PostgreSQL cluster and the real `forkpool` binary, for the client's tests.

The Python twin of the Rust harness (tests/support/cluster.rs, certs.rs, service.rs): the
cluster lives in a temporary directory (data, Unix socket, certificates, log), listens on
127.0.0.1 at a free port with TLS, runs as the `postgres` OS user when the tests run as
root, and is never the machine's own PostgreSQL. Certificates are made at test time with the
`openssl` command. A guardian shell stops the server and removes the directory if the test
process dies without cleaning up. The service is the real binary on a configuration written
for the test; its readiness is awaited as an event, from the master's log lines on stderr.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[3]

APP_USER = "app"
APP_PASSWORD = "app-Secret-py1"
APP_DATABASE = "app"
SUPERUSER = "postgres"

#: How long a start or an awaited event may take before the test fails: two cores are
#: shared with other work.
PATIENCE = 60.0
#: How long a test waits for an event of the service.
EVENT_TIMEOUT = 30.0

#: A test's service must not think it runs under systemd because pytest does.
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                     "LISTEN_PID", "LISTEN_FDNAMES", "JOURNAL_STREAM")

GUARDIAN_SCRIPT = r"""trap '' INT TERM HUP QUIT
read -r word
[ "$word" = dismissed ] && exit 0
"$0" -D "$1" -m immediate -w stop
rm -rf "$2"
"""


def find_server_bindir() -> Path:
    """`pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin with initdb."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                     check=True).stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    raise RuntimeError("no PostgreSQL server programs (initdb): install them with "
                       "`bash scripts/install-postgres.sh`")


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago; the server may lose a race for it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_env() -> Dict[str, str]:
    """The environment without PG* variables, so a developer's PGPORT cannot redirect us."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


class Cluster:
    """A private PostgreSQL server; `stop()` stops it and removes its directory."""

    def __init__(self) -> None:
        self.bindir = find_server_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="fp-py-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.log_file = self.root / "server.log"
        self.server_user = pwd.getpwnam(SUPERUSER) if os.geteuid() == 0 else None
        self._give(self.root)
        self.postmaster: Optional[subprocess.Popen] = None
        self.guardian = subprocess.Popen(
            ["sh", "-c", GUARDIAN_SCRIPT, str(self.bindir / "pg_ctl"), str(self.data),
             str(self.root)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env=clean_env(), cwd="/", **self._user_kwargs())
        try:
            self._write_certificates()
            self._init_data_dir()
            self._start_on_free_port()
            self._create_app_database()
        except BaseException:
            self.stop()
            raise

    # The server programs refuse to run as root: then they run as the postgres user.
    def _user_kwargs(self) -> dict:
        if self.server_user is None:
            return {}
        return {"user": self.server_user.pw_uid, "group": self.server_user.pw_gid,
                "extra_groups": []}

    def _give(self, path: Path) -> None:
        if self.server_user is not None:
            os.chown(path, self.server_user.pw_uid, self.server_user.pw_gid)

    def _run(self, argv: List[str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), cwd="/",
                              timeout=PATIENCE, **self._user_kwargs())
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _write_certificates(self) -> None:
        """A CA and a server certificate for localhost and 127.0.0.1 (P-256: fast to make)."""
        certs = self.root
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        steps = [
            ["openssl", "req", "-x509", *ec, "-days", "2",
             "-subj", "/O=forkpool tests/CN=forkpool test CA",
             "-keyout", str(certs / "ca.key"), "-out", str(certs / "ca.crt")],
            ["openssl", "req", *ec, "-subj", "/O=forkpool tests/CN=localhost",
             "-keyout", str(certs / "server.key"), "-out", str(certs / "server.csr")],
        ]
        for step in steps:
            subprocess.run(step, check=True, capture_output=True, timeout=PATIENCE)
        (certs / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                       "extendedKeyUsage=serverAuth\n")
        subprocess.run(["openssl", "x509", "-req", "-in", str(certs / "server.csr"),
                        "-CA", str(certs / "ca.crt"), "-CAkey", str(certs / "ca.key"),
                        "-CAcreateserial", "-days", "2", "-extfile", str(certs / "san.ext"),
                        "-out", str(certs / "server.crt")],
                       check=True, capture_output=True, timeout=PATIENCE)
        for name in ("ca.crt", "server.crt", "server.key"):
            self._give(certs / name)
        os.chmod(certs / "server.key", 0o600)  # the server refuses a looser key
        os.chmod(certs / "ca.crt", 0o644)
        self.ca_cert = certs / "ca.crt"

    def _init_data_dir(self) -> None:
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                   "-A", "trust", "-N", "-E", "UTF8", "--locale=C"])
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\ninclude 'forkpool-test.conf'\n")

    def _start_on_free_port(self) -> None:
        for _ in range(5):
            self.port = free_port()
            settings = self.data / "forkpool-test.conf"
            settings.write_text(
                f"listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                f"ssl = on\n"
                f"ssl_cert_file = '{self.root / 'server.crt'}'\n"
                f"ssl_key_file = '{self.root / 'server.key'}'\n"
                "max_connections = 200\n"
                "shared_buffers = 16MB\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n")
            self._give(settings)
            if self._start():
                return
        raise RuntimeError("five free ports were taken before the server could bind them")

    def _start(self) -> bool:
        """Starts the postmaster as our child; True once it accepts connections, False if
        another process took the port."""
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.log_file, "ab") as log:
            self.postmaster = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data)], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, env=clean_env(), cwd="/", **self._user_kwargs())
        deadline = time.monotonic() + PATIENCE
        while True:
            if self._ready():
                return True
            if self.postmaster.poll() is not None:
                tail = self.log_file.read_bytes()[log_start:].decode(errors="replace")
                self.postmaster = None
                if "Address already in use" in tail:
                    return False
                raise RuntimeError(f"postgres exited:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not accept connections within {PATIENCE} s")
            # The postmaster announces readiness only in its pid file; pg_ctl polls it too.
            time.sleep(0.01)

    def _ready(self) -> bool:
        """Line 8 of postmaster.pid says `ready` (PostgreSQL 10+); line 1 is checked so a
        stale file cannot pass."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return False
        assert self.postmaster is not None
        return len(lines) > 7 and lines[0].strip() == str(self.postmaster.pid) \
            and lines[7].strip() == "ready"

    def psql(self, sql: str, database: str = APP_DATABASE) -> str:
        """Runs `sql` as superuser over the Unix socket; returns the unaligned output."""
        psql = self.bindir / "psql"
        if not psql.exists():
            psql = Path(shutil.which("psql") or "psql")
        done = subprocess.run(
            [str(psql), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.root),
             "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-c", sql],
            capture_output=True, text=True, env=clean_env(), timeout=PATIENCE)
        if done.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed: {done.stderr}")
        return done.stdout.strip()

    def _create_app_database(self) -> None:
        self.psql(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'", database="postgres")
        self.psql(f"CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}", database="postgres")

    def tcp_url(self) -> str:
        """The app role over TCP to localhost with TLS verified against the test CA."""
        return (f"host=localhost port={self.port} user={APP_USER} password={APP_PASSWORD} "
                f"dbname={APP_DATABASE} sslmode=verify-full sslrootcert={self.ca_cert}")

    def stop(self) -> None:
        """Stops the server at once (SIGQUIT, `pg_ctl stop -m immediate`), dismisses the
        guardian and removes the directory. Never raises."""
        if self.postmaster is not None:
            self.postmaster.send_signal(signal.SIGQUIT)
            try:
                self.postmaster.wait(PATIENCE)
            except subprocess.TimeoutExpired:
                self.postmaster.kill()
                self.postmaster.wait()
            self.postmaster = None
        if self.guardian.stdin is not None and not self.guardian.stdin.closed:
            try:
                self.guardian.stdin.write(b"dismissed\n")
                self.guardian.stdin.close()
            except OSError:
                pass
            self.guardian.wait(PATIENCE)
        shutil.rmtree(self.root, ignore_errors=True)


def forkpool_binary() -> Path:
    """The release binary `.ci/run` builds; FORKPOOL_BINARY names another."""
    explicit = os.environ.get("FORKPOOL_BINARY")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    return target / "release" / "forkpool"


class Service:
    """The real forkpool binary on a configuration written for one test."""

    def __init__(self, cluster: Optional[Cluster], *, workers: int = 2, threads: int = 1,
                 database_url: Optional[str] = None, service_keys: Optional[Dict[str, str]] = None,
                 worker_keys: Optional[Dict[str, str]] = None,
                 database_keys: Optional[Dict[str, str]] = None,
                 queue_keys: Optional[Dict[str, str]] = None,
                 jobs: Optional[Dict[str, str]] = None) -> None:
        binary = forkpool_binary()
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: build it with `cargo build --release` "
                               "(or name one with FORKPOOL_BINARY)")
        self.workers = workers
        self.dir = Path(tempfile.mkdtemp(prefix="fp-py-svc-", dir="/tmp"))
        config_dir = self.dir / "config"
        workers_dir = self.dir / "workers"
        config_dir.mkdir()
        workers_dir.mkdir()
        for job_file in (REPO / "workers").glob("*.toml"):
            shutil.copy(job_file, workers_dir / job_file.name)
        for name, toml in (jobs or {}).items():
            (workers_dir / f"{name}.toml").write_text(toml)
        if database_url is None:
            assert cluster is not None
            database_url = cluster.tcp_url()
        lines = ["[service]"]
        lines += [f"{key} = {value}" for key, value in (service_keys or {}).items()]
        lines += ["", "[workers]", f"count = {workers}", f"threads = {threads}"]
        lines += [f"{key} = {value}" for key, value in (worker_keys or {}).items()]
        lines += ["", "[databases.main]", f"url = {toml_string(database_url)}"]
        lines += [f"{key} = {value}" for key, value in (database_keys or {}).items()]
        # Durable jobs are off unless `queue_keys` are given (as in the Rust harness), so the
        # services of the other tests start no queue keeper and claim nothing.
        lines += ["", "[queue]"]
        lines += [f"{key} = {value}" for key, value in (queue_keys or {"database": '""'}).items()]
        self.config = config_dir / "forkpool.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.socket = str(config_dir / "forkpool.sock")
        env = {k: v for k, v in os.environ.items()
               if k not in SYSTEMD_VARIABLES and k not in ("FORKPOOL_CONFIG", "FORKPOOL_SOCKET")}
        env["RUST_LOG"] = "info"
        # setpriv execs the binary with PR_SET_PDEATHSIG: the kernel kills the master if the
        # test process dies without stopping it (its workers follow by their own).
        self.process = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "--", str(binary), "run", "--config",
             str(self.config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.pid = self.process.pid
        self._lines: List[str] = []
        self._grew = threading.Condition()
        threading.Thread(target=self._collect_log, daemon=True).start()

    def _collect_log(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            with self._grew:
                self._lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._grew.notify_all()
        with self._grew:
            self._lines.append("<stderr closed>")
            self._grew.notify_all()

    def logs(self) -> str:
        with self._grew:
            return "\n".join(self._lines)

    def wait_for_log(self, needle: str, count: int = 1, timeout: float = EVENT_TIMEOUT) -> None:
        """Waits until `count` log lines contain `needle`, as they arrive."""
        deadline = time.monotonic() + timeout
        with self._grew:
            while sum(needle in line for line in self._lines) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"waited {timeout} s for {count} log line(s) with "
                                         f"{needle!r}; logs:\n" + "\n".join(self._lines))
                self._grew.wait(left)

    def wait_ready(self) -> "Service":
        self.wait_for_log("ready", self.workers)
        return self

    def wait_durable_ready(self) -> "Service":
        """Waits until the queue keeper has the schema in place and durable requests are
        served (until then they answer `db_unavailable`)."""
        self.wait_for_log("durable jobs ready")
        return self

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = EVENT_TIMEOUT) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Kills the master (its workers die with it) and removes the directory."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(EVENT_TIMEOUT)
        shutil.rmtree(self.dir, ignore_errors=True)


def toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wait_until(what: str, done: Callable[[], object], timeout: float = EVENT_TIMEOUT,
               every: float = 0.02) -> object:
    """Polls `done` until it returns something true; for states only `status` shows (a job
    running on a worker), which the service announces by no event."""
    deadline = time.monotonic() + timeout
    while True:
        value = done()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s until {what}")
        time.sleep(every)
