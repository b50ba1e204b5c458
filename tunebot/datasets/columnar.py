"""Columnar dataset files: Parquet, Arrow IPC (`.arrow`) and `datasets` save_to_disk folders.

Read with pyarrow only, in batches, and bounded before anything is decoded: a Parquet file's
footer gives its rows and uncompressed sizes, and an Arrow stream's message headers give each
batch's rows and buffer sizes (compressed buffers carry their decoded length), so a small file
that would decode to gigabytes is refused from its metadata. Text columns, nested ones too, are
read dictionary-encoded, so one huge repeated value is never copied once per row; each row's size
is measured on the Arrow arrays and checked (the `max_line_bytes` of the text formats) before it
becomes Python values, and the rows' total against the decoded bound as they are read.

Rows are numbered from 1 and reported where the text formats report lines, with the same codes.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunebot.datasets.read import IssueList, LineReader, detect_format, records
from tunebot.errors import UserError

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNAR = ("parquet", "arrow")
BATCH_ROWS = 256
MAX_STATE_BYTES = 1 << 20  # a save_to_disk folder's state.json / dataset_info.json
_RECORD_BATCH, _DICTIONARY_BATCH = 3, 2  # Arrow's MessageHeader union


def open_reader(
    path: Path, *, fmt: str | None, max_rows: int, max_line_bytes: int, errors: IssueList,
    max_decoded_bytes: int | None = None,
) -> tuple[LineReader, str]:
    """The reader for a dataset file and its format: lines for text, batches for columnar."""
    probe = LineReader(Path(path), max_rows=max_rows, max_line_bytes=max_line_bytes,
                       errors=errors)
    kind = detect_format(probe.path, probe.head(), fmt)
    if kind not in COLUMNAR:
        return probe, kind
    return ColumnarReader(probe.path, kind=kind, max_rows=max_rows, max_line_bytes=max_line_bytes,
                          errors=errors, max_decoded_bytes=max_decoded_bytes), kind


def read_records(kind: str, reader: LineReader) -> Generator[tuple[int, Any], None, None]:
    """(row or line number, record) for any supported format."""
    if isinstance(reader, ColumnarReader):
        return reader.rows()
    return records(kind, reader)


class ColumnarReader(LineReader):
    """One pass over a Parquet or Arrow file in bounded batches, as a LineReader would read text:
    rows counted (`take_record`), problems recorded, the file's bytes hashed."""

    def __init__(self, path: Path, *, kind: str, max_rows: int, max_line_bytes: int,
                 errors: IssueList, max_decoded_bytes: int | None = None) -> None:
        super().__init__(path, max_rows=max_rows, max_line_bytes=max_line_bytes, errors=errors)
        errors.unit = "row"
        self.kind = kind
        self.max_decoded_bytes = max_decoded_bytes or 512 * 2**20

    def rows(self) -> Generator[tuple[int, dict[str, Any]], None, None]:
        """(row number, row as a dict of Python values) for each row, checked as it goes."""
        import pyarrow as pa

        self._hash_file()
        try:
            batches = self._parquet() if self.kind == "parquet" else self._arrow()
            n = decoded = 0
            for batch in batches:
                sizes = _row_bytes(batch)
                # The metadata said what the file decodes to; one that lies stops here.
                decoded += sum(sizes)
                if decoded > self.max_decoded_bytes:
                    self._too_big(decoded)
                    return
                # Maps and unions are not measured on the arrays: measured once read.
                unmeasured = any(_unmeasured(f.type) for f in batch.schema)
                whole = batch.to_pylist() if max(sizes, default=0) <= self.max_line_bytes \
                    else None  # a batch with an over-large row is read row by row
                for i in range(batch.num_rows):
                    n += 1
                    self.lines_read = n
                    if not self.take_record(n):
                        return
                    if sizes[i] > self.max_line_bytes:
                        self.errors.add(n, None, "line_too_long",
                                        f"row is larger than {self.max_line_bytes:,} bytes")
                        self.bad_lines += 1
                        continue
                    cells = whole[i] if whole is not None else {
                        name: batch.column(j)[i].as_py()
                        for j, name in enumerate(batch.schema.names)}
                    row = {k: _plain(v) for k, v in cells.items()}
                    if unmeasured and len(json.dumps(row, default=str)) > self.max_line_bytes:
                        self.errors.add(n, None, "line_too_long",
                                        f"row is larger than {self.max_line_bytes:,} bytes")
                        self.bad_lines += 1
                        continue
                    yield n, row
            if n == 0 and self.errors.count == 0:
                self.errors.add(None, None, "empty_file", "no rows: the file has only its "
                                "columns")
            self.finished = True
        except (pa.ArrowException, OSError, ValueError, IndexError, struct.error) as exc:
            self._refuse(f"not a readable {self.kind} file ({_first_line(exc)})")

    def _hash_file(self) -> None:
        with self.path.open("rb") as f:
            while chunk := f.read(1 << 20):
                self._sha.update(chunk)

    def _refuse(self, message: str, code: str = "invalid_file") -> None:
        self.errors.add(None, None, code, message)
        self.stopped = True

    def _too_big(self, decoded: int) -> None:
        self._refuse(f"the file decodes to {decoded / 2**20:,.0f} MB, more than the "
                     f"{self.max_decoded_bytes / 2**20:,.0f} MB limit (TUNEBOT_MAX_DECODED_MB)",
                     "too_large")

    def _parquet(self) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        meta = pq.read_metadata(self.path)
        decoded = sum(meta.row_group(g).column(c).total_uncompressed_size
                      for g in range(meta.num_row_groups) for c in range(meta.num_columns))
        if decoded > self.max_decoded_bytes:
            self._too_big(decoded)
            return
        # Dictionary-read text, nested too: a value repeated on every row is held once, not
        # once a row (Parquet's dictionary pages would otherwise be expanded by the reader).
        text = [meta.schema.column(c).path for c in range(meta.num_columns)
                if meta.schema.column(c).physical_type == "BYTE_ARRAY"]
        pf = pq.ParquetFile(self.path, read_dictionary=text)
        yield from pf.iter_batches(batch_size=BATCH_ROWS)

    def _arrow(self) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        decoded = arrow_decoded_size(self.path)
        if decoded > self.max_decoded_bytes:
            self._too_big(decoded)
            return
        with pa.memory_map(str(self.path)) as source:
            reader = _ipc_reader(source)
            for batch in reader:
                # Arrow batches may be any size: hand them on in slices of BATCH_ROWS.
                for start in range(0, batch.num_rows, BATCH_ROWS):
                    yield batch.slice(start, BATCH_ROWS)


