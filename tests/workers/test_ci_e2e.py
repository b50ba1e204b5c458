"""`tunebot ci` end to end: the CLI queues paired compares, a real worker (or the CLI itself,
with --local) runs them on a tiny model, the promotion rule decides, JUnit XML comes out.

The tiny model has random weights: it never names a colour, so the choice scorer gives every
colours version 0%. The gate needs a clearly worse candidate, so the world is built for it:
colours@1 is judged by the choice scorer (0%), colours@2 and colours@3 by a length budget the
tiny model always meets (at most 64 output tokens: 100%). colours@1 against colours@2 is
24 cases broken, p<0.001: a regression.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from devtools.env import settings_env
from devtools.seed import CONTENT, seed_colours
from tests.conftest import REPO, make_settings
from tunebot import catalog, jobs, migrate
from tunebot.cli import cli
from tunebot.db import make_engine, session_scope
from tunebot.settings import Settings

MEETS = [{"type": "max-tokens", "max": 64}]  # the tiny model's 4 new tokens always meet it


def build_world(tmp_path: Path) -> Settings:
    """colours@1 (0% on the tiny model), @2 and @3 (100%), colours-eval, production → @2."""
    settings = make_settings(tmp_path)
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    seed_colours(engine, settings, tmp_path, versions=1)
    v3_messages = [CONTENT["messages"][0],
                   {"role": "user", "content": "Colour: {{ colour }}\nWarm or cool?"}]
    with session_scope(engine) as s:
        catalog.save_version(session=s, team_id="T0TEAM", name="colours",
                             content=dict(CONTENT, scorers=MEETS), author="U0ALICE",
                             message="judged by a length budget")
        catalog.save_version(session=s, team_id="T0TEAM", name="colours",
                             content=dict(CONTENT, messages=v3_messages, scorers=MEETS),
                             author="U0ALICE", message="reworded")
        catalog.set_label(session=s, team_id="T0TEAM", ref="colours@2", label="production",
                          user="U0ALICE")
    engine.dispose()
    return settings


def ci(settings: Settings, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`tunebot ci …` in a child process, as a CI job runs it."""
    env = {**settings_env(settings), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "tunebot.cli", "ci", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def junit(path: Path) -> ET.Element:
    """The parsed report, checked against the JUnit shape CI servers read."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    cases = suite.findall("testcase")
    assert suite.get("tests") == root.get("tests") == str(len(cases))
    failures = [c for c in cases if c.find("failure") is not None]
    errors = [c for c in cases if c.find("error") is not None]
    assert suite.get("failures") == str(len(failures)) and suite.get("errors") == str(len(errors))
    for case in cases:
        assert case.get("name") and case.get("classname") == "tunebot.ci.colours"
        float(case.get("time", "x"))
    return suite


def lines(text: str) -> list[str]:
    return text.strip().splitlines()


def without_job_numbers(said: list[str]) -> list[str]:
    return [re.sub(r"#\d+", "#N", line) for line in said]


def test_a_worse_candidate_fails_the_gate_a_better_one_passes_and_local_agrees(
        tmp_path: Path, start_worker: Any, tiny_model_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = build_world(tmp_path)
    worker = start_worker(settings, "inference,gpu")
    model = str(tiny_model_dir)
    report, summary = tmp_path / "out.xml", tmp_path / "summary.md"

    out = ci(settings, tmp_path, "colours@1", "colours@3", "--against", "colours@2",
             "--on", "colours-eval", "--model", model, "--junit", str(report),
             "--markdown", str(summary))
    assert out.returncode == 1, out.stdout + out.stderr
    said = lines(out.stdout)
    assert len(said) == 3, said  # one line per candidate and the count: nothing else
    assert said[0].startswith("✗ colours@1 vs colours@2 on colours-eval: significantly worse")
    assert "colours@1 0.0% (0.0–13.8) vs colours@2 100.0% (86.2–100.0)" in said[0]
    assert "p<0.001, 0 fixed, 24 broken, n=24 (job #" in said[0]
    assert said[1].startswith("✓ colours@3 vs colours@2 on colours-eval: not worse")
    assert said[2] == "tunebot ci: 1 passed, 1 regression(s) (rule: not-worse)"

    suite = junit(report)
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    worse, reworded = suite.findall("testcase")
    assert worse.get("name") == "colours@1 vs colours@2 on colours-eval"
    failure = worse.find("failure")
    assert failure is not None and failure.get("type") == "Regression"
    assert "significantly worse" in (failure.get("message") or "")
    body = failure.text or ""
    for number in ("0.0% (95% CI 0.0–13.8)", "100.0% (95% CI 86.2–100.0)", "p<0.001",
                   "fixed: 0, broken: 24 (of 24)", "job: #"):
        assert number in body, body
    assert reworded.find("failure") is None and reworded.find("error") is None

    md = summary.read_text()
    assert md.startswith("### tunebot ci: ❌ 1 of 2 candidate(s) refused")
    assert ("| ❌ | colours@1 | colours@2 | colours-eval | 0.0% (0.0–13.8) | 100.0% (86.2–100.0) "
            "| -100.0 | p<0.001 | 0 | 24 |") in md

    # The better version against the worse one: not worse, exit 0, a passing testcase.
    better = ci(settings, tmp_path, "colours@2", "--against", "colours@1", "--on",
                "colours-eval", "--model", model, "--junit", str(report))
    assert better.returncode == 0, better.stdout + better.stderr
    assert lines(better.stdout)[0].startswith(
        "✓ colours@2 vs colours@1 on colours-eval: not worse")
    suite = junit(report)
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1", "0", "0")

    # --local with no worker left: the same jobs run inside the CLI (in this process, so the
    # test pays no second start-up); `production` is each candidate's own label (colours@2).
    worker.kill()  # SIGKILL: nothing is running, and a warm shutdown takes seconds
    monkeypatch.chdir(tmp_path)
    local = CliRunner().invoke(cli, [
        "ci", "colours@1", "colours@3", "--against", "production", "--on", "colours-eval",
        "--model", model, "--local", "--junit", str(report)], env=settings_env(settings))
    assert local.exit_code == 1, local.output
    assert without_job_numbers(lines(local.stdout)) == without_job_numbers(said)
    assert (junit(report).get("tests"), junit(report).get("failures")) == ("2", "1")
    ran = [int(n) for n in re.findall(r"job #(\d+)", local.stdout)]
    engine = make_engine(settings.database_url)
    for job_id in ran:
        job = jobs.get(engine=engine, job_id=job_id)
        assert job is not None and job.status == "succeeded" and job.attempt == 1
        thread = [e.payload["text"] for e in jobs.read_events(engine=engine, job_id=job_id)]
        assert any(f"(pid {os.getpid()}," in t for t in thread), thread  # run right here
    engine.dispose()
