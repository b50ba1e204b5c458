"""Worker start on the embedded broker (issue 17, item 14): kombu's SQL transport creates its
tables and queue rows on first use, and processes starting together raced on them — a worker
died with `IntegrityError(UNIQUE constraint failed: kombu_queue.name)` and a job whose send
failed waited for the reconciler's back-off. Several `tunebot worker` processes (every queue)
and `tunebot run "/tunebot ping"` start at the same moment on a fresh var/broker.db (all held
on one lock of that file, then released together), with a second ping whose send fails: every
worker stays up and both jobs finish well before the reconciler would have re-sent them."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select
from sqlmodel import Session

from devtools.env import settings_env
from tests.conftest import REPO, WorkerProcess, make_settings
from tests.reliability.conftest import FULL, Report, size
from tunebot.db import make_engine
from tunebot.models import Job

# The reconciler's production interval: alone it re-sends a lost job after 60-90 s.
RECONCILE_SECONDS = 30.0
DEADLINE = 45.0


def _holders(*paths: Path) -> int:
    """Processes that have one of `paths` open (at their first statement on the broker, or
    waiting for its lock file)."""
    names = {str(p) for p in paths}
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            count += any(os.readlink(f"/proc/{pid}/fd/{fd}") in names for fd in fds)
        except OSError:
            continue
    return count


def _jobs(url: str) -> list[Job]:
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            return list(s.exec(select(Job).order_by(Job.id)).scalars())  # type: ignore[call-overload]
    except Exception:  # the schema may not exist yet this early
        return []
    finally:
        engine.dispose()


def _round(root: Path, workers: int, queues: str) -> dict[str, object]:
    settings = make_settings(root, reconcile_seconds=RECONCILE_SECONDS, worker_concurrency=1)
    settings.var_dir.mkdir(parents=True)
    broker = settings.var_dir / "broker.db"
    # Everyone's first statement on the broker waits on this lock, so all of them declare
    # their tables and queues in the same instant when it is released.
    lock = sqlite3.connect(str(broker), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    env = settings_env(settings)
    cli = [sys.executable, "-m", "tunebot.cli", "run", "/tunebot ping"]
    procs = [WorkerProcess(settings, queues, root / f"worker-{i}.log") for i in range(workers)]
    sent = subprocess.Popen(cli, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    # A send that fails: this ping's broker cannot be opened, so its job stays queued in SQL.
    lost_env = {**env, "TUNEBOT_BROKER_URL": f"sqla+sqlite:///{root / 'no' / 'broker.db'}"}
    (root / "no").write_text("a file where the broker's folder should be")
    failed = subprocess.Popen(cli, env=lost_env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    started = time.monotonic()
    deadline = started + 25
    # Each worker, its io companion (every queue: a process of its own) and the first ping.
    racers = workers * (2 if "io" in queues else 1) + 1
    while _holders(broker, broker.with_name("broker.db.lock")) < racers \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    # The failed send happens while no worker is up yet (its CLI never opens this broker).
    failed_out = failed.communicate(timeout=120)[0].decode(errors="replace")
    time.sleep(0.3)
    lock.execute("COMMIT")
    lock.close()
    released = time.monotonic()
    waited = released - started
    outs = [sent.communicate(timeout=120)[0].decode(errors="replace"), failed_out]
    url = settings.database_url
    while time.monotonic() - released < DEADLINE:
        rows = _jobs(url)
        if len(rows) == 2 and all(j.status == "succeeded" for j in rows):
            break
        if any(w.proc.poll() is not None for w in procs):
            break
        time.sleep(0.2)
    took = time.monotonic() - released
    rows = _jobs(url)
    alive = [w.proc.poll() is None for w in procs]
    logs = [w.log() for w in procs]
    for w in procs:  # measured: no warm shutdown needed
        w.kill(signal.SIGKILL)
        w.stop()
    return {"alive": alive, "logs": logs, "outs": outs, "took": took, "waited": waited,
            "done": sum(j.status == "succeeded" for j in rows), "jobs": len(rows),
            "send_failed": "could not send job" in outs[1]}


def test_workers_starting_together_on_a_fresh_broker_stay_up(tmp_path: Path,
                                                             report: Report) -> None:
    # Reduced: two job workers racing on their queues; full: `tunebot worker` on every queue
    # (with its io companion), as in the report, three at a time, a dozen rounds.
    rounds, workers = size(1, 12), size(2, 3)
    queues = "inference,gpu,io" if FULL else "inference,gpu"
    results = [_round(tmp_path / f"round-{r}", workers, queues) for r in range(rounds)]
    died = sum(a is False for r in results for a in r["alive"])  # type: ignore[attr-defined]
    unrecoverable = sum("Unrecoverable error" in log for r in results
                        for log in r["logs"])  # type: ignore[attr-defined]
    finished = sum(int(r["done"]) for r in results)  # type: ignore[call-overload]
    worst = max(float(r["took"]) for r in results)  # type: ignore[arg-type]
    report.add("17.14 broker start", f"{workers} workers ({queues}) + 2 pings, fresh broker",
               rounds * workers, held=rounds * workers - died, lost=died,
               note=f"{rounds} round(s); jobs finished {finished}/{2 * rounds} "
               f"(one send failed each round), slowest {worst:.1f}s after release; "
               f"unrecoverable errors {unrecoverable}; all held on the broker lock for "
               f"{max(float(r['waited']) for r in results):.1f}s at most")  # type: ignore[arg-type]
    assert all(r["send_failed"] for r in results), [r["outs"] for r in results]
    assert died == 0 and unrecoverable == 0, [
        log[-2500:] for r in results for log in r["logs"]  # type: ignore[attr-defined]
        if "Unrecoverable" in log or "Traceback" in log][:1]
    assert finished == 2 * rounds, [(r["done"], r["jobs"], r["took"]) for r in results]