def _ipc_reader(source: Any) -> Any:
    import pyarrow as pa

    head = source.read(6)
    source.seek(0)
    if head == b"ARROW1":
        f = pa.ipc.open_file(source)
        return (f.get_batch(i) for i in range(f.num_record_batches))
    return pa.ipc.open_stream(source)


def arrow_decoded_size(path: Path) -> int:
    """What an Arrow IPC file (stream or file format) decodes to, from its message headers
    alone: each compressed buffer starts with its decoded length, nothing is decompressed."""
    import pyarrow as pa

    total = 0
    with pa.memory_map(str(path)) as source:
        if source.read(6) == b"ARROW1":
            source.seek(8)  # the file format: magic, padding, then the stream
        else:
            source.seek(0)
        reader = pa.ipc.MessageReader.open_stream(source)
        while True:
            try:
                message = reader.read_next_message()
            except StopIteration:
                return total
            except pa.ArrowInvalid:
                return total  # the file format's footer follows its last message
            if message is None:
                return total
            if message.type in ("record batch", "dictionary batch"):
                total += _message_decoded_size(message.metadata.to_pybytes(), message.body)


def _message_decoded_size(meta: bytes, body: Any) -> int:
    """Sum of a record (or dictionary) batch's buffers once decompressed, read from the
    message's flatbuffer header (Message.fbs: header_type, header, and RecordBatch's
    buffers and compression) and, for compressed buffers, their 8-byte length prefix."""
    fb = _Flat(meta)
    root = fb.root()
    header_type = fb.scalar(root, 1, "<B", 0)
    header = fb.table(root, 2)
    if header is None:
        return 0
    if header_type == _DICTIONARY_BATCH:
        header = fb.table(header, 1)
        if header is None:
            return 0
    elif header_type != _RECORD_BATCH:
        return 0
    buffers = fb.vector(header, 2)
    compressed = fb.table(header, 3) is not None
    if buffers is None:
        return 0
    start, count = buffers
    raw = body.to_pybytes() if compressed and body is not None else b""
    total = 0
    for k in range(count):
        offset, length = struct.unpack_from("<qq", meta, start + 16 * k)
        if not compressed or length < 8:
            total += max(length, 0)
            continue
        (decoded,) = struct.unpack_from("<q", raw, offset)
        total += length - 8 if decoded < 0 else decoded
    return total


