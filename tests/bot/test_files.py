"""Dataset files shared in Slack: downloaded with the bot token from trusted hosts only,
validated like `tunebot dataset add`, answered in the file's thread."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlmodel import Session, select

from devtools.seed import ROWS
from devtools.slack_api.payloads import event_body, message_event
from tests.bot.conftest import BOT_TOKEN, Stack, running_stack
from tunebot.models import Dataset

THREAD = "1767225600.000100"


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def share(stack: Stack, name: str, content: bytes, text: str, *, host_ok: bool = True,
          user: str = "U0ALICE", thread: str | None = THREAD) -> dict:
    file = stack.slack.add_file(name, content, host_ok=host_ok, user=user)
    event = message_event(text, user=user, thread_ts=thread, files=[file])
    assert stack.post(event_body(event)).status_code == 200
    return file


def answer_in(stack: Stack, thread: str, n_before: int, timeout: float = 20) -> str:
    got = stack.slack.wait_for(lambda: (t := stack.slack.thread("C0CHANNEL", thread))[n_before:]
                               and t[n_before:], timeout=timeout)
    return got[0]["text"].replace("&lt;", "<").replace("&gt;", ">")


def datasets(stack: Stack) -> dict[str, int]:
    with Session(stack.core.engine) as s:
        return {d.name: d.row_count for d in s.exec(select(Dataset))}


def test_files_shared_in_a_thread_become_datasets(tmp_path: Path, start_worker,
                                                  redis_url: str) -> None:
    with running_stack(tmp_path, start_worker, redis_url, queues="io",
                       slack_file_hosts=["127.0.0.1"], max_upload_mb=1) as stack:
        # A good file, named .txt but JSON Lines inside: the content decides, not Slack.
        n = len(stack.slack.thread("C0CHANNEL", THREAD))
        share(stack, "colours.txt", jsonl(ROWS), "<@U0BOT> dataset add colours-eval")
        said = answer_in(stack, THREAD, n)
        assert "Added colours-eval v1: 24 rows." in said, said
        assert datasets(stack) == {"colours-eval": 24}
        fetched = stack.slack.downloads[-1]
        assert fetched.ok and fetched.token == BOT_TOKEN and fetched.host.startswith("127.0.0.1")

        # A broken file: answered with the line and the field, nothing stored.
        broken = jsonl(ROWS[:2]) + b'{"colour": "red", "expected": \n' + jsonl(ROWS[2:4])
        n = len(stack.slack.thread("C0CHANNEL", THREAD))
        share(stack, "broken.jsonl", broken, "dataset add broken-eval")
        said = answer_in(stack, THREAD, n)
        assert "refused" in said and "line 3" in said, said
        assert "broken-eval" not in datasets(stack)

        # A link on a host that is not Slack's: refused before any request, token kept.
        downloads = len(stack.slack.downloads)
        n = len(stack.slack.thread("C0CHANNEL", THREAD))
        share(stack, "elsewhere.jsonl", jsonl(ROWS), "dataset add elsewhere", host_ok=False)
        said = answer_in(stack, THREAD, n)
        assert "refused to download from localhost" in said and "TUNEBOT_SLACK_FILE_HOSTS" in said
        assert len(stack.slack.downloads) == downloads

        # Over TUNEBOT_MAX_UPLOAD_MB: refused by its size, not downloaded.
        big = jsonl([{"colour": "x" * 1000, "expected": "warm"}] * 1100)
        n = len(stack.slack.thread("C0CHANNEL", THREAD))
        share(stack, "big.jsonl", big, "dataset add big-eval")
        assert "the limit is 1 MB (TUNEBOT_MAX_UPLOAD_MB)" in answer_in(stack, THREAD, n)
        assert len(stack.slack.downloads) == downloads


def test_dataset_add_then_upload_within_ten_minutes(tmp_path: Path, start_worker,
                                                    redis_url: str) -> None:
    with running_stack(tmp_path, start_worker, redis_url, queues="io",
                       slack_file_hosts=["127.0.0.1"]) as stack:
        ack = stack.slash("add colours-train", command="/dataset").json()
        assert ack["response_type"] == "ephemeral" and "within 10 minutes" in ack["text"]
        # Bob's file is not Alice's upload.
        share(stack, "bob.jsonl", jsonl(ROWS), "", user="U0BOB", thread=None)
        file = share(stack, "train.csv", b"colour,expected\nred,warm\nblue,cool\n", "",
                     thread=None)
        root_ts = stack.slack.wait_for(
            lambda: next((m["thread_ts"] for m in stack.slack.messages("C0CHANNEL")
                          if "Added colours-train" in m.get("text", "")), None), timeout=20)
        assert datasets(stack) == {"colours-train": 2}
        assert root_ts and file["id"]
        # The request was used once: the next file without words is an ordinary share.
        share(stack, "again.csv", b"colour,expected\npink,warm\n", "", thread=None)
        time.sleep(1.5)
        assert datasets(stack) == {"colours-train": 2}
        assert sum("colours-train" in m.get("text", "")
                   for m in stack.slack.messages("C0CHANNEL")) == 1
