"""One candidate (a prompt version on a model) over eval rows: render, generate, score, store.

Latency means what one caller waits. A batched backend answers every case at once, so the
batch's time says nothing about a single request: after the batch, a few cases (LATENCY_SAMPLE,
spread over the answers' lengths, within LATENCY_SECONDS) are sent again one at a time and
timed; every other case's latency is estimated from its answer length with a line fitted to
those measurements. The batch's own time gives the throughput (cases/s), which the sample does
not touch. Callers that only rank candidates (optimize races) pass latency_sample=False.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from tunebot.catalog.templates import render_rows
from tunebot.errors import JobError, UserError
from tunebot.results import add_case_results, clear_case_results, update_case_results
from workers.backends.base import Backend, Generation, GenParams
from workers.context import JobContext
from workers.scoring import (
    ScoreContext,
    ScorerError,
    case_passed,
    default_scorers,
    score_case,
    validate_specs,
)
from workers.scoring.base import Score

LATENCY_SAMPLE = 8  # single requests timed after the batch
LATENCY_SECONDS = 30.0  # at most this long (and about half the batch's time), two requests always


@dataclass
class CaseOutcome:
    """One case (one sample of it) of one candidate."""

    index: int
    sample: int
    row: dict[str, Any]
    messages: list[dict[str, str]]
    output: str
    expected: str | None
    scores: list[Score]
    passed: bool | None
    latency_ms: float
    tokens_in: int
    tokens_out: int

    @property
    def value(self) -> float:
        """The mean scorer value (0–1) of this case."""
        return sum(s.value for s in self.scores) / len(self.scores) if self.scores else 0.0

    @property
    def predicted(self) -> str | None:
        """The label the choice scorer read from the output, if any."""
        return next((s.predicted for s in self.scores if s.predicted is not None), None)


@dataclass
class CandidateRun:
    """Everything one candidate produced."""

    name: str
    output_spec: dict[str, Any]
    samples: int
    outcomes: list[CaseOutcome] = field(default_factory=list)
    seconds: float = 0.0
    # How latency_ms was found: "single requests" (n measured, the rest estimated from their
    # answer length), "per request" (the backend answers each call on its own) or "batch
    # share" (not sampled: the batch's time split over its cases, not a caller's wait).
    latency_method: str = "batch share"
    latency_measured: int = 0
    generate_seconds: float = 0.0  # the batch's generation time, scoring and storage apart
    precision: str | None = None  # a local backend's matmul precision note (hf.py)

    @property
    def throughput(self) -> float:
        """Cases answered per second in the batch (every sample counted)."""
        return len(self.outcomes) / self.generate_seconds if self.generate_seconds > 0 else 0.0

    def first_samples(self) -> list[CaseOutcome]:
        """Sample 0 of every case, in case order (what accuracy and pairing use)."""
        return sorted((o for o in self.outcomes if o.sample == 0), key=lambda o: o.index)


def gen_params(content: dict[str, Any], *, temperature: float | None,
               max_tokens: int | None) -> GenParams:
    """The version's generation parameters with the test's overrides."""
    p = content.get("params") or {}
    return GenParams(
        temperature=float(temperature if temperature is not None else p.get("temperature", 0.0)),
        top_p=float(p.get("top_p", 1.0)),
        max_new_tokens=int(max_tokens or p.get("max_new_tokens", 64)),
        stop=tuple(p.get("stop") or ()),
        seed=p.get("seed"),
    )


def scorer_specs(content: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The version's scorers, or the default for its output format."""
    specs = content.get("scorers") or default_scorers(
        content.get("output") or {"format": "text"},
        expected=next((r.get("expected") for r in rows if r.get("expected")), None))
    try:
        validate_specs(specs)
    except ScorerError as exc:
        raise JobError(f"bad scorer configuration: {exc}") from None
    return list(specs)


