"""Template resource bombs (issue 17, item 1): every render ends within its time and memory
bounds with a clear error naming the limit, whatever the template does; `/prompt render` never
holds the ordered command lane of the HTTP bot; a job stuck rendering can be cancelled.

Driven through the CLI (`tunebot run`), the command path the CLI and Slack share (`/prompt new`
with a file, whose save runs a trial render, then `/prompt render`), the HTTP bot and a real
worker. Time is wall clock around each command; memory is the peak resident size of this
process and its children (the render child among them) above where each was when the command
started, sampled every couple of milliseconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import workers.tasks  # noqa: F401 - registers the task names looked up below
from devtools.env import settings_env
from devtools.slack_api.payloads import signed_headers, slash_command_body
from tests.bot.conftest import SECRET, running_stack
from tests.conftest import make_settings
from tests.reliability.conftest import Report, size
from tests.reliability.stack import all_jobs, reply_texts
from tunebot import catalog, datasets, migrate
from tunebot.cli import cli
from tunebot.commands import parse
from tunebot.core import Actor, Core
from tunebot.db import make_engine, session_scope
from tunebot.dispatch import execute
from tunebot.jobs import worker_state
from tunebot.jobs.queue import INFERENCE_TASK, make_celery
from tunebot.replies import Reply

TEAM = "T0TEAM"
ISSUE = '{% for i in range(n|int) %}{{ (["a"*100000]*10000)|string|length }}{% endfor %}ok'
SECONDS = 2.0  # the bound on a render
SLACK = 0.5  # the command's own SQL and a loaded test machine, around the render
MEMORY_MB = 64
LIMIT_WORDS = ("limit", "at most", "over ", "refused", "too large", "not allowed",
               "syntax error", "template error", "missing variable")
TRACEBACK = ("Traceback", 'File "', "object at 0x")

# Each builds something huge from a small template: printing a list, |string, |join, |tojson,
# `~`, `*` of strings and lists, nesting, dict building, filters that copy or grow, macros,
# {% set %} blocks, loops around all of it. The issue's line first.
BOMBS = [
    ISSUE,
    '{{ ["a"*100000]*10000 }}',
    '{{ (["a"*100000]*10000)|join }}',
    '{{ (["a"*100000]*10000)|tojson }}',
    '{{ (["a"*100000]*10000) ~ "" }}',
    '{{ (["a"*100000]*10000)|sum(start=[])|length }}',
    '{{ ("a"*100000)|list|string }}',
    '{% set a = ["a"*10000]*10 %}{% set b = [a,a,a,a,a,a,a,a,a,a] %}'
    '{% set c = [b,b,b,b,b,b,b,b,b,b] %}{{ c|length }}{{ c == c|list }}',
    '{% set a = "x"*100000 %}{% set d = {"a": a, "b": a, "c": a, "d": a, "e": a, "f": a, '
    '"g": a, "h": a, "i": a, "j": a, "k": a} %}{{ d }}',
    '{% set a = "x"*100000 %}{{ dict(a=[a]*10, b=[a]*10)|string }}',
    '{{ range(10000)|map("string")|join("a"*100000) }}',
    '{{ ([0]*10000)|map("d", "x"*100000, true)|list|string }}',
    '{{ ("a"*1000)|replace("a", "a"*100000) }}',
    '{{ ("a"*99999).replace("a", "aa") }}',
    '{% macro m(s, k) %}{% if k > 0 %}{{ m(s ~ s, k - 1) }}{% endif %}{% endmacro %}'
    '{{ m("x", 40) }}',
    '{% set x %}{% for i in range(10000) %}{{ "y"*10000 }}{% endfor %}{% endset %}'
    '{{ x|length }}',
    '{% set x %}{% for i in range(10000) %}' + "L" * 20000 + '{% endfor %}{% endset %}'
    '{{ x|length }}',
    '{% macro m(s) %}{{ s }}{{ m(s) }}{% endmacro %}{{ m("x"*100000) }}',
    '{{ ([["a"*1000]*1000]*1000)|length }}',
    '{{ [[1]*10000]*10000 }}',
    '{{ (2**4096) * (2**4096) }}',
    '{% set a = 2**4000 %}{% set b = a*a %}{% set c = b*b %}{{ c|string|length }}',
    '{% for i in range(10000) %}{{ ("a"*100000)|list|length }}{% endfor %}',
    '{% for i in range(9000) %}{% for j in range(9000) %}{% endfor %}{% endfor %}',
    '{{ ("a\\n"*50000).splitlines()|string }}',
    '{{ ("a "*50000).split()|join(" "*1000) }}',
    '{{ (["x"*100000]*10)|list * 1000 }}',
    '{% set l = ["x"*100000]*10 %}{{ (l + l + l)|length }}',
    '{% set a = ["x"*1000]*999 %}{% set b = ["x"*1000]*999 %}'
    '{% for i in range(10000) %}{{ a == b }}{% endfor %}',
    '{{ (["x"*100000]*10)|tojson(indent=16) }}',
    '{% set a = ["x"*50000]*20 %}{% for i in range(10000) %}{{ a|sort|length }}{% endfor %}',
    '{% set a = "x"*100000 %}{% for i in range(10000) %}{% set b = a.upper() %}{% endfor %}',
    '{% for i in range(10000) %}{{ ("x"*100000).split("x")|length }}{% endfor %}',
    '{{ ([("x"*100000)]*10000)|unique|list }}',
    '{{ range(10000)|map("string")|map("replace", "", "x"*9)|list|string }}',
    '{% set a = "x"*100000 %}{{ [a, a, a, a, a, a, a, a, a, a, a]|join }}',
    '{{ (["ab"*50000]*10)|map("upper")|map("lower")|join }}',
    '{{ ("x"*100000)|e|e|e|length }}',
    '{{ (range(10000)|list)|string * 100 }}',
    '{{ ("a"*100000)|truncate(99999, true, "b"*100000) }}',
    '{% for i in range(20000) %}{{ ("9"*4300)|int }}{% endfor %}',
    '{{ ("é"*100000)|upper|upper|title }}',
    '{{ ((["x"*100000]*10)|selectattr("0")|list)|string }}',
]


# ---- measuring ---------------------------------------------------------------------------


def _status(pid: int, key: str) -> int | None:
    """A VmRSS/VmHWM figure of /proc/PID/status, in bytes (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))
    except (OSError, StopIteration):
        return None


