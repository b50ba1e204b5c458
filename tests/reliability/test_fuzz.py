"""Bad input, fuzzed with hypothesis: random and malformed command strings through the parser and
the service layer; malformed dataset files through /dataset add's service; out-of-range
hyperparameters; templates built to explode → always a clear error or a valid result, never an
unexpected exception, and nothing half-written left behind."""

from __future__ import annotations

import codecs
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlmodel import Session

from tests.conftest import make_settings
from tests.reliability.conftest import Report, size
from tunebot import catalog, datasets, hyperparams, migrate
from tunebot.catalog import templates
from tunebot.commands import FAMILIES, SPECS, parse
from tunebot.core import Actor, Core
from tunebot.db import make_engine, session_scope
from tunebot.dispatch import execute
from tunebot.errors import UserError
from tunebot.models import Dataset, Job

FUZZ = settings(max_examples=size(50, 500), deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
FILES = settings(max_examples=size(50, 200), deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))
TEAM = "T0TEAM"
PROMPT = {"messages": [{"role": "user", "content": "Ticket: {{ ticket }}"}],
          "variables": {"ticket": "the ticket text"},
          "output": {"format": "choice", "choices": ["billing", "technical"]}}
MAX_ROWS = 40
TRACEBACK_MARKS = ("Traceback", "File \"", "Error(", "object at 0x")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Core, Path]]:
    """A migrated SQLite workspace with one prompt and one dataset; no broker."""
    tmp = tmp_path_factory.mktemp("fuzz")
    s = make_settings(tmp, max_rows=MAX_ROWS, max_jobs_per_user=100_000)
    migrate.upgrade(s.database_url)
    engine = make_engine(s.database_url)
    with session_scope(engine) as session:
        catalog.save_version(session=session, team_id=TEAM, name="triage", content=PROMPT,
                             author="U0ALICE", message="v1")
    data = tmp / "triage-eval.jsonl"
    data.write_text("".join(json.dumps({"ticket": f"t{i}", "expected": "billing"}) + "\n"
                            for i in range(6)))
    datasets.add_dataset(engine=engine, settings=s, team_id=TEAM, name="triage-eval",
                         path=data, user="U0ALICE")
    yield Core(s, engine, None), tmp
    engine.dispose()


def _clear(text: str) -> bool:
    return bool(text.strip()) and not any(m in text for m in TRACEBACK_MARKS)


# ---- commands ----------------------------------------------------------------------------

WEIRD = ["", "'", '"', "“", "‘x’", "\\", "<!channel>", "<!here>", "<@U0BOB>", "<http://x|y>",
         "../../etc/passwd", "/etc/passwd", "..", "#12", "#", "99999999999999999999", "1e309",
         "nan", "inf", "-1", "0", "\x00", "\u202e", "🧪", "a" * 300, "NAME@", "x@-1", "x:",
         "ft:", "ft:../x", "openai:", "smollm2", "triage", "triage@1", "triage:production",
         "triage-eval", "on", "vs", "hybrid", "=", "==", "k=", "=v", "traffic=5000/day",
         "traffic=-1/day", "seconds=1e9", "samples=0", "temperature=nan", "max_tokens=1e3"]
ACTIONS = sorted({a for _, a in SPECS} | {"vs", "name"})
KEYS = sorted({*hyperparams.KEYS, "model", "samples", "temperature", "max_tokens", "traffic",
               "seconds", "prompt", "template", "name", "x"})
word = st.one_of(st.sampled_from(WEIRD), st.sampled_from(ACTIONS),
                 st.sampled_from([*FAMILIES, *(f"/{f}" for f in FAMILIES)]),
                 st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS),
                           st.one_of(st.sampled_from(WEIRD), st.text(max_size=12),
                                     st.floats(allow_nan=True).map(str),
                                     st.integers().map(str))),
                 st.text(max_size=20))
