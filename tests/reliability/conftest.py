"""Reliability fixtures: a private redis-server and PostgreSQL cluster that tests may stop and
restart, the run size (reduced under `make test`, full under `make reliability`), and the
report of what was tried, held, lost and duplicated (printed at the end, var/reliability.json).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from glob import glob
from pathlib import Path

import psycopg
import pytest
import redis as redis_lib

REPO = Path(__file__).resolve().parents[2]
FULL = os.environ.get("TUNEBOT_RELIABILITY", "").lower() == "full"
MODE = "full" if FULL else "reduced"


def size(reduced: int, full: int) -> int:
    """How many of something this run tries: `full` under `make reliability`."""
    return full if FULL else reduced


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the report -------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the reliability table."""

    test: str
    tried: str
    count: int
    held: int
    lost: int
    duplicated: int
    note: str = ""


ROWS: list[Row] = []


class Report:
    """Collects rows; a test adds one per property it measured."""

    def add(self, test: str, tried: str, count: int, *, held: int, lost: int = 0,
            duplicated: int = 0, note: str = "") -> None:
        """Record what was tried and how it came out."""
        ROWS.append(Row(test, tried, count, held, lost, duplicated, note))


@pytest.fixture(scope="session")
def report() -> Report:
    """The session's reliability report."""
    return Report()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    """Print the table and write var/reliability.json."""
    if not ROWS:
        return
    tr = terminalreporter
    header = ("test", "tried", "n", "held", "lost", "dup", "note")
    body = [(r.test, r.tried, str(r.count), str(r.held), str(r.lost), str(r.duplicated),
             r.note) for r in ROWS]
    limits = (24, 56, 5, 5, 5, 4, 100)
    widths = [min(lim, max(len(h), *(len(b[i]) for b in body)))
              for i, (h, lim) in enumerate(zip(header, limits, strict=True))]
    tr.write_sep("=", f"reliability ({MODE} size)")
    for line in (header, *body):
        tr.write_line("  ".join(c[:w].ljust(w) for c, w in zip(line, widths, strict=True))
                      .rstrip())
    out = REPO / "var" / "reliability.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"mode": MODE,
                               "rows": [asdict(r) for r in ROWS]}, indent=2) + "\n")
    tr.write_line(f"written to {out.relative_to(REPO)}")


# ---- private redis-server ------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of our own on a spare loopback port; no persistence, so a restart loses
    every queued message (the worst case for the broker)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or restart) on the same port; wait until it answers."""
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder), "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        client = redis_lib.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                return
            except redis_lib.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("private redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill it (SIGKILL: nothing is saved, as when a broker host dies)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def flush(self) -> None:
        """Empty every database."""
        redis_lib.Redis(port=self.port).flushall()


@pytest.fixture(scope="session")
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server the tests own; stopped at the end of the session."""
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is required on PATH for tests/reliability")
    folder = Path(tempfile.mkdtemp(prefix="tunebot-redis-"))
    server = PrivateRedis(folder)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fresh_redis(private_redis: PrivateRedis) -> Iterator[PrivateRedis]:
    """The private redis, running and empty for this test."""
    if private_redis.proc is None or private_redis.proc.poll() is not None:
        private_redis.start()
    private_redis.flush()
    yield private_redis
    if private_redis.proc is None:
        private_redis.start()


# ---- private PostgreSQL cluster ------------------------------------------------------------


def _pg_bin(name: str) -> str:
    found = sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is required under /usr/lib/postgresql/*/bin")
    return found[-1]


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary folder owned by the postgres user (initdb refuses
    root), listening on a spare loopback port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        """initdb the cluster (trust auth on loopback only)."""
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._as_postgres(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust",
                          "-U", "postgres", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        """Start (or restart) on the same port, waiting until it accepts connections."""
        opts = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200")
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-l",
                          str(self.folder / "server.log"), "-w", "-t", "60", "-o", opts, "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop it (`immediate` is a crash: no shutdown checkpoint)."""
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        """Whether the postmaster is up."""
        return (self.data / "postmaster.pid").exists()

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = f"rel_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def drop_database(self, url: str) -> None:
        """Drop a database made by create_database (connections are forced off)."""
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster the tests own; stopped and deleted at the end of the session."""
    folder = Path(tempfile.mkdtemp(prefix="tunebot-pg-"))
    pg = PrivatePostgres(folder)
    pg.init()
    pg.start()
    yield pg
    if pg.running():
        try:
            pg.stop("immediate")
        except subprocess.CalledProcessError:
            pass
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def private_pg_url(private_pg: PrivatePostgres) -> Iterator[str]:
    """A fresh migrated database in the private cluster (restarted first if a test left it
    down); dropped afterwards."""
    from tunebot import migrate

    if not private_pg.running():
        private_pg.start()
    url = private_pg.create_database()
    migrate.upgrade(url)
    yield url
    if not private_pg.running():
        private_pg.start()
    private_pg.drop_database(url)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Outside `make reliability`, full-size-only tests are deselected (never reported as
    skipped-but-green)."""
    if FULL:
        return
    dropped = [i for i in items if i.get_closest_marker("full_only") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i.get_closest_marker("full_only") is None]
