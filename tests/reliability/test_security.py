"""Security: request signatures, the Jinja sandbox, Slack markup injection, cross-team isolation
through every command, path traversal in names, how external weights are loaded, and secrets in
logs."""

from __future__ import annotations

import ast
import json
import logging
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlmodel import Session

from bot.blocks import fallback_text, reply_blocks
from devtools.slack_api.payloads import signature, slash_command_body
from tests.bot.conftest import BOT_TOKEN, SECRET
from tests.conftest import REPO, make_settings
from tests.reliability.conftest import Report
from tests.reliability.stack import job_count, running_stack
from tunebot import catalog, datasets, jobs, migrate, registry
from tunebot.catalog import templates
from tunebot.commands import parse
from tunebot.core import Actor, Core, Outcome
from tunebot.db import make_engine, session_scope
from tunebot.dispatch import execute
from tunebot.errors import UserError
from tunebot.logs import install_log_filter
from tunebot.models import Dataset, Job, Label, ModelVersion, Prompt
from tunebot.replies import Reply

PROMPT = {"messages": [{"role": "user", "content": "Ticket: {{ ticket }}"}],
          "variables": {"ticket": "the ticket text"},
          "output": {"format": "choice", "choices": ["billing", "technical"]}}


# ---- signatures --------------------------------------------------------------------------


def _headers(body: bytes, *, secret: str = SECRET, ts: int | None = None,
             sig: str | None = None, drop: tuple[str, ...] = ()) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Slack-Request-Timestamp": stamp,
               "X-Slack-Signature": sig if sig is not None else signature(body, secret, stamp)}
    return {k: v for k, v in headers.items() if k not in drop}


def test_forged_missing_and_stale_signatures_are_rejected(
        tmp_path: Path, private_pg_url: str, fresh_redis, start_worker, caplog,
        report: Report) -> None:
    caplog.set_level(logging.DEBUG)
    now = int(time.time())
    with running_stack(tmp_path, database_url=private_pg_url, broker_url=fresh_redis.url + "/0",
                       start_worker=start_worker, queues="inference,io",
                       slack_posts_per_second=20.0) as stack:
        filt = install_log_filter(stack.settings)  # as `tunebot bot` does at start
        try:
            body = slash_command_body("ping", command="/tunebot")
            other = slash_command_body("ping seconds=1", command="/tunebot")
            good = _headers(body)
            cases = {
                "wrong secret": _headers(body, secret="not-the-secret"),
                "no signature": _headers(body, drop=("X-Slack-Signature",)),
                "no timestamp": _headers(body, drop=("X-Slack-Request-Timestamp",)),
                "no headers": {"Content-Type": "application/x-www-form-urlencoded"},
                "stale 5m01s": _headers(body, ts=now - 301),
                "stale 1 day": _headers(body, ts=now - 86_400),
                "future 10 min": _headers(body, ts=now + 600),
                "other body's signature": {**good, "X-Slack-Signature":
                                           _headers(other)["X-Slack-Signature"]},
                "v1 scheme": {**good, "X-Slack-Signature":
                              "v1=" + good["X-Slack-Signature"][3:]},
                "truncated signature": {**good, "X-Slack-Signature":
                                        good["X-Slack-Signature"][:-2]},
                "empty signature": _headers(body, sig=""),
            }
            answers = {name: httpx.post(stack.bot.url, content=body, headers=h, timeout=10)
                       .status_code for name, h in cases.items()}
            # A tampered body under a valid signature of the original one.
            answers["tampered body"] = httpx.post(
                stack.bot.url, content=body.replace(b"ping", b"jobs"), headers=good,
                timeout=10).status_code
            jobs_after_forged = job_count(stack.core.engine)
            accepted = httpx.post(stack.bot.url, content=body, headers=good, timeout=10)
            # The worker and notifier run (with one Slack fault) so their logs hold real traffic.
            stack.slack.fail_next(1, status=500, methods=["chat.postMessage"])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                rows = jobs.read_events(engine=stack.core.engine, job_id=1)
                if rows and all(e.delivered_at is not None for e in rows) and \
                        jobs.get(engine=stack.core.engine, job_id=1).status == "succeeded":
                    break
                time.sleep(0.3)
            ran = jobs.get(engine=stack.core.engine, job_id=1).status
            faults = len(stack.slack.rejected)
            worker_log = "".join(p.read_text(errors="replace")
                                 for p in tmp_path.glob("worker-*.log"))
        finally:
            logging.getLogger().removeFilter(filt)
            for h in logging.getLogger().handlers:
                h.removeFilter(filt)
    rejected = sum(code == 401 for code in answers.values())
    report.add("7 security signatures", "forged, missing, stale, tampered requests",
               len(answers), held=rejected, lost=len(answers) - rejected,
               note=f"{jobs_after_forged} jobs from them; the genuine one → "
               f"{accepted.status_code}")
    assert all(code == 401 for code in answers.values()), answers
    assert jobs_after_forged == 0
    assert accepted.status_code == 200 and "Queued" in accepted.text
    leaks = [name for name, value in (("bot token", BOT_TOKEN), ("signing secret", SECRET))
             if value in caplog.text or value in worker_log]
    report.add("7 security logs", "bot (DEBUG) and worker logs of real traffic", 2,
               held=2 - len(leaks), lost=len(leaks),
               note=f"{len(caplog.records)} bot records, {len(worker_log):,} worker chars")
    assert ran == "succeeded" and faults >= 1 and "Task tunebot.notify" in worker_log
    assert not leaks, leaks