GOOD = {"REF": ["triage", "triage@1", "triage:production", "triage@9", "nope"],
        "REF2": ["triage@1", "triage", "other@2"], "NAME": ["triage", "triage-eval", "nope"],
        "DATASET": ["triage-eval", "nope"], "LABEL": ["production", "staging"],
        "JOB": ["1", "#1", "2", "#999"], "M": ["smollm2", "ft:triage", "org/model", "/m/x"],
        "TOPIC*": ["", "prompt", "finetune"], "QUERY*": ["", "tri", "<!here>"]}


@st.composite
def structured(draw: Any) -> tuple[str, str | None]:
    """A command shaped by its spec, with plausible or hostile fillers and k=v options; as the
    CLI sends it (family given in the text) or as a slash command (family given apart)."""
    (family, action), spec = draw(st.sampled_from(sorted(SPECS.items())))
    out = [] if family == "compare" else [action]
    for part in spec.pattern:
        hostile = draw(st.integers(0, 9)) >= 8  # mostly well-formed, so the service runs
        if part.islower():
            out.append(draw(st.sampled_from(WEIRD[:8])) if hostile else part)
        else:
            out.append(draw(word) if hostile else draw(st.sampled_from(GOOD.get(part, ["x"]))))
    keys = sorted(spec.params) or (KEYS if spec.any_params else [])
    if keys:
        for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
            value = draw(st.sampled_from(["1", "0.5", "auto", "smollm2", "triage", "minimal",
                                          "5000/day", "1e-4"])) \
                if draw(st.integers(0, 9)) < 7 else draw(st.one_of(st.sampled_from(WEIRD),
                                                                   st.text(max_size=8)))
            out.append(f"{key}={value}")
    out.extend(f for f in spec.flags if draw(st.booleans()))
    if draw(st.booleans()):
        return " ".join(t for t in out if t), family
    return " ".join(t for t in [f"/{family}", *out] if t), None


free_text = st.one_of(
    st.lists(word, max_size=9).map(" ".join),
    st.builds(lambda f, a, rest: " ".join([f, a, *rest]),
              st.sampled_from([f"/{f}" for f in FAMILIES]), st.sampled_from(ACTIONS),
              st.lists(word, max_size=7)),
    st.text(max_size=200),
    st.just("prompt list " + "x" * 5000),
)
command_text = st.one_of(structured(), structured(), structured(),
                         st.tuples(free_text, st.sampled_from([None, *FAMILIES])))


def test_random_commands_get_a_clear_answer(world, report: Report) -> None:
    app, _ = world
    seen: Counter[str] = Counter()
    unexpected: list[tuple[str, str]] = []

    @FUZZ
    @given(case=command_text, admin=st.booleans(), team=st.sampled_from([TEAM, "T0OTHER"]))
    def one(case: tuple[str, str | None], admin: bool, team: str) -> None:
        text, family = case
        try:
            cmd = parse(text, family=family)
        except UserError as exc:
            assert _clear(str(exc)), str(exc)
            seen["parse error"] += 1
            return
        except Exception as exc:  # noqa: BLE001 - the thing under test
            unexpected.append((text, repr(exc)))
            return
        actor = Actor(team_id=team, user_id="U0FUZZ", is_admin=admin, channel="C0FUZZ")
        try:
            out = execute(cmd, actor, app)
        except Exception as exc:  # noqa: BLE001
            unexpected.append((text, repr(exc)))
            return
        assert out.reply.text and _clear(out.reply.text), out.reply.text
        seen["service error" if out.reply.error else "ok"] += 1

    one()
    n = sum(seen.values()) + len(unexpected)
    report.add("6 fuzz commands", "random command strings → parse → service", n,
               held=n - len(unexpected), lost=len(unexpected),
               note=", ".join(f"{v} {k}" for k, v in sorted(seen.items())))
    assert not unexpected, unexpected[:5]


# ---- hyperparameters ---------------------------------------------------------------------

NUMERIC = {k: s for k, s in hyperparams.SPECS.items() if s.kind in ("int", "float")}


