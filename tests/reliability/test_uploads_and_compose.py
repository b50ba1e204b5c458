"""Uploads and the compose deployment (issue 17, item 5): a file shared in Slack is answered
in its thread whatever goes wrong — the staging folder or the dataset folder not writable,
Slack refusing the file's details, the download failing, too big, invalid — and never with
"internal error"; the compose file mounts one artifacts volume in every service that reads or
writes artifacts."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import yaml

from devtools.slack_api.payloads import event_body, message_event
from tests.bot.conftest import Stack, free_port, running_stack
from tests.conftest import REPO
from tests.reliability.conftest import Report

THREAD = "1767225600.000200"
ROWS = b"".join(json.dumps({"text": f"row {i}", "expected": "positive"}).encode() + b"\n"
                for i in range(20))


def _answers(stack: Stack) -> list[str]:
    return [m.get("text", "").replace("&lt;", "<").replace("&gt;", ">")
            for m in stack.slack.thread("C0CHANNEL", THREAD)]


def _share(stack: Stack, name: str, files: list[dict], timeout: float = 10) -> list[str]:
    """Share `files` with `dataset add NAME`; every answer that came in the thread."""
    before = len(_answers(stack))
    event = message_event(f"dataset add {name}", thread_ts=THREAD, files=files)
    assert stack.post(event_body(event)).status_code == 200
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(_answers(stack)) == before:
        time.sleep(0.05)
    time.sleep(0.3)  # a second answer, if any
    return _answers(stack)[before:]


def _blocked(path: Path) -> None:
    """A plain file where a folder must be: no user, root included, can create it."""
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a folder")


def test_every_upload_failure_is_answered_in_the_thread(tmp_path: Path, redis_url: str,
                                                        report: Report) -> None:
    with running_stack(tmp_path, None, redis_url, slack_file_hosts=["127.0.0.1"],
                       max_upload_mb=1) as stack:
        settings = stack.settings
        good = lambda name: stack.slack.add_file(f"{name}.jsonl", ROWS)  # noqa: E731
        cases: dict[str, tuple[list[str], str]] = {}

        _blocked(settings.var_dir / "uploads")
        cases["staging folder not writable"] = (_share(stack, "staged", [good("staged")]),
                                                "upload folder")
        (settings.var_dir / "uploads").unlink()

        _blocked(settings.artifacts / "datasets" / "T0TEAM")
        cases["dataset folder not writable"] = (_share(stack, "stored", [good("stored")]),
                                                "could not store stored")
        (settings.artifacts / "datasets" / "T0TEAM").unlink()

        missing = {"id": "F0GONE", "mode": "file_access", "file_access": "check_file_info",
                   "created": 0, "timestamp": 0, "user": ""}
        cases["files.info refused"] = (_share(stack, "gone", [missing]), "file_not_found")

        dead = dict(good("dead"))
        dead["url_private_download"] = f"http://127.0.0.1:{free_port()}/files-pri/T-F/d.jsonl"
        cases["download failed"] = (_share(stack, "dead", [dead]), "download from Slack failed")

        big = stack.slack.add_file("big.jsonl", ROWS * 6000)
        cases["too big"] = (_share(stack, "big", [big]), "TUNEBOT_MAX_UPLOAD_MB")

        bad = stack.slack.add_file("bad.jsonl", b'{"text": "no answer"}\n{oops\n')
        cases["invalid file"] = (_share(stack, "bad", [bad]), "refused")

        cases["two files"] = (_share(stack, "two", [good("a"), good("b")]), "exactly one file")

        # With the folders back, the same upload goes through.
        cases["folders restored"] = (_share(stack, "staged", [good("staged")]),
                                     "Added staged v1")
    answered = {k: len(said) == 1 and want in said[0] and "internal error" not in said[0]
                for k, (said, want) in cases.items()}
    silent = [k for k, (said, _) in cases.items() if not said]
    report.add("17.5 upload failures", "file shares that fail, via the HTTP bot", len(cases),
               held=sum(answered.values()), lost=len(silent),
               duplicated=sum(len(s) > 1 for s, _ in cases.values()),
               note="unanswered: " + (", ".join(silent) or "none"))
    assert not silent, silent
    assert all(answered.values()), {k: v[0] for k, v in cases.items() if not answered[k]}


def test_compose_mounts_one_artifacts_volume_everywhere(report: Report) -> None:
    compose = yaml.safe_load((REPO / "docker/compose.yaml").read_text())
    services = compose["services"]
    # Every service whose settings name the artifacts folder reads or writes artifacts.
    users = [n for n, s in services.items()
             if isinstance(s.get("environment"), dict)
             and "TUNEBOT_ARTIFACTS_DIR" in s["environment"]]
    mounted = [n for n in users if any(
        v.split(":")[0] == "artifacts" and _on_mount(services[n], v.split(":")[1])
        for v in services[n].get("volumes", []))]
    report.add("17.5 compose artifacts", "services that read/write artifacts", len(users),
               held=len(mounted), lost=len(users) - len(mounted),
               note="without the shared volume: "
               + (", ".join(sorted(set(users) - set(mounted))) or "none"))
    assert {"bot", "notifier", "worker-inference", "worker-gpu"} <= set(users)
    assert sorted(mounted) == sorted(users), sorted(set(users) - set(mounted))


def _on_mount(service: dict, mount: str) -> bool:
    """Whether the service's artifacts and var folders lie on the mount."""
    env = service["environment"]
    root = mount.rstrip("/") + "/"
    return all(str(env.get(k, "")).startswith(root)
               for k in ("TUNEBOT_ARTIFACTS_DIR", "TUNEBOT_VAR_DIR"))