def test_a_non_numeric_timestamp_is_a_401(tmp_path: Path, private_pg_url: str,
                                          fresh_redis) -> None:
    with running_stack(tmp_path, database_url=private_pg_url,
                       broker_url=fresh_redis.url + "/0") as stack:
        body = slash_command_body("ping", command="/tunebot")
        headers = {**_headers(body), "X-Slack-Request-Timestamp": "soon"}
        code = httpx.post(stack.bot.url, content=body, headers=headers, timeout=10).status_code
        assert job_count(stack.core.engine) == 0  # whatever the code, nothing ran
    assert code == 401, code


# ---- the Jinja sandbox -------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__base__.__subclasses__() }}",
    "{{ ticket.__class__ }}",
    "{{ ticket.__init__.__globals__ }}",
    "{{ ticket|attr('__class__') }}",
    "{{ ticket|attr('__cla' ~ 'ss__') }}",
    "{{ ticket|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ (ticket|attr(['_','_class_','_']|join)) }}",
    "{{ self.__init__.__globals__.__builtins__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__.os.system('touch /tmp/tunebot-pwned') }}",
    "{{ namespace.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ lipsum.__globals__.__builtins__.__import__('os').system('id') }}",
    "{{ config.__class__.__init__.__globals__['os'] }}",
    "{{ request.application.__globals__.__builtins__ }}",
    "{{ url_for.__globals__ }}",
    "{{ get_flashed_messages.__globals__ }}",
    "{{ range.__call__ }}",
    "{{ dict.__base__.__subclasses__() }}",
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ [].__class__.__mro__ }}",
    "{{ {}.__class__.__mro__ }}",
    "{{ ticket.format.__globals__ }}",
    "{{ '{0.__class__}'.format(ticket) }}",
    "{{ '{0.__class__.__mro__}'.format_map({'0': ticket}) }}",
    "{{ ticket.__getattribute__('__class__') }}",
    "{% set x = ticket.__class__ %}{{ x }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ ticket|map(attribute='__class__')|list }}",
    "{{ ticket|selectattr('__class__')|list }}",
    "{{ [ticket]|map(attribute='__class__.__mro__')|list }}",
    "{{ ticket|sort(attribute='__class__') }}",
    "{{ ticket|groupby('__class__') }}",
    "{% import 'os' as os %}",
    "{% include '/etc/passwd' %}",
    "{% extends '/etc/passwd' %}",
    "{% from 'x' import y %}",
    "{{ environment }}",
    "{{ context }}",
    "{{ ticket.__len__ }}",
    "{{ ticket._private }}",
    "{{ ticket.mro() }}",
    "{{ (1).__class__.__base__ }}",
    "{{ ticket|format('x') }}",
    "{{ ticket.gi_frame }}",
]


def test_sandbox_escape_corpus_is_refused(report: Report, tmp_path: Path) -> None:
    marker = Path("/tmp/tunebot-pwned")
    marker.unlink(missing_ok=True)
    leaked = []
    refused = 0
    for src in ESCAPES:
        try:
            out = templates.render(src, {"ticket": "hello"})
        except UserError:
            refused += 1
            continue
        except Exception as exc:  # noqa: BLE001
            leaked.append((src, f"unexpected {exc!r}"))
            continue
        if any(s in out for s in ("class", "module", "function", "built-in", "uid=", "<")):
            leaked.append((src, out[:120]))
    # The same corpus is refused when a prompt version is saved, before anyone renders it.
    engine = make_engine(f"sqlite:///{tmp_path / 'sandbox.db'}")
    migrate.upgrade(f"sqlite:///{tmp_path / 'sandbox.db'}")
    saved = []
    for i, src in enumerate(ESCAPES):
        content = {"messages": [{"role": "user", "content": src}],
                   "variables": {"ticket": "t"}}
        try:
            with session_scope(engine) as s:
                catalog.save_version(session=s, team_id="T0TEAM", name=f"esc-{i}",
                                     content=content, author="U0EVE")
            saved.append(src)
        except UserError:
            pass
    engine.dispose()
    report.add("7 security sandbox", "Jinja sandbox escape corpus (render + save)",
               len(ESCAPES), held=len(ESCAPES) - len(leaked), lost=len(leaked),
               note=f"{refused} refused at render, {len(ESCAPES) - len(saved)} refused at save")
    assert not marker.exists()
    assert not leaked, leaked


