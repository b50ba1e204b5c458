"""Uploaded dataset files — eval sets and fine-tune training data — parsed and validated.

Pure and streaming: no torch, no database, no network. Problems come back as `Issue`s naming
the line and field, never as exceptions (only a bad argument raises ValueError). The pieces
live in datafiles_read (lines, formats), datafiles_rows (eval rows), datafiles_training
(training checks, length histogram), datafiles_split (split, k-fold, leakage) and
datafiles_report (text); import them all from here.
"""

from tunebot.datafiles_read import FORMATS, MAX_LISTED, Issue, detect_format
from tunebot.datafiles_report import format_issues, format_report
from tunebot.datafiles_rows import Row, RowsResult, check_variables, parse_rows, row_stats
from tunebot.datafiles_split import (
    LeakageReport,
    LeakMatch,
    answer_of,
    input_texts,
    kfold,
    leakage,
    normalise_text,
    split,
)
from tunebot.datafiles_training import (
    MIN_EXAMPLES,
    Example,
    TrainingReport,
    length_histogram,
    minimal_user_turn,
    truncation_verdict,
    validate_training,
)

__all__ = [
    "FORMATS", "MAX_LISTED", "MIN_EXAMPLES",
    "Example", "Issue", "LeakMatch", "LeakageReport", "Row", "RowsResult", "TrainingReport",
    "answer_of", "check_variables", "detect_format", "format_issues", "format_report",
    "input_texts", "kfold", "leakage", "length_histogram", "minimal_user_turn",
    "normalise_text", "parse_rows", "row_stats", "split", "truncation_verdict",
    "validate_training",
]
