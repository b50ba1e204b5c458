"""`make demo`: the main job on the embedded defaults, each thread printed as Slack shows it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import typer

from tunebot import jobs, migrate
from tunebot.catalog.files import import_dir
from tunebot.commands import parse
from tunebot.core import build_core, cli_actor
from tunebot.dispatch import execute
from tunebot.replies import render_text
from tunebot.settings import Settings
from tunebot.terminal import follow


@dataclass(frozen=True)
class Step:
    """One thing the demo user types."""

    text: str
    file: str | None = None
    expect_ok: bool = True


# The main job: a prompt iterated and measured, its training data checked, then the fair
# fight told once on the bare first triage prompt: the optimize climb (a child job), the
# auto fine-tune (a child job) and the verdict on the same held-out cases.
STEPS: tuple[Step, ...] = (
    Step("/tunebot ping"),
    Step("/prompt list"),
    Step("/prompt show sentiment:production"),
    Step("/prompt diff sentiment@1 sentiment@2"),
    Step("/prompt compare sentiment@1 sentiment@2 on sentiment-eval"),
    Step("/dataset check triage-train model=smollm2 prompt=triage"),
    Step("/compare triage@1 on triage-eval fair traffic=5000/day"),
)
CATALOG = Path(__file__).resolve().parent.parent / "prompts"


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """A real worker process for the jobs (the terminal is the thread: no Slack delivery)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen([sys.executable, "-m", "tunebot.cli", "worker", "--queues",
                             "inference,gpu"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(log_path: Path, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Wait until the worker says it is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log_path.exists() and "ready." in log_path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited; see {log_path}")
        time.sleep(0.3)
    raise TimeoutError(f"the worker did not start in {timeout:.0f} s; see {log_path}")


def run_steps(settings: Settings, steps: tuple[Step, ...]) -> int:
    """Execute each step as the CLI user and follow its job; returns the number of failures."""
    app = build_core(settings)
    actor = cli_actor(settings)
    failures = 0
    for step in steps:
        typer.secho(f"\n{actor.user_id}:  {step.text}", bold=True)
        outcome = execute(parse(step.text), actor, app, Path(step.file) if step.file else None)
        typer.echo(render_text(outcome.reply))
        ok = not outcome.reply.error
        if outcome.job is not None and outcome.job.id is not None:
            ok = follow(app, outcome.job.id) == 0
        if ok != step.expect_ok:
            failures += 1
            want = "succeed" if step.expect_ok else "fail"
            typer.secho(f"(demo: this step was expected to {want})", fg="red")
    return failures


def import_catalog(settings: Settings) -> None:
    """Load the starter catalog (idempotent) as the CLI workspace."""
    app = build_core(settings)
    actor = cli_actor(settings)
    typer.secho(f"\n{actor.user_id}:  tunebot catalog import prompts/", bold=True)
    report = import_dir(engine=app.engine, settings=settings, team_id=actor.team_id,
                        user=actor.user_id, path=CATALOG)
    typer.echo("\n".join(report.lines()))


def _finale(settings: Settings) -> int:
    """Copy the comparison chart under var/ and repeat the recommendation last."""
    app = build_core(settings)
    done = [j for j in jobs.list_jobs(engine=app.engine, team_id=settings.cli_team,
                                      kinds=("compare_fair", "compare"))
            if j.status == "succeeded"]
    if not done:
        typer.secho("no comparison finished", fg="red")
        return 1
    result = done[0].result
    chart = settings.var_dir / "compare-chart.png"
    shutil.copyfile(result["chart"], chart)
    typer.echo(f"\nchart: {chart}")
    typer.echo(result["recommendation"])
    return 0


def run_demo(settings: Settings) -> int:
    """Migrate, start a worker, run the steps, stop the worker; exit status 0 on success."""
    started = time.monotonic()
    migrate.upgrade(settings.database_url)
    log_path = settings.var_dir / "demo-worker.log"
    typer.echo(f"tunebot demo · database {settings.database_url} · broker {settings.broker_url}")
    typer.echo(f"starting a worker (log: {log_path}) …")
    proc = start_worker(settings, log_path)
    try:
        import_catalog(settings)
        wait_ready(log_path, proc)
        failures = run_steps(settings, STEPS)
        failures += _finale(settings)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    took = time.monotonic() - started
    typer.echo(f"\ndemo finished in {took:.0f} s with {failures} unexpected result(s).")
    return 1 if failures else 0
