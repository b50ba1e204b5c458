"""Reading uploaded dataset files: bounded UTF-8 lines, format detection, records per format.

Everything here streams: a file is read once, line by line, and never held whole (YAML aside,
which cannot be parsed in pieces). Problems are recorded as `Issue`s rather than raised, so a
caller always gets a report back whatever bytes it was handed.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import yaml

MAX_LISTED = 20
FORMATS = ("jsonl", "csv", "tsv", "yaml", "parquet", "arrow")

_HEAD_BYTES = 8192
_SUFFIXES = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".csv": "csv", ".tsv": "tsv", ".yaml": "yaml", ".yml": "yaml",
    ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow",
}
# Columnar files are known by their first bytes whatever their name (read by columnar.py).
_MAGIC = ((b"PAR1", "parquet"), (b"ARROW1", "arrow"), (b"\xff\xff\xff\xff", "arrow"))
_ALIASES = {**{k.lstrip("."): v for k, v in _SUFFIXES.items()}, "jsonl": "jsonl"}
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
)


@dataclass(frozen=True)
class Issue:
    """One problem (or warning) in a file: where (line, field), what (code) and why (message)."""

    line: int | None
    field: str | None
    code: str
    message: str
    unit: str = "line"  # "row" in a columnar file (Parquet, Arrow), which has no lines

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"{self.unit} {self.line}")
        if self.field is not None:
            where.append(f"field `{self.field}`")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class IssueList:
    """Issues kept up to a limit and all of them counted, so a hopeless file stays cheap."""

    def __init__(self, limit: int = MAX_LISTED) -> None:
        self.listed: list[Issue] = []
        self.count = 0
        self.unit = "line"
        self._limit = limit

    def add(self, line: int | None, field: str | None, code: str, message: str) -> None:
        """Record one issue; only the first `limit` are kept."""
        self.count += 1
        if len(self.listed) < self._limit:
            self.listed.append(Issue(line, field, code, message, self.unit))


def describe(value: Any) -> str:
    """A value's JSON type in words, for messages ("a list", "null", ...)."""
    names = {dict: "an object", list: "a list", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number", str: "a string"}
    return names.get(type(value), type(value).__name__)


def empty_message(reader: LineReader) -> str:
    """Why a file with no rows is empty, in words."""
    if reader.lines_read == 0:
        return "the file is empty"
    return "no rows: the file has only a header" if reader.columns else "no rows: only blank lines"


def detect_format(path: Path, head: bytes, fmt: str | None = None) -> str:
    """jsonl, csv, tsv, yaml, parquet or arrow: from an explicit fmt, else the file's first
    bytes (Parquet and Arrow files), else the file name, else the content."""
    if fmt is not None:
        try:
            return _ALIASES[fmt.lower().lstrip(".")]
        except KeyError:
            raise ValueError(f"unknown format {fmt!r} (use jsonl, csv, tsv, yaml, parquet or "
                             "arrow)") from None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    first = head.removeprefix(codecs.BOM_UTF8).lstrip()[:1]
    by_name = _SUFFIXES.get(path.suffix.lower())
    # A '{' can only start JSON Lines: a misnamed .csv/.txt of objects is still read right.
    if first == b"{" and by_name in (None, "csv", "tsv"):
        return "jsonl"
    if by_name is not None:
        return by_name
    if first == b"[":
        return "jsonl"
    if first == b"-":
        return "yaml"
    return "csv"


class LineReader:
    """One pass over a file in bounded UTF-8 lines, hashing the bytes and counting rows."""

    def __init__(
        self, path: Path, *, max_rows: int, max_line_bytes: int, errors: IssueList
    ) -> None:
        if max_rows < 1 or max_line_bytes < 1:
            raise ValueError("max_rows and max_line_bytes must be at least 1")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_line_bytes = max_line_bytes
        self.errors = errors
        self.lines_read = 0
        self.records = 0
        self.finished = False  # read to the end of the file
        self.stopped = False  # refused part-way (too many rows, binary data)
        self.bad_lines = 0  # lines yielded as None: undecodable or too long
        self.columns: list[str] | None = None  # a CSV header, once read
        self.header_line: int | None = None
        self._sha = hashlib.sha256()

    @property
    def content_hash(self) -> str | None:
        """sha256 of the file's bytes, or None when it was not read to the end."""
        return self._sha.hexdigest() if self.finished and not self.stopped else None

    def head(self) -> bytes:
        """The first few KiB, for format detection."""
        with self.path.open("rb") as f:
            return f.read(_HEAD_BYTES)

    def take_record(self, line: int) -> bool:
        """Count one row; False (and a too_many_rows error) once past max_rows."""
        self.records += 1
        if self.records <= self.max_rows:
            return True
        self.errors.add(line, None, "too_many_rows", f"more than {self.max_rows:,} rows "
                        "(TUNEBOT_MAX_ROWS); stopped reading here")
        self.stopped = True
        return False

    def lines(self) -> Generator[tuple[int, str | None], None, None]:
        """(line number, text with its newline); text None for a line already reported bad."""
        with self.path.open("rb") as f:
            refusal = _binary_refusal(f.read(_HEAD_BYTES))
            if refusal is not None:
                self.errors.add(refusal[0], None, "invalid_encoding", refusal[1])
                self.stopped = True
                return
            f.seek(0)
            n = 0
            while True:
                raw = f.readline(self.max_line_bytes + 1)
                if not raw:
                    self.finished = True
                    return
                n += 1
                self.lines_read = n
                self._sha.update(raw)
                if len(raw) > self.max_line_bytes and not raw.endswith(b"\n"):
                    self._drain(f)
                    self.errors.add(n, None, "line_too_long",
                                    f"line is longer than {self.max_line_bytes:,} bytes")
                    self.bad_lines += 1
                    yield n, None
                    continue
                if n == 1:
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                nul = raw.find(b"\x00")
                if nul >= 0:
                    self.errors.add(n, None, "invalid_encoding", f"binary data (NUL byte at "
                                    f"column {nul + 1}): save the file as UTF-8 text")
                    self.stopped = True
                    return
                try:
                    yield n, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    col = len(raw[: e.start].decode("utf-8", "replace")) + 1
                    self.errors.add(n, None, "invalid_encoding", f"not valid UTF-8 (byte "
                                    f"0x{raw[e.start]:02x} at column {col})")
                    self.bad_lines += 1
                    yield n, None

    def _drain(self, f: BinaryIO) -> None:
        # Skip the rest of an over-long line in small pieces: never hold it whole.
        while chunk := f.readline(65536):
            self._sha.update(chunk)
            if chunk.endswith(b"\n"):
                return


def _binary_refusal(head: bytes) -> tuple[int, str] | None:
    if head.startswith(b"PK\x03\x04"):
        return 1, ("a zip archive: share one data file (JSONL, CSV, YAML, Parquet, or the .arrow "
                   "file of a `datasets` save_to_disk folder); archives and folders do not upload")
    for bom, name in _BOMS:
        if head.startswith(bom):
            return 1, f"the file is {name} text, not UTF-8: save it as UTF-8"
    nul = head.find(b"\x00")
    if nul >= 0:
        line = head.count(b"\n", 0, nul) + 1
        return line, "binary data or UTF-16/UTF-32 text (NUL bytes): save the file as UTF-8 text"
    return None


def records(kind: str, reader: LineReader) -> Generator[tuple[int, Any], None, None]:
    """(line, parsed record) for each row of a file of the given format."""
    if kind == "jsonl":
        return jsonl_records(reader)
    if kind in ("csv", "tsv"):
        return csv_records(reader, delimiter="\t" if kind == "tsv" else None)
    if kind == "yaml":
        return yaml_records(reader)
    raise ValueError(f"unknown format {kind!r}")


class _DuplicateKey(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_no_constant)


def jsonl_records(reader: LineReader) -> Generator[tuple[int, Any], None, None]:
    """Parsed JSON value of each non-blank line; bad lines become invalid_json issues."""
    lines = reader.lines()
    with closing(lines):
        for n, text in lines:
            if text is not None and not text.strip():
                continue
            if not reader.take_record(n):
                return
            if text is None:
                continue
            text = text.rstrip("\r\n")
            try:
                yield n, _DECODER.decode(text)
            except _DuplicateKey as e:
                reader.errors.add(n, str(e), "invalid_json", f"duplicate key `{e}`")
            except json.JSONDecodeError as e:
                hint = ""
                if reader.records == 1 and text.lstrip().startswith("["):
                    hint = "; this looks like a JSON array: write one object per line (JSON Lines)"
                reader.errors.add(n, None, "invalid_json",
                                  f"invalid JSON ({e.msg} at column {e.colno}){hint}")
            except (ValueError, RecursionError) as e:
                msg = str(e) if isinstance(e, ValueError) else "nested too deeply"
                reader.errors.add(n, None, "invalid_json", f"invalid JSON ({msg})")


def csv_records(
    reader: LineReader, *, delimiter: str | None
) -> Generator[tuple[int, dict[str, str]], None, None]:
    """A dict per CSV data row keyed by the header; the header lands in reader.columns."""
    lines = reader.lines()
    with closing(lines):
        texts = (text if text is not None else "\n" for _, text in lines)
        first = next((t for t in texts if t.strip()), None)
        if first is None:
            return
        skipped = reader.lines_read - 1  # blank lines before the header
        if delimiter is None:
            delimiter = _sniff_delimiter(first)
        rows = csv.reader(_chain(first, texts), delimiter=delimiter)
        prev = skipped
        try:
            for cells in rows:
                start, prev = prev + 1, skipped + rows.line_num
                if not any(c.strip() for c in cells):
                    continue
                if reader.columns is None:
                    if not _take_header(reader, start, cells):
                        return
                    continue
                if not reader.take_record(start):
                    return
                if len(cells) != len(reader.columns):
                    reader.errors.add(start, None, "invalid_csv", f"{len(cells)} cells but the "
                                      f"header has {len(reader.columns)} columns")
                    continue
                yield start, dict(zip(reader.columns, cells, strict=True))
        except csv.Error as e:
            reader.errors.add(skipped + rows.line_num, None, "invalid_csv", f"invalid CSV ({e})")


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _sniff_delimiter(header: str) -> str:
    if "," in header:
        return ","
    return max(("\t", ";"), key=header.count) if ("\t" in header or ";" in header) else ","


def _take_header(reader: LineReader, line: int, cells: list[str]) -> bool:
    names = [c.strip() for c in cells]
    seen: set[str] = set()
    for i, name in enumerate(names, 1):
        if not name:
            reader.errors.add(line, None, "invalid_csv", f"header column {i} has no name")
        elif name in seen:
            reader.errors.add(line, name, "invalid_csv", f"column `{name}` appears twice")
        seen.add(name)
    if len(seen) != len(names) or "" in seen:
        return False
    reader.columns, reader.header_line = names, line
    return True


class _YamlLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no type stubs here
    """SafeLoader without aliases (an alias bomb expands when serialised) or timestamps."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", mark)
        return super().compose_node(parent, index)


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def yaml_records(reader: LineReader) -> Generator[tuple[int, Any], None, None]:
    """Each item of a YAML list with the line it starts on."""
    parts: list[str] = []
    lines = reader.lines()
    with closing(lines):
        for n, text in lines:
            if text is None:
                continue
            # Count top-level block items while reading, so a huge list stops early.
            if text.startswith("-") and text[1:2] in ("", " ", "\t", "\r", "\n"):
                if not reader.take_record(n):
                    return
            parts.append(text)
    if not reader.finished or reader.bad_lines:
        return  # a YAML text with lines missing would only add confusing errors
    counted = reader.records > 0
    text = "".join(parts)
    try:
        loader = _YamlLoader(text)  # checks for unprintable characters already
    except yaml.reader.ReaderError as e:
        char = f"U+{e.character:04X}" if isinstance(e.character, int) else repr(e.character)
        reader.errors.add(text.count("\n", 0, e.position) + 1, None, "invalid_yaml",
                          f"invalid YAML (character {char} is not allowed)")
        return
    try:
        root = loader.get_single_node()
        if root is None:
            return
        if not isinstance(root, yaml.SequenceNode):
            reader.errors.add(root.start_mark.line + 1, None, "invalid_yaml",
                              "a YAML dataset must be a list of rows (`- key: value`)")
            return
        for node in root.value:
            line = node.start_mark.line + 1
            if not counted and not reader.take_record(line):
                return
            try:
                yield line, loader.construct_object(node, deep=True)
            except (yaml.YAMLError, RecursionError) as e:
                reader.errors.add(line, None, "invalid_yaml", f"invalid YAML ({_yaml_msg(e)})")
    except (yaml.YAMLError, RecursionError) as e:
        mark = getattr(e, "problem_mark", None)
        reader.errors.add(mark.line + 1 if mark else None, None, "invalid_yaml",
                          f"invalid YAML ({_yaml_msg(e)})")
    finally:
        loader.dispose()


def _yaml_msg(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    problem = getattr(e, "problem", None)
    return str(problem) if problem else str(e).splitlines()[0]
