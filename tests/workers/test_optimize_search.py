"""The pieces of /prompt optimize's search: split, demos, output parameters, the race."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebot import stats
from tunebot.catalog.templates import render_messages
from workers.optimize.parts import bootstrapped, make_parts, prototypes, token_counter
from workers.optimize.proposer import failures_of, propose
from workers.optimize.race import CandidateFailed, leaderboard, race, rung_sizes
from workers.optimize.space import (
    Candidate,
    Recipe,
    answer_tokens,
    balanced,
    build,
    demo_counts,
    grid,
    label_definitions,
    sample,
    start_instruction,
)
from workers.optimize.split import input_key, make_split, stratified_order
from workers.runners.optimize_save import winner_docs

LABELS = ["billing", "technical", "account", "shipping"]
WORDS = {"billing": "refund invoice charge", "technical": "crash error bug",
         "account": "password login profile", "shipping": "parcel delivery tracking"}
START: dict[str, Any] = {
    "messages": [{"role": "user", "content": "Classify this ticket.\n\nTicket: {{ ticket }}"}],
    "variables": {"ticket": "the ticket"},
    "params": {"max_new_tokens": 40},
    "output": {"format": "choice", "choices": LABELS},
    "docs": {"task": "Route a ticket to its queue."},
}


def rows(n_per: int, tag: str = "") -> list[dict[str, Any]]:
    return [{"ticket": f"{WORDS[lab]} {tag}{lab}{i}", "expected": lab}
            for lab in LABELS for i in range(n_per)]


def test_dev_split_comes_from_train_and_never_holds_an_eval_input() -> None:
    ev, tr = rows(5, "e"), rows(20, "t")
    tr += [dict(r) for r in ev[:3]]  # the same input in both sets
    s = make_split(ev, tr, seed=1)
    assert s.source == "train" and s.heldout == ev and s.dropped_overlap == 3
    held = {input_key(r) for r in ev}
    assert not held & {input_key(r) for r in s.dev + s.pool}
    assert not {id(r) for r in s.dev} & {id(r) for r in s.pool}
    # the dev split is class-balanced (stratified), and the same seed gives the same split
    assert {lab: sum(r["expected"] == lab for r in s.dev) for lab in LABELS} == \
        dict.fromkeys(LABELS, len(s.dev) // 4)
    assert [r["ticket"] for r in make_split(ev, tr, seed=1).dev] == [r["ticket"] for r in s.dev]


def test_without_a_train_set_half_the_eval_set_is_held_out_untouched() -> None:
    ev = rows(10)
    s = make_split(ev, None, seed=0)
    assert s.source == "eval" and len(s.heldout) == 20 and "no training set" in s.note
    used = {id(r) for r in s.dev + s.pool}
    assert not used & {id(r) for r in s.heldout}
    assert len(used) + len(s.heldout) == len(ev)
    assert [r for r in ev if id(r) in {id(h) for h in s.heldout}] == s.heldout  # eval order
    assert {r["expected"] for r in s.heldout} == set(LABELS)


def test_stratified_order_is_balanced_in_every_prefix() -> None:
    order = stratified_order(rows(6), seed=3)
    for n in (4, 8, 12):
        assert sorted(r["expected"] for r in order[:n]) == sorted(LABELS * (n // 4))


def test_demos_are_class_balanced_and_bootstrap_prefers_handled_rows() -> None:
    pool = rows(4)
    demos = balanced(pool, 8)
    assert [r["expected"] for r in demos] == LABELS * 2
    handled = [r["ticket"].endswith(("2", "3")) for r in pool]  # rows 2 and 3 of each label
    boot = bootstrapped(pool, handled)
    assert [r["expected"] for r in boot[:8]] == LABELS * 2
    assert all(r["ticket"][-1] in "23" for r in boot[:8])
    # a class with no handled row still gets its demos (the unhandled ones)
    only_billing = [r["expected"] == "billing" for r in pool]
    assert {r["expected"] for r in bootstrapped(pool, only_billing)[:4]} == set(LABELS)


def test_prototypes_pick_the_rows_nearest_their_class_centre() -> None:
    pool = rows(3)

    def encode(texts: list[str]) -> list[list[float]]:
        # the last digit is an outlier marker: row 2 of each class points elsewhere
        return [[1.0, 0.0] if not t.endswith("2") else [0.0, 1.0] for t in texts]

    ranked = prototypes(pool, encode)
    assert [r["expected"] for r in ranked[:4]] == LABELS
    assert not any(r["ticket"].endswith("2") for r in ranked[:8])


def test_max_new_tokens_covers_the_longest_answer_under_the_tokenizer(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    backend = type("B", (), {"tokenizer": tok})()
    count = token_counter(backend)  # type: ignore[arg-type]
    answers = ["warm", "a rather long answer with words", "cool"]
    for prefix in (None, "Category"):
        n = answer_tokens(count, answers, prefix)
        for a in answers:
            text = f"{prefix}: {a}" if prefix else a
            assert len(tok(text, add_special_tokens=False)["input_ids"]) <= n
    assert answer_tokens(count, answers, None, margin=0) == len(
        tok(answers[1], add_special_tokens=False)["input_ids"])


def test_a_candidate_is_a_renderable_version_with_demos_as_chat_turns() -> None:
    s = make_split(rows(3, "e"), rows(10, "t"), seed=0)
    parts = make_parts(START, s.pool, s.dev + s.pool, LABELS, seed=0)
    assert parts.instructions["start"] == "Classify this ticket."
    assert parts.instructions["task"] == "Route a ticket to its queue."
    recipe = Recipe("task", "system", True, "Category", "reply", "seeded", 4, "reversed")
    content = build(parts, recipe, max_new_tokens=5, seed=0)
    msgs = content["messages"]
    assert msgs[0]["role"] == "system" and "Category:" in msgs[0]["content"]
    assert "billing: " in msgs[0]["content"]  # label definitions
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant"] * 4 + ["user"]
    assert all(m["content"].startswith("Category: ") for m in msgs[2:-1:2])
    assert content["params"]["stop"] == ["\n"] and content["params"]["max_new_tokens"] == 5
    assert content["docs"] == START["docs"] and content["variables"] == START["variables"]
    out = render_messages(content, {"ticket": "where is my parcel"})
    assert out[-1]["content"] == "where is my parcel"
    cue = build(parts, Recipe(placement="user", prefix="Answer", prefix_mode="cue",
                              labelled_input=True), max_new_tokens=4, seed=0)
    assert cue["messages"] == [{"role": "user", "content": cue["messages"][0]["content"]}]
    assert cue["messages"][0]["content"].endswith("Ticket: {{ ticket }}\nAnswer:")


def test_label_definitions_name_the_words_that_set_a_class_apart() -> None:
    defs = label_definitions(rows(4), LABELS)
    assert "billing: charge, invoice, refund" in defs and "shipping: delivery, parcel" in defs


def test_start_instruction_drops_the_template_and_its_labels() -> None:
    assert start_instruction({"messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "{{ x }}"}]}) == \
        "Be brief."


def test_the_grid_tries_every_demo_count() -> None:
    s = make_split(rows(3, "e"), rows(10, "t"), seed=0)
    parts = make_parts(START, s.pool, s.dev, LABELS, seed=0)
    parts.demo_sets["seeded"] = s.pool
    ks = demo_counts(4)
    assert ks == [4, 8]
    picked = sample(grid(parts, sources=["seeded"], ks=ks), 9, seed=0)
    assert len(picked) == 9 and {r.k for r in picked} == {0, 4, 8}
    assert picked == sample(grid(parts, sources=["seeded"], ks=ks), 9, seed=0)


def cand(name: str, tokens: int) -> Candidate:
    return Candidate(name, {}, None, tokens=tokens)


def test_successive_halving_keeps_the_best_and_breaks_ties_by_fewer_tokens() -> None:
    quality = {"a": 0.2, "b": 0.9, "c": 0.9, "d": 0.5, "e": 0.1, "f": 0.7, "g": 0.0, "h": 0.3}
    tokens = {"a": 10, "b": 300, "c": 120, "d": 50, "e": 5, "f": 80, "g": 1, "h": 40}
    seen: dict[str, list[int]] = {}

    def evaluate(c: Candidate, idx: list[int]) -> list[float]:
        seen.setdefault(c.name, []).extend(idx)
        # deterministic: row i passes when its position in 10 is below the quality
        return [1.0 if (i * 7 % 10) / 10 < quality[c.name] else 0.0 for i in idx]

    cands = [cand(n, t) for n, t in tokens.items()]
    board = race(cands, 40, evaluate)
    assert rung_sizes(40, 8) == [10, 20, 40]
    assert board[0].cand.name == "c"  # b and c tie at 0.9: c has fewer prompt tokens
    assert board[1].cand.name == "b"
    assert all(len(v) == len(set(v)) for v in seen.values())  # no row scored twice
    assert len(seen["g"]) == 10 and len(seen["c"]) == 40  # losers stop early
    assert sum(len(v) for v in seen.values()) == 8 * 10 + 4 * 10 + 2 * 20


def test_a_failed_candidate_leaves_the_race_and_the_rest_goes_on() -> None:
    def evaluate(c: Candidate, idx: list[int]) -> list[float]:
        if c.name == "big":
            raise CandidateFailed("does not fit the context")
        return [0.5] * len(idx)

    board = race([cand("big", 1), cand("ok", 9)], 16, evaluate)
    assert [e.cand.name for e in board] == ["ok", "big"] and board[1].failed
    assert leaderboard(board)[0].cand.name == "ok"


class FakeProposer:
    """Answers every rewrite request with a canned instruction (the n-th call, the n-th one)."""

    name = "openai:fake"

    def __init__(self, answers: list[str]) -> None:
        self.answers, self.asked = answers, []  # type: list[str], list[Any]

    def generate(self, prompts: list[Any], params: Any, *, on_batch: Any = None) -> list[Any]:
        self.asked.append(prompts[0])
        text = self.answers[min(len(self.asked) - 1, len(self.answers) - 1)]
        return [type("G", (), {"text": text})()]


def test_the_proposer_sees_failing_cases_and_its_rewrites_are_made_template_safe() -> None:
    fails = failures_of(rows(1), [(0, "technical", False), (1, "technical", True)])
    assert fails == [(f"{WORDS['billing']} billing0", "billing", "technical")]
    fake = FakeProposer(["```\nRoute the {{ ticket }} carefully.\n```", "Route it.", "Route it."])
    out = propose(fake, "Classify.", LABELS, fails, n=3, seed=0)  # type: ignore[arg-type]
    assert out == ["Route the { { ticket } } carefully.", "Route it."]
    asked = fake.asked[0][-1]["content"]
    assert "expected: 'billing' got: 'technical'" in asked and "billing, technical" in asked
    # a proposal is pasted into a template: it renders as text, never as a variable
    parts = make_parts(START, rows(2), rows(2), LABELS, seed=0)
    content = build(parts, Recipe(), max_new_tokens=4, seed=0, instruction=out[0])
    assert "{ { ticket } }" in render_messages(content, {"ticket": "x"})[0]["content"]


def test_proposed_candidates_join_the_race_after_the_first_rung() -> None:
    def evaluate(c: Candidate, idx: list[int]) -> list[float]:
        return [1.0 if c.name == "p1" else 0.5] * len(idx)

    def extra(rung: int, alive: list[Any]) -> list[Candidate]:
        return [cand("p1", 5)] if rung == 0 else []

    board = race([cand(f"g{i}", 1) for i in range(4)], 32, evaluate, extra=extra)
    assert board[0].cand.name == "p1" and board[0].rows == 32


def test_the_saved_docs_keep_the_start_and_add_what_changed_and_the_gain() -> None:
    s = make_split(rows(3, "e"), rows(10, "t"), seed=0)
    recipe = Recipe(demos="seeded", k=4)
    c = Candidate("c01", {}, recipe, demos=s.pool[:4])
    res = stats.compare_paired([False] * 12, [True] * 10 + [False] * 2, name_a="a", name_b="b")
    docs = winner_docs({**START, "docs": {**START["docs"], "limitations": "Old: 3%."}}, c,
                       job_id=7, start_name="t@1", model="smollm2", dataset="t-eval", split=s,
                       s_start={"accuracy": 0.0, "ci": [0.0, 0.2]},
                       s_win={"accuracy": 10 / 12, "ci": [0.5, 0.9]}, res=res)
    assert docs["task"] == START["docs"]["task"]
    assert "job #7" in docs["context"] and "4 demos (seeded" in docs["context"]
    assert docs["limitations"].startswith("Measured with smollm2") and "Old: 3%." in docs[
        "limitations"]
    assert "10 cases fixed, 0 broken" in docs["limitations"] and "83.3%" in docs["limitations"]
    assert [e["output"] for e in docs["examples"]] == [r["expected"] for r in s.pool[:4]]