def render_all(content: dict[str, Any], rows: list[dict[str, Any]],
               check: Callable[[], None] | None = None) -> list[list[dict[str, str]]]:
    """Every row's rendered chat; a row that cannot render fails the job naming its line.

    Each render is bounded (tunebot/catalog/templates.py: at most a couple of seconds), and
    `check` (the job's cancellation and lease check) runs between any two rows, so a Cancel
    lands while thousands of slow rows are still to render.
    """
    out: list[list[dict[str, str]]] = []
    # Closed on the way out, so a cancelled job hands its render child back (killed, as it
    # may still be working on the batch) at once rather than whenever it is collected.
    try:
        with closing(render_rows(content, rows)) as rendered:
            for messages in rendered:
                out.append(messages)
                if check is not None:
                    check()
    except UserError as exc:
        i = len(out)
        line = getattr(rows[i], "line", i + 1) if i < len(rows) else i + 1
        raise JobError(f"row on line {line} of the dataset: {exc}") from None
    return out


def evaluate(ctx: JobContext, *, name: str, content: dict[str, Any], rows: list[dict[str, Any]],
             backend: Backend, gen: GenParams, samples: int = 1, done: int = 0,
             total: int | None = None, store: bool = True,
             latency_sample: bool = True) -> CandidateRun:
    """Run a candidate over rows × samples, scoring and storing each case; reports progress.

    With latency_sample (the default), a batched backend's per-case latency is then measured
    on a few single requests (see the module's note); False keeps the batch share."""
    output_spec = content.get("output") or {"format": "text"}
    specs = scorer_specs(content, rows)
    ctx.check()
    prompts = render_all(content, rows, ctx.check)
    total = total or len(rows) * samples
    run = CandidateRun(name=name, output_spec=output_spec, samples=samples)
    started = time.monotonic()
    busy = 0.0  # time spent scoring and storing, outside generation
    batched = False
    passed_so_far: list[bool] = []
    if store:
        # a resumed run starts this candidate over
        clear_case_results(engine=ctx.engine, job_id=ctx.job_id, candidate=name)
    for sample in range(samples):
        # Independent draws: each sample has its own seed, nothing is reused between them.
        seed = (gen.seed or 0) + sample * 1_000_003
        params = GenParams(gen.temperature, gen.top_p, gen.max_new_tokens, gen.stop, seed)
        ctx.check()

        def scored(idx: list[int], gens: list[Generation], sample: int = sample) -> None:
            # Every case of a sample goes to the backend in one call (one length sort, one
            # shared prefix); each finished batch is scored, stored and reported here.
            nonlocal done, busy, batched
            t0 = time.monotonic()
            batched = batched or any(int(str(g.extra.get("batch_size", 1))) > 1 for g in gens)
            batch = []
            for i, g in zip(idx, gens, strict=True):
                row = rows[i]
                expected = row.get("expected")
                sctx = ScoreContext(latency_ms=g.latency_ms, tokens_out=g.tokens_out,
                                    output_spec=output_spec, input_text=prompts[i][-1]["content"],
                                    judge_factory=lambda: backend)
                try:
                    scores = score_case(g.text, expected, row.get("assert"), specs, sctx)
                except ScorerError as exc:
                    raise JobError(f"row {i + 1}: bad assert: {exc}") from None
                outcome = CaseOutcome(i, sample, dict(row), prompts[i], g.text, expected, scores,
                                      case_passed(scores), g.latency_ms, g.tokens_in, g.tokens_out)
                batch.append(outcome)
                if outcome.passed is not None:
                    passed_so_far.append(outcome.passed)
            run.outcomes.extend(batch)  # put in case order once, at the end
            if store:
                _store(ctx, name, batch)
            done += len(batch)
            acc = sum(passed_so_far) / len(passed_so_far) if passed_so_far else 0.0
            ctx.progress(done / total, f"{done}/{total} done · {name}: running accuracy "
                                       f"{acc:.0%}")
            busy += time.monotonic() - t0
            ctx.check()

        backend.generate(prompts, params, on_batch=scored)
    note = getattr(backend, "precision_note", None)  # local models only
    run.precision = note if isinstance(note, str) else None
    run.outcomes.sort(key=lambda o: (o.sample, o.index))
    run.seconds = time.monotonic() - started
    run.generate_seconds = max(run.seconds - busy, 1e-9)
    if not batched:
        run.latency_method = "per request"
    elif latency_sample and run.outcomes:
        measure_latency(ctx, run, prompts, backend, gen)
        changed = _rescore_latency(run, specs, backend)
        if store:
            update_case_results(engine=ctx.engine, job_id=ctx.job_id, candidate=name,
                                rows=[_case_row(o) for o in changed])
    return run


