"""Eval datasets: catalog rows (variables + `expected` + optional `assert`) from JSONL, CSV,
YAML, Parquet or Arrow."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebot.datasets.columnar import open_reader, read_records
from tunebot.datasets.read import Issue, IssueList, describe, empty_message
from tunebot.jsonschemas import ref_problems

RESERVED = ("expected", "assert")
EXPECTED_ALIASES = ("label", "answer", "output", "target", "expected_output")
LABEL_LIMIT = 20
SCALARS = (str, int, float, bool, type(None))
_INJECTION_STARTS = ("=", "+", "-", "@", "\t", "\r")


class Row(dict[str, Any]):
    """A catalog row: a plain dict that also remembers the line it came from."""

    __slots__ = ("line",)

    def __init__(self, data: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), line: int = 0):
        super().__init__(data)
        self.line = line


@dataclass
class RowsResult:
    """What parse_rows found: the good rows, the problems, and what the data looks like."""

    rows: list[Row]
    errors: list[Issue]
    warnings: list[Issue]
    columns: list[str]
    content_hash: str | None  # None when the file was not read to the end
    fmt: str
    stats: dict[str, Any]
    error_count: int = 0
    warning_count: int = 0
    lines_read: int = 0
    complete: bool = True
    name: str = ""
    expected_from: str | None = None  # the column read as `expected`, when not `expected`

    @property
    def ok(self) -> bool:
        """True when the file had no errors (warnings allowed)."""
        return self.error_count == 0


def expected_source(columns: Sequence[str], given: str | None = None) -> str | None:
    """The column read as `expected`: the one named, else — when there is no `expected` —
    the first of EXPECTED_ALIASES present (`output` only without an `input` column: an
    input/output file is training data)."""
    if given is not None:
        return given
    if "expected" in columns:
        return None
    for alias in EXPECTED_ALIASES:
        if alias in columns and not (alias == "output" and "input" in columns):
            return alias
    return None


def parse_rows(
    path: Path, *, fmt: str | None = None, max_rows: int, max_line_bytes: int = 1_000_000,
    expected_column: str | None = None, max_decoded_bytes: int | None = None,
) -> RowsResult:
    """Read an eval set of catalog rows, streaming, and report every problem by line and field.

    Data as people have it: without an `expected` column, a `label`, `answer`, `output`,
    `target` or `expected_output` column is the expected answer (or `expected_column`)."""
    errors, warnings = IssueList(), IssueList()
    reader, kind = open_reader(Path(path), fmt=fmt, max_rows=max_rows,
                               max_line_bytes=max_line_bytes, errors=errors,
                               max_decoded_bytes=max_decoded_bytes)
    warnings.unit = errors.unit  # rows, not lines, in a Parquet or Arrow file
    rows: list[Row] = []
    seen_columns: dict[str, None] = {}
    source: str | None = expected_column
    decided = expected_column is not None
    for line, obj in read_records(kind, reader):
        if isinstance(obj, dict):
            if not decided:  # the first record (a CSV's header) decides for the file
                source, decided = expected_source(list(obj)), True
            if source is not None:
                obj = {("expected" if k == source else k): v for k, v in obj.items()
                       if not (k == "expected" and source != "expected")}
                if "expected" not in obj and not obj.get("assert"):
                    errors.add(line, source, "missing_expected",
                               f"row has no `{source}` column (read as the expected answer)")
                    continue
        row = check_row(line, obj, errors, yaml_hints=kind == "yaml")
        if row is None:
            continue
        _flag_injection(row, warnings)
        rows.append(row)
        seen_columns.update(dict.fromkeys(row))
    if reader.records == 0 and errors.count == 0:
        errors.add(None, None, "empty_file", empty_message(reader))
    return RowsResult(
        rows=rows, errors=errors.listed, warnings=warnings.listed,
        columns=list(reader.columns or seen_columns), content_hash=reader.content_hash,
        fmt=kind, stats=row_stats(rows), error_count=errors.count,
        warning_count=warnings.count, lines_read=reader.lines_read,
        complete=reader.finished and not reader.stopped, name=reader.path.name,
        expected_from=source,
    )


def check_row(line: int, obj: Any, errors: IssueList, *, yaml_hints: bool = False) -> Row | None:
    """Validate one record as a flat catalog row; a Row with `expected` as text, or None."""
    if not isinstance(obj, dict):
        errors.add(line, None, "not_an_object", f"row is not an object (got {describe(obj)})")
        return None
    before = errors.count
    row = Row(line=line)
    for key, value in obj.items():
        if not isinstance(key, str):
            errors.add(line, str(key), "invalid_field", "column names must be text")
        elif key == "expected":
            row[key] = _expected(line, value, errors, yaml_hints)
        elif key == "assert":
            row[key] = _asserts(line, value, errors)
        elif not isinstance(value, SCALARS):
            errors.add(line, key, "invalid_field", "must be a string, number or boolean "
                       f"(got {describe(value)}; rows are flat)")
        else:
            row[key] = value
    if errors.count > before:
        return None
    if row.get("expected") in (None, "") and not row.get("assert"):
        errors.add(line, "expected", "missing_expected",
                   "row has no `expected` answer (and no `assert` list)")
        return None
    return row


def _expected(line: int, value: Any, errors: IssueList, yaml_hints: bool) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    hint = "; quote it in YAML ('yes', 'no')" if yaml_hints and isinstance(value, bool) else ""
    errors.add(line, "expected", "invalid_field", f"must be a string (got {describe(value)}){hint}")
    return None


def _asserts(line: int, value: Any, errors: IssueList) -> list[dict[str, Any]]:
    if isinstance(value, str):  # CSV carries the list as a JSON string
        if not value.strip():
            return []
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            errors.add(line, "assert", "invalid_assert",
                       f"invalid JSON ({e.msg} at column {e.colno})")
            return []
        except (ValueError, RecursionError):
            errors.add(line, "assert", "invalid_assert", "invalid JSON")
            return []
    if value is None:
        return []
    if not isinstance(value, list):
        errors.add(line, "assert", "invalid_assert",
                   f"must be a list of {{type, ...}} objects (got {describe(value)})")
        return []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            errors.add(line, f"assert[{i}]", "invalid_assert",
                       f"must be an object with a `type` (got {describe(item)})")
        elif not isinstance(item.get("type"), str) or not item["type"].strip():
            errors.add(line, f"assert[{i}].type", "invalid_assert",
                       "must name a scorer (a non-empty string)")
        elif item["type"] == "json-schema":
            _offline_schema(line, i, item, errors)
    return value


def _offline_schema(line: int, i: int, item: dict[str, Any], errors: IssueList) -> None:
    # Workers validate offline: a schema naming another document (URL, file) is refused here,
    # with its line, rather than failing (or, before, fetching) at scoring time.
    key = "schema" if "schema" in item else "value"
    schema = item.get(key)
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except (ValueError, RecursionError):
            return  # the scorer's own check names a schema that is not JSON
    problems = ref_problems(schema)
    if problems:
        errors.add(line, f"assert[{i}].{key}", "invalid_assert", f"schema {problems[0]}")


def _flag_injection(row: Row, warnings: IssueList) -> None:
    # Kept unchanged: nothing here evaluates them, but a spreadsheet opening an export would.
    for key, value in row.items():
        if isinstance(value, str) and value.startswith(_INJECTION_STARTS) and not _number(value):
            warnings.add(row.line, key, "csv_injection",
                         f"begins with {value[0]!r}: kept as text, but a spreadsheet would run it "
                         "as a formula; escape it before opening an export")


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _line(row: Any, index: int) -> int:
    return getattr(row, "line", None) or index + 1


def row_stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Row count, columns, label balance of `expected` (<= 20 labels), text lengths per column."""
    columns: dict[str, None] = {}
    lengths: dict[str, list[int]] = {}
    labels: Counter[str] = Counter()
    for row in rows:
        columns.update(dict.fromkeys(row))
        for key, value in row.items():
            if isinstance(value, str):
                lengths.setdefault(key, []).append(len(value))
        if isinstance(row.get("expected"), str):
            labels[row["expected"]] += 1
    balance = None
    if labels and len(labels) <= LABEL_LIMIT:
        balance = dict(sorted(labels.items(), key=lambda kv: (-kv[1], kv[0])))
    return {
        "rows": len(rows),
        "columns": list(columns),
        "distinct_expected": len(labels),
        "label_balance": balance,
        "text_columns": {
            key: {"avg_len": round(sum(v) / len(v), 1), "max_len": max(v)}
            for key, v in lengths.items()
        },
    }


def check_variables(rows: Sequence[Mapping[str, Any]], variables: list[str]) -> list[Issue]:
    """Rows lacking a prompt variable, by line; one issue when no row has it at all."""
    issues: list[Issue] = []
    wanted = [v for v in dict.fromkeys(variables) if v not in RESERVED]
    missing = {v: [_line(r, i) for i, r in enumerate(rows) if r.get(v) is None] for v in wanted}
    for var, lines in missing.items():
        if rows and len(lines) == len(rows):
            issues.append(Issue(None, var, "missing_variable",
                                f"no row has `{var}`, which the prompt needs"))
            continue
        issues.extend(Issue(line, var, "missing_variable",
                            f"row has no `{var}`, which the prompt needs") for line in lines)
    return sorted(issues, key=lambda i: (i.line or 0, i.field or ""))
