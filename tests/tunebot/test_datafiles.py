"""Dataset files: one fixture per error code (exact line and field), the four training shapes,
eval rows in three formats, streaming limits, splits, leakage and a fuzz that never raises."""

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunebot.datasets.read import Issue, detect_format
from tunebot.datasets.report import format_report
from tunebot.datasets.rows import Row, check_variables, parse_rows, row_stats
from tunebot.datasets.split import kfold, leakage, normalise_text, split
from tunebot.datasets.training import (
    Example,
    length_histogram,
    truncation_verdict,
    validate_training,
)

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "datafiles"
LABELS = ["billing", "technical", "account", "shipping"]


def where(issues: list[Issue]) -> list[tuple]:
    return [(i.line, i.field, i.code) for i in issues]


def chat_line(user: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user},
                                    {"role": "assistant", "content": answer}]})


# --- one fixture per training error code ----------------------------------------------------

TRAINING_CODES = [
    ("invalid_json.jsonl", {}, [(4, None, "invalid_json")]),
    ("missing_messages_list.jsonl", {}, [(5, "messages", "missing_messages_list")]),
    ("message_missing_key.jsonl", {}, [(3, "messages[1].content", "message_missing_key")]),
    ("message_unrecognized_key.jsonl", {},
     [(6, "messages[1].tool_calls", "message_unrecognized_key")]),
    ("unrecognized_role.jsonl", {}, [(7, "messages[3].role", "unrecognized_role")]),
    ("missing_content.jsonl", {}, [(8, "messages[0].content", "missing_content")]),
    ("example_missing_assistant_message.jsonl", {},
     [(9, "messages", "example_missing_assistant_message")]),
    ("invalid_weight.jsonl", {}, [(2, "messages[1].weight", "invalid_weight")]),
    ("empty_file.jsonl", {}, [(None, None, "empty_file")]),
    ("invalid_n_examples.jsonl", {}, [(None, None, "invalid_n_examples")]),
    ("invalid_encoding.jsonl", {}, [(2, None, "invalid_encoding")]),
    ("line_too_long.jsonl", {"max_line_bytes": 300}, [(12, None, "line_too_long")]),
    ("too_many_rows.jsonl", {"max_rows": 20}, [(21, None, "too_many_rows")]),
]


@pytest.mark.parametrize(("name", "kwargs", "expected"), TRAINING_CODES,
                         ids=[c[0] for c in TRAINING_CODES])
def test_each_training_error_code_names_its_line_and_field(name, kwargs, expected):
    report = validate_training(FIX / name, **{"max_rows": 1000, **kwargs})
    assert where(report.errors) == expected
    assert report.error_count == len(expected)
    assert not report.ok


def test_error_messages_read_as_line_field_message():
    report = validate_training(FIX / "invalid_encoding.jsonl", max_rows=100)
    assert str(report.errors[0]) == "line 2: not valid UTF-8 (byte 0xe9 at column 47)"
    report = validate_training(FIX / "unrecognized_role.jsonl", max_rows=100)
    assert str(report.errors[0]) == ("line 7, field `messages[3].role`: role must be system, "
                                     "user or assistant (got 'tool')")
    report = validate_training(FIX / "too_many_rows.jsonl", max_rows=20)
    assert report.errors[0].message.startswith("more than 20 rows (TUNEBOT_MAX_ROWS)")


def test_valid_lines_around_a_bad_one_are_kept():
    report = validate_training(FIX / "invalid_json.jsonl", max_rows=100)
    assert len(report.examples) == 11
    assert [e.line for e in report.examples] == [1, 2, 3, *range(5, 13)]


def test_render_failed_and_missing_variable_come_from_the_renderer():
    def render(row):
        if row["ticket"] == "boom":
            raise ValueError("template exploded")
        return [{"role": "user", "content": f"Ticket: {row['ticket']}"}]

    report = validate_training(FIX / "render_failed.jsonl", max_rows=100, template="full",
                               prompt_render=render)
    assert where(report.errors) == [(5, None, "render_failed")]
    assert "template exploded" in report.errors[0].message
    assert report.examples[0].messages == [
        {"role": "user", "content": "Ticket: My card was charged twice this month"},
        {"role": "assistant", "content": "billing"}]

    report = validate_training(FIX / "rows.jsonl", max_rows=100, template="full",
                               prompt_render=lambda row: [{"role": "user", "content": row["x"]}])
    assert where(report.errors)[0] == (1, "x", "message_missing_key")


