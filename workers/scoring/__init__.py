"""Scorers for prompt tests: a registry of checks on model outputs, plus per-class reports."""

from workers.scoring import embedding, judge, ops, structured, text  # noqa: F401  (registers)
from workers.scoring.base import (
    SCORERS,
    Score,
    ScoreContext,
    ScorerError,
    ScorerInfo,
    normalise,
    register,
    validate_spec,
)
from workers.scoring.case import case_passed, default_scorers, score_case, validate_specs
from workers.scoring.choice import INVALID, classification_report, predict_choice
from workers.scoring.embedder import load_embedder
from workers.scoring.judge import parse_judgement
from workers.scoring.structured import extract_json
from workers.scoring.text import first_number

__all__ = [
    "INVALID",
    "SCORERS",
    "Score",
    "ScoreContext",
    "ScorerError",
    "ScorerInfo",
    "case_passed",
    "classification_report",
    "default_scorers",
    "extract_json",
    "first_number",
    "load_embedder",
    "normalise",
    "parse_judgement",
    "predict_choice",
    "register",
    "score_case",
    "validate_spec",
    "validate_specs",
]
