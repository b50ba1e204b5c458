"""A one-shot CLI command prints its answer only; library logs go to var/cli.log (or -v)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEBOT_", "SLACK_"))}
    env.update(TUNEBOT_VAR_DIR=str(tmp_path / "var"), TUNEBOT_CLI_USER="U0CLI")
    return subprocess.run([sys.executable, "-m", "tunebot.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_run_prints_only_its_answer(tmp_path: Path) -> None:
    out = cli(tmp_path, "run", "/tunebot ping")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Queued 🏓 ping as job #1 (queued).", out.stdout
    assert out.stderr == ""
    log = (tmp_path / "var" / "cli.log").read_text()
    assert "Context impl SQLiteImpl" in log  # Alembic's lines are kept, just not shown


def test_verbose_shows_library_logs(tmp_path: Path) -> None:
    out = cli(tmp_path, "-v", "run", "/tunebot whoami")
    assert out.returncode == 0, out.stderr
    assert "U0CLI" in out.stdout
    assert "alembic" in out.stderr.lower()


def test_usage_errors_still_reach_the_terminal(tmp_path: Path) -> None:
    out = cli(tmp_path, "run", "/prompt test x on y temperature=9")
    assert out.returncode == 2
    assert "temperature must be between" in out.stderr and "Usage:" in out.stderr


# ---- the workspace the CLI acts on -------------------------------------------------------------

def test_with_a_bot_token_the_cli_acts_on_the_bots_workspace_and_caches_it(
        tmp_path: Path) -> None:
    from devtools.slack_api import SlackAPIServer

    with SlackAPIServer(bot_token="xoxb-cli-test") as slack:
        env = {"SLACK_BOT_TOKEN": "xoxb-cli-test", "TUNEBOT_SLACK_API_URL": slack.api_url}
        out = cli_env(tmp_path, env, "run", "/tunebot whoami")
        assert out.returncode == 0, out.stderr
        assert "T0TEAM" in out.stdout and "the bot's workspace Fake Co" in out.stderr
        assert len(slack.calls_for("auth.test")) == 1
        again = cli_env(tmp_path, env, "dataset", "add", "tiny",
                        str(REPO / "prompts/datasets/sentiment-eval.jsonl"))
        assert again.returncode == 0 and "workspace T0TEAM" in again.stderr
        assert len(slack.calls_for("auth.test")) == 1  # cached in the database
    # Slack away: the cached answer still holds.
    offline = cli_env(tmp_path, {**env, "TUNEBOT_SLACK_API_URL": "http://127.0.0.1:9/api/"},
                      "run", "/tunebot whoami")
    assert "T0TEAM" in offline.stdout


def test_slack_unreachable_falls_back_to_local_and_says_so(tmp_path: Path) -> None:
    env = {"SLACK_BOT_TOKEN": "xoxb-unknown", "TUNEBOT_SLACK_API_URL": "http://127.0.0.1:9/api/"}
    out = cli_env(tmp_path, env, "run", "/tunebot whoami")
    assert out.returncode == 0 and "local" in out.stdout
    assert "Slack could not be reached" in out.stderr and "TUNEBOT_CLI_TEAM" in out.stderr


def test_oauth_needs_an_explicit_workspace(tmp_path: Path) -> None:
    env = {"SLACK_CLIENT_ID": "123.456", "SLACK_CLIENT_SECRET": "x"}
    out = cli_env(tmp_path, env, "run", "/tunebot whoami")
    assert out.returncode == 2 and "set TUNEBOT_CLI_TEAM" in out.stderr
    chosen = cli_env(tmp_path, {**env, "TUNEBOT_CLI_TEAM": "T0OTHER"}, "run", "/tunebot whoami")
    assert chosen.returncode == 0 and "T0OTHER" in chosen.stdout


def cli_env(tmp_path: Path, extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEBOT_", "SLACK_"))}
    env.update(TUNEBOT_VAR_DIR=str(tmp_path / "var"), TUNEBOT_CLI_USER="U0CLI", **extra)
    return subprocess.run([sys.executable, "-m", "tunebot.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


# ---- data as people have it ---------------------------------------------------------------------

def test_a_label_column_is_the_expected_answer_and_the_cli_says_so(tmp_path: Path) -> None:
    import json

    rows = [{"text": f"review {i}", "label": "positive" if i % 2 else "negative"}
            for i in range(6)]
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = cli(tmp_path, "dataset", "add", "tickets", str(data))
    assert out.returncode == 0, out.stderr
    assert "6 rows; expected answers read from column `label`" in out.stdout
    shown = cli(tmp_path, "run", "/dataset show tickets")
    assert shown.returncode == 0 and "positive" in shown.stdout
    # Any other column, named explicitly (CLI flag and the command's expected=).
    other = tmp_path / "other.csv"
    other.write_text("question,gold\nwhat is 2+2,4\ncapital of France,Paris\n")
    refused = cli(tmp_path, "dataset", "add", "quiz", str(other))
    assert refused.returncode == 1 and "missing_expected" in refused.stdout
    mapped = cli(tmp_path, "dataset", "add", "quiz", str(other), "--map", "expected=gold")
    assert mapped.returncode == 0 and "column `gold`" in mapped.stdout, mapped.stdout
    via_command = cli(tmp_path, "run", "/dataset add quiz2 expected=gold", "--file", str(other))
    assert via_command.returncode == 0 and "read from column `gold`" in via_command.stdout
    missing = cli(tmp_path, "dataset", "add", "quiz3", str(other), "--map", "expected=nope")
    assert missing.returncode == 1 and "no `nope` column" in missing.stdout
    bad = cli(tmp_path, "dataset", "add", "quiz4", str(other), "--map", "answer=gold")
    assert bad.returncode == 2 and "--map takes expected=COLUMN" in bad.stderr
