"""Dataset files shared in Slack: downloaded with the bot token from trusted hosts only,
validated like `tunebot dataset add`, answered in the file's thread."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
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


def parquet_bytes(rows: list[dict]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return bytes(sink.getvalue().to_pybytes())


def test_parquet_uploads_and_a_column_mapping_kept_until_the_file_arrives(
        tmp_path: Path, start_worker, redis_url: str) -> None:
    rows = [{"colour": r["colour"], "verdict": r["expected"]} for r in ROWS]
    with running_stack(tmp_path, start_worker, redis_url, queues="io",
                       slack_file_hosts=["127.0.0.1"]) as stack:
        # The mapping is asked for first; the file comes later, without words.
        ack = stack.slash("add shades expected=verdict", command="/dataset").json()
        assert "column `verdict`" in ack["text"] and "Parquet" in ack["text"]
        share(stack, "shades.parquet", parquet_bytes(rows), "", thread=None)
        said = stack.slack.wait_for(
            lambda: next((m["text"] for m in stack.slack.messages("C0CHANNEL")
                          if "shades" in m.get("text", "")), None), timeout=20)
        assert "Added shades v1: 24 rows. Expected answers read from column `verdict`." in said
        with Session(stack.core.engine) as s:
            ds = s.exec(select(Dataset).where(Dataset.name == "shades")).one()
        assert ds.format == "parquet" and ds.stats["expected_column"] == "verdict"
        assert ds.stats["label_balance"] == {"cool": 12, "warm": 12}

        # The same with the file: `dataset add NAME expected=COLUMN` as its message.
        n = len(stack.slack.thread("C0CHANNEL", THREAD))
        share(stack, "again.parquet", parquet_bytes(rows[:6]), "dataset add few expected=verdict")
        said = answer_in(stack, THREAD, n)
        assert "Added few v1: 6 rows" in said and "`verdict`" in said, said

        # A column that is not there: refused with the row and the column it looked for.
        ack = stack.slash("add wrong expected=nope", command="/dataset").json()
        share(stack, "wrong.parquet", parquet_bytes(rows[:3]), "", thread=None)
        said = stack.slack.wait_for(
            lambda: next((m["text"] for m in stack.slack.messages("C0CHANNEL")
                          if "wrong" in m.get("text", "")), None), timeout=20)
        assert "refused" in said and "row 1, field `nope`" in said, said
        # A zip (a folder cannot be uploaded) is answered with what to share instead.
        n = len(stack.slack.thread("C0CHANNEL", THREAD))
        share(stack, "ds.zip", b"PK\x03\x04" + b"\x00" * 64, "dataset add zipped")
        said = answer_in(stack, THREAD, n)
        assert "zip archive" in said and "save_to_disk" in said, said
        # Over-long column names are refused in the ack, nothing remembered.
        ack = stack.slash("add long expected=" + "c" * 200, command="/dataset").json()
        assert "1 to 128 characters" in ack["text"]
