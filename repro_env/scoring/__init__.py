"""Scorers compute J (REPRO_SPEC §2): ``make_scorer(ScorerConfig(...))``."""

from repro_env.scoring.base import (
    BUNDLED_MODEL,
    SCORERS,
    Scorer,
    ScorerConfig,
    ScoreRequest,
    ScoreResult,
    ScoringSession,
    StepScore,
    check_scorer,
    make_scorer,
    register_scorer,
    shared_scorer,
    start_sessions,
)

__all__ = [
    "BUNDLED_MODEL",
    "SCORERS",
    "ScoreRequest",
    "ScoreResult",
    "Scorer",
    "ScorerConfig",
    "ScoringSession",
    "StepScore",
    "check_scorer",
    "make_scorer",
    "register_scorer",
    "shared_scorer",
    "start_sessions",
]
