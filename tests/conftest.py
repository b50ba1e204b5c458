"""Shared fixtures: real SQLite and PostgreSQL databases, Redis, and real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis as redis_lib
from sqlalchemy.engine import Engine

from devtools.env import settings_env
from tunebot import migrate
from tunebot.db import make_engine
from tunebot.settings import Settings

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests build Settings explicitly; a developer's .env or exported tokens must not leak in.
    for key in list(os.environ):
        if key.startswith(("TUNEBOT_", "SLACK_")):
            monkeypatch.delenv(key, raising=False)


def _pg_connect() -> psycopg.Connection:
    try:
        return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # CI must fail loudly, not skip
        raise RuntimeError(f"PostgreSQL is required on 127.0.0.1:5432 ({exc})") from exc


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    name = f"tunebot_t_{uuid.uuid4().hex[:10]}"
    with _pg_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with _pg_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file."""
    return f"sqlite:///{tmp_path / 'tunebot.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test runs on SQLite and on PostgreSQL, migrated to head."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tunebot.db'}"
        migrate.upgrade(url)
        yield url
    else:
        url = request.getfixturevalue("pg_url")
        migrate.upgrade(url)
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on the migrated database."""
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number of its own, flushed before and after."""
    client = redis_lib.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        client.ping()
    except redis_lib.ConnectionError as exc:
        raise RuntimeError(f"Redis is required on 127.0.0.1:6379 ({exc})") from exc
    db = 1 + (os.getpid() % 14)
    url = f"{REDIS_URL}/{db}"
    db_client = redis_lib.Redis.from_url(url)
    db_client.flushdb()
    yield url
    db_client.flushdb()


def wait_final(engine: Engine, job_id: int, timeout: float = 120):  # type: ignore[no-untyped-def]
    """Poll a job until it is succeeded, failed or cancelled; return its row."""
    from tunebot import jobs

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobs.get(engine=engine, job_id=job_id)
        if job is not None and job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish: {jobs.get(engine=engine, job_id=job_id)}")


def make_settings(tmp_path: Path, **over: object) -> Settings:
    """Settings for a test: everything under tmp_path, short leases; local models may be
    loaded from anywhere in the session's temporary folder (the tiny model lives there)."""
    base: dict[str, object] = {
        "var_dir": tmp_path / "var", "lease_seconds": 4.0, "heartbeat_seconds": 1.0,
        "reconcile_seconds": 1.0, "cli_team": "T0TEAM", "cli_user": "U0ALICE",
        "model_dirs": [tmp_path.parent],
    }
    base.update(over)
    return Settings(**base)  # type: ignore[arg-type]


class WorkerProcess:
    """A real `tunebot worker` process."""

    def __init__(self, settings: Settings, queues: str, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunebot.cli", "worker", "--queues", queues],
            env=settings_env(settings), stdout=self._log, stderr=subprocess.STDOUT,
            cwd=REPO, start_new_session=True,
        )

    def log(self) -> str:
        """What the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until Celery says ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.log():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready:\n{self.log()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (main process and pool children)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Warm shutdown, then kill if it lingers."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator:
    """Start real worker processes; all are stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, queues: str = "inference,gpu,io") -> WorkerProcess:
        w = WorkerProcess(settings, queues, tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        w.wait_ready()
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama chat model (safetensors + tokenizer), built once per session."""
    from devtools.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
