"""Summaries of candidate runs: scores with CIs, per-class tables, latency, worst cases, pairs."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from tunebot import stats
from tunebot.replies import Reply, context, fields, section, table
from workers.runners.evaluate import CandidateRun, CaseOutcome
from workers.scoring import INVALID, classification_report, extract_json

BINARY_TOL = 1e-9


def _snip(text: str, n: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _input_text(o: CaseOutcome) -> str:
    return " · ".join(f"{v}" for k, v in o.row.items() if k not in ("expected", "assert"))


def summarize(run: CandidateRun) -> dict[str, Any]:
    """The numbers of one candidate: accuracy ± Wilson CI, continuous scores, latency, tokens."""
    cases = run.first_samples()
    judged = [o for o in cases if o.passed is not None]
    n, k = len(judged), sum(1 for o in judged if o.passed)
    lo, hi = stats.wilson(k, n)
    lat = [o.latency_ms for o in cases] or [0.0]
    out: dict[str, Any] = {
        "candidate": run.name, "cases": len(cases), "judged": n, "passed": k,
        "accuracy": k / n if n else 0.0, "ci": [lo, hi],
        "latency_p50_ms": stats.percentile(lat, 50), "latency_p95_ms": stats.percentile(lat, 95),
        "tokens_in": sum(o.tokens_in for o in cases) / max(len(cases), 1),
        "tokens_out": sum(o.tokens_out for o in cases) / max(len(cases), 1),
        "seconds": run.seconds,
        "throughput_cps": run.throughput, "latency_method": run.latency_method,
        "latency_measured": run.latency_measured,
        **({"precision": run.precision} if run.precision else {}),
    }
    by_scorer: dict[str, list[float]] = defaultdict(list)
    for o in cases:
        for s in o.scores:
            by_scorer[s.name].append(s.value)
    out["scores"] = {}
    for name, values in by_scorer.items():
        if all(v in (0.0, 1.0) for v in values):
            continue  # pass/fail scorers are summarised by accuracy
        slo, shi = stats.bootstrap_ci(values)
        out["scores"][name] = {"mean": sum(values) / len(values), "ci": [slo, shi]}
    if (run.output_spec or {}).get("format") == "choice":
        labels = list(run.output_spec.get("choices") or [])
        pairs = [(o.expected or "", o.predicted or "(invalid)") for o in cases]
        out["classes"] = classification_report(pairs, labels)
    if run.samples > 1:
        out["consistency"] = consistency(run)
    return out


def consistency(run: CandidateRun) -> dict[str, Any]:
    """Agreement across the K samples of each case, pass@K, pass^K and the flakiest cases."""
    per_case: dict[int, list[CaseOutcome]] = defaultdict(list)
    for o in run.outcomes:
        per_case[o.index].append(o)
    k = run.samples
    agreements, at_k, hat_k, flaky = [], [], [], []
    for idx, outs in per_case.items():
        answers = [" ".join(o.output.lower().split()) for o in outs]
        agree = stats.agreement_rate(answers)
        c = sum(1 for o in outs if o.passed)
        agreements.append(agree)
        at_k.append(stats.pass_at_k(len(outs), c, k))
        hat_k.append(stats.pass_hat_k(len(outs), c, k))
        flaky.append((agree, idx, outs))
    flaky.sort(key=lambda t: t[0])
    return {
        "k": k, "agreement": sum(agreements) / len(agreements),
        "pass_at_k": sum(at_k) / len(at_k), "pass_hat_k": sum(hat_k) / len(hat_k),
        "flakiest": [{"case": idx + 1, "agreement": a, "input": _snip(_input_text(outs[0]), 60),
                      "answers": sorted({_snip(o.output, 30) for o in outs})[:4]}
                     for a, idx, outs in flaky[:3] if a < 1.0],
    }


def worst_cases(run: CandidateRun, n: int = 3) -> list[CaseOutcome]:
    """The failed cases with the lowest scores (then the lowest-scoring passes)."""
    cases = run.first_samples()
    return sorted(cases, key=lambda o: (o.passed is True, o.value, o.index))[:n]


def summary_reply(run: CandidateRun, s: dict[str, Any]) -> Reply:
    """The thread message with one candidate's results."""
    ci = stats.format_ci(*s["ci"])
    head = (f"{run.name}: accuracy {s['accuracy']:.1%} (95% CI {ci}) over {s['judged']} cases · "
            f"latency p50 {s['latency_p50_ms']:.0f} ms, p95 {s['latency_p95_ms']:.0f} ms · "
            f"{s['throughput_cps']:.1f} cases/s · "
            f"{s['tokens_in']:.0f} → {s['tokens_out']:.0f} tokens")
    blocks = [section(head), context(latency_note(s))]
    for name, sc in s["scores"].items():
        slo, shi = sc["ci"]
        blocks.append(section(f"{name}: mean {sc['mean']:.3f} (95% CI "
                              f"{stats.format_ci(slo, shi, pct=False, digits=3)})"))
    if "classes" in s:
        rep = s["classes"]
        rows = [[lab, f"{v['precision']:.2f}", f"{v['recall']:.2f}", f"{v['f1']:.2f}",
                 v["support"]] for lab, v in rep["per_class"].items()]
        blocks.append(table(["class", "precision", "recall", "F1", "n"], rows))
        conf = [[r, *[str(c) for c in counts]] for r, counts in
                zip(rep["labels"], rep["confusion"], strict=False)]
        blocks.append(table(["expected \\ got", *rep["columns"]], conf))
    if "consistency" in s:
        c = s["consistency"]
        blocks.append(fields([("samples per case", str(c["k"])),
                              ("agreement", f"{c['agreement']:.0%}"),
                              (f"pass@{c['k']}", f"{c['pass_at_k']:.0%}"),
                              (f"pass^{c['k']}", f"{c['pass_hat_k']:.0%}")]))
        for f in c["flakiest"]:
            blocks.append(section(f"flaky case {f['case']} ({f['agreement']:.0%} agree): "
                                  f"\"{f['input']}\" → {', '.join(f['answers'])}"))
    worst = worst_cases(run)
    if worst:
        lines = [f"• \"{_snip(_input_text(o), 70)}\" expected {o.expected!r}, got "
                 f"{_snip(o.output, 40)!r}" for o in worst]
        blocks.append(section("worst cases:\n" + "\n".join(lines)))
    text = f"{head}"
    return Reply(text=text, blocks=blocks)


