"""Scorers compute J (REPRO_SPEC §2): ``make_scorer(ScorerConfig(...))``."""

from repro_env.scoring.base import (
    BUNDLED_MODEL,
    Scorer,
    ScorerConfig,
    ScoreRequest,
    ScoreResult,
    ScoringSession,
    StepScore,
    make_scorer,
    shared_scorer,
)

__all__ = [
    "BUNDLED_MODEL",
    "ScoreRequest",
    "ScoreResult",
    "Scorer",
    "ScorerConfig",
    "ScoringSession",
    "StepScore",
    "make_scorer",
    "shared_scorer",
]