@st.composite
def hp_value(draw: Any) -> tuple[str, str, bool]:
    """(key, raw value, whether it is in range)."""
    key = draw(st.sampled_from(sorted(NUMERIC)))
    spec = NUMERIC[key]
    assert spec.lo is not None and spec.hi is not None
    if spec.kind == "int":
        raw = draw(st.one_of(st.integers(max_value=int(spec.lo) - 1).map(str),
                             st.integers(min_value=int(spec.hi) + 1).map(str),
                             st.sampled_from(["1e400", "-inf", "nan", "3.5", "0x10", ""])))
    else:
        raw = repr(draw(st.one_of(
            st.floats(max_value=spec.lo, exclude_max=True, allow_nan=False),
            st.floats(min_value=spec.hi, exclude_min=True, allow_nan=False),
            st.sampled_from([float("nan"), float("inf"), float("-inf")]))))
    return key, raw, False


def test_out_of_range_hyperparameters_are_refused_with_the_range(world, report: Report) -> None:
    app, _ = world
    before = _count(app, Job)
    held = tried = 0
    bad: list[str] = []

    @FUZZ
    @given(hp_value())
    def one(case: tuple[str, str, bool]) -> None:
        nonlocal held, tried
        key, raw, _ = case
        tried += 1
        actor = Actor(team_id=TEAM, user_id="U0FUZZ", channel="C0FUZZ")
        out = execute(parse(f"/finetune start smollm2 on triage-eval {key}={raw}"), actor, app)
        text = out.reply.text
        if out.reply.error and f"{key} must be" in text and out.job is None:
            held += 1
        else:
            bad.append(f"{key}={raw}: {text[:120]}")

    one()
    created = _count(app, Job) - before
    report.add("6 fuzz hyperparameters", "out-of-range values via /finetune start", tried,
               held=held, lost=len(bad), note=f"{created} jobs created")
    assert not bad, bad[:5]
    assert created == 0


# ---- templates ---------------------------------------------------------------------------

EXPLODING = [
    "{{ 'a' * 1000000000 }}",
    "{{ 'ab' * 99999 }}{{ 'ab' * 99999 }}",
    "{% for i in range(100000000) %}x{% endfor %}",
    "{% for i in range(9999) %}{% for j in range(9999) %}x{% endfor %}{% endfor %}",
    "{{ (ticket ~ ticket ~ ticket ~ ticket) * 5000 }}",
    "{{ 9 ** 9 ** 9 }}",
    "{{ 10 ** 100000 }}",
    "{% set x = [ticket] * 10000000 %}{{ x | length }}",
    "{{ range(10**9) | list | length }}",
    "{{ ticket | replace('a', ticket * 1000) | replace('a', ticket * 1000) }}",
    "{{ ticket.ljust(10**8) }}",
    "{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}",
    "{{ '%s' % ('x' * 10**7) }}",
    "{{ ticket.center(10**9) }}",
    "{{ (ticket * 1000).split('a') * 1000 }}",
]


def test_huge_template_outputs_are_refused_quickly(report: Report) -> None:
    ticket = "a" * 200
    refused, slow, other = 0, [], []
    cases = list(EXPLODING)
    # Generated ones too: sizes around the output limit.
    for n, m in itertools.product((10, 600, 5000, 10**6), (1, 100, 10**4)):
        cases.append(f"{{% for i in range({n}) %}}{{{{ ticket * {m} }}}}{{% endfor %}}")
    for src in cases:
        start = time.monotonic()
        try:
            out = templates.render(src, {"ticket": ticket})
        except UserError as exc:
            refused += 1
            if not _clear(str(exc)):
                other.append((src, str(exc)))
        except Exception as exc:  # noqa: BLE001
            other.append((src, repr(exc)))
        else:
            if len(out) > templates.MAX_OUTPUT:
                other.append((src, f"rendered {len(out)} characters"))
        if time.monotonic() - start > 2.0:
            slow.append((src, round(time.monotonic() - start, 1)))
    report.add("6 fuzz templates", "templates built to explode (output, loops, power)",
               len(cases), held=len(cases) - len(other) - len(slow), lost=len(other) + len(slow),
               note=f"{refused} refused, each < 2 s")
    assert not other, other[:5]
    assert not slow, slow


