"""Every scorer against known answers, the spec checks, and the classification report."""

import json
import time

import pytest

from workers.backends.base import Generation, GenParams
from workers.scoring import (
    INVALID,
    SCORERS,
    Score,
    ScoreContext,
    ScorerError,
    case_passed,
    classification_report,
    default_scorers,
    extract_json,
    first_number,
    normalise,
    parse_judgement,
    predict_choice,
    score_case,
    validate_spec,
    validate_specs,
)
from workers.scoring import text as text_scorers
from workers.scoring.embedder import load_embedder, model_dir


def run(spec, output, expected=None, ctx=None) -> Score:
    [score] = score_case(output, expected, None, [spec], ctx or ScoreContext())
    return score


def test_normalise():
    assert normalise("  Billing.\n") == "billing"
    assert normalise("The   Answer\tIS 42!?") == "the answer is 42"


@pytest.mark.parametrize(
    ("output", "expected", "passed"),
    [("  Paris. ", "paris", True), ("PARIS!", "Paris", True), ("Lyon", "Paris", False)],
)
def test_equals(output, expected, passed):
    score = run({"type": "equals"}, output, expected)
    assert score.passed is passed and score.value == (1.0 if passed else 0.0)
    assert score.name == "equals"


def test_equals_without_reference_is_unscored():
    assert run({"type": "equals"}, "x").passed is None
    assert run({"type": "equals", "value": "x"}, "X.").passed is True


def test_substring_family():
    out = "The refund was issued to your Visa card."
    assert run({"type": "contains", "value": "refund"}, out).passed is True
    assert run({"type": "contains", "value": "Refund"}, out).passed is False
    assert run({"type": "contains", "value": "Refund", "ignore_case": True}, out).passed is True
    assert run({"type": "icontains", "value": "VISA"}, out).passed is True
    assert run({"type": "contains"}, out, expected="Visa card").passed is True
    assert run({"type": "starts-with", "value": "The refund"}, "  " + out).passed is True
    miss = run({"type": "starts-with", "value": "refund"}, out)
    assert miss.passed is False and miss.detail == "does not start with 'refund'"
    any_spec = {"type": "contains-any", "values": ["cash", "Visa"]}
    assert run(any_spec, out).passed is True
    all_spec = {"type": "contains-all", "values": ["refund", "Mastercard"]}
    score = run(all_spec, out)
    assert score.passed is False and "missing ['Mastercard']" in score.detail
    assert run({"type": "contains-all", "value": ["refund", "card"]}, out).passed is True


def test_regex():
    assert run({"type": "regex", "value": r"^\d{3}-\d{4}$"}, "555-1234").passed is True
    assert run({"type": "regex", "pattern": r"ticket #\d+"}, "see Ticket #12").passed is False
    spec = {"type": "regex", "pattern": r"ticket #\d+", "ignore_case": True}
    assert run(spec, "see Ticket #12").passed is True


def test_regex_guards(monkeypatch):
    with pytest.raises(ScorerError, match="invalid pattern"):
        validate_spec({"type": "regex", "pattern": "(unclosed"})
    with pytest.raises(ScorerError, match="limit"):
        validate_spec({"type": "regex", "pattern": "a" * 5000})
    monkeypatch.setattr(text_scorers, "REGEX_TIMEOUT_S", 0.05)
    started = time.monotonic()
    score = run({"type": "regex", "pattern": r"(a|aa)+$"}, "a" * 60 + "b")
    assert score.passed is None and "timed out" in score.detail
    assert time.monotonic() - started < 2
    long_out = "x" * (text_scorers.MAX_REGEX_INPUT + 10) + "needle"
    score = run({"type": "regex", "pattern": "needle"}, long_out)
    assert score.passed is False and "first" in score.detail


def test_extract_json_reports_where():
    assert extract_json('{"a": 1}') == ({"a": 1}, "whole output")
    assert extract_json('Sure!\n```json\n{"a": [1, 2]}\n```\nDone.') == (
        {"a": [1, 2]},
        "```json fence",
    )
    assert extract_json('Result: {"ok": true} and {"x": 2}') == ({"ok": True}, "first {...} block")
    assert extract_json("nothing {here") is None


