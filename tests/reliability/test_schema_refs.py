"""JSON-Schema references never fetch (issue 17, item 2): a schema pointing at a URL (an
internal service on 127.0.0.1 here) or a file is refused when a prompt or an eval set is saved,
naming the field (and the row's line); one stored before that check reaches the worker's task
and fails the job with a clear error — the service sees 0 requests and the file's content appears
in no score detail, reply, event or log."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import make_settings
from tests.reliability.conftest import Report, size
from tests.reliability.inprocess import (
    database_text,
    job_outcome,
    job_thread,
    queued_job,
    run_queued,
    tunebot_cli,
)
from tunebot import migrate
from tunebot.db import make_engine
from tunebot.settings import Settings

SECRET = "db-password-123"  # the file's (and the internal service's) content
PROMPT = {"messages": [{"role": "user", "content": "Ticket: {{ ticket }}"}],
          "variables": {"ticket": "the ticket"}}
LOCAL = {"$defs": {"label": {"type": "string"}},
         "properties": {"a": {"$ref": "#/$defs/label"}}, "required": ["a"]}


class Counting:
    """A loopback HTTP server; `hits` counts every request, whatever its method."""

    def __init__(self, answer: Any) -> None:
        self.hits: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                outer.hits.append(f"{self.command} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null") if length else None
                data = json.dumps(answer(self.path, body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_HEAD = _any  # noqa: N815 - http.server's naming

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


def _chat(_path: str, body: Any) -> dict[str, Any]:
    # The model's answer is JSON whose "a" the secret enum would refuse, naming the secret.
    return {"choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": '{"a": "other"}'}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5}}


@pytest.fixture
def services() -> Iterator[tuple[Counting, Counting]]:
    """(the internal service a schema must never reach, a fake OpenAI endpoint)."""
    internal = Counting(lambda _p, _b: {"enum": [SECRET], "type": "string"})
    openai = Counting(_chat)
    yield internal, openai
    internal.close()
    openai.close()


def variants(internal: str, secret_file: Path) -> list[Any]:
    """Schemas that reach outside themselves, each a different way."""
    folder = secret_file.parent.as_uri() + "/"
    port = internal.rsplit(":", 1)[1]
    return [
        {"properties": {"a": {"$ref": f"{internal}/secret.json"}}},
        {"properties": {"a": {"$ref": secret_file.as_uri()}}},
        {"$ref": f"{internal}/schema.json"},
        {"allOf": [{"$ref": f"http://localhost:{port}/x.json"}]},
        {"$id": f"{internal}/base/", "properties": {"a": {"$ref": "secret.json"}}},
        {"$id": folder, "properties": {"a": {"$ref": secret_file.name}}},
        {"properties": {"a": {"$ref": f"//127.0.0.1:{port}/net-path.json"}}},
        {"properties": {"a": {"$ref": secret_file.name}}},
        {"properties": {"a": {"$dynamicRef": f"{internal}/dyn.json#meta"}}},
        {"$schema": "http://json-schema.org/draft-07/schema#",
         "definitions": {"x": {"$ref": f"{internal}/d7.json"}},
         "properties": {"a": {"$ref": "#/definitions/x"}}},
        {"$defs": {"x": {"$ref": secret_file.as_uri() + "#"}},
         "properties": {"a": {"$ref": "#/$defs/x"}}},
        {"x-unknown": {"deep": {"$ref": f"{internal}/hidden.json"}},
         "properties": {"a": {"$ref": "#/x-unknown/deep"}}},
        {"$schema": f"{internal}/meta-schema.json", "type": "object"},
        {"properties": {"a": {"anyOf": [{"type": "integer"},
                                        {"$ref": f"{internal.replace('http', 'HTTP')}/u"}]}}},
    ]


tb = tunebot_cli


def _catalog(folder: Path, prompts: dict[str, dict], data: dict[str, list[dict]]) -> Path:
    """A catalog directory: NAME.yaml prompts (one version each) and datasets/NAME.jsonl."""
    (folder / "datasets").mkdir(parents=True)
    for name, content in prompts.items():
        (folder / f"{name}.yaml").write_text(json.dumps({"name": name, "versions": [content]}))
    for name, rows in data.items():
        (folder / "datasets" / f"{name}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _per_file(report: str) -> dict[str, str]:
    """`catalog import`'s report: each file's path → its status and detail, one string."""
    said: dict[str, str] = {}
    path = ""
    for line in report.splitlines():
        if line[:2] in ("+ ", "~ ", "= ", "✗ ", "→ ") and ": " in line:
            path, _, rest = line[2:].partition(": ")
            said[path] = rest
        elif path and line.startswith("      "):
            said[path] += " " + line.strip()
    return said


def test_remote_and_file_refs_are_refused_and_never_fetched(
        tmp_path: Path, services: tuple[Counting, Counting], caplog: pytest.LogCaptureFixture,
        report: Report) -> None:
    internal, openai = services
    secret_file = tmp_path / "private" / "secret.json"
    secret_file.parent.mkdir()
    secret_file.write_text(json.dumps({"enum": [SECRET], "type": "string"}))
    settings = make_settings(tmp_path, openai_base_url=openai.url + "/v1",
                             max_jobs_per_user=100_000)
    migrate.upgrade(settings.database_url)
    caplog.set_level(logging.DEBUG)
    outcome = _scenario(settings, tmp_path, secret_file, internal, caplog)
    saved, refused, tried, failed_clearly, jobs_run, local_ok, leaks = outcome
    report.add("17.2 schema refs", "remote/file $ref, $id, $dynamicRef, $schema: save + run",
               tried + jobs_run, held=refused + failed_clearly,
               lost=len(saved) + jobs_run - failed_clearly,
               note=f"fetches attempted = {len(internal.hits)}; file content shown {leaks}×; "
               f"{refused}/{tried} refused at save, {failed_clearly}/{jobs_run} stored ones "
               f"failed clearly on a worker; a local #/$defs ref validated: {local_ok}")
    assert internal.hits == [], internal.hits
    assert leaks == 0
    assert not saved, saved
    assert failed_clearly == jobs_run
    assert local_ok and openai.hits  # the model answered: schemas were checked on its output


def _scenario(settings: Settings, tmp_path: Path, secret_file: Path, internal: Counting,
              caplog: pytest.LogCaptureFixture) -> tuple[list[str], int, int, int, int, bool,
                                                         int]:
    schemas = variants(internal.url, secret_file)
    outputs: list[str] = []

    # ---- save time: a prompt's output.schema, a prompt's json-schema scorer, eval rows ----
    prompts, data = {}, {}
    for i, schema in enumerate(schemas):
        prompts[f"out-{i}"] = {**PROMPT, "output": {"format": "json", "schema": schema}}
        prompts[f"scorer-{i}"] = {**PROMPT, "output": {"format": "json"},
                                  "scorers": [{"type": "json-schema", "schema": schema}]}
        data[f"rows-{i}"] = [{"ticket": "fine", "expected": "x"},
                             {"ticket": "t", "assert": [{"type": "is-json"},
                                                        {"type": "json-schema",
                                                         "schema": schema}]}]
    code, out = tb(settings, "catalog", "import", str(_catalog(tmp_path / "new", prompts, data)))
    outputs.append(out)
    said = _per_file(out)
    saved = []
    for name in prompts:  # refused, naming the field
        line = said.get(f"new/{name}.yaml", "")
        field = "output" if name.startswith("out") else "scorers[0].schema"
        if not line.startswith("failed") or field not in line or "$" not in line:
            saved.append(f"{name}: {line[:160] or 'no line'}")
    for name in data:  # refused, naming the row's line and the field
        line = said.get(f"new/datasets/{name}.jsonl", "")
        if not line.startswith("failed") or "line 2" not in line or \
                "assert[1].schema" not in line:
            saved.append(f"{name}: {line[:160] or 'no line'}")
    tried = len(prompts) + len(data)

    # ---- run time: versions stored before the check (written past it, as old rows were) ----
    engine = make_engine(settings.database_url)
    local = {"$defs": {"label": {"enum": ["billing", "technical"]}},
             "properties": {"a": {"$ref": "#/$defs/label"}}, "required": ["a"]}
    legacy: dict[str, dict] = {}
    for i, schema in enumerate(schemas[:size(2, len(schemas))]):
        legacy[f"old-out-{i}"] = {**PROMPT, "output": {"format": "json", "schema": schema}}
        legacy[f"old-scorer-{i}"] = {**PROMPT, "output": {"format": "json"},
                                     "scorers": [{"type": "json-schema", "schema": schema}]}
    stored = {name: {**PROMPT, "output": {"format": "json", "schema": LOCAL}} for name in legacy}
    stored["local"] = {**PROMPT, "output": {"format": "json", "schema": local}}
    folder = _catalog(tmp_path / "old", stored, {"eval": [{"ticket": "t1", "expected": "x"}]})
    code, out = tb(settings, "catalog", "import", str(folder))
    assert code == 0, out
    with engine.begin() as conn:
        for name, content in legacy.items():
            conn.execute(text("UPDATE prompt_versions SET content = :c WHERE prompt_id = "
                              "(SELECT id FROM prompts WHERE name = :n)"),
                         {"c": json.dumps(content), "n": name})
    job_ids = []
    for name in ["local", *legacy]:
        code, out = tb(settings, "run", f"/prompt test {name} on eval model=openai:m")
        outputs.append(out)
        assert code == 0, out
        job_ids.append(queued_job(out))
    run_queued(settings, job_ids)  # as a worker runs them: by the task's name
    local_job, *finals = [job_outcome(settings, j) for j in job_ids]
    with engine.connect() as conn:
        details = " ".join(str(r[0]) for r in conn.execute(
            text("SELECT scores FROM case_results WHERE job_id = :j"), {"j": job_ids[0]}))
    engine.dispose()
    events = "\n".join(m for j in job_ids for m in job_thread(settings, j))
    # The local reference resolved: "other" was judged against the enum it points to.
    local_ok = local_job[0] == "succeeded" and \
        "is not one of ['billing', 'technical']" in details
    failed_clearly = sum(status == "failed" and "schema" in error for status, error in finals)
    everything = "\n".join([*outputs, events, caplog.text, database_text(settings)])
    return (saved, tried - len(saved), tried, failed_clearly, len(finals), local_ok,
            everything.count(SECRET))