BIG = st.sampled_from([0, 1, 7, 99, 1000, 4096, 99_999, 100_001, 10**6, 10**9, 2**63])
PIECE = st.one_of(
    st.builds("{{{{ ticket * {} }}}}".format, BIG),
    st.builds("{{{{ 'ab' * {} }}}}".format, BIG),
    st.builds("{{{{ {} ** {} }}}}".format, BIG, BIG),
    st.builds("{{% for i in range({}) %}}{{{{ ticket }}}}{{% endfor %}}".format, BIG),
    st.builds("{{% for i in range({}) %}}{{% for j in range({}) %}}x{{% endfor %}}{{% endfor %}}"
              .format, BIG, BIG),
    st.builds("{{{{ ticket | replace('a', ticket * {}) }}}}".format, BIG),
    st.builds("{{{{ ([ticket] * {}) | join(ticket) }}}}".format, BIG),
    st.builds("{{{{ range({}) | list | length }}}}".format, BIG),
    st.builds("{{{{ ticket | truncate({}) }}}}".format, BIG),
    st.builds("{{% set x = ticket * {} %}}{{{{ x ~ x ~ x }}}}".format, BIG),
)


def test_generated_template_blowups_stay_bounded(report: Report) -> None:
    outcome: Counter[str] = Counter()
    bad: list[tuple[str, str]] = []

    @FUZZ
    @given(st.lists(PIECE, min_size=1, max_size=4).map("".join),
           st.sampled_from(["a", "a" * 1000, "a" * 50_000]))
    def one(src: str, ticket: str) -> None:
        start = time.monotonic()
        try:
            out = templates.render(src, {"ticket": ticket})
        except UserError as exc:
            outcome["refused"] += 1
            if not _clear(str(exc)):
                bad.append((src, str(exc)))
        except Exception as exc:  # noqa: BLE001
            bad.append((src, repr(exc)))
        else:
            outcome["rendered"] += 1
            if len(out) > templates.MAX_OUTPUT:
                bad.append((src, f"rendered {len(out):,} characters"))
        if time.monotonic() - start > 2.0:
            bad.append((src, f"took {time.monotonic() - start:.1f}s"))

    one()
    n = sum(outcome.values()) + len([b for b in bad if b[1].startswith("unexpected")])
    report.add("6 fuzz templates", "generated template blow-ups (hypothesis)", n,
               held=n - len(bad), lost=len(bad),
               note=", ".join(f"{v} {k}" for k, v in sorted(outcome.items())))
    assert not bad, bad[:5]


# ---- dataset files -----------------------------------------------------------------------

FAMILY_NAMES = ["broken_json", "latin1", "utf16", "binary", "huge_line", "too_many_rows",
                "csv_injection", "garbage"]


def _row(i: int) -> dict[str, str]:
    return {"ticket": f"ticket number {i} é", "expected": "billing" if i % 2 else "technical"}


@st.composite
def bad_file(draw: Any) -> tuple[str, str, bytes, int | None]:
    """(family, file suffix, content, the line an error must name or None)."""
    fam = draw(st.sampled_from(FAMILY_NAMES))
    n = draw(st.integers(2, 30))
    rows = [json.dumps(_row(i), ensure_ascii=False) for i in range(n)]
    at = draw(st.integers(0, n - 1))
    if fam == "broken_json":
        cut = draw(st.integers(1, len(rows[at]) - 1))
        rows[at] = rows[at][:cut]
        return fam, "jsonl", "\n".join(rows).encode(), at + 1
    if fam == "latin1":
        return fam, "jsonl", "\n".join(rows[:at]).encode() + (b"\n" if at else b"") + \
            "\n".join(rows[at:]).encode("latin-1"), at + 1
    if fam == "utf16":
        enc = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32"]))
        return fam, "jsonl", "\n".join(rows).encode(enc), None
    if fam == "binary":
        blob = draw(st.binary(min_size=1, max_size=2000))
        return fam, draw(st.sampled_from(["jsonl", "csv", "yaml"])), b"\x00PK\x03\x04" + blob, None
    if fam == "huge_line":
        rows[at] = json.dumps({"ticket": "x" * draw(st.integers(1_100_000, 2_000_000)),
                               "expected": "billing"})
        return fam, "jsonl", "\n".join(rows).encode(), at + 1
    if fam == "too_many_rows":
        many = MAX_ROWS + draw(st.integers(1, 500))
        return fam, "jsonl", "\n".join(json.dumps(_row(i)) for i in range(many)).encode(), None
    if fam == "csv_injection":
        lead = draw(st.sampled_from(["=", "+", "-", "@", "\t=", "\r="]))
        payload = lead + draw(st.sampled_from(["cmd|' /C calc'!A0", "HYPERLINK(\"http://x\")",
                                               "1+1", "SUM(A1:A9)"]))
        lines = ["ticket,expected"] + [f"t{i},billing" for i in range(n)]
        lines[at + 1] = f"\"{payload}\",billing"
        return fam, "csv", "\n".join(lines).encode(), at + 2
    text = draw(st.text(max_size=300))
    return fam, draw(st.sampled_from(["jsonl", "csv", "yaml"])), \
        codecs.encode(text, "utf-8", "surrogatepass"), None


