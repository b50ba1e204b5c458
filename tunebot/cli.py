"""The `tunebot` command: an entrypoint, so it may load bot/ and workers/ by module name."""

from __future__ import annotations

import atexit
import fcntl
import importlib
import importlib.util
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from celery import signals
from sqlalchemy.engine import Engine, make_url

from tunebot import ci as gate
from tunebot import jobs, migrate, telemetry
from tunebot.catalog.files import export_dir, import_dir
from tunebot.commands import parse
from tunebot.core import Actor, Core, build_core
from tunebot.datasets.store import add_dataset
from tunebot.db import make_engine
from tunebot.demo import run_demo
from tunebot.dispatch import execute
from tunebot.errors import UserError
from tunebot.handlers.common import jobs_table
from tunebot.jobs.kinds import QUEUES
from tunebot.jobs.queue import TASK_FOR_QUEUE, Sender, make_celery, sends_events
from tunebot.jobs.reconcile import Reconciler, wake_queued
from tunebot.logs import install_log_filter
from tunebot.redact import redact_url
from tunebot.replies import render_text
from tunebot.settings import Settings, load_settings
from tunebot.terminal import follow
from tunebot.workspace import cli_workspace

cli = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="tunebot: prompt catalog, prompt tests and fine-tunes, measured.")
db_cli = typer.Typer(no_args_is_help=True, help="Database schema.")
cli.add_typer(db_cli, name="db")
catalog_cli = typer.Typer(no_args_is_help=True, help="The prompt catalog on disk (prompts/).")
cli.add_typer(catalog_cli, name="catalog")
dataset_cli = typer.Typer(no_args_is_help=True, help="Datasets (eval sets, training data).")
cli.add_typer(dataset_cli, name="dataset")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CLI_LOG = "cli.log"
_VERBOSE = {"on": False}


@cli.callback()
def _options(verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="show library logs (Alembic, Celery, …) on the terminal")] = False,
             ) -> None:
    """tunebot: prompt catalog, prompt tests and fine-tunes, measured."""
    _VERBOSE["on"] = verbose


def _settings(*, server: bool = False) -> Settings:
    """Settings, and logging: a server (worker, bot) logs to the terminal at TUNEBOT_LOG_LEVEL;
    a one-shot command shows only its answer there (warnings and errors aside, everything at
    -v) and keeps the library logs in var/cli.log."""
    settings = load_settings()
    level = settings.log_level.upper()
    if server or _VERBOSE["on"]:
        logging.basicConfig(level=level, format=LOG_FORMAT)
        return settings
    root = logging.getLogger()
    root.setLevel(level)
    terminal = logging.StreamHandler()
    terminal.setLevel(logging.WARNING)
    terminal.setFormatter(logging.Formatter("tunebot: %(levelname)s %(name)s: %(message)s"))
    root.addHandler(terminal)
    try:
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(settings.var_dir / CLI_LOG, encoding="utf-8")
    except OSError:  # a read-only var/: the terminal handler alone
        return settings
    to_file.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(to_file)
    install_log_filter(settings)
    return settings


def ensure_schema(settings: Settings) -> None:
    """Bring an embedded SQLite database to head; PostgreSQL is migrated by `db upgrade`."""
    if make_url(settings.database_url).get_backend_name() == "sqlite":
        migrate.upgrade(settings.database_url)