def test_is_json():
    assert run({"type": "is-json"}, "[1, 2]").passed is True
    score = run({"type": "is-json"}, 'Here: ```json\n{"a": 1}\n```')
    assert score.passed is True and "fence" in score.detail
    assert run({"type": "is-json"}, "{'a': 1}").passed is False


SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["billing", "shipping"]}, "urgent": {"type": "boolean"}},
    "required": ["label"],
}


def test_json_schema():
    spec = {"type": "json-schema", "schema": SCHEMA}
    assert run(spec, '{"label": "billing", "urgent": false}').passed is True
    bad = run(spec, '{"label": "refunds"}')
    assert bad.passed is False and bad.detail.startswith("label:")
    assert run(spec, "no json").passed is False
    from_prompt = ScoreContext(output_spec={"format": "json", "schema": SCHEMA})
    assert run({"type": "json-schema"}, '{"urgent": true}', ctx=from_prompt).passed is False
    with pytest.raises(ScorerError, match="invalid schema"):
        validate_spec({"type": "json-schema", "schema": {"type": "nonsense"}})
    with pytest.raises(ScorerError, match="needs a 'schema'"):
        run({"type": "json-schema"}, "{}")


def test_equals_json():
    assert run(
        {"type": "equals-json"}, '```json\n{"b": 2, "a": 1.0}\n```', '{"a": 1, "b": 2}'
    ).passed
    assert run({"type": "equals-json"}, '{"a": true}', '{"a": 1}').passed is False
    assert run({"type": "equals-json", "value": {"a": [1]}}, '{"a": [1]}').passed is True
    assert run({"type": "equals-json"}, '{"a": 1}', "not json").passed is None


def test_predict_choice_earliest_whole_word():
    labels = ["billing", "technical", "account", "account access"]
    assert predict_choice("Technical. Not billing.", labels) == "technical"
    assert predict_choice("This is about account access", labels) == "account access"
    assert predict_choice("accounting question", labels) == INVALID
    assert predict_choice("I think BILLING", labels) == "billing"
    assert predict_choice("", labels) == INVALID


def test_choice_scorer():
    ctx = ScoreContext(output_spec={"format": "choice", "choices": ["billing", "shipping"]})
    score = run({"type": "choice"}, "Category: Shipping", "shipping", ctx)
    assert score.passed is True and score.predicted == "shipping"
    miss = run({"type": "choice"}, "no idea", "billing", ctx)
    assert miss.passed is False and miss.predicted == INVALID
    spec = {"type": "choice", "choices": ["yes", "no"]}
    assert run(spec, "No, it is not.", "No.").passed is True
    assert run(spec, "yes").passed is None
    with pytest.raises(ScorerError, match="choices"):
        run({"type": "choice"}, "billing", "billing")


def test_classification_report_hand_made():
    labels = ["billing", "shipping", "account"]
    pairs = (
        [("billing", "billing")] * 3
        + [("billing", "shipping")]
        + [("shipping", "shipping")] * 2
        + [("shipping", INVALID)]
        + [("Account", "account")]
        + [("account", "billing")]
    )
    rep = classification_report(pairs, labels)
    assert rep["columns"] == ["billing", "shipping", "account", INVALID]
    assert rep["confusion"] == [[3, 1, 0, 0], [0, 2, 0, 1], [1, 0, 1, 0]]
    assert rep["n"] == 9 and rep["accuracy"] == pytest.approx(6 / 9)
    billing = rep["per_class"]["billing"]
    assert billing["precision"] == pytest.approx(3 / 4)
    assert billing["recall"] == pytest.approx(3 / 4)
    assert billing["f1"] == pytest.approx(0.75)
    assert billing["support"] == 4
    shipping = rep["per_class"]["shipping"]
    assert (shipping["precision"], shipping["recall"]) == pytest.approx((2 / 3, 2 / 3))
    account = rep["per_class"]["account"]
    assert (account["precision"], account["recall"], account["f1"]) == (
        1.0,
        0.5,
        pytest.approx(2 / 3),
    )
    assert rep["macro_f1"] == pytest.approx((0.75 + 2 / 3 + 2 / 3) / 3)