def _count(app: Core, table: Any, team: str = TEAM) -> int:
    with Session(app.engine) as s:
        return int(s.execute(select(func.count()).select_from(table)
                             .where(table.team_id == team)).scalar_one())


def test_malformed_dataset_files_get_clear_errors_and_leave_nothing(world,
                                                                     report: Report) -> None:
    app, tmp = world
    counter = itertools.count()
    outcome: Counter[str] = Counter()
    problems: list[str] = []
    store = datasets.dataset_dir(app.settings, TEAM)

    @FILES
    @given(bad_file())
    def one(case: tuple[str, str, bytes, int | None]) -> None:
        fam, suffix, content, line = case
        i = next(counter)
        path = tmp / f"upload-{i}.{suffix}"
        path.write_bytes(content)
        rows_before = _count(app, Dataset)
        files_before = len(list(store.glob("*"))) if store.exists() else 0
        name = f"fz-{i}"
        start = time.monotonic()
        try:
            ds, _ = datasets.add_dataset(engine=app.engine, settings=app.settings, team_id=TEAM,
                                         name=name, path=path, user="U0FUZZ")
        except UserError as exc:
            msg = str(exc)
            outcome[f"{fam} refused"] += 1
            if not _clear(msg):
                problems.append(f"{fam}: unclear message {msg[:200]!r}")
            if line is not None and f"line {line}" not in msg:
                problems.append(f"{fam}: error does not name line {line}: {msg[:300]!r}")
            if fam == "too_many_rows" and str(MAX_ROWS) not in msg:
                problems.append(f"too_many_rows: limit not named: {msg[:200]!r}")
            files_after = len(list(store.glob("*"))) if store.exists() else 0
            if _count(app, Dataset) != rows_before or files_after != files_before:
                problems.append(f"{fam}: a refused file left a row or a file behind")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{fam}: unexpected {exc!r}")
        else:
            outcome[f"{fam} accepted"] += 1
            if fam == "csv_injection":
                warned = " ".join(ds.report.get("warnings", []))
                if f"line {line}" not in warned or "spreadsheet" not in warned:
                    problems.append(f"csv_injection accepted without a warning on line {line}: "
                                    f"{warned[:200]}")
            elif fam != "garbage":
                problems.append(f"{fam}: a malformed file was accepted")
        finally:
            path.unlink(missing_ok=True)
        if time.monotonic() - start > 10:
            problems.append(f"{fam}: took {time.monotonic() - start:.0f}s")

    one()
    n = sum(outcome.values()) + sum(p.split(":")[0].endswith("unexpected") for p in problems)
    n = max(n, sum(outcome.values()))
    report.add("6 fuzz datasets", "malformed dataset files via add_dataset", n,
               held=n - len(problems), lost=len(problems),
               note=", ".join(f"{v} {k}" for k, v in sorted(outcome.items()))[:200])
    assert not problems, problems[:8]