class Peak:
    """The peak resident size of this process and its children above each one's size when the
    measurement started. Each process's kernel high-water mark is reset at the start and read at
    the end (it sees a spike a sampler would miss while one C call holds the GIL); a sampler
    every few milliseconds covers a child killed before the end. A child that appears counts
    from its first sample."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.procs: list[psutil.Process] = [self.me]
        self.first: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, refresh: bool = True) -> None:
        if refresh:  # finding the children walks /proc: not at every sample
            self.procs = [self.me, *self.me.children(recursive=True)]
        for p in self.procs:
            rss = _status(p.pid, "VmRSS:")
            if rss is None:
                continue
            self.first.setdefault(p.pid, rss)
            self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            self._sample(refresh=n % 25 == 0)
            n += 1
            time.sleep(0.002)

    def __enter__(self) -> Peak:
        self._sample()
        for pid in self.first:
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as fh:
                    fh.write("5")  # resets VmHWM to the current size
            except OSError:
                pass
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        for pid in self.peak:
            hwm = _status(pid, "VmHWM:")
            if hwm is not None:
                self.peak[pid] = max(self.peak[pid], hwm)

    @property
    def mb(self) -> float:
        """The largest growth of one process, in MB."""
        return max((self.peak[p] - self.first[p] for p in self.peak), default=0) / 2**20


class Worst:
    """The worst time and memory seen, and what took them."""

    def __init__(self) -> None:
        self.seconds = (0.0, "")
        self.mb = (0.0, "")

    def see(self, seconds: float, mb: float, what: str) -> None:
        """Keep the worst."""
        self.seconds = max(self.seconds, (seconds, what))
        self.mb = max(self.mb, (mb, what))

    def note(self) -> str:
        """The worst figures, for the report."""
        return (f"worst {self.seconds[0]:.2f} s ({self.seconds[1][:40]!r}), "
                f"peak +{self.mb[0]:.0f} MB ({self.mb[1][:40]!r})")


def clear(text: str) -> bool:
    """A clear answer: names what went wrong, no internals."""
    return any(w in text for w in LIMIT_WORDS) and not any(t in text for t in TRACEBACK)


# ---- the command path (the same the CLI and Slack take) -----------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Core, Actor, Path]]:
    """A migrated SQLite workspace; no broker (renders need none)."""
    tmp = tmp_path_factory.mktemp("bombs")
    s = make_settings(tmp, max_jobs_per_user=100_000)
    migrate.upgrade(s.database_url)
    app = Core(s, make_engine(s.database_url), None)
    yield app, Actor(team_id=TEAM, user_id="U0EVE", channel="C0EVE"), tmp
    app.engine.dispose()


def save_and_render(world: tuple[Core, Actor, Path], name: str, src: str,
                    params: str = "n=2") -> tuple[Reply, Reply, float, float, float]:
    """`/prompt new` with a file (its save runs a trial render), then `/prompt render`:
    (save reply, render reply, save seconds, render seconds, peak MB of both)."""
    app, actor, tmp = world
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "template": src,
                                "variables": {"n": "a count", "t": "a text"}}))
    with Peak() as mem:
        start = time.monotonic()
        saved = execute(parse("/prompt new"), actor, app, path).reply
        middle = time.monotonic()
        rendered = execute(parse(f"/prompt render {name} {params}"), actor, app).reply \
            if not saved.error else saved
        end = time.monotonic()
    return saved, rendered, middle - start, end - middle, mem.mb


def test_template_bombs_stay_within_their_bounds(world: tuple[Core, Actor, Path],
                                                 report: Report) -> None:
    execute(parse("/prompt list"), world[1], world[0])  # the process's first SQL, not measured
    save_and_render(world, "warm", "{{ n }}")  # and its render child started
    worst = Worst()
    bad: list[tuple[str, str]] = []
    refused = tried = 0
    for i, src in enumerate(BOMBS):
        tried += 1
        saved, rendered, t_save, t_render, mb = save_and_render(world, f"bomb-{i}", src)
        worst.see(max(t_save, t_render), mb, src)
        text = rendered.text or ""
        refused += bool(rendered.error)
        if rendered.error and not clear(text):
            bad.append((src, f"unclear: {text[:200]}"))
        if not rendered.error and len(text) > 200_000:
            bad.append((src, f"rendered {len(text):,} characters"))
        if t_save > SECONDS + SLACK or t_render > SECONDS + SLACK:
            bad.append((src, f"took {t_save:.2f} s to save, {t_render:.2f} s to render"))
        if mb > MEMORY_MB:
            bad.append((src, f"grew {mb:.0f} MB"))
        if bad:
            break  # where renders are unbounded the next bomb can take minutes and gigabytes
    lost = len({src for src, _ in bad})
    report.add("17.1 template bombs", "bomb corpus: /prompt new (trial render) + render",
               tried, held=tried - lost, lost=lost,
               note=f"{refused} refused; {worst.note()}; HEAD 7ea2aee, each bomb in a fresh "
               "interpreter: worst 22.1 s (the split loop), +1.9 GB (|tojson of the shared "
               "list), the issue's line 13.5 s +954 MB")
    assert not bad, bad[:5]


def test_the_issue_line_through_the_cli(tmp_path: Path, report: Report) -> None:
    s = make_settings(tmp_path)
    env = settings_env(s)
    runner = CliRunner()
    path = tmp_path / "bomb.yaml"
    path.write_text(json.dumps({"name": "bomb", "template": ISSUE,
                                "variables": {"n": "how many times"}}))
    made = runner.invoke(cli, ["run", "/prompt new", "--file", str(path)], env=env)
    assert made.exit_code == 0, made.output
    runner.invoke(cli, ["run", "/prompt render bomb n=0"], env=env)  # warm: SQL, the child
    figures: dict[int, tuple[float, float, int, str]] = {}
    for n in (0, 2, 10_000):
        if n == 10_000 and figures[2][0] > SECONDS + SLACK:
            break  # unbounded, n=10000 would run for hours
        with Peak() as mem:
            start = time.monotonic()
            done = runner.invoke(cli, ["run", f"/prompt render bomb n={n}"], env=env)
            seconds = time.monotonic() - start
        figures[n] = (seconds, mem.mb, done.exit_code, done.output.strip()[-160:])
    bomb = figures[2]
    report.add("17.1 template bombs", "the issue's line via `tunebot run` (n=0, 2, 10000)",
               len(figures),
               held=sum(f[0] <= SECONDS + SLACK and f[1] <= MEMORY_MB for f in figures.values()),
               lost=sum(f[0] > SECONDS + SLACK or f[1] > MEMORY_MB for f in figures.values()),
               note="; ".join(f"n={n}: {f[0]:.2f} s, +{f[1]:.0f} MB" for n, f in figures.items())
               + " (HEAD 7ea2aee: n=2 5.7 s, 1.07 GB)")
    assert figures[0][2] == 0 and "ok" in figures[0][3], figures[0]
    for n, (seconds, mb, code, out) in figures.items():
        assert seconds <= SECONDS + SLACK and mb <= MEMORY_MB, (n, figures)
        assert n == 0 or (code != 0 and clear(out)), (n, figures)
    assert len(figures) == 3 and bomb[0] <= SECONDS + SLACK, figures


# ---- generated: operators, filters and methods in many combinations -----------------------

K = st.sampled_from([0, 1, 2, 9, 1000, 10_000, 100_000, 10**9])
BASE = st.one_of(
    st.just("t"),
    st.builds('("a" * {})'.format, K),
    st.builds("([t] * {})".format, K),
    st.builds("(range({})|list)".format, K),
    st.just("dict(a=t, b=[t, t])"),
    st.just('{"k": t, "l": [t, t, t]}'),
    st.just("(t, t, t)"),
    st.just("t.split()"),
    st.just("(t|list)"),
)
STEP = st.sampled_from([
    "|string", "|join", "|join(t)", "|tojson", "|list", "|upper", "|replace('a', t)", "|e",
    "|truncate(50)", "|trim", "|sort", "|unique|list", "|map('string')|list",
    "|sum(start=[])", "|reverse|list", "|dictsort", "|wordcount", "|length", "|first",
    "|selectattr('0')|list", "|groupby(0)", "|striptags", "|title", ".upper()", ".split()",
    ".replace('a', t)", ".splitlines()", "|map('upper')|list", " ~ t", " * 10", " * 10000",
    " + t", " + [t]", "|items|list", "|capitalize", ".join(t)", ".join([t, t])", "|count",
    "|indent(1000)", "|center(100000)", "|wordwrap(5)", "|format(t)", "|batch(3)|list",
    ".ljust(100000)", "|string|list", "|tojson(indent=4)",
])
EXPR = st.builds(lambda base, steps: "(" + base + "".join(steps) + ")", BASE,
                 st.lists(STEP, min_size=1, max_size=3))
WRAP = st.sampled_from([
    "{{{{ {e} }}}}",
    "{{% for i in range({k}) %}}{{{{ {e} }}}}{{% endfor %}}",
    "{{% set x %}}{{% for i in range({k}) %}}{{{{ {e} }}}}{{% endfor %}}{{% endset %}}"
    "{{{{ x|length }}}}",
    "{{% macro m(v, k) %}}{{% if k > 0 %}}{{{{ m(v ~ v, k - 1) }}}}{{% endif %}}"
    "{{{{ v|length }}}}{{% endmacro %}}{{{{ m({e}, {k}) }}}}",
    "{{% set y = {e} %}}{{{{ [y, y, y, y] == [y, y, y, y]|list }}}}",
    "{{% for a in {e} %}}{{% for b in {e} %}}{{{{ a ~ b }}}}{{% endfor %}}{{% endfor %}}",
    "{{% set y = {e} %}}{{% set z = [y, y, y, y, y, y, y, y, y, y] %}}"
    "{{{{ [z, z, z, z, z, z, z, z, z, z]|string|length }}}}",
])
TEMPLATE = st.builds(lambda wrap, e, k, n: (
    f'{{% set t = "ab " * {n} %}}' + wrap.format(e=e, k=k)),
    WRAP, EXPR, st.sampled_from([1, 100, 10_000]), st.sampled_from([1, 1000, 33_000]))
FUZZ = settings(max_examples=size(30, 400), deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def test_generated_templates_stay_within_their_bounds(world: tuple[Core, Actor, Path],
                                                      report: Report) -> None:
    save_and_render(world, "warm-fuzz", "{{ n }}")
    worst = Worst()
    bad: list[tuple[str, str]] = []
    seen = {"refused": 0, "rendered": 0}
    counter = iter(range(10**9))

    @FUZZ
    @given(TEMPLATE)
    # Two of the grammar's known bombs run first, then the generated ones.
    @example('{% set t = "ab " * 33000 %}{{ (([t] * 10000)|string) }}')
    @example('{% set t = "ab " * 1 %}{% for i in range(10000) %}{{ (("a" * 100000)|list'
             '|string) }}{% endfor %}')
    def one(src: str) -> None:
        if bad:
            return  # one unbounded render is enough; the next could take hours
        saved, rendered, t_save, t_render, mb = save_and_render(world, f"fz-{next(counter)}",
                                                                src)
        worst.see(max(t_save, t_render), mb, src)
        text = rendered.text or ""
        seen["refused" if rendered.error else "rendered"] += 1
        if rendered.error and not clear(text):
            bad.append((src, f"unclear: {text[:200]}"))
        if t_save > SECONDS + SLACK or t_render > SECONDS + SLACK:
            bad.append((src, f"took {t_save:.2f} s to save, {t_render:.2f} s to render"))
        if mb > MEMORY_MB:
            bad.append((src, f"grew {mb:.0f} MB"))

    one()
    n = sum(seen.values())
    lost = len({src for src, _ in bad})
    report.add("17.1 template bombs", "generated operator/filter/method combinations", n,
               held=n - lost, lost=lost,
               note=f"{seen['refused']} refused, {seen['rendered']} rendered; {worst.note()}")
    assert not bad, bad[:5]


# ---- the floor: the render child's hard limits ----------------------------------------------

CHILD = '''
import importlib.util, os, sys, time
# Like the render child: skip the catalog package's __init__ (it loads the SQL store).
sys.modules["tunebot.catalog"] = importlib.util.module_from_spec(
    importlib.util.find_spec("tunebot.catalog"))
from tunebot.catalog.bounded import serve


def handle(request):
    kind, arg = request
    if kind == "sleep":
        time.sleep(arg)
    elif kind == "allocate":
        yield {"ok": len(bytearray(arg))}
        return
    elif kind == "grow":
        held = []
        while True:
            held.append("x" * 2**20)
    elif kind == "crash":
        os._exit(7)
    yield {"ok": kind}


def main():
    serve(handle)
'''


def test_the_render_child_enforces_hard_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               report: Report) -> None:
    # Whatever the in-process checks miss (one slow C call, an estimate that is off) still ends
    # at the child's wall-clock timeout or address-space cap: checked here with a child that
    # sleeps, allocates and crashes on request.
    try:
        spec = importlib.util.find_spec("tunebot.catalog.bounded")
    except ImportError:  # an older layout: no catalog package at all
        spec = None
    assert spec is not None, "renders do not run in a bounded child process at this commit"
    bounded = importlib.import_module("tunebot.catalog.bounded")
    (tmp_path / "bombchild.py").write_text(CHILD)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    pool = bounded.ChildPool("bombchild:main", seconds=SECONDS, memory=MEMORY_MB * 2**20, size=1)

    def run(request: tuple[str, Any]) -> tuple[str, float]:
        start = time.monotonic()
        try:
            out = str(list(pool.run(json.dumps(request).encode()))[0]["ok"])
        except bounded.Limit as exc:
            out = f"limit {exc.kind}"
        return out, time.monotonic() - start

    run(("hello", 0))  # started (a cold interpreter's start is not part of any request)
    cases = {"sleep 30 s": (("sleep", 30), "limit time"),
             "allocate 32 MB": (("allocate", 32 * 2**20), "33554432"),
             "allocate 200 MB": (("allocate", 200 * 2**20), "limit memory"),
             "grow 1 MB at a time": (("grow", 0), "limit memory"),
             "crash": (("crash", 0), "limit crash")}
    got = {}
    for name, (request, expected) in cases.items():
        run(("hello", 0))  # a fresh child after the last kill, started outside the timing
        got[name] = (*run(request), expected)
    after = run(("hello", 0))[0]
    pool.close()
    held = sum(out == expected and seconds <= SECONDS + SLACK
               for out, seconds, expected in got.values())
    report.add("17.1 template bombs", "render child hard limits (time, memory, crash)",
               len(cases), held=held, lost=len(cases) - held,
               note="; ".join(f"{k}: {v[0]} in {v[1]:.2f} s" for k, v in got.items()))
    assert held == len(cases), got
    assert after == "hello"


# ---- HTTP mode: the ordered lane, and a job stuck rendering --------------------------------

SLOW = ("{% set t = 'ab' * 50000 %}{% for i in range(2500) %}{% if t.count('ba') > 0 %}"
        "{% endif %}{% endfor %}Ticket: {{ ticket }}")


def signed_post(stack: Any, text: str, command: str) -> tuple[float, int, str]:
    """A signed slash command to the HTTP bot, waiting as long as it takes: (seconds, status,
    body)."""
    body = slash_command_body(text, command=command)
    start = time.monotonic()
    try:
        resp = httpx.post(stack.bot.url, content=body, headers=signed_headers(body, SECRET),
                          timeout=300)
        return time.monotonic() - start, resp.status_code, resp.text
    except httpx.HTTPError as exc:
        return time.monotonic() - start, 0, repr(exc)


def run_task(settings: Any, job_id: int) -> None:
    """The inference queue's Celery task, called by name in this process, as a worker's pool
    process runs it (no worker start-up)."""
    app = make_celery(settings, ("inference",))
    worker_state._STATE = None  # this process's engine, built for this test's database
    try:
        app.tasks[INFERENCE_TASK].apply(args=[job_id])
    finally:
        if worker_state._STATE is not None:
            worker_state._STATE.engine.dispose()
        worker_state._STATE = None


def test_render_never_holds_the_command_lane_and_cancel_stops_rendering(
        tmp_path: Path, redis_url: str, report: Report) -> None:
    rows = size(60, 400)
    with running_stack(tmp_path, None, redis_url, openai_base_url="http://127.0.0.1:9/v1",
                       database_url=f"sqlite:///{tmp_path / 'bot.db'}") as stack:
        app = stack.core
        with session_scope(app.engine) as s:
            catalog.save_version(session=s, team_id=TEAM, name="bomb",
                                 content={"template": ISSUE, "variables": {"n": "count"}},
                                 author="U0ALICE")
            catalog.save_version(session=s, team_id=TEAM, name="slow",
                                 content={"template": SLOW, "variables": {"ticket": "text"}},
                                 author="U0ALICE")
        data = tmp_path / "slow-eval.jsonl"
        data.write_text("".join(json.dumps({"ticket": f"t{i}", "expected": "x"}) + "\n"
                                for i in range(rows)))
        datasets.add_dataset(engine=app.engine, settings=stack.settings, team_id=TEAM,
                             name="slow-eval", path=data, user="U0ALICE")
        signed_post(stack, "render bomb n=0", "/prompt")  # warm: first request, SQL, child

        # 1. A render bomb and, while it runs, an ordinary command on the ordered lane.
        answers: dict[str, tuple[float, int, str]] = {}
        bomb = threading.Thread(target=lambda: answers.update(
            render=signed_post(stack, "render bomb n=2", "/prompt")))
        bomb.start()
        time.sleep(0.3)
        answers["list"] = signed_post(stack, "list", "/prompt")
        bomb.join(timeout=600)
        render_s, render_code, render_text = answers["render"]
        list_s, list_code, list_text = answers["list"]

        # 2. A prompt test whose rows render slowly, run by its Celery task, cancelled while
        # it renders.
        _, test_code, test_text = signed_post(stack, "test slow on slow-eval model=openai:stub",
                                              "/prompt")
        job_id = all_jobs(app.engine)[-1].id
        assert job_id is not None
        worker = threading.Thread(target=run_task, args=(stack.settings, job_id), daemon=True)
        worker.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                "Running" in t for t in reply_texts(app.engine, job_id)):
            time.sleep(0.1)
        time.sleep(1.0)  # well into the rows
        asked = time.monotonic()
        _, cancel_code, _ = signed_post(stack, f"cancel {job_id}", "/tunebot")
        worker.join(timeout=300)
        cancel_s = time.monotonic() - asked
        status = all_jobs(app.engine)[-1].status
    lane_ok = list_code == 200 and list_s < 1.0 and render_code == 200 and \
        render_s <= SECONDS + SLACK
    report.add("17.1 template bombs", "HTTP: /prompt render bomb beside /prompt list", 1,
               held=int(lane_ok), lost=int(not lane_ok),
               note=f"render answered in {render_s:.2f} s, /prompt list in {list_s:.2f} s")
    cancelled = status == "cancelled" and cancel_s < 8
    report.add("17.1 template bombs", f"cancel a prompt test while {rows} slow rows render", 1,
               held=int(cancelled), lost=int(not cancelled),
               note=f"{status} {cancel_s:.1f} s after Cancel")
    assert list_code == 200 and list_s < 1.0, (list_s, list_text[:200])
    assert render_code == 200 and render_s <= SECONDS + SLACK, (render_s, render_text[:300])
    assert "limit" in render_text or "at most" in render_text, render_text[:300]
    assert test_code == 200 and "Queued" in test_text and cancel_code == 200, test_text[:300]
    assert status == "cancelled" and cancel_s < 8, (status, cancel_s)