class _Flat:
    """Just enough of the flatbuffers format to read a few fields of an Arrow message."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def root(self) -> int:
        return int(struct.unpack_from("<I", self.buf, 0)[0])

    def _field(self, table: int, index: int) -> int | None:
        vtable = table - struct.unpack_from("<i", self.buf, table)[0]
        size = struct.unpack_from("<H", self.buf, vtable)[0]
        if 4 + 2 * index >= size:
            return None
        off = struct.unpack_from("<H", self.buf, vtable + 4 + 2 * index)[0]
        return table + off if off else None

    def scalar(self, table: int, index: int, fmt: str, default: int) -> int:
        at = self._field(table, index)
        return default if at is None else int(struct.unpack_from(fmt, self.buf, at)[0])

    def table(self, table: int, index: int) -> int | None:
        at = self._field(table, index)
        return None if at is None else at + struct.unpack_from("<I", self.buf, at)[0]

    def vector(self, table: int, index: int) -> tuple[int, int] | None:
        at = self.table(table, index)
        if at is None:
            return None
        return at + 4, int(struct.unpack_from("<I", self.buf, at)[0])


def _unmeasured(t: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _unmeasured(t.value_type)
    if pa.types.is_struct(t):
        return any(_unmeasured(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_dictionary(t):
        return _unmeasured(t.value_type)
    return bool(pa.types.is_nested(t))


def _row_bytes(batch: pa.RecordBatch) -> list[int]:
    """Each row's size in bytes, computed on the Arrow arrays: text and binary by length, fixed
    widths by width, lists and structs by their parts, a dictionary value by looking its size
    up (never expanding it). Nested types it cannot measure count 0 (checked as JSON after)."""
    sizes = [0] * batch.num_rows
    for col in batch.columns:
        sizes = [a + b for a, b in zip(sizes, _sizes(col), strict=True)]
    return sizes


def _sizes(arr: Any) -> list[int]:
    import pyarrow as pa
    import pyarrow.compute as pc

    t, n = arr.type, len(arr)
    if pa.types.is_dictionary(t):
        if _is_text(t.value_type):  # the usual case, in C++: the dictionary may be large
            lens = pc.binary_length(arr.dictionary).take(arr.indices.fill_null(0))
            return [int(x) for x in lens.fill_null(0).to_pylist()]
        values = _sizes(arr.dictionary)
        return [0 if i is None else values[i] for i in arr.indices.to_pylist()]
    if _is_text(t):
        return [int(x) for x in pc.binary_length(arr).fill_null(0).to_pylist()]
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        child = _sizes(arr.flatten())
        out = [0] * n
        for parent, size in zip(pc.list_parent_indices(arr).to_pylist(), child, strict=True):
            out[parent] += size
        return out
    if pa.types.is_struct(t):
        out = [0] * n
        for field in arr.flatten():
            out = [a + b for a, b in zip(out, _sizes(field), strict=True)]
        return out
    if pa.types.is_nested(t):
        return [0] * n  # maps, unions…: measured as JSON once read
    try:
        return [t.bit_width // 8] * n
    except ValueError:  # not fixed width
        return [0] * n


def _is_text(t: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t)
                or pa.types.is_large_binary(t))


def _plain(value: Any) -> Any:
    # An Arrow struct has every field; a field that is null in this row is an absent key (so a
    # chat message without `weight` reads as it would from JSON).
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def pack_folder(folder: Path, dest: Path, *, max_bytes: int, max_decoded_bytes: int) -> Path:
    """A Hugging Face `datasets` save_to_disk folder (Arrow files, dataset_info.json, state.json)
    as one Arrow stream file at dest: its data files in order, checked for size first."""
    import pyarrow as pa

    folder = Path(folder)
    name = folder.name or str(folder)
    if (folder / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())
        raise UserError(f"{name} holds several splits ({', '.join(splits[:6]) or 'none'}): add "
                        f"one split's folder, e.g. {name}/{splits[0] if splits else 'train'}")
    state_path = folder / "state.json"
    if not state_path.is_file():
        raise UserError(f"{name} is a folder but not a `datasets` save_to_disk folder (no "
                        "state.json); add a file (JSONL, CSV, YAML, Parquet or Arrow) instead")
    files = _data_files(folder, state_path)
    size = sum(f.stat().st_size for f in files)
    if size > max_bytes:
        raise UserError(f"{name} is {size / 1e6:.1f} MB of Arrow files; the limit is "
                        f"{max_bytes / 2**20:.0f} MB (TUNEBOT_MAX_UPLOAD_MB)")
    decoded = 0
    for f in files:
        try:
            decoded += arrow_decoded_size(f)
        except (pa.ArrowException, OSError, ValueError, IndexError, struct.error) as exc:
            raise UserError(f"{name}/{f.name} is not a readable Arrow file "
                            f"({_first_line(exc)})") from exc
    if decoded > max_decoded_bytes:
        raise UserError(f"{name} decodes to {decoded / 2**20:,.0f} MB, more than the "
                        f"{max_decoded_bytes / 2**20:,.0f} MB limit (TUNEBOT_MAX_DECODED_MB)")
    if len(files) == 1:
        shutil.copyfile(files[0], dest)
        return dest
    try:
        schema = None
        with pa.OSFile(str(dest), "wb") as sink:
            writer = None
            for f in files:
                with pa.memory_map(str(f)) as source:
                    reader = _ipc_reader(source)
                    for batch in reader:
                        if schema is None:
                            schema = batch.schema
                            writer = pa.ipc.new_stream(sink, schema)
                        elif not batch.schema.equals(schema):
                            raise UserError(f"{name}/{f.name} has other columns than "
                                            f"{files[0].name}")
                        assert writer is not None
                        writer.write_batch(batch)
            if writer is not None:
                writer.close()
    except pa.ArrowException as exc:
        raise UserError(f"{name}: an Arrow file could not be read ({_first_line(exc)})") from exc
    return dest


def _data_files(folder: Path, state_path: Path) -> list[Path]:
    name = folder.name
    if state_path.stat().st_size > MAX_STATE_BYTES:
        raise UserError(f"{name}/state.json is over {MAX_STATE_BYTES // 1024} KB")
    try:
        state = json.loads(state_path.read_text("utf-8"))
        entries = [str(e["filename"]) for e in state["_data_files"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{name}/state.json does not list the data files "
                        f"(`_data_files`): {_first_line(exc)}") from exc
    if not entries:
        raise UserError(f"{name}/state.json lists no data files")
    files = []
    for entry in entries:
        # Only files inside the folder itself: state.json must not point anywhere else.
        if Path(entry).name != entry or entry in ("", ".", ".."):
            raise UserError(f"{name}/state.json names `{entry[:60]}`, not a file of this folder")
        path = folder / entry
        if not path.is_file() or path.is_symlink():
            raise UserError(f"{name}/{entry[:60]} (listed in state.json) is missing")
        files.append(path)
    return files