def test_classification_report_unknown_and_empty():
    rep = classification_report([("refund", "billing")], ["billing"])
    assert rep["labels"] == ["billing", "refund"]
    assert rep["confusion"] == [[0, 0, 0], [1, 0, 0]]
    assert rep["macro_f1"] == 0.0
    empty = classification_report([], ["a"])
    assert empty["accuracy"] == 0.0 and empty["confusion"] == [[0, 0]]


def test_numeric():
    assert first_number("It costs $1,234.50 in total") == 1234.5
    assert first_number("minus -3e2") == -300.0
    assert first_number("none") is None
    assert run({"type": "numeric"}, "The answer is 42.", "42").passed is True
    assert run({"type": "numeric"}, "about 41", "42").passed is False
    assert run({"type": "numeric", "tolerance": 1}, "about 41", "42").passed is True
    assert run({"type": "numeric", "tolerance": 0.05, "relative": True}, "104", "100").passed
    assert (
        run({"type": "numeric", "tolerance": 0.01, "relative": True}, "104", "100").passed is False
    )
    assert run({"type": "numeric"}, "0.30000000000000004", "0.3").passed is True
    assert run({"type": "numeric"}, "no number", "3").passed is False
    with pytest.raises(ScorerError, match="tolerance must be a number"):
        validate_spec({"type": "numeric", "tolerance": "wide"})


def test_similarity():
    score = run({"type": "similarity"}, "The Quick brown fox.", "the quick brown fox")
    assert score.passed is True and score.value == 1.0
    # kitten → sitting: distance 3 over 7 characters.
    near = run({"type": "similarity", "threshold": 0.5}, "kitten", "sitting")
    assert near.value == pytest.approx(1 - 3 / 7) and near.passed is True
    assert run({"type": "similarity"}, "kitten", "sitting").passed is False
    with pytest.raises(ScorerError, match="threshold must be between"):
        validate_spec({"type": "similarity", "threshold": 2})


def test_embedding_paraphrase_beats_unrelated():
    assert (model_dir() / "model.safetensors").is_file()
    ref = "The package was delivered to the wrong address."
    ctx = ScoreContext()
    para = run({"type": "embedding"}, "My parcel was sent to an incorrect address.", ref, ctx)
    other = run({"type": "embedding"}, "I would like to reset my password, please.", ref, ctx)
    assert para.value > other.value + 0.3
    assert other.passed is False
    assert run({"type": "embedding", "threshold": 0.5}, ref.upper(), ref, ctx).passed is True
    assert ctx.embedder is load_embedder()  # cached per process, not reloaded per case


class FakeJudge:
    """A Backend that always answers the same text and remembers what it was asked."""

    name = "fake-judge"

    def __init__(self, answer):
        self.answer = answer
        self.calls = []

    def generate(self, prompts, params: GenParams):
        self.calls.append((prompts, params))
        return [Generation(self.answer, 10, 3, 1.0) for _ in prompts]


def test_llm_judge_scores_and_prompt():
    judge = FakeJudge("Reasoning: concise and polite.\nScore: 4")
    ctx = ScoreContext(input_text="Where is my order?", judge_backend=judge)
    spec = {"type": "llm-judge", "rubric": "Is polite and concise"}
    score = run(spec, "It ships tomorrow.", "Tomorrow.", ctx)
    assert score.value == pytest.approx(0.75) and score.passed is True
    [messages], params = judge.calls[0]
    prompt = messages[-1]["content"]
    for part in ("Is polite and concise", "Where is my order?", "It ships tomorrow.", "Tomorrow."):
        assert part in prompt
    assert params.temperature == 0.0
    strict = {**spec, "threshold": 1.0}
    assert run(strict, "It ships tomorrow.", None, ctx).passed is False


def test_llm_judge_pass_fail_unparseable_and_lazy_factory():
    built = []

    def factory():
        built.append(1)
        return FakeJudge("FAIL")

    ctx = ScoreContext(judge_factory=factory)
    spec = {"type": "llm-judge", "rubric": "r"}
    assert run(spec, "x", ctx=ctx).value == 0.0
    assert run(spec, "y", ctx=ctx).passed is False
    assert built == [1]
    garbled = run(spec, "x", ctx=ScoreContext(judge_backend=FakeJudge("I cannot decide.")))
    assert garbled.passed is None and "unparseable" in garbled.detail
    with pytest.raises(ScorerError, match="judge backend"):
        run(spec, "x")
    with pytest.raises(ScorerError, match="0–1 scale"):
        validate_spec({**spec, "threshold": 4})


