"""`/prompt optimize`: race candidate prompts on a dev split, measure the winner and the start
once on the held-out cases (paired), save the winner as a `candidate` version.

The search lives in workers/optimize/ (split, space, race, proposer); this module is the job:
loading, progress in the thread (at least every PROGRESS_SECONDS), cancellation, the final
measurement and the saved version.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tunebot import registry
from tunebot.errors import JobError
from tunebot.replies import Reply, section, table
from workers.backends.base import Generation
from workers.backends.registry import backend_for
from workers.context import JobContext
from workers.optimize import parts as prep
from workers.optimize import proposer as prop
from workers.optimize.race import CandidateFailed, Entry, race, rung_sizes
from workers.optimize.space import (
    Candidate,
    Parts,
    Recipe,
    TokenLen,
    answer_tokens,
    build,
    demo_counts,
    grid,
    pick_demos,
    sample,
)
from workers.optimize.split import Split, make_split
from workers.runners import report
from workers.runners.evaluate import CandidateRun, evaluate, gen_params, render_all, scorer_specs
from workers.runners.finetune import code_version
from workers.runners.optimize_save import save_winner
from workers.runners.prompt_test import check_rows, load_rows, load_version
from workers.scoring import ScoreContext, ScorerError, case_passed, load_embedder, score_case

PROGRESS_SECONDS = 12.0  # the thread hears from the race at least this often (promise: 15 s)
LEADERBOARD = 8
CHUNK = 12  # rows per backend call (the first rung's size); the shared prefix is kept between


@dataclass
class Tally:
    """What the progress ticker reports, updated by the race."""

    planned: int
    done: int = 0
    tried: set[str] = field(default_factory=set)
    rung: str = "bootstrap probe"
    best: str = "—"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def line(self) -> str:
        """The progress message."""
        with self.lock:
            return (f"{len(self.tried)} candidates tried · {self.done}/{self.planned} dev "
                    f"answers · {self.rung} · best on dev: {self.best}")


class OptimizeRunner:
    """Split → prepare the space → race on dev → held-out paired measure → save."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.p = ctx.job.params
        self.seed = int(self.p.get("seed") or 0)

    def run(self) -> dict[str, Any]:
        """The whole optimisation; returns the contract's result (see submit_optimize)."""
        ctx, p = self.ctx, self.p
        start_v = load_version(ctx, p["prompt"]["version_id"])
        start_name = f"{p['prompt']['name']}@{p['prompt']['version']}"
        eval_rows = load_rows(ctx, p["dataset"], p["dataset_version"])
        check_rows(eval_rows, start_v, start_name)
        train_rows = None
        if p.get("train"):
            train_rows = load_rows(ctx, p["train"], p["train_version"])
            check_rows(train_rows, start_v, start_name)
        split = make_split(eval_rows, train_rows, seed=self.seed)
        if len(split.dev) < 2 or not split.heldout:
            raise JobError(f"too few rows to optimise: {split.note}")
        ctx.say(f"Optimising {start_name} for {p['model']} — {split.note}.")
        started, cpu0 = time.monotonic(), time.process_time()
        backend = backend_for(p["model"], ctx.settings,
                              resolve_ft=registry.ft_resolver(ctx.engine, ctx.job.team_id))
        self.backend = backend
        self.start_content = start_v.content
        self.specs = scorer_specs(start_v.content, eval_rows)
        self.split = split
        self.tally = Tally(planned=prep.PROBE_ROWS)
        self.outputs: dict[str, dict[int, tuple[str, bool]]] = {}
        stop = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(stop,), daemon=True)
        ticker.start()  # from here on: the probe and the race both report
        try:
            cands, space = self._candidates(split)
            with self.tally.lock:
                self.tally.planned = self.tally.done + _planned(len(cands), len(split.dev))
            board = race(cands, len(split.dev), self._evaluate, extra=self._proposals(space),
                         report=self._rung_done)
        finally:
            stop.set()
            ticker.join(timeout=5)
        race_s = time.monotonic() - started
        ctx.say(self._leaderboard_reply(board))
        ctx.check()
        result = self._finish(start_v.content, start_name, board, split, race_s, started)
        # CPU seconds next to the wall time: on a shared machine the wall time says little
        result["cpu_seconds"] = round(time.process_time() - cpu0, 1)
        return result

    # --- the space -----------------------------------------------------------------------

    def _candidates(self, split: Split) -> tuple[list[Candidate], Parts]:
        content = self.start_content
        out = content.get("output") or {}
        choices = list(out.get("choices") or []) if out.get("format") == "choice" else None
        known = split.dev + split.pool
        space = prep.make_parts(content, split.pool, known, choices, seed=self.seed)
        tok = prep.token_counter(self.backend)
        self.answers = prep.answers_of(choices, known)
        sources = ["seeded"]
        probe = self._probe(space, choices, tok)
        if probe is not None:
            space.demo_sets["bootstrapped"] = probe
            sources.append("bootstrapped")
        protos = self._prototypes(split)
        if protos:
            space.demo_sets["prototypes"] = protos
            sources.append("prototypes")
        n_classes = len(choices) if choices else 1
        ks = [k for k in demo_counts(n_classes) if k <= len(split.pool)] or [0]
        budget = int(self.p["budget"])
        self.n_proposals = max(2, budget // 4) if self.p.get("proposer") else 0
        recipes = sample(grid(space, sources=sources, ks=ks), budget - 1 - self.n_proposals,
                         self.seed)
        self.tok, self.space = tok, space
        cands = [Candidate("start", dict(content), None, origin="start")]
        seen = {_key(content)}
        for i, r in enumerate(recipes, start=1):
            c = self._make(f"c{i:02d}", r)
            if _key(c.content) not in seen:
                seen.add(_key(c.content))
                cands.append(c)
        self.ctx.say(f"Racing {len(cands)} candidates on {len(split.dev)} dev rows "
                     f"(successive halving; demo sources: {', '.join(sources)}; "
                     f"k in {{0, {', '.join(map(str, ks))}}})"
                     + (f"; {self.n_proposals} instruction rewrites from "
                        f"{self.p['proposer']}" if self.n_proposals else "") + ".")
        return cands, space

    def _make(self, name: str, recipe: Recipe, instruction: str | None = None,
              origin: str = "grid") -> Candidate:
        max_new = answer_tokens(self.tok, self.answers, recipe.prefix)
        if not self.space.choices:  # free text and JSON: the longest answer, with room
            max_new = min(512, max(int(max_new * 1.25) + 8,
                                   int((self.start_content.get("params") or {})
                                       .get("max_new_tokens", 64))))
        content = build(self.space, recipe, max_new_tokens=max_new, seed=self.seed,
                        instruction=instruction)
        return Candidate(name, content, recipe, origin=origin,
                         demos=pick_demos(self.space, recipe, self.seed))

    def _probe(self, space: Parts, choices: list[str] | None,
               tok: TokenLen) -> list[dict[str, Any]] | None:
        """Bootstrap: a one-demo-per-answer prompt answers pool rows; those it gets right (the
        examples the model handles) come first in the bootstrapped demo set."""
        pool = self.split.pool
        k = len(choices) if choices else 2
        if len(pool) <= k:
            return None
        demos = space.demo_sets["seeded"][:k]
        ids = {id(r) for r in demos}
        rows = [r for r in pool if id(r) not in ids][:prep.PROBE_ROWS]
        self.tok, self.space, self.answers = tok, space, prep.answers_of(choices, pool)
        probe = self._make("probe", Recipe(demos="seeded", k=k))
        self.ctx.say(f"Bootstrapping demonstrations: a probe prompt answers {len(rows)} pool rows.")
        try:
            results = self._score(probe.content, rows)
        except JobError:
            return None
        handled = {id(r) for r, (_v, ok, _o, _t) in zip(rows, results, strict=True) if ok}
        return prep.bootstrapped(pool, [id(r) in handled for r in pool])

    def _prototypes(self, split: Split) -> list[dict[str, Any]]:
        try:
            emb = load_embedder()
            return prep.prototypes(split.pool, lambda texts: emb.encode(texts))
        except (RuntimeError, ImportError, OSError):
            return []

    def _proposals(self, space: Parts) -> Any:
        if not self.n_proposals:
            return None
        proposer = backend_for(self.p["proposer"], self.ctx.settings)
        left = [self.n_proposals]

        def extra(rung: int, alive: list[Entry]) -> list[Candidate]:
            if rung != 0 or not left[0]:
                return []
            best = next((e for e in alive if e.cand.recipe is not None), None)
            if best is None or best.cand.recipe is None:
                return []
            outs = self.outputs.get(best.cand.name, {})
            fails = prop.failures_of(self.split.dev, [(i, o, ok) for i, (o, ok) in outs.items()])
            words = space.instructions[best.cand.recipe.instruction]
            try:
                texts = prop.propose(proposer, words, space.choices, fails, n=left[0],
                                     seed=self.seed)
            except JobError as exc:
                self.ctx.say(f"The proposer {self.p['proposer']} failed ({exc}); racing on "
                             "without rewrites.")
                return []
            left[0] = 0
            recipe = best.cand.recipe
            return [self._make(f"p{i:02d}", Recipe(**{**recipe.__dict__,
                                                      "instruction": "proposed"}),
                               instruction=t, origin="proposer")
                    for i, t in enumerate(texts, start=1)]
        return extra

    # --- scoring ---------------------------------------------------------------------

    def _score(self, content: dict[str, Any], rows: list[dict[str, Any]]
               ) -> list[tuple[float, bool, str, int]]:
        """(value, passed, output, prompt tokens) per row, through the batched backend."""
        ctx = self.ctx
        prompts = render_all(content, rows, ctx.check)
        gen = gen_params(content, temperature=None, max_tokens=None)
        out_spec = content.get("output") or {"format": "text"}

        def batch(_idx: list[int], _gens: list[Generation]) -> None:
            with self.tally.lock:
                self.tally.done += len(_idx)
            ctx.check()

        gens: list[Generation] = []
        for at in range(0, len(prompts), CHUNK):  # a cancel lands within one chunk's time
            gens += self.backend.generate(prompts[at:at + CHUNK], gen, on_batch=batch)
        results = []
        for row, msgs, g in zip(rows, prompts, gens, strict=True):
            sctx = ScoreContext(latency_ms=g.latency_ms, tokens_out=g.tokens_out,
                                output_spec=out_spec, input_text=msgs[-1]["content"],
                                judge_factory=lambda: self.backend)
            try:
                scores = score_case(g.text, row.get("expected"), row.get("assert"), self.specs,
                                    sctx)
            except ScorerError as exc:
                raise JobError(f"bad assert: {exc}") from None
            passed = case_passed(scores)
            value = (float(passed) if passed is not None else
                     sum(s.value for s in scores) / max(len(scores), 1))
            results.append((value, bool(passed) if passed is not None else value >= 0.5,
                            g.text, g.tokens_in))
        return results

    def _evaluate(self, cand: Candidate, idx: list[int]) -> list[float]:
        with self.tally.lock:
            self.tally.tried.add(cand.name)
            if self.tally.rung == "bootstrap probe":
                self.tally.rung = f"racing rung 1 ({max(idx) + 1} dev rows)"
        try:
            res = self._score(cand.content, [self.split.dev[i] for i in idx])
        except JobError as exc:
            raise CandidateFailed(str(exc)[:200]) from None
        if not cand.tokens and res:
            cand.tokens = round(sum(r[3] for r in res) / len(res))
        got = self.outputs.setdefault(cand.name, {})
        for i, (_v, ok, text, _t) in zip(idx, res, strict=True):
            got[i] = (text, ok)
        return [r[0] for r in res]

    def _rung_done(self, rung: int, rows: int, alive: list[Entry]) -> None:
        if alive:
            b = alive[0]
            with self.tally.lock:
                self.tally.rung = (f"rung {rung + 1} done ({len(alive)} candidates on {rows} "
                                   "dev rows)")
                self.tally.best = f"{b.cand.name} {b.score(rows):.1%} on {rows} rows"
                frac = min(0.95, self.tally.done / max(self.tally.planned, 1))
            self.ctx.progress(frac * 0.8, self.tally.line(), every=0.0, seconds=0.0)

    def _tick(self, stop: threading.Event) -> None:
        last = time.monotonic()
        while not stop.wait(1.0):
            if time.monotonic() - last >= PROGRESS_SECONDS:
                last = time.monotonic()
                t = self.tally
                with t.lock:
                    frac = min(0.95, t.done / max(t.planned, 1))
                try:
                    self.ctx.progress(frac * 0.8, t.line(), every=0.0, seconds=0.0)
                except Exception:  # a failed post must not kill the race; the next tick retries
                    continue

    # --- the end -----------------------------------------------------------------------

    def _leaderboard_reply(self, board: list[Entry]) -> Reply:
        rows = [[str(i), e.cand.name, f"{e.score():.1%}" if not e.failed else "failed",
                 str(e.rows), str(e.cand.tokens), e.cand.describe()[:90]]
                for i, e in enumerate(board[:LEADERBOARD], start=1)]
        head = f"Leaderboard on the dev split (top {min(LEADERBOARD, len(board))} of {len(board)})"
        return Reply(text=head, blocks=[section(head), table(
            ["#", "candidate", "dev score", "dev rows", "prompt tokens", "what"], rows)])

    def _finish(self, start_content: dict[str, Any], start_name: str, board: list[Entry],
                split: Split, race_s: float, started: float) -> dict[str, Any]:
        ctx, p = self.ctx, self.p
        winner = board[0]
        n = len(split.heldout)
        ctx.say(f"Measuring {start_name} and the winner ({winner.cand.name}) once on the "
                f"{n} held-out cases of {p['dataset']}"
                + (" (the held-out part of its split)" if split.source == "eval" else "") + ".")
        runs: list[CandidateRun] = []
        for name, content in ((start_name, start_content),
                              (f"{start_name} optimized", winner.cand.content)):
            gen = gen_params(content, temperature=None, max_tokens=None)
            runs.append(evaluate(ctx, name=name, content=content, rows=split.heldout,
                                 backend=self.backend, gen=gen, done=len(runs) * n,
                                 total=2 * n))
        s_start, s_win = (report.summarize(r) for r in runs)
        res = report.paired(runs[0], runs[1])
        ctx.say(report.paired_reply(runs[0], runs[1], res))
        paired = {"verdict": res.verdict, "p_value": res.p_value, "diff_pts": res.diff_pts,
                  "diff_ci": list(res.diff_ci), "fixed": res.c, "broken": res.b, "n": res.n,
                  "b": res.b, "c": res.c}
        board_out = [{"candidate": e.cand.name, "dev_score": e.score(), "dev_rows": e.rows,
                      "tokens": e.cand.tokens, "what": e.cand.describe(), "origin": e.cand.origin,
                      "failed": e.failed or None} for e in board[:LEADERBOARD]]
        result: dict[str, Any] = {
            "start": start_name, "start_accuracy": s_start["accuracy"],
            "winner_accuracy": s_win["accuracy"], "paired": paired,
            "winner": {"candidate": winner.cand.name, "what": winner.cand.describe(),
                       "dev_score": winner.score(), "dev_rows": winner.rows},
            "leaderboard": board_out, "split": {"source": split.source, "note": split.note,
                                                "dev": len(split.dev), "pool": len(split.pool),
                                                "heldout": n},
            "code_version": code_version(), "model": p["model"], "dataset": p["dataset"],
            "race_seconds": round(race_s, 1), "saved": None,
            "summaries": [s_start, s_win],
        }
        if winner.cand.recipe is None:
            ctx.say(f"No candidate beat {start_name} on the dev split; nothing saved.")
            result["headline"] = f"{start_name} kept ({s_start['accuracy']:.1%})"
            return result
        saved = save_winner(ctx, p, winner.cand, start_content, start_name, split,
                            s_start, s_win, res)
        result["saved"] = saved
        result["seconds"] = round(time.monotonic() - started, 1)
        result["headline"] = (f"{saved['ref']} {s_win['accuracy']:.1%} vs {start_name} "
                              f"{s_start['accuracy']:.1%}")
        return result


def _planned(n_cands: int, n_dev: int) -> int:
    sizes, alive, total, prev = rung_sizes(n_dev, n_cands), n_cands, 0, 0
    for n in sizes:
        total += alive * (n - prev)
        prev, alive = n, max(1, -(-alive // 2))
    return total


def _key(content: dict[str, Any]) -> str:
    return json.dumps({k: content.get(k) for k in ("messages", "template", "params")},
                      sort_keys=True, default=str)