# ---- Slack markup injection --------------------------------------------------------------

INJECT = ["<!channel>", "<!here>", "<!everyone>", "<@U0ADMIN>", "<#C0GENERAL>",
          "<https://evil.example|click me>", "<mailto:a@b.c|mail>", "<!subteam^S0X>",
          "<!date^0^{date}|x>", "&lt;!channel&gt;"]
RAW = ("<!channel", "<!here", "<!everyone", "<@U", "<#C", "<http", "<mailto", "<!subteam",
       "<!date")


def _shown(reply: Reply) -> str:
    return json.dumps(reply_blocks(reply)) + fallback_text(reply)


def test_user_text_cannot_ping_or_link(tmp_path: Path, report: Report) -> None:
    settings = make_settings(tmp_path, max_jobs_per_user=100_000)
    migrate.upgrade(settings.database_url)
    app = Core(settings, make_engine(settings.database_url), None)
    actor = Actor(team_id="T0TEAM", user_id="U0EVE", channel="C0X")
    evil = " ".join(INJECT)
    with session_scope(app.engine) as s:
        catalog.save_version(session=s, team_id="T0TEAM", name="evil",
                             content={**PROMPT, "tone": evil}, author="U0EVE", message=evil,
                             description=evil[:200])
    data = tmp_path / "evil.jsonl"
    data.write_text("".join(json.dumps({"ticket": t, "expected": t}) + "\n" for t in INJECT))
    datasets.add_dataset(engine=app.engine, settings=settings, team_id="T0TEAM", name="evil-data",
                         path=data, user="U0EVE")
    texts = [*(f"/prompt show {t}" for t in INJECT), *(f"/dataset show {t}" for t in INJECT),
             "/prompt show evil", "/prompt history evil", "/prompt list", "/dataset show evil-data",
             "/dataset list", *(f"/prompt render evil ticket={json.dumps(t)}" for t in INJECT),
             *(f"/finetune start smollm2 on evil-data lr={t}" for t in INJECT[:3]),
             *(f"/tunebot help {t}" for t in INJECT[:3]), *(f"/prompt {t}" for t in INJECT[:3])]
    leaks = []
    escaped = 0
    for text in texts:
        try:
            reply = execute(parse(text), actor, app).reply
        except UserError as exc:
            reply = Reply(text=str(exc), error=True)
        shown = _shown(reply)
        escaped += "&lt;!channel&gt;" in shown or "&lt;!here&gt;" in shown
        if any(r in shown for r in RAW):
            leaks.append((text, shown[:300]))
    # A job's thread is built from user text too (titles, replies quoting rows).
    sub = jobs.submit(engine=app.engine, waker=None, team_id="T0TEAM", kind="noop",
                      requested_by="U0EVE", params={}, title=evil, channel="C0X")
    for ev in jobs.read_events(engine=app.engine, job_id=sub.job.id) or []:
        if any(r in _shown(Reply.from_dict(ev.payload)) for r in RAW):
            leaks.append(("job event", ev.payload))
    thread = _shown(Reply(text=f"Started {evil}", status=evil))
    if any(r in thread for r in RAW):
        leaks.append(("thread reply", thread[:300]))
    app.engine.dispose()
    report.add("7 security escaping", "<!channel>/<!here>/link injection in replies",
               len(texts) + 2, held=len(texts) + 2 - len(leaks), lost=len(leaks),
               note=f"{escaped} replies showed the markup escaped")
    assert not leaks, leaks[:3]
    assert escaped >= 5  # the user text did reach the replies, escaped


# ---- cross-team isolation ----------------------------------------------------------------

A, B = "T0AAAA", "T0BBBB"
SECRET_NAMES = ("secret-prompt", "secret-data", "secret-model", "secret job")


