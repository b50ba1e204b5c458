"""Fine-tune training data: the OpenAI cookbook's format checks, streaming, normalised to chat.

Four shapes are accepted, each turned into `Example(line, messages)`: JSONL chat
(`{"messages": [...]}`), JSONL/YAML `{"prompt", "completion"}` (or `input`/`output`), CSV with
`input,output` or `prompt,completion` columns, and catalog rows (variables + `expected`); a
Parquet or Arrow file (columnar.py) holds any of these shapes as its columns.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebot.datasets.columnar import open_reader, read_records
from tunebot.datasets.read import Issue, IssueList, describe, empty_message
from tunebot.datasets.rows import RESERVED
from tunebot.errors import Cancelled, LeaseLost

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content", "name", "weight")
MIN_EXAMPLES = 10
MAX_PCT_OVER = 5.0
TEMPLATES = ("minimal", "full")
PAIRS = {"prompt_completion": ("prompt", "completion"), "input_output": ("input", "output")}

Renderer = Callable[[dict[str, Any]], list[dict[str, Any]]]


@dataclass
class Example:
    """One training conversation, normalised to chat messages, with the line it came from."""

    line: int
    messages: list[dict[str, Any]]


@dataclass
class TrainingReport:
    """What validate_training found: kept examples, errors, warnings, duplicates dropped."""

    examples: list[Example]
    errors: list[Issue]
    warnings: list[Issue]
    error_count: int
    warning_count: int
    duplicates: int
    rows_read: int
    lines_read: int
    fmt: str  # jsonl | csv | tsv | yaml | parquet | arrow
    kind: str | None  # chat | prompt_completion | input_output | rows
    content_hash: str | None  # None when the file was not read to the end
    complete: bool
    name: str = ""

    @property
    def ok(self) -> bool:
        """True when the file had no errors (warnings such as duplicates allowed)."""
        return self.error_count == 0


def validate_training(
    path: Path,
    *,
    fmt: str | None = None,
    max_rows: int,
    max_line_bytes: int = 1_000_000,
    prompt_render: Renderer | None = None,
    template: str = "minimal",
    max_decoded_bytes: int | None = None,
) -> TrainingReport:
    """Check a training file line by line; keep valid, de-duplicated examples as chat messages.

    Catalog rows go through `prompt_render(row)` when given (it may leave out the assistant turn:
    `expected` is appended); otherwise (template="minimal") the user turn is `key: value` lines.
    """
    if template not in TEMPLATES:
        raise ValueError(f"template must be minimal or full (got {template!r})")
    if template == "full" and prompt_render is None:
        raise ValueError("template='full' needs a prompt_render callable")
    errors, warnings = IssueList(), IssueList()
    reader, fmt = open_reader(Path(path), fmt=fmt, max_rows=max_rows,
                              max_line_bytes=max_line_bytes, errors=errors,
                              max_decoded_bytes=max_decoded_bytes)
    warnings.unit = errors.unit  # rows, not lines, in a Parquet or Arrow file
    kind: str | None = None
    seen: dict[bytes, int] = {}  # digest -> first line: memory grows with kept examples only
    examples: list[Example] = []
    duplicates = 0
    header_refused = False
    with closing(read_records(fmt, reader)) as recs:
        for line, obj in recs:
            if kind is None and reader.columns is not None:
                kind = _csv_kind(reader.columns)
                if kind is None:
                    errors.add(reader.header_line, "input", "message_missing_key", _CSV_COLUMNS
                               + f"; found: {', '.join(reader.columns)}")
                    header_refused = True
                    break
            elif kind is None and isinstance(obj, dict):
                kind = _record_kind(obj)
            messages = _to_messages(kind, line, obj, errors, prompt_render)
            if messages is None:
                continue
            key = hashlib.blake2b(json.dumps(messages, sort_keys=True).encode(),
                                  digest_size=16).digest()
            if key in seen:
                duplicates += 1
                warnings.add(line, None, "duplicate", f"same messages as line {seen[key]}; dropped")
                continue
            seen[key] = line
            examples.append(Example(line, messages))
    if reader.records == 0 and errors.count == 0:
        errors.add(None, None, "empty_file", empty_message(reader))
    elif reader.records and not (reader.stopped or header_refused) and len(examples) < MIN_EXAMPLES:
        plural = "" if len(examples) == 1 else "s"
        errors.add(None, None, "invalid_n_examples", f"{len(examples)} valid example{plural}; "
                   f"fine-tuning needs at least {MIN_EXAMPLES}")
    return TrainingReport(
        examples=examples, errors=errors.listed, warnings=warnings.listed,
        error_count=errors.count, warning_count=warnings.count, duplicates=duplicates,
        rows_read=reader.records, lines_read=reader.lines_read, fmt=fmt, kind=kind,
        content_hash=reader.content_hash, complete=reader.finished and not reader.stopped,
        name=reader.path.name,
    )


_CSV_COLUMNS = ("a training CSV needs columns `input` and `output` (or `prompt` and "
                "`completion`, or catalog rows with `expected`)")


def _csv_kind(columns: list[str]) -> str | None:
    for kind, pair in PAIRS.items():
        if set(pair) <= set(columns):
            return kind
    return "rows" if "expected" in columns else None


def _record_kind(obj: Mapping[str, Any]) -> str:
    # Decided by the first object and then held: a line of another shape is an error there.
    if "messages" in obj:
        return "chat"
    if "completion" in obj:
        return "prompt_completion"
    if "input" in obj and "output" in obj:
        return "input_output"
    if "expected" in obj:
        return "rows"
    return "prompt_completion" if "prompt" in obj else "chat"


def _to_messages(
    kind: str | None, line: int, obj: Any, errors: IssueList, render: Renderer | None
) -> list[dict[str, Any]] | None:
    if not isinstance(obj, dict):
        errors.add(line, None, "missing_messages_list", f"not a JSON object (got {describe(obj)})")
        return None
    if kind == "chat":
        if "messages" not in obj:
            errors.add(line, "messages", "missing_messages_list",
                       "no `messages` list (this file is in chat format)")
            return None
        return check_chat(line, obj["messages"], errors)
    if kind in PAIRS:
        return _pair(line, obj, PAIRS[kind], errors)
    return _from_row(line, obj, errors, render)


def check_chat(line: int, messages: Any, errors: IssueList) -> list[dict[str, Any]] | None:
    """Validate one `messages` list as OpenAI does; the normalised list, or None on errors."""
    if not isinstance(messages, list) or not messages:
        errors.add(line, "messages", "missing_messages_list",
                   "`messages` must be a non-empty list of {role, content} objects")
        return None
    before = errors.count
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(m, dict):
            errors.add(line, path, "message_missing_key",
                       f"a message must be an object with `role` and `content` (got {describe(m)})")
            continue
        for key in ("role", "content"):
            if key not in m:
                errors.add(line, f"{path}.{key}", "message_missing_key", f"message has no `{key}`")
        for key in m:
            if key not in MESSAGE_KEYS:
                errors.add(line, f"{path}.{key}", "message_unrecognized_key",
                           f"unrecognized key `{key}` (allowed: {', '.join(MESSAGE_KEYS)})")
        role, content = m.get("role"), m.get("content")
        if "role" in m and role not in ROLES:
            errors.add(line, f"{path}.role", "unrecognized_role",
                       f"role must be system, user or assistant (got {role!r})")
        if "content" in m and not _text(content):
            errors.add(line, f"{path}.content", "missing_content",
                       f"content must be a non-empty string (got {_shown(content)})")
        if "weight" in m:
            _check_weight(line, path, role, m["weight"], errors)
        msg = {"role": role, "content": content}
        if "weight" in m:
            msg["weight"] = m["weight"]
        out.append(msg)
    answers = [m for m in out if m["role"] == "assistant"]
    if not answers:
        errors.add(line, "messages", "example_missing_assistant_message",
                   "no assistant message: nothing to learn from this example")
    if errors.count > before:
        return None
    if all(m.get("weight", 1) == 0 for m in answers):
        errors.add(line, "messages", "example_missing_assistant_message",
                   "every assistant message has weight 0: nothing to learn from this example")
        return None
    return out


def _check_weight(line: int, path: str, role: Any, weight: Any, errors: IssueList) -> None:
    if role != "assistant":
        errors.add(line, f"{path}.weight", "invalid_weight",
                   "`weight` is only allowed on assistant messages")
    elif isinstance(weight, bool) or weight not in (0, 1):
        errors.add(line, f"{path}.weight", "invalid_weight", f"weight must be 0 or 1 (got "
                   f"{_shown(weight)})")


def _pair(
    line: int, obj: Mapping[str, Any], pair: tuple[str, str], errors: IssueList
) -> list[dict[str, Any]] | None:
    before = errors.count
    for key in pair:
        if key not in obj:
            errors.add(line, key, "message_missing_key", f"no `{key}`")
        elif not _text(obj[key]):
            errors.add(line, key, "missing_content",
                       f"`{key}` must be a non-empty string (got {_shown(obj[key])})")
    system = obj.get("system")
    if system not in (None, "") and not _text(system):
        errors.add(line, "system", "missing_content",
                   f"`system` must be a string (got {_shown(system)})")
    if errors.count > before:
        return None
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": obj[pair[0]]},
            {"role": "assistant", "content": obj[pair[1]]}]


def _from_row(
    line: int, row: Mapping[str, Any], errors: IssueList, render: Renderer | None
) -> list[dict[str, Any]] | None:
    expected = row.get("expected")
    if expected is None or expected == "":
        errors.add(line, "expected", "example_missing_assistant_message",
                   "no `expected` answer: nothing for the assistant turn")
        return None
    if isinstance(expected, int | float) and not isinstance(expected, bool):
        expected = str(expected)
    if not isinstance(expected, str):
        errors.add(line, "expected", "missing_content",
                   f"`expected` must be a string (got {_shown(expected)})")
        return None
    if render is None:
        user = minimal_user_turn(row)
        if not user:
            errors.add(line, None, "missing_content",
                       "row has no variables to build the user turn from")
            return None
        return [{"role": "user", "content": user}, {"role": "assistant", "content": expected}]
    try:
        rendered = render(dict(row))
    except KeyError as e:
        var = str(e.args[0]) if e.args else None
        errors.add(line, var, "message_missing_key", f"the prompt needs `{var}`, not in this row")
        return None
    except (Cancelled, LeaseLost):
        raise  # the job stops here; not this row's problem
    except Exception as e:  # the caller's renderer: any failure is this row's problem
        errors.add(line, None, "render_failed", f"the prompt did not render "
                   f"({type(e).__name__}: {e})")
        return None
    if not isinstance(rendered, list):
        errors.add(line, None, "render_failed", "prompt_render must return a list of messages")
        return None
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in rendered):
        rendered = [*rendered, {"role": "assistant", "content": expected}]
    return check_chat(line, rendered, errors)


def minimal_user_turn(row: Mapping[str, Any]) -> str:
    """The minimal template's user turn: a row's variables as `key: value` lines, in order."""
    return "\n".join(f"{k}: {_as_text(v)}" for k, v in row.items() if k not in RESERVED)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value, ensure_ascii=False)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return "an empty string" if not value.strip() else repr(value[:40])
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return describe(value)


def length_histogram(lengths: Sequence[int], max_seq_len: int) -> dict[str, Any]:
    """min/p50/p95/p99/max of token lengths (nearest rank) and how many exceed max_seq_len."""
    n = len(lengths)
    if n == 0:
        return {"n": 0, "min": 0, "p50": 0, "p95": 0, "p99": 0, "max": 0,
                "max_seq_len": max_seq_len, "n_over": 0, "pct_over": 0.0}
    ordered = sorted(lengths)

    def rank(p: float) -> int:
        return ordered[max(0, math.ceil(p / 100 * n) - 1)]

    n_over = sum(1 for x in ordered if x > max_seq_len)
    return {"n": n, "min": ordered[0], "p50": rank(50), "p95": rank(95), "p99": rank(99),
            "max": ordered[-1], "max_seq_len": max_seq_len, "n_over": n_over,
            "pct_over": 100.0 * n_over / n}


def truncation_verdict(hist: Mapping[str, Any], truncate: str) -> str | None:
    """Refusal text when more than 5% of examples exceed max_seq_len and truncate != "ok"."""
    if truncate == "ok" or hist["pct_over"] <= MAX_PCT_OVER:
        return None
    return (f"{hist['n_over']} of {hist['n']} examples ({hist['pct_over']:.1f}%) are longer than "
            f"max_seq_len={hist['max_seq_len']} tokens (p95 {hist['p95']}, max {hist['max']}). "
            "Raise max_seq_len, shorten those examples, or add truncate=ok to cut them.")