def test_template_arguments_are_checked():
    with pytest.raises(ValueError, match="prompt_render"):
        validate_training(FIX / "rows.jsonl", max_rows=100, template="full")
    with pytest.raises(ValueError, match="minimal or full"):
        validate_training(FIX / "rows.jsonl", max_rows=100, template="fancy")


# --- the four training shapes -------------------------------------------------------------

def test_chat_jsonl_keeps_optional_system_and_weight(tmp_path):
    report = validate_training(FIX / "chat.jsonl", max_rows=100)
    assert report.ok and report.kind == "chat" and report.fmt == "jsonl"
    assert len(report.examples) == 12
    assert report.examples[0].messages[0] == {"role": "system", "content": "Classify the ticket."}
    assert report.examples[1].messages[0]["role"] == "user"

    lines = [json.dumps({"messages": [
        {"role": "user", "content": f"q{i}"},
        {"role": "assistant", "content": "draft", "weight": 0},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": f"a{i}", "weight": 1}]}) for i in range(10)]
    path = tmp_path / "weights.jsonl"
    path.write_text("\n".join(lines))
    report = validate_training(path, max_rows=100)
    assert report.ok
    assert report.examples[0].messages[1] == {"role": "assistant", "content": "draft",
                                              "weight": 0}


@pytest.mark.parametrize(("name", "kind"), [("prompt_completion.jsonl", "prompt_completion"),
                                            ("input_output.csv", "input_output"),
                                            ("prompt_completion.csv", "prompt_completion")])
def test_pairs_become_user_and_assistant_turns(name, kind):
    report = validate_training(FIX / name, max_rows=100)
    assert report.ok and report.kind == kind
    first = report.examples[0]
    assert first.line == (1 if name.endswith(".jsonl") else 2)
    assert first.messages == [
        {"role": "user", "content": "My card was charged twice this month"},
        {"role": "assistant", "content": "billing"}]


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.csv", "rows.yaml"])
def test_catalog_rows_render_with_the_minimal_template(name):
    report = validate_training(FIX / name, max_rows=100)
    assert report.ok and report.kind == "rows"
    assert len(report.examples) == 12
    assert report.examples[1].messages == [
        {"role": "user", "content": "ticket: The app crashes when I open settings\n"
                                    "channel: email"},
        {"role": "assistant", "content": "technical"}]


def test_catalog_rows_with_a_renderer_get_expected_appended():
    def render(row):
        return [{"role": "system", "content": "Triage."},
                {"role": "user", "content": f"[{row['channel']}] {row['ticket']}"}]

    report = validate_training(FIX / "rows.jsonl", max_rows=100, template="full",
                               prompt_render=render)
    assert report.ok
    assert report.examples[0].messages == [
        {"role": "system", "content": "Triage."},
        {"role": "user", "content": "[chat] My card was charged twice this month"},
        {"role": "assistant", "content": "billing"}]


def test_a_csv_without_training_columns_is_refused_once(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("question,answer\n" + "a,b\n" * 30)
    report = validate_training(path, max_rows=100)
    assert where(report.errors) == [(1, "input", "message_missing_key")]
    assert "found: question, answer" in report.errors[0].message


def test_a_line_of_another_shape_is_an_error_on_that_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [chat_line(f"q{i}", "a") for i in range(11)]
    lines.insert(2, json.dumps({"prompt": "p", "completion": "c"}))
    path.write_text("\n".join(lines))
    report = validate_training(path, max_rows=100)
    assert where(report.errors) == [(3, "messages", "missing_messages_list")]


# --- duplicates ---------------------------------------------------------------------------

def test_exact_duplicates_are_dropped_with_a_warning_naming_the_lines():
    report = validate_training(FIX / "duplicate.jsonl", max_rows=100)
    assert report.ok
    assert report.duplicates == 2
    assert len(report.examples) == 12
    assert where(report.warnings) == [(5, None, "duplicate"), (9, None, "duplicate")]
    assert all("line 1" in w.message for w in report.warnings)
    text = format_report(report)
    assert "2 exact duplicates dropped" in text
    assert "line 5: same messages as line 1; dropped [duplicate]" in text


# --- encodings and binary files -----------------------------------------------------------

@pytest.mark.parametrize("data", [
    "\n".join([chat_line("héllo", "a")] * 3).encode("utf-16"),  # with a BOM
    "\n".join([chat_line("héllo", "a")] * 3).encode("utf-16-le"),  # without one
    "\n".join([chat_line("héllo", "a")] * 3).encode("utf-32"),
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4,
], ids=["utf16-bom", "utf16-le", "utf32", "png"])
def test_binary_and_utf16_files_are_refused_with_invalid_encoding(tmp_path, data):
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    report = validate_training(path, max_rows=100)
    assert [i.code for i in report.errors] == ["invalid_encoding"]
    assert report.examples == [] and report.content_hash is None
    rows = parse_rows(path, max_rows=100)
    assert [i.code for i in rows.errors] == ["invalid_encoding"]


def test_a_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfquestion,expected\nhi,a\n")
    result = parse_rows(path, max_rows=10)
    assert result.ok and result.columns == ["question", "expected"]


# --- streaming limits ---------------------------------------------------------------------

def test_max_rows_stops_without_reading_the_rest(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(chat_line(f"q{i}", "a") for i in range(50_000)))
    report = validate_training(path, max_rows=100)
    assert where(report.errors) == [(101, None, "too_many_rows")]
    assert report.lines_read == 101  # the other 49,899 lines were never read
    assert report.complete is False and report.content_hash is None
    rows = parse_rows(path, max_rows=100)  # not rows, but counted all the same
    assert rows.lines_read == 101


def test_max_rows_stops_csv_and_yaml_early(tmp_path):
    csv_path = tmp_path / "big.csv"
    csv_path.write_text("q,expected\n" + "".join(f"q{i},a\n" for i in range(5000)))
    result = parse_rows(csv_path, max_rows=10)
    assert where(result.errors) == [(12, None, "too_many_rows")]
    assert result.lines_read == 12
    yaml_path = tmp_path / "big.yaml"
    yaml_path.write_text("".join(f"- q: q{i}\n  expected: a\n" for i in range(5000)))
    result = parse_rows(yaml_path, max_rows=10)
    assert where(result.errors) == [(21, None, "too_many_rows")]
    assert result.lines_read == 21


def test_a_long_line_is_refused_and_reading_goes_on(tmp_path):
    path = tmp_path / "long.jsonl"
    lines = [chat_line(f"q{i}", "a") for i in range(12)]
    lines[3] = chat_line("x" * 5000, "a")
    path.write_text("\n".join(lines) + "\n")
    report = validate_training(path, max_rows=100, max_line_bytes=1000)
    assert where(report.errors) == [(4, None, "line_too_long")]
    assert [e.line for e in report.examples] == [1, 2, 3, *range(5, 13)]
    assert report.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()


def test_errors_are_listed_up_to_twenty_then_counted(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("not json\n" * 30)
    report = validate_training(path, max_rows=100)
    assert len(report.errors) == 20 and report.error_count == 31  # + invalid_n_examples
    assert "… and 11 more" in format_report(report)


def test_ten_thousand_rows_validate(tmp_path):
    path = tmp_path / "10k.jsonl"
    path.write_text("\n".join(chat_line(f"question {i}", LABELS[i % 4]) for i in range(10_000)))
    report = validate_training(path, max_rows=1_000_000)
    assert report.ok and len(report.examples) == 10_000


# --- eval rows ----------------------------------------------------------------------------

def test_rows_errors_name_line_and_field():
    result = parse_rows(FIX / "rows_errors.jsonl", max_rows=100)
    assert [str(i) for i in result.errors] == [
        "line 3, field `expected`: must be a string (got a list)",
        "line 7: invalid JSON (Expecting ',' delimiter at column 16)",
        "line 9: row is not an object (got a list)",
    ]
    assert [r.line for r in result.rows] == [1, 2, 4, 6, 8]
    assert result.rows[2] == {"ticket": "d", "expected": "3"}  # numbers become text


ROW_CODES = [
    ("not_an_object.jsonl", [(2, None, "not_an_object")]),
    ("invalid_field.jsonl", [(2, "q", "invalid_field")]),
    ("missing_expected.jsonl", [(2, "expected", "missing_expected")]),
    ("invalid_assert.csv", [(3, "assert[0].type", "invalid_assert"),
                            (4, "assert", "invalid_assert")]),
    ("invalid_csv.csv", [(3, None, "invalid_csv")]),
    ("invalid_yaml.yaml", [(4, None, "invalid_yaml")]),
    ("empty_file.jsonl", [(None, None, "empty_file")]),
    ("invalid_encoding.csv", [(3, None, "invalid_encoding")]),
]


@pytest.mark.parametrize(("name", "expected"), ROW_CODES, ids=[c[0] for c in ROW_CODES])
def test_each_row_error_code_names_its_line_and_field(name, expected):
    result = parse_rows(FIX / name, max_rows=100)
    assert where(result.errors) == expected


def test_the_three_row_formats_read_the_same_rows():
    results = {n: parse_rows(FIX / n, max_rows=100) for n in ("rows.jsonl", "rows.csv",
                                                               "rows.yaml")}
    assert all(r.ok for r in results.values())
    assert [r.fmt for r in results.values()] == ["jsonl", "csv", "yaml"]
    plain = [dict(r) for r in results["rows.jsonl"].rows]
    from_csv = [{k: v for k, v in r.items() if k != "assert"} for r in results["rows.csv"].rows]
    assert plain == from_csv == [dict(r) for r in results["rows.yaml"].rows]
    assert results["rows.csv"].rows[0]["assert"] == [{"type": "contains", "value": "bill"}]
    assert results["rows.csv"].columns == ["ticket", "channel", "expected", "assert"]
    assert [r.line for r in results["rows.yaml"].rows][:3] == [2, 5, 8]
    for name, result in results.items():
        assert result.content_hash == hashlib.sha256((FIX / name).read_bytes()).hexdigest()


def test_csv_injection_is_kept_as_data_and_flagged():
    result = parse_rows(FIX / "csv_injection.csv", max_rows=100)
    assert result.ok
    assert result.rows[0]["q"] == '=HYPERLINK("http://x")'
    assert result.rows[1]["expected"] == "-1"  # a plain number is harmless
    assert where(result.warnings) == [(2, "q", "csv_injection"), (4, "q", "csv_injection"),
                                      (5, "q", "csv_injection"), (5, "expected", "csv_injection")]


def test_yaml_aliases_and_python_tags_are_refused(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text("- q: &a [x, x]\n  expected: a\n- q: *a\n  expected: b\n")
    assert [i.code for i in parse_rows(path, max_rows=10).errors] == ["invalid_yaml"]
    path.write_text("- q: !!python/object/apply:os.system [echo hi]\n  expected: a\n")
    assert where(parse_rows(path, max_rows=10).errors) == [(1, None, "invalid_yaml")]


def test_rows_keep_their_line_and_still_behave_as_dicts():
    row = parse_rows(FIX / "rows.yaml", max_rows=100).rows[3]
    assert isinstance(row, Row) and row.line == 11
    assert json.loads(json.dumps(row)) == dict(row)
    assert pickle.loads(pickle.dumps(row)).line == 11


def test_row_stats_counts_labels_and_lengths():
    stats = row_stats([{"q": "ab", "expected": "x"}, {"q": "abcd", "expected": "x"},
                       {"q": "abcdef", "expected": "y"}])
    assert stats["rows"] == 3 and stats["columns"] == ["q", "expected"]
    assert stats["label_balance"] == {"x": 2, "y": 1}
    assert stats["text_columns"]["q"] == {"avg_len": 4.0, "max_len": 6}
    many = row_stats([{"q": "a", "expected": str(i)} for i in range(21)])
    assert many["label_balance"] is None and many["distinct_expected"] == 21


def test_check_variables_names_row_and_variable():
    rows = [Row({"ticket": "a", "expected": "x"}, line=2), Row({"expected": "y"}, line=5)]
    issues = check_variables(rows, ["ticket", "customer"])
    assert where(issues) == [(None, "customer", "missing_variable"),
                             (5, "ticket", "missing_variable")]
    assert check_variables(rows[:1], ["ticket"]) == []


@pytest.mark.parametrize(("name", "head", "fmt", "expected"), [
    ("a.jsonl", b"{}", None, "jsonl"), ("a.csv", b"q,expected", None, "csv"),
    ("a.yml", b"- q: 1", None, "yaml"), ("a.tsv", b"q\texpected", None, "tsv"),
    ("a.csv", b'{"q": 1}', None, "jsonl"), ("upload", b"- q: 1", None, "yaml"),
    ("upload", b"q,expected", None, "csv"), ("a.txt", b'  {"q": 1}', None, "jsonl"),
    ("a.bin", b"q,expected", "YML", "yaml"),
])
def test_format_comes_from_name_then_content(name, head, fmt, expected):
    assert detect_format(Path(name), head, fmt) == expected


def test_unknown_format_is_a_value_error():
    with pytest.raises(ValueError, match="jsonl, csv, tsv, yaml, parquet or arrow"):
        detect_format(Path("a"), b"", "xlsx")


def test_tab_separated_rows_are_sniffed(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("q\texpected\nhello, world\ta\n")
    result = parse_rows(path, max_rows=10)
    assert result.ok and result.rows == [{"q": "hello, world", "expected": "a"}]


# --- split, k-fold, leakage ---------------------------------------------------------------

def examples(n: int, labels: int = 0) -> list[Example]:
    return [Example(i + 1, [{"role": "user", "content": f"q{i}"},
                            {"role": "assistant", "content": str(i % labels if labels else i)}])
            for i in range(n)]


@pytest.mark.parametrize(("n", "n_val"), [(9, 0), (19, 0), (20, 5), (100, 10), (10_000, 500)])
def test_auto_split_sizes(n, n_val):
    train, val, note = split(examples(n), val_split="auto")
    assert (len(train), len(val)) == (n - n_val, n_val)
    assert {e.line for e in train}.isdisjoint({e.line for e in val})
    assert sorted(e.line for e in train + val) == list(range(1, n + 1))
    if n < 20:
        assert note == "fewer than 20 examples: no validation split, early stopping off"


def test_split_is_seeded_and_explicit_fractions_are_ranged():
    data = examples(200)
    assert split(data, val_split=0.2, seed=1) == split(data, val_split=0.2, seed=1)
    assert split(data, val_split=0.2, seed=1)[1] != split(data, val_split=0.2, seed=2)[1]
    assert len(split(data, val_split=0.2)[1]) == 40
    for bad in (0.01, 0.6, "half", True):
        with pytest.raises(ValueError, match="between 0.05 and 0.5"):
            split(data, val_split=bad)
    train, val, note = split(data, val_split=None)
    assert (len(train), val) == (200, []) and "no validation split" in note


def test_split_is_stratified_by_answer_when_answers_are_labels():
    data = examples(400, labels=4)
    _, val, note = split(data)
    counts = {}
    for e in val:
        counts[e.messages[-1]["content"]] = counts.get(e.messages[-1]["content"], 0) + 1
    assert counts == {"0": 10, "1": 10, "2": 10, "3": 10} and "stratified" in note


def test_kfold_puts_every_example_in_exactly_one_val_fold():
    data = examples(23, labels=3)
    folds = kfold(data, 5)
    assert len(folds) == 5
    val_lines = [e.line for _, val in folds for e in val]
    assert sorted(val_lines) == list(range(1, 24))
    for train, val in folds:
        assert {e.line for e in train} | {e.line for e in val} == set(range(1, 24))
        assert {e.line for e in train}.isdisjoint({e.line for e in val})
    assert max(len(v) for _, v in folds) - min(len(v) for _, v in folds) <= 1
    for bad_k in (1, 11):
        with pytest.raises(ValueError, match="between 2 and 10"):
            kfold(data, bad_k)
    with pytest.raises(ValueError, match="at least 5"):
        kfold(examples(3), 5)


def test_normalise_text():
    assert normalise_text("  Where IS my   parcel?!\n") == "where is my parcel"
    assert normalise_text("Straße, ﬁne") == "strasse fine"
    assert normalise_text("...") == ""


def test_leakage_finds_exact_and_normalised_overlap_and_cleans():
    eval_rows = parse_rows(FIX / "rows.jsonl", max_rows=100).rows
    train = validate_training(FIX / "rows.jsonl", max_rows=100).examples[:3]
    train.append(Example(40, [{"role": "user", "content": "where is my PARCEL?"},
                              {"role": "assistant", "content": "shipping"}]))
    train.append(Example(41, [{"role": "user", "content": "something new"},
                              {"role": "assistant", "content": "account"}]))
    report = leakage(train, [Row({"ticket": "Where is my parcel"}, line=7), *eval_rows])
    assert [(m.train_line, m.eval_line, m.kind) for m in report.matches] == [
        (1, 1, "exact"), (2, 2, "exact"), (3, 3, "exact"), (40, 7, "normalised")]
    assert [e.line for e in report.clean] == [41]
    assert "4 of 5 training examples overlap" in format_report(report)


def test_leakage_between_rows_ignores_column_order():
    train = [Row({"b": "2", "a": "1", "expected": "x"}, line=3), Row({"a": "9"}, line=4)]
    report = leakage(train, [Row({"a": "1", "b": "2", "expected": "y"}, line=8)])
    assert [(m.train_line, m.eval_line) for m in report.matches] == [(3, 8)]
    assert report.clean == [train[1]]


# --- token lengths ------------------------------------------------------------------------

def test_length_histogram_arithmetic():
    hist = length_histogram(list(range(100, 0, -1)), max_seq_len=90)
    assert hist == {"n": 100, "min": 1, "p50": 50, "p95": 95, "p99": 99, "max": 100,
                    "max_seq_len": 90, "n_over": 10, "pct_over": 10.0}
    verdict = truncation_verdict(hist, "refuse")
    assert verdict is not None and "10 of 100 examples (10.0%)" in verdict
    assert truncation_verdict(hist, "ok") is None
    at_five = length_histogram([10] * 95 + [200] * 5, max_seq_len=128)
    assert at_five["pct_over"] == 5.0 and truncation_verdict(at_five, "no") is None
    assert length_histogram([], 128)["n"] == 0


# --- report text, fuzz, import hygiene ----------------------------------------------------

def test_format_report_for_eval_rows():
    text = format_report(parse_rows(FIX / "rows_errors.jsonl", max_rows=100))
    assert text.splitlines()[0].startswith("rows_errors.jsonl (jsonl): 5 rows")
    assert "line 9: row is not an object (got a list) [not_an_object]" in text


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), fmt=st.sampled_from(["jsonl", "csv", "tsv", "yaml"]))
def test_random_bytes_never_raise(fuzz_dir, data, fmt):
    path = fuzz_dir / "random.bin"
    path.write_bytes(data)
    rows = parse_rows(path, fmt=fmt, max_rows=50, max_line_bytes=64)
    report = validate_training(path, fmt=fmt, max_rows=50, max_line_bytes=64)
    assert rows.ok or rows.errors
    assert report.errors  # random bytes never make ten good examples
    assert isinstance(format_report(report), str)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.one_of(
    st.text(max_size=40),
    st.sampled_from(['{"messages": []}', '{"messages": [{"role": "user"}]}', "- a: b",
                     '{"prompt": 1}', '"x","y"', "[", "{", "- [", "expected", "\x00"]),
    st.builds(json.dumps, st.dictionaries(st.sampled_from(["messages", "prompt", "expected",
                                                           "completion", "role", "q"]),
                                          st.one_of(st.text(max_size=5), st.integers(),
                                                    st.lists(st.integers(), max_size=2))))),
    max_size=15),
    fmt=st.sampled_from(["jsonl", "csv", "yaml"]))
def test_random_lines_never_raise(fuzz_dir, lines, fmt):
    path = fuzz_dir / "random.txt"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    parse_rows(path, fmt=fmt, max_rows=10)
    report = validate_training(path, fmt=fmt, max_rows=10)
    assert isinstance(report.error_count, int)


def test_importing_datafiles_loads_no_ml_stack():
    code = ("import sys, tunebot.datasets.store, tunebot.datasets.split; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_expected_answer_columns_as_people_name_them(tmp_path: Path) -> None:
    from tunebot.datasets.rows import expected_source

    for column in ("label", "answer", "target", "expected_output", "output"):
        f = tmp_path / f"{column}.jsonl"
        f.write_text(json.dumps({"text": "hi", column: "greeting"}) + "\n")
        res = parse_rows(f, max_rows=10)
        assert res.ok and res.expected_from == column and res.rows[0]["expected"] == "greeting"
    # expected itself wins; input/output stays training data (output is not an answer there).
    assert expected_source(["text", "expected", "label"]) is None
    assert expected_source(["input", "output"]) is None
    assert expected_source(["text", "label", "answer"]) == "label"
    assert expected_source(["a", "b"], "b") == "b"