@pytest.fixture
def two_teams(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, max_jobs_per_user=100_000)
    migrate.upgrade(settings.database_url)
    app = Core(settings, make_engine(settings.database_url), None)
    for team, prefix in ((A, "secret"), (B, "mine")):
        with session_scope(app.engine) as s:
            catalog.save_version(session=s, team_id=team, name=f"{prefix}-prompt",
                                 content=PROMPT, author="U0OWNER", message="v1")
            catalog.save_version(session=s, team_id=team, name=f"{prefix}-prompt",
                                 content={**PROMPT, "tone": "terse"}, author="U0OWNER",
                                 message="v2")
        data = tmp_path / f"{team}.jsonl"
        data.write_text("".join(json.dumps({"ticket": f"t{i}", "expected": "billing"}) + "\n"
                                for i in range(6)))
        datasets.add_dataset(engine=app.engine, settings=settings, team_id=team,
                             name=f"{prefix}-data", path=data, user="U0OWNER")
        registry.register(engine=app.engine, team_id=team, name=f"{prefix}-model",
                          created_by="U0OWNER", base_model="smollm2",
                          adapter_path=str(tmp_path / f"{team}-adapter"),
                          prompt_ref=f"{prefix}-prompt@2")
    job = jobs.submit(engine=app.engine, waker=None, team_id=A, kind="noop",
                      requested_by="U0OWNER", params={}, title="secret job").job
    yield app, job.id
    app.engine.dispose()


def _snapshot(app: Core, team: str) -> str:
    with Session(app.engine) as s:
        parts = []
        for table in (Prompt, Dataset, Job, ModelVersion, Label):
            rows = s.execute(select(table).where(table.team_id == team)).scalars().all()
            parts.append(sorted(json.dumps(r.model_dump(), default=str, sort_keys=True)
                                for r in rows))
    return json.dumps(parts)


def test_team_b_cannot_reach_team_a(two_teams, report: Report) -> None:
    app, job_a = two_teams
    commands = [
        "/prompt show secret-prompt", "/prompt show secret-prompt@1",
        "/prompt show secret-prompt:production", "/prompt history secret-prompt",
        "/prompt diff secret-prompt@1 secret-prompt@2",
        "/prompt diff mine-prompt@1 secret-prompt@2",
        "/prompt label secret-prompt@1 production", "/prompt render secret-prompt ticket=x",
        "/prompt delete secret-prompt", "/prompt edit secret-prompt",
        "/prompt test secret-prompt on mine-data model=smollm2",
        "/prompt test mine-prompt on secret-data model=smollm2",
        "/prompt test mine-prompt on mine-data model=ft:secret-model",
        "/prompt compare secret-prompt@1 secret-prompt@2 on secret-data",
        "/dataset show secret-data", "/dataset delete secret-data",
        "/dataset check secret-data model=smollm2",
        "/dataset check mine-data model=smollm2 prompt=secret-prompt",
        "/finetune start smollm2 on secret-data", "/finetune estimate smollm2 on secret-data",
        "/finetune start smollm2 on mine-data prompt=secret-prompt",
        "/finetune start ft:secret-model on mine-data",
        f"/finetune status {job_a}", f"/finetune cancel {job_a}", f"/tunebot cancel {job_a}",
        "/model show secret-model", "/model show ft:secret-model",
        "/model label secret-model@1 production",
        "/compare secret-prompt vs smollm2 on mine-data",
        "/compare mine-prompt vs ft:secret-model on mine-data",
        "/compare mine-prompt vs smollm2 on secret-data", "/compare secret-prompt on mine-data",
        "/prompt list", "/prompt list secret", "/dataset list", "/finetune list", "/model list",
        "/tunebot jobs",
    ]
    before_a = _snapshot(app, A)
    jobs_before = job_count(app.engine)
    seen = []
    for admin in (False, True):  # B's admins are no one's admins in A
        actor = Actor(team_id=B, user_id="U0MALLORY", is_admin=admin, channel="C0B")
        for text in commands:
            try:
                out = execute(parse(text), actor, app)
            except UserError as exc:  # refused by the grammar already
                out = Outcome(Reply(text=str(exc), error=True))
            shown = _shown(out.reply) + out.reply.text
            named = any(n in shown for n in SECRET_NAMES)
            # An error may echo the name B typed; a success must not show A's things at all.
            leaked = (named and not out.reply.error) or out.job is not None or \
                (f"#{job_a}" in shown and "no job" not in shown)
            if leaked:
                seen.append((admin, text, out.reply.text[:160]))
    after_a = _snapshot(app, A)
    created = job_count(app.engine) - jobs_before
    n = 2 * len(commands)
    report.add("7 security teams", "team B runs every command on team A's things", n,
               held=n - len(seen), lost=len(seen),
               note=f"{created} jobs created; team A's rows "
               f"{'unchanged' if after_a == before_a else 'CHANGED'}")
    assert not seen, seen[:5]
    assert created == 0 and after_a == before_a


