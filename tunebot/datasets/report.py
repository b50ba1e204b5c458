"""Readable multi-line text for data-check results (for Slack threads and the CLI)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunebot.datasets.read import MAX_LISTED, Issue
from tunebot.datasets.rows import RowsResult
from tunebot.datasets.split import LeakageReport
from tunebot.datasets.training import TrainingReport


def format_issues(issues: Sequence[Issue], total: int | None = None,
                  limit: int = MAX_LISTED) -> list[str]:
    """One line per issue (first `limit`), then "… and N more" when the total is larger."""
    total = len(issues) if total is None else total
    lines = [f"  {issue} [{issue.code}]" for issue in issues[:limit]]
    if total > len(lines):
        lines.append(f"  … and {total - len(lines):,} more")
    return lines


def format_report(report: TrainingReport | RowsResult | LeakageReport) -> str:
    """A training report, an eval-set result or a leakage report as readable lines."""
    if isinstance(report, TrainingReport):
        return "\n".join(_training(report))
    if isinstance(report, RowsResult):
        return "\n".join(_rows(report))
    if isinstance(report, LeakageReport):
        return "\n".join(_leakage(report))
    raise TypeError(f"cannot format {type(report).__name__}")


_KINDS = {"chat": "chat", "prompt_completion": "prompt/completion",
          "input_output": "input/output", "rows": "catalog rows"}


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _training(r: TrainingReport) -> list[str]:
    shape = f", {_KINDS.get(r.kind, r.kind)}" if r.kind else ""
    out = [f"{r.name or 'file'} ({r.fmt}{shape}): {_n(r.rows_read, 'row')} read"]
    kept = f"{_n(len(r.examples), 'example')} kept"
    if r.duplicates:
        kept += f" ({_n(r.duplicates, 'exact duplicate')} dropped)"
    out.append(kept)
    return out + _problems(r.errors, r.error_count, r.warnings, r.warning_count, r.complete)


def _rows(r: RowsResult) -> list[str]:
    out = [f"{r.name or 'file'} ({r.fmt}): {_n(len(r.rows), 'row')} · columns: "
           f"{', '.join(r.columns) or '(none)'}"]
    balance: dict[str, Any] | None = r.stats.get("label_balance")
    if balance:
        out.append("labels: " + " · ".join(f"{k} {v}" for k, v in balance.items()))
    return out + _problems(r.errors, r.error_count, r.warnings, r.warning_count, r.complete)


def _problems(errors: Sequence[Issue], n_errors: int, warnings: Sequence[Issue],
              n_warnings: int, complete: bool) -> list[str]:
    out = []
    if n_errors:
        out.append(f"{_n(n_errors, 'error')}:")
        out += format_issues(errors, n_errors)
    else:
        out.append("no errors")
    if n_warnings:
        out.append(f"{_n(n_warnings, 'warning')}:")
        out += format_issues(warnings, n_warnings)
    if not complete:
        out.append("stopped before the end of the file")
    return out


def _leakage(r: LeakageReport) -> list[str]:
    if not r.matches:
        return [f"no overlap between {r.n_train:,} training examples and {r.n_eval:,} eval rows"]
    out = [f"{r.count:,} of {r.n_train:,} training examples overlap the eval set "
           f"({r.n_eval:,} rows): removed, {len(r.clean):,} left"]
    out += [f"  training line {m.train_line} = eval line {m.eval_line} ({m.kind})"
            for m in r.matches[:MAX_LISTED]]
    if r.count > MAX_LISTED:
        out.append(f"  … and {r.count - MAX_LISTED:,} more")
    return out
