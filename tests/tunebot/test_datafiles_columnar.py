"""Parquet, Arrow and `datasets` save_to_disk folders: the same codes and row numbers as the text
formats, the same bounds (rows, row size), and a decoded-size bound read from metadata before
anything is decompressed."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from devtools.env import settings_env
from tests.conftest import make_settings
from tunebot import datasets
from tunebot.cli import cli
from tunebot.datasets.columnar import arrow_decoded_size
from tunebot.datasets.read import detect_format
from tunebot.datasets.rows import parse_rows
from tunebot.datasets.training import validate_training
from tunebot.errors import UserError

ROWS = [{"text": f"ticket {i}", "label": "billing" if i % 3 else "shipping"} for i in range(12)]


def parquet(path: Path, rows: list[dict], **kw: object) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, **kw)  # type: ignore[arg-type]
    return path


def save_to_disk(folder: Path, tables: list[pa.Table]) -> Path:
    """What `datasets.Dataset.save_to_disk` writes: Arrow streams, dataset_info.json and
    state.json listing the data files (written here without `datasets`, which the app lacks)."""
    folder.mkdir(parents=True)
    names = []
    for i, table in enumerate(tables):
        name = f"data-{i:05d}-of-{len(tables):05d}.arrow"
        with ipc.new_stream(folder / name, table.schema) as w:
            w.write_table(table, max_chunksize=5)
        names.append(name)
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": n} for n in names], "_fingerprint": "abc",
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
        "_output_all_columns": False, "_split": None}))
    return folder


def test_parquet_eval_set_reads_like_jsonl(tmp_path: Path) -> None:
    f = parquet(tmp_path / "tickets.parquet", ROWS, row_group_size=5)
    r = parse_rows(f, max_rows=100)
    assert r.ok and r.fmt == "parquet" and r.expected_from == "label"
    assert [row.line for row in r.rows] == list(range(1, 13))
    assert r.rows[1] == {"text": "ticket 1", "expected": "billing"}
    assert r.stats["label_balance"] == {"billing": 8, "shipping": 4}
    # Named anything, a Parquet file is known by its magic bytes.
    assert detect_format(Path("x.txt"), f.read_bytes()[:8]) == "parquet"


def test_bad_rows_have_the_same_codes_and_row_numbers(tmp_path: Path) -> None:
    rows = [{"text": "a", "expected": "x", "tags": None}, {"text": "b", "expected": None,
                                                          "tags": None},
            {"text": "c", "expected": "y", "tags": [1, 2]}]
    r = parse_rows(parquet(tmp_path / "bad.parquet", rows), max_rows=100)
    got = [(e.line, e.field, e.code) for e in r.errors]
    assert got == [(2, "expected", "missing_expected"), (3, "tags", "invalid_field")]
    assert str(r.errors[0]).startswith("row 2, field `expected`")
    # Too many rows: stopped at the first row over, as in a JSONL file.
    many = parse_rows(parquet(tmp_path / "m.parquet", ROWS), max_rows=10)
    assert [(e.line, e.code) for e in many.errors] == [(11, "too_many_rows")]
    assert many.content_hash is None
    # An over-large cell: that row is refused, the others read.
    big = [*ROWS[:2], {"text": "x" * 5000, "label": "billing"}]
    r = parse_rows(parquet(tmp_path / "big.parquet", big), max_rows=100, max_line_bytes=1000)
    assert [(e.line, e.code) for e in r.errors] == [(3, "line_too_long")]
    empty = parse_rows(_empty_parquet(tmp_path), max_rows=10)
    assert [e.code for e in empty.errors] == ["empty_file"]
    (tmp_path / "junk.parquet").write_text("not parquet at all\n")
    junk = parse_rows(tmp_path / "junk.parquet", max_rows=10)
    assert [e.code for e in junk.errors] == ["invalid_file"] and "parquet" in junk.errors[0].message


def _empty_parquet(tmp_path: Path) -> Path:
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string()),
                             "label": pa.array([], pa.string())}), path)
    return path


def test_decompression_bombs_are_refused_from_metadata(tmp_path: Path) -> None:
    limit = 20 * 2**20
    # ~190 MB of text in a ~20 KB file: refused before a byte of it is decompressed.
    table = pa.table({"text": ["x" * 100_000] * 2000, "expected": ["a"] * 2000})
    bomb = tmp_path / "bomb.parquet"
    pq.write_table(table, bomb, compression="zstd", use_dictionary=False)
    stream = tmp_path / "bomb.arrow"
    with ipc.new_stream(stream, table.schema,
                        options=ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(table)
    del table
    assert bomb.stat().st_size < 100_000 and stream.stat().st_size < 100_000
    # Measured from the compressed buffers' length prefixes only (nothing decompressed).
    assert arrow_decoded_size(stream) > 190_000_000
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path in (bomb, stream):
        r = parse_rows(path, max_rows=10_000, max_decoded_bytes=limit)
        assert [e.code for e in r.errors] == ["too_large"], r.errors
        assert "TUNEBOT_MAX_DECODED_MB" in r.errors[0].message and not r.rows
        t = validate_training(path, max_rows=10_000, max_decoded_bytes=limit)
        assert [e.code for e in t.errors] == ["too_large"]
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    assert grew_mb < 100
    # One huge value on every row: a ~200 KB dictionary page whose metadata looks small. Read
    # dictionary-encoded (the value held once), its rows' sizes add up past the bound…
    one = tmp_path / "one.parquet"
    pq.write_table(pa.table({"text": ["y" * 200_000] * 400, "expected": ["a"] * 400}), one,
                   compression="zstd")
    r = parse_rows(one, max_rows=1000, max_line_bytes=100_000, max_decoded_bytes=limit)
    assert [e.code for e in r.errors] == ["too_large"] and not r.rows
    # …and under the bound each over-large row is refused by its size, never expanded.
    pq.write_table(pa.table({"text": ["y" * 200_000] * 60, "expected": ["a"] * 60}), one,
                   compression="zstd")
    r = parse_rows(one, max_rows=1000, max_line_bytes=100_000, max_decoded_bytes=limit)
    assert r.error_count == 60 and {e.code for e in r.errors} == {"line_too_long"}
    # The same inside a nested column (chat messages): measured on the arrays.
    big = {"role": "assistant", "content": "z" * 200_000}
    chats = pa.Table.from_pylist([{"messages": [{"role": "user", "content": f"q{i}"}, big]}
                                  for i in range(60)])
    pq.write_table(chats, tmp_path / "chat.parquet", compression="zstd")
    t = validate_training(tmp_path / "chat.parquet", max_rows=1000, max_line_bytes=100_000,
                          max_decoded_bytes=limit)
    assert [e.line for e in t.errors if e.code == "line_too_long"] == list(range(1, 21))
    assert t.error_count == 61 and not t.examples  # 60 rows, then "0 valid examples"


def test_parquet_chat_and_pairs_are_training_data(tmp_path: Path) -> None:
    chats = [{"messages": [{"role": "user", "content": f"q{i}"},
                           {"role": "assistant", "content": f"a{i}", "weight": 1 if i else None}]}
             for i in range(12)]
    t = validate_training(parquet(tmp_path / "chat.parquet", chats), max_rows=100)
    assert t.ok and t.kind == "chat" and t.fmt == "parquet" and len(t.examples) == 12
    # A null struct field is an absent key (as in JSON), not `weight: null`.
    assert t.examples[0].messages[1] == {"role": "assistant", "content": "a0"}
    pairs = [{"input": f"in {i}", "output": f"out {i}"} for i in range(11)] + [
        {"input": "", "output": "x"}]
    t = validate_training(parquet(tmp_path / "p.parquet", pairs), max_rows=100)
    assert t.kind == "input_output" and [(e.line, e.field, e.code) for e in t.errors] == [
        (12, "input", "missing_content")]


def test_save_to_disk_folder_and_arrow_file_are_stored(engine: Engine, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    table = pa.Table.from_pylist(ROWS)
    folder = save_to_disk(tmp_path / "tickets", [table.slice(0, 7), table.slice(7)])
    ds, created = datasets.add_dataset(engine=engine, settings=settings, team_id="TA",
                                       name="tickets", path=folder, user="U1")
    assert created and ds.format == "arrow" and ds.row_count == 12
    assert ds.stats["expected_column"] == "label" and ds.artifact_path.endswith(".arrow")
    rows = datasets.load_rows(ds)
    assert [r["expected"] for r in rows] == [r["label"] for r in ROWS]
    again, created = datasets.add_dataset(engine=engine, settings=settings, team_id="TA",
                                          name="tickets", path=folder, user="U1")
    assert not created and again.version == 1
    # One .arrow file (Arrow's file format this time) works on its own too.
    single = tmp_path / "one.arrow"
    with ipc.new_file(single, table.schema) as w:
        w.write_table(table, max_chunksize=4)
    ds2, _ = datasets.add_dataset(engine=engine, settings=settings, team_id="TA",
                                  name="single", path=single, user="U1")
    assert ds2.format == "arrow" and len(datasets.load_rows(ds2)) == 12
    # A DatasetDict (splits), a folder that is not save_to_disk, a state.json pointing out.
    dd = tmp_path / "dd"
    save_to_disk(dd / "train", [table])
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    with pytest.raises(UserError, match=r"several splits \(train\).*dd/train"):
        datasets.add_dataset(engine=engine, settings=settings, team_id="TA", name="dd",
                             path=dd, user="U1")
    with pytest.raises(UserError, match="not a `datasets` save_to_disk folder"):
        datasets.add_dataset(engine=engine, settings=settings, team_id="TA", name="plain",
                             path=_plain_folder(tmp_path), user="U1")
    state = json.loads((folder / "state.json").read_text())
    state["_data_files"] = [{"filename": "../one.arrow"}]
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match="not a file of this folder"):
        datasets.add_dataset(engine=engine, settings=settings, team_id="TA", name="esc",
                             path=folder, user="U1")


def _plain_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "a.jsonl").write_text("{}\n")
    return folder


def test_cli_adds_a_parquet_file_and_says_which_column(tmp_path: Path) -> None:
    f = parquet(tmp_path / "tickets.parquet", ROWS)
    out = CliRunner().invoke(cli, ["dataset", "add", "tickets", str(f)],
                             env=settings_env(make_settings(tmp_path)))
    assert out.exit_code == 0, out.output
    assert "tickets v1, 12 rows; expected answers read from column `label`" in out.output