@pytest.mark.parametrize(
    ("answer", "value"),
    [("Score: 5", 1.0), ("**Score:** 2", 0.25), ("3/5", 0.5), ("1", 0.0), ("PASS", 1.0)],
)
def test_parse_judgement(answer, value):
    assert parse_judgement(answer)[0] == value


def test_parse_judgement_ambiguous():
    assert parse_judgement("PASS or FAIL?") is None
    assert parse_judgement("Score: 9") is None


def test_latency_and_max_tokens():
    ctx = ScoreContext(latency_ms=180.0, tokens_out=12)
    assert run({"type": "latency", "max_ms": 200}, "x", ctx=ctx).passed is True
    assert run({"type": "latency", "value": 100}, "x", ctx=ctx).passed is False
    assert run({"type": "max-tokens", "max": 12}, "x", ctx=ctx).passed is True
    assert run({"type": "max-tokens", "max": 8}, "x", ctx=ctx).passed is False
    assert run({"type": "latency", "max_ms": 200}, "x").passed is None
    with pytest.raises(ScorerError, match="needs 'max'"):
        validate_spec({"type": "max-tokens"})


def test_bad_specs_name_the_problem():
    with pytest.raises(ScorerError, match="unknown scorer type 'exact'.*allowed types: .*equals"):
        validate_spec({"type": "exact"})
    with pytest.raises(ScorerError, match="scorer 'contains': unknown key 'valu'"):
        validate_spec({"type": "contains", "valu": "x"})
    with pytest.raises(ScorerError, match="values must be a non-empty list"):
        validate_spec({"type": "contains-any", "values": []})
    with pytest.raises(ScorerError, match="mapping"):
        validate_specs(["equals"])
    with pytest.raises(ScorerError, match="unknown key"):
        score_case("x", "x", [{"type": "equals", "vlaue": 1}], [], ScoreContext())
    validate_specs([{"type": "equals"}, {"type": "regex", "value": "a+"}])


def test_registry_covers_the_documented_types():
    assert set(SCORERS) == {
        "equals",
        "contains",
        "icontains",
        "contains-any",
        "contains-all",
        "starts-with",
        "regex",
        "is-json",
        "json-schema",
        "equals-json",
        "choice",
        "numeric",
        "similarity",
        "embedding",
        "llm-judge",
        "latency",
        "max-tokens",
    }


def test_default_scorers():
    assert default_scorers({"format": "choice", "choices": ["a"]}) == [{"type": "choice"}]
    assert default_scorers({}) == [{"type": "equals"}]
    assert default_scorers({"format": "text"}) == [{"type": "equals"}]
    assert default_scorers({"format": "json"}) == [{"type": "is-json"}]
    assert default_scorers({"format": "json", "schema": SCHEMA}, expected='{"label": "x"}') == [
        {"type": "is-json"},
        {"type": "json-schema"},
        {"type": "equals-json"},
    ]
    assert default_scorers({"format": "json"}, expected="plain") == [{"type": "is-json"}]
    with pytest.raises(ScorerError, match="unknown output format 'yaml'"):
        default_scorers({"format": "yaml"})


def test_score_case_applies_prompt_scorers_then_row_asserts():
    out = '{"label": "billing"}'
    ctx = ScoreContext(output_spec={"format": "json", "schema": SCHEMA}, latency_ms=50.0)
    asserts = [{"type": "contains", "value": "bill"}, {"type": "latency", "max_ms": 10}]
    scores = score_case(out, out, asserts, default_scorers(ctx.output_spec, expected=out), ctx)
    assert [s.name for s in scores] == [
        "is-json",
        "json-schema",
        "equals-json",
        "contains",
        "latency",
    ]
    assert [s.passed for s in scores] == [True, True, True, True, False]
    assert case_passed(scores) is False
    assert case_passed(scores[:4]) is True
    assert case_passed([Score("x", None, 0.0)]) is None
    named = score_case("a", "a", None, [{"type": "equals", "name": "exact"}], ctx)
    assert named[0].name == "exact"
    assert json.dumps([s.__dict__ for s in scores])  # plain data, storable as JSON