# ---- path traversal ----------------------------------------------------------------------

TRAVERSAL = ["..", "../x", "../../etc/passwd", "x/../../y", "/etc/passwd", "a/b", "..\\x",
             "%2e%2e%2fx", "x\x00y", "~root", ".hidden", "x/..", "-rf"]


def test_path_traversal_in_names_is_refused(tmp_path: Path, report: Report) -> None:
    settings = make_settings(tmp_path)
    migrate.upgrade(settings.database_url)
    app = Core(settings, make_engine(settings.database_url), None)
    actor = Actor(team_id="T0TEAM", user_id="U0EVE", is_admin=True)
    data = tmp_path / "ok.jsonl"
    data.write_text(json.dumps({"ticket": "t", "expected": "billing"}) + "\n")
    accepted = []
    tried = 0
    for name in TRAVERSAL:
        for text in (f"/dataset show {json.dumps(name)}", f"/dataset delete {json.dumps(name)}",
                     f"/finetune start smollm2 on {json.dumps(name)}",
                     f"/finetune start smollm2 on ok name={json.dumps(name)}",
                     f"/model show {json.dumps(name)}", f"/prompt show {json.dumps(name)}",
                     f"/prompt test x on ok model={json.dumps('ft:' + name)}"):
            tried += 1
            try:
                out = execute(parse(text), actor, app)
            except UserError:
                continue
            if not out.reply.error:
                accepted.append(text)
        tried += 2
        try:
            datasets.add_dataset(engine=app.engine, settings=settings, team_id="T0TEAM",
                                 name=name, path=data, user="U0EVE")
            accepted.append(f"add_dataset {name!r}")
        except UserError:
            pass
        try:
            datasets.dataset_dir(settings, name)
            if name not in ("-rf",):
                accepted.append(f"dataset_dir team {name!r}")
        except UserError:
            pass
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and "artifacts" not in p.parts
               and p.suffix in (".jsonl", ".csv", ".yaml") and p.name != "ok.jsonl"]
    app.engine.dispose()
    report.add("7 security paths", "path traversal in dataset/model/team names", tried,
               held=tried - len(accepted) - len(outside), lost=len(accepted) + len(outside))
    assert not accepted, accepted
    assert not outside, outside


# ---- how weights are loaded (source scan) -----------------------------------------------

PACKAGES = ("tunebot", "workers", "bot")


def _calls(tree: ast.AST):  # type: ignore[no-untyped-def]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_remote_code_and_no_pickle_loading_of_weights(report: Report) -> None:
    problems = []
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    checked = 0
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(REPO)
        for node, name in _calls(tree):
            kws = {k.arg: k.value for k in node.keywords if k.arg}
            checked += 1
            trc = kws.get("trust_remote_code")
            if trc is not None and not (isinstance(trc, ast.Constant) and trc.value is False):
                problems.append(f"{where}:{node.lineno}: trust_remote_code={ast.unparse(trc)}")
            if name.endswith("torch.load") or name == "load" and "torch" in ast.unparse(node):
                wo = kws.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where}:{node.lineno}: torch.load without weights_only")
            if name in ("pickle.load", "pickle.loads", "dill.load", "dill.loads",
                        "joblib.load", "cloudpickle.load", "cloudpickle.loads", "marshal.loads"):
                problems.append(f"{where}:{node.lineno}: {name}")
            if name.endswith("from_pretrained"):
                st = kws.get("use_safetensors")
                if isinstance(st, ast.Constant) and st.value is False:
                    problems.append(f"{where}:{node.lineno}: use_safetensors=False")
            if name.endswith(("np.load", "numpy.load")):
                ap = kws.get("allow_pickle")
                if isinstance(ap, ast.Constant) and ap.value is True:
                    problems.append(f"{where}:{node.lineno}: numpy allow_pickle=True")
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values, strict=True):
                    if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and not (
                            isinstance(v, ast.Constant) and v.value is False):
                        problems.append(f"{where}:{node.lineno}: trust_remote_code in a dict")
    text = "\n".join(p.read_text() for p in files)
    report.add("7 security weights", "source scan: remote code, pickle loads", len(files),
               held=len(files) - len(problems), lost=len(problems),
               note=f"{checked} calls; torch.load sites: {text.count('torch.load(')}")
    assert not problems, problems
    assert "weights_only=True" in text  # the one checkpoint loader stays explicit