def latency_note(s: dict[str, Any]) -> str:
    """How a summary's latency and throughput were measured, in one line."""
    method = s.get("latency_method")
    if method == "single requests":
        lat = (f"latency: what one request waits — {s['latency_measured']} case(s) sent alone "
               "after the batch and timed, the others estimated from their answer length")
    elif method == "per request":
        lat = "latency: each request timed on its own"
    else:
        lat = "latency: the batch's time shared over its cases (not one request's wait)"
    note = f"{lat}; throughput: cases per second answered in the batch"
    precision = s.get("precision")
    return note + (f"; {precision}" if precision and precision != "fp32" else "")


def degenerate(run: CandidateRun, max_new_tokens: int) -> tuple[int, str]:
    """How many first-sample answers are degenerate — empty, with no valid choice (choice
    outputs), cut at max_new_tokens, or not JSON when JSON is required — and by which kind."""
    fmt = (run.output_spec or {}).get("format", "text")
    kinds: Counter[str] = Counter()
    for o in run.first_samples():
        if not o.output.strip():
            kinds["empty"] += 1
        elif fmt == "choice" and o.predicted == INVALID:
            kinds["no valid choice"] += 1
        elif fmt == "json" and extract_json(o.output) is None:
            kinds["not JSON"] += 1
        elif o.tokens_out >= max_new_tokens:
            kinds["cut by max_tokens"] += 1
    return sum(kinds.values()), ", ".join(f"{k} {v}" for k, v in kinds.most_common())


def paired(a: CandidateRun, b: CandidateRun) -> stats.PairedResult:
    """Exact McNemar on pass/fail of the same cases (paired bootstrap when scores are graded)."""
    ca, cb = a.first_samples(), b.first_samples()
    if all(o.passed is not None for o in [*ca, *cb]):
        return stats.compare_paired([bool(o.passed) for o in ca], [bool(o.passed) for o in cb],
                                    name_a=a.name, name_b=b.name)
    return stats.compare_paired_continuous([o.value for o in ca], [o.value for o in cb],
                                           name_a=a.name, name_b=b.name)


def paired_reply(a: CandidateRun, b: CandidateRun, res: stats.PairedResult) -> Reply:
    """The comparison message: verdict, side by side table, flipped cases."""
    sa, sb = summarize(a), summarize(b)
    rows = [[s["candidate"], f"{s['accuracy']:.1%}", stats.format_ci(*s["ci"]),
             f"{s['latency_p50_ms']:.0f}", f"{s['tokens_in']:.0f}"] for s in (sa, sb)]
    blocks = [section(f"Verdict: {res.verdict}"),
              table(["candidate", "accuracy", "95% CI", "p50 ms", "tokens in"], rows)]
    ca = a.first_samples()
    for label, idx in ((f"{b.name} fixed", res.flipped_better),
                       (f"{b.name} broke", res.flipped_worse)):
        if idx:
            cases = "; ".join(f"\"{_snip(_input_text(ca[i]), 40)}\"" for i in list(idx)[:3])
            blocks.append(section(f"{label} {len(idx)} case(s): {cases}"))
    return Reply(text=f"Verdict: {res.verdict}", blocks=blocks)