def measure_latency(ctx: JobContext, run: CandidateRun, prompts: list[list[dict[str, str]]],
                    backend: Backend, gen: GenParams) -> None:
    """Time a few cases as single requests after the batch and give every case a latency: the
    measured time for those, and for the rest a line through the measurements by answer
    length (decoding dominates a small model's time, one forward per new token)."""
    firsts = run.first_samples()
    by_len = sorted(firsts, key=lambda o: (o.tokens_out, o.index))
    k = min(LATENCY_SAMPLE, len(by_len))
    picks = list(dict.fromkeys(by_len[round(j * (len(by_len) - 1) / max(k - 1, 1))].index
                               for j in range(k)))
    budget = min(LATENCY_SECONDS, max(2.0, run.generate_seconds / 2))
    params = GenParams(gen.temperature, gen.top_p, gen.max_new_tokens, gen.stop, gen.seed)
    measured: dict[int, tuple[int, float]] = {}
    started = time.monotonic()
    for i in picks:
        ctx.check()
        if len(measured) >= 2 and time.monotonic() - started > budget:
            break
        t0 = time.perf_counter()
        (g,) = backend.generate([prompts[i]], params)
        measured[i] = (g.tokens_out, (time.perf_counter() - t0) * 1000)
    if not measured:
        return
    a, b = _fit(list(measured.values()))
    floor = min(ms for _, ms in measured.values()) / 2
    for o in run.outcomes:
        got = measured.get(o.index) if o.sample == 0 else None
        o.latency_ms = got[1] if got else max(a + b * o.tokens_out, floor)
    run.latency_method, run.latency_measured = "single requests", len(measured)


def _rescore_latency(run: CandidateRun, specs: list[dict[str, Any]],
                     backend: Backend) -> list[CaseOutcome]:
    """Score `latency` asserts again with the single-request latency (they were scored with
    the batch share); every outcome comes back, its latency having changed."""
    for o in run.outcomes:
        every = [*specs, *(o.row.get("assert") or [])]
        at = [i for i, sp in enumerate(every) if isinstance(sp, dict)
              and sp.get("type") == "latency"]
        if not at:
            continue
        sctx = ScoreContext(latency_ms=o.latency_ms, tokens_out=o.tokens_out,
                            output_spec=run.output_spec, input_text=o.messages[-1]["content"],
                            judge_factory=lambda: backend)
        fresh = score_case(o.output, o.expected, None, [every[i] for i in at], sctx)
        for i, score in zip(at, fresh, strict=True):
            o.scores[i] = score
        o.passed = case_passed(o.scores)
    return run.outcomes


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares latency = a + b × tokens_out; flat (the mean) without spread or with a
    negative slope (noise: a longer answer is never faster)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if n < 2 or sxx == 0:
        return my, 0.0
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return (my, 0.0) if b < 0 else (my - b * mx, b)


def _case_row(o: CaseOutcome) -> dict[str, Any]:
    return {"case_index": o.index, "sample_index": o.sample, "latency_ms": o.latency_ms,
            "scores": [{"name": s.name, "passed": s.passed, "value": s.value,
                        "detail": s.detail, "predicted": s.predicted} for s in o.scores],
            "passed": o.passed}


def _store(ctx: JobContext, name: str, batch: list[CaseOutcome]) -> None:
    rows = [{**_case_row(o), "rendered": o.messages, "output": o.output,
             "expected": o.expected, "tokens_in": o.tokens_in, "tokens_out": o.tokens_out}
            for o in batch]
    add_case_results(engine=ctx.engine, job_id=ctx.job_id, candidate=name, rows=rows)