@db_cli.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the Alembic migrations."""
    settings = _settings()
    migrate.upgrade(settings.database_url, revision)
    typer.echo(f"database at {revision}: {make_url(settings.database_url).render_as_string()}")


def _actor(settings: Settings, engine: Engine, *, announce: bool = False) -> Actor:
    """The CLI user, an admin of the workspace tunebot.workspace resolves; a workspace that
    came from the bot token, or a fallback, is said on stderr (catalog and dataset commands
    always say which workspace they change)."""
    try:
        ws = cli_workspace(settings, engine)
    except UserError as exc:
        typer.echo(f"tunebot: {exc}", err=True)
        raise typer.Exit(2) from None
    if ws.note or announce:
        typer.echo(f"workspace {ws.team_id}" + (f": {ws.note}" if ws.note else
                                                  f" ({ws.source})"), err=True)
    return Actor(team_id=ws.team_id, user_id=settings.cli_user, is_admin=True)


def _print_report(lines: list[str], failed: bool) -> None:
    for line in lines:
        typer.echo(line)
    if failed:
        raise typer.Exit(1)


@catalog_cli.command("import")
def catalog_import(
    directory: Annotated[Path, typer.Argument(help="a catalog directory, e.g. prompts/")],
    force: Annotated[bool, typer.Option("--force", help="also move protected labels "
                                        "(production) to what the files say")] = False,
) -> None:
    """Register DIR/*.yaml prompts and DIR/datasets/* files; idempotent."""
    settings = _settings()
    ensure_schema(settings)
    engine = make_engine(settings.database_url)
    actor = _actor(settings, engine, announce=True)
    report = import_dir(engine=engine, settings=settings, team_id=actor.team_id,
                        user=actor.user_id, path=directory, force=force)
    _print_report(report.lines(), not report.ok)


@catalog_cli.command("export")
def catalog_export(
    directory: Annotated[Path, typer.Argument(help="where to write NAME.yaml and datasets/")],
) -> None:
    """Write the workspace's prompts and datasets as a catalog directory."""
    settings = _settings()
    ensure_schema(settings)
    engine = make_engine(settings.database_url)
    report = export_dir(engine=engine, settings=settings,
                        team_id=_actor(settings, engine, announce=True).team_id, path=directory)
    _print_report(report.lines(), not report.ok)


@dataset_cli.command("add")
def dataset_add(
    name: Annotated[str, typer.Argument(help="dataset name")],
    file: Annotated[Path, typer.Argument(
        help="JSONL, CSV, YAML, Parquet or Arrow rows, or a `datasets` save_to_disk folder")],
    map_: Annotated[list[str] | None, typer.Option(
        "--map", help="expected=COLUMN: the column that holds the expected answer")] = None,
) -> None:
    """Validate a data file and store it as the dataset's next version."""
    expected = None
    for item in map_ or []:
        key, _, column = item.partition("=")
        if key != "expected" or not column:
            typer.echo(f"tunebot: --map takes expected=COLUMN (got {item[:60]})", err=True)
            raise typer.Exit(2)
        expected = column
    settings = _settings()
    ensure_schema(settings)
    engine = make_engine(settings.database_url)
    actor = _actor(settings, engine, announce=True)
    try:
        ds, created = add_dataset(engine=engine, settings=settings,
                                  team_id=actor.team_id, name=name, path=file,
                                  user=actor.user_id, expected_column=expected)
    except UserError as exc:
        _print_report([f"✗ {file}: failed — {exc}"], True)
        return
    status = "created" if created and ds.version == 1 else "updated" if created else "unchanged"
    source = (ds.stats or {}).get("expected_column")
    read = f"; expected answers read from column `{source}`" if source else ""
    _print_report([f"{file}: {status} — {ds.name} v{ds.version}, {ds.row_count} rows{read}"],
                  False)


@cli.command()
def worker(
    queues: Annotated[str, typer.Option(help="comma-separated: inference,gpu,io")] = "",
    concurrency: Annotated[int, typer.Option(help="processes (0: the setting)")] = 0,
    hostname: Annotated[str, typer.Option(help="Celery node name")] = "",
    beat: Annotated[bool | None, typer.Option(
        "--beat/--no-beat", help="also run Celery beat (the watch tick) beside this worker; "
        "default: on for the embedded broker when serving the inference queue")] = None,
) -> None:
    """Run a Celery worker with a reconciler loop; no --queues serves all three."""
    settings = _settings(server=True)
    install_log_filter(settings)
    chosen = tuple(q.strip() for q in queues.split(",") if q.strip()) or QUEUES
    bad = [q for q in chosen if q not in QUEUES]
    if bad:
        typer.echo(f"tunebot: unknown queue {bad[0]} (queues: {', '.join(QUEUES)})", err=True)
        raise typer.Exit(2)
    ensure_schema(settings)
    with_beat = beat if beat is not None else (
        "inference" in chosen and settings.broker_url.startswith("sqla+"))
    if with_beat:
        # The embedded default is one command: the scheduler that ticks the watches comes
        # with it (with Redis, run `tunebot beat` once beside the workers instead).
        _companion(["beat"])
    if "io" in chosen and len(chosen) > 1:
        # Slack delivery must not wait behind a long job in the same pool: the io queue gets
        # its own worker process, started and stopped with this one.
        chosen = tuple(q for q in chosen if q != "io")
        _companion_io_worker(hostname)
    # Before the pool forks: its children write their metrics where this process serves them.
    telemetry.serve_worker(settings)
    app = make_celery(settings, chosen)
    engine = make_engine(settings.database_url)
    reconciler = Reconciler(engine, Sender(app), settings.reconcile_seconds)

    def _wake_queued() -> None:
        # A job whose send failed (as this worker started, or while none was up) runs now,
        # not after the reconciler's back-off.
        log = logging.getLogger("tunebot.worker")
        try:
            woken = wake_queued(engine=engine, waker=Sender(app), queues=chosen)
        except Exception as exc:
            log.warning("start-up wake of queued jobs failed (%s); the reconciler re-sends "
                        "them", exc.__class__.__name__)
            return
        if woken:
            log.info("woke queued jobs at start: %s", woken)

    # Connected by call rather than as decorators: Celery's untyped decorators would make
    # these receivers untyped.
    def _start(**_: object) -> None:
        reconciler.start()
        if set(chosen) & set(TASK_FOR_QUEUE):
            threading.Thread(target=_wake_queued, name="tunebot-wake", daemon=True).start()

    def _stop(**_: object) -> None:
        reconciler.stop()

    def _mask(logger: logging.Logger, **_: object) -> None:
        # Celery replaces the handlers it found: mask secrets on the ones it installs.
        install_log_filter(settings, logger)

    signals.worker_ready.connect(_start, weak=False)
    signals.worker_shutdown.connect(_stop, weak=False)
    signals.after_setup_task_logger.connect(_mask, weak=False)
    signals.after_setup_logger.connect(_mask, weak=False)

    def _child_exit(**_: object) -> None:
        telemetry.mark_dead()

    signals.worker_process_shutdown.connect(_child_exit, weak=False)

    name = hostname or f"tunebot-{'-'.join(chosen)}@%h"
    app.worker_main([
        "worker", "-Q", ",".join(chosen), "-c", str(concurrency or settings.worker_concurrency),
        "-n", name, "-l", settings.log_level.upper(), "--without-gossip", "--without-mingle",
        # Heartbeats are events: on a broker that carries them Flower needs them to show the
        # worker online; the SQL transport would only poll for them.
        *([] if sends_events(settings.broker_url) else ["--without-heartbeat"]),
    ])


def _companion_io_worker(hostname: str) -> None:
    name = f"{hostname.split('@')[0]}-io@%h" if hostname else "tunebot-io@%h"
    _companion(["worker", "--queues", "io", "--concurrency", "1", "--hostname", name])


def _companion(args: list[str]) -> None:
    """A `tunebot ARGS` process started and stopped with this one."""
    proc = subprocess.Popen([sys.executable, "-m", "tunebot.cli", *args])

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    atexit.register(stop)


@cli.command("beat")
def beat_cmd() -> None:
    """Run Celery beat: a watch tick every TUNEBOT_WATCH_TICK_SECONDS. The watches' schedule
    is in SQL, so any number of beats start each run once; on one var/ folder a second beat
    waits for the first's lock and takes over when it ends."""
    settings = _settings(server=True)
    install_log_filter(settings)
    ensure_schema(settings)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    app = make_celery(settings)
    log = logging.getLogger("tunebot.beat")
    # Held for the life of the process: beat's schedule file is one writer's.
    with open(settings.var_dir / "beat.lock", "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another beat holds %s; waiting to take over", settings.var_dir / "beat.lock")
            fcntl.flock(lock, fcntl.LOCK_EX)
        log.info("beat: a watch tick every %g s, schedule file %s",
                 settings.watch_tick_seconds, app.conf.beat_schedule_filename)
        app.Beat(loglevel=settings.log_level.upper(), quiet=True).run()


@cli.command()
def flower(
    port: Annotated[int, typer.Option(help="Flower's web port")] = 5555,
    address: Annotated[str, typer.Option(
        help="bind address (default: TUNEBOT_METRICS_BIND)")] = "",
) -> None:
    """Run Flower (Celery's monitor) on TUNEBOT_BROKER_URL; it needs Redis: the embedded SQL
    broker carries no task events. Flower comes with the `ops` extra."""
    settings = _settings(server=True)
    reason = flower_unavailable(settings)
    if reason:
        typer.echo(f"tunebot: {reason}", err=True)
        raise typer.Exit(2)
    if not 1 <= port <= 65535:
        typer.echo(f"tunebot: --port must be between 1 and 65535 (got {port})", err=True)
        raise typer.Exit(2)
    app = make_celery(settings)
    typer.echo(f"Flower on http://{address or settings.metrics_bind}:{port} "
               f"(broker {_shown(settings.broker_url)})", err=True)
    app.start(["flower", f"--port={port}", f"--address={address or settings.metrics_bind}"])


def flower_unavailable(settings: Settings) -> str | None:
    """Why Flower cannot run here (not Redis, or not installed), or None."""
    if not sends_events(settings.broker_url):
        return ("Flower needs a Redis broker: TUNEBOT_BROKER_URL is "
                f"{_shown(settings.broker_url)}, and Celery's SQL transport sends no "
                "task events. Set TUNEBOT_BROKER_URL=redis://HOST:6379/0 for the workers and "
                "for Flower (docker/compose.yaml runs it so).")
    if importlib.util.find_spec("flower") is None:
        return ('Flower is not installed: pip install -c requirements.lock -e ".[ops]" '
                "(or `make flower`)")
    return None


def _shown(url: str) -> str:
    """A broker URL fit for a message: credentials masked (a bare path stays as it is)."""
    return redact_url(url) if "@" in url else url


@cli.command()
def bot(
    socket: Annotated[bool, typer.Option("--socket", help="Socket Mode (SLACK_APP_TOKEN)")] = False,
    http: Annotated[bool, typer.Option("--http", help="HTTP at /slack/events")] = False,
    port: Annotated[int, typer.Option(help="HTTP port")] = 3000,
) -> None:
    """Run the Slack bot (Socket Mode when SLACK_APP_TOKEN is set, else HTTP)."""
    settings = _settings(server=True)
    try:
        bot_app = importlib.import_module("bot.app")
    except ModuleNotFoundError as exc:
        typer.echo(f"tunebot: the Slack bot is not installed ({exc})", err=True)
        raise typer.Exit(1) from None
    mode = "socket" if socket else "http" if http else (
        "socket" if settings.slack_app_token else "http")
    bot_app.main(settings, mode=mode, port=port)


@cli.command()
def run(
    text: Annotated[str, typer.Argument(help='command text, e.g. "/prompt list"')],
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="follow the job")] = False,
    file: Annotated[Path | None, typer.Option("--file", help="a YAML/JSONL/CSV file")] = None,
) -> None:
    """Run one command of the grammar as the CLI user (an admin of TUNEBOT_CLI_TEAM)."""
    settings = _settings()
    try:
        cmd = parse(text)
    except UserError as exc:
        typer.echo(f"tunebot: {exc}" + (f"\nUsage: {exc.usage}" if exc.usage else ""), err=True)
        raise typer.Exit(2) from None
    if file is not None and not file.is_file():
        typer.echo(f"tunebot: no such file: {file}", err=True)
        raise typer.Exit(2)
    ensure_schema(settings)
    app = build_core(settings)
    outcome = execute(cmd, _actor(settings, app.engine), app, file)
    out = render_text(outcome.reply)
    typer.echo(out, err=outcome.reply.error)
    if outcome.reply.error:
        raise typer.Exit(2 if "Usage:" in out else 1)
    if follow_ and outcome.job is not None:
        assert outcome.job.id is not None
        raise typer.Exit(follow(app, outcome.job.id))


@cli.command("jobs")
def jobs_cmd() -> None:
    """List the CLI workspace's recent jobs."""
    settings = _settings()
    ensure_schema(settings)
    app = build_core(settings)
    typer.echo(render_text(jobs_table(jobs.list_jobs(
        engine=app.engine, team_id=_actor(settings, app.engine).team_id))))


@cli.command("ci")
def ci_cmd(
    refs: Annotated[list[str], typer.Argument(
        help="candidates: REF (NAME@V, NAME:LABEL) or a catalog file prompts/NAME.yaml "
             "(its last version, imported first)", show_default=False)],
    against: Annotated[str, typer.Option(
        "--against", help="a label of each candidate's own prompt (production), or one REF")],
    on: Annotated[str | None, typer.Option(
        "--on", help="the eval set (default: each prompt's linked eval set)")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="the model both run on (default: the baseline's)")] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="write JUnit XML here")] = None,
    markdown: Annotated[Path | None, typer.Option(
        "--markdown", help="write a markdown summary (a pull-request comment) here")] = None,
    local: Annotated[bool, typer.Option(
        "--local", help="run the jobs in this process: no broker, no worker")] = False,
) -> None:
    """The CI gate: each candidate against its baseline, paired, judged by the team's
    promotion rule; exit 1 on a regression, 0 otherwise, 2 on a usage error."""
    settings = _settings()
    for path in (junit, markdown):
        if path is not None and not path.parent.is_dir():
            typer.echo(f"tunebot: no folder {path.parent} to write {path.name} in", err=True)
            raise typer.Exit(2)
    ensure_schema(settings)
    run_here: gate.Runner | None = None
    if local:
        try:  # the worker's own code, loaded by name: scoring is never duplicated here
            execute = importlib.import_module("workers.execute")
        except ModuleNotFoundError as exc:
            typer.echo(f"tunebot: --local needs the workers installed (extra `ml`): {exc}",
                       err=True)
            raise typer.Exit(2) from None
        # No waker: nothing goes to a broker; the job runs right here once it is queued.
        app = Core(settings, make_engine(settings.database_url), None)

        def execute_here(job_id: int) -> object:
            return execute.execute_job(settings, app.engine, None, job_id)
        run_here = execute_here
    else:
        app = build_core(settings)
    actor = _actor(settings, app.engine)
    try:
        pairs = gate.plan(app, actor, refs, against, dataset=on, model=model)
        result = gate.run(app, actor, pairs, local=run_here,
                          note=lambda text: typer.echo(text, err=True))
    except UserError as exc:
        typer.echo(f"tunebot: {exc}" + (f"\nUsage: {exc.usage}" if exc.usage else ""), err=True)
        raise typer.Exit(2) from None
    for line in result.lines():
        typer.echo(line)
    if junit is not None:
        junit.write_text(gate.junit_xml(result), encoding="utf-8")
    if markdown is not None:
        markdown.write_text(gate.markdown(result), encoding="utf-8")
    raise typer.Exit(result.exit_code)


@cli.command()
def demo() -> None:
    """Run the main job end to end on the embedded defaults, printing each thread."""
    settings = _settings()
    raise typer.Exit(run_demo(settings))


def main() -> None:
    """Console-script entry point."""
    try:
        cli()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
