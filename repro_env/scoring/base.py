"""The scorer protocol: J (REPRO_SPEC §2) at chosen points of a reasoning trace, plus entropies.

A scorer computes, for a question ``q``, reasoning segments ``s_1..s_T`` and an answer string ``a``
(already rendered through the task's answer template, e.g. ``\\boxed{42}``)::

    J_t = (1/|a|) · Σ_i log π(a_i | q, τ≤t, a_<i)        t = 0 (baseline) and each requested point

and the entropy of the next-token distribution at each segment's first token (the distribution
that predicts token 0 of ``s_t`` given ``q + τ<t``), used by ``selection="topk_entropy"``.

Token conventions shared by every backend:

- ``q + τ≤T`` is tokenised **once** as one string, with the tokenizer's special tokens (BOS);
  segment boundaries are character offsets mapped to token positions (``segments.py``): a token
  belongs to the segment in which it starts.
- ``a`` is tokenised separately **without** special tokens and appended as ids after the prefix.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from repro_env.assets import BUNDLED_MODEL
from repro_env.config import check, check_device, describe, options_from_mapping, set_fields
from repro_env.errors import ConfigError, ContextLengthError, ScorerError
from repro_env.registry import Registry
from repro_env.scoring.options import HFOptions, ServerOptions, VLLMOptions

SCORERS = Registry("scorer backend", "repro_env.scorers", accepts=lambda target: isinstance(target, type),
                   expected="a Scorer class")
"""Backend name → scorer class (or its ``"package.module:Class"`` path); see :func:`register_scorer`."""
_OPTIONS: dict[str, type] = {}

LOGPROB_TOLERANCE = 1e-4
"""How far above 0 a log-prob may round (float error) before a backend's output counts as impossible."""


def checked_log_probs(values: Sequence[Any], what: str, *, allow_missing: bool = False) -> list[float]:
    """A backend's raw log-probs as floats, each a real number in (−9999, 0 + ``LOGPROB_TOLERANCE``].

    Anything else is impossible output and a :class:`ScorerError` naming ``what`` (the request),
    the index and the value: a positive log-prob (a J of 3.0), a JSON ``true`` (``float`` would make
    it 1.0), NaN, inf, or vLLM's −9999.0 (its clamp of −inf). ``allow_missing``: ``None`` entries
    (a generated token whose log-prob the backend did not return) become NaN.
    """
    out = []
    for i, value in enumerate(values):
        if value is None and allow_missing:
            out.append(float("nan"))
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
            raise ScorerError(f"{what}: log-prob {i} is not a number: {value!r}")
        number = float(value)
        if not (np.isfinite(number) and -9999.0 < number <= LOGPROB_TOLERANCE):
            raise ScorerError(f"{what}: log-prob {i} is {number!r}, not a finite log-prob in (-9999, 0]; "
                              "check the weights (NaN after an update?) or the server's model")
        out.append(min(number, 0.0))
    return out


@dataclass(frozen=True)
class NoOptions:
    """The options of a backend that has none of its own."""


def register_scorer(name: str, target: type | str, options: type | None = None) -> None:
    """Make ``scorer: {backend: NAME}`` build ``target(config)``.

    ``target`` is a class implementing :class:`Scorer`, or its ``"package.module:Class"`` path
    (imported only when a scorer is built). ``options`` is a frozen dataclass whose fields are the
    backend's own settings under ``scorer.options``; without it, the class's ``options_class``
    attribute (or :class:`NoOptions`). An installed package registers through the
    ``repro_env.scorers`` entry-point group instead (its class then carries ``options_class``).
    """
    SCORERS.register(name, target)
    if options is not None:
        _OPTIONS[name] = options


def backend_options_class(backend: str) -> type:
    """The options dataclass of a backend (``NoOptions`` if it declares none)."""
    SCORERS.check(backend, "backend")
    options_class = _OPTIONS.get(backend) or getattr(SCORERS.get(backend, "backend"), "options_class", NoOptions)
    if not (dataclasses.is_dataclass(options_class) and isinstance(options_class, type)):
        raise ConfigError(f"field 'backend': scorer {backend!r} must declare its options as a dataclass "
                          f"(options_class), got {describe(options_class)}")
    return options_class


@dataclass(frozen=True)
class ScorerConfig:
    """Which model computes J, and how: settings every backend shares, plus the backend's ``options``."""

    backend: str = "hf"
    """A registered backend: ``hf`` (transformers, CPU or CUDA), ``vllm`` (vLLM engine; the CPU
    build here), a name added by :func:`register_scorer` or a plugin, or ``"package.module:Class"``."""
    model: str = BUNDLED_MODEL
    """A local directory or hub id; ``bundled`` is the tiny math model shipped in the package."""
    device: str = "cpu"
    """torch device (``cpu``, ``cuda``, ``cuda:1``)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights and activations; float32 makes CPU scoring bit-for-bit deterministic."""
    max_length: int | None = None
    """Context limit in tokens; ``None`` takes the model's ``max_position_embeddings``. A trace
    longer than this is a ``ContextLengthError``. Up to it, hf batch scoring's memory grows linearly
    with the trace length L: the key/value cache (2 · layers · kv_heads · head_dim · L values) plus
    one ``options.chunk_tokens`` piece's activations and its (chunk_tokens × L) attention scores."""
    batch_size: int = 8
    """Responses per forward pass in batch scoring."""
    timeout_s: float | None = None
    """Fail a scoring call that takes longer than this with ``ScorerError`` (``None``: no limit)."""
    options: Any = None
    """The backend's own settings, its ``options_class``: ``hf`` → ``HFOptions``
    (``attn_implementation``, ``chunk_tokens``), ``vllm`` → ``VLLMOptions``
    (``gpu_memory_utilization``), ``vllm-server`` → ``ServerOptions`` (``base_url``, retries ...).
    A mapping is checked and converted; ``None``: the defaults. Files may also write these keys
    flat next to the shared ones (``gpu_memory_utilization: 0.3``)."""

    @classmethod
    def normalise_mapping(cls, data: Mapping[str, Any]) -> Mapping[str, Any]:
        """Gather backend options written flat next to the shared fields into ``options``."""
        shared = {f.name for f in dataclasses.fields(cls)}
        flat = [key for key in data if key not in shared]
        if not flat:
            return data
        try:
            options_class = backend_options_class(data.get("backend", "hf"))
        except ConfigError:
            return data  # __post_init__ reports the backend
        own = {f.name for f in dataclasses.fields(options_class)}
        moved = {key: data[key] for key in flat if key in own}
        if not moved:
            return data
        rest = {key: value for key, value in data.items() if key not in moved}
        return {**rest, "options": {**_options_mapping(data.get("options"), options_class), **moved}}

    def __post_init__(self) -> None:
        check(isinstance(self.model, str) and self.model != "", "model", self.model,
              "a model directory, a hub id or 'bundled'")
        check_device(self.device)
        check(self.max_length is None or self.max_length >= 8, "max_length", self.max_length, "an int >= 8 or null")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "an int >= 1")
        check(self.timeout_s is None or self.timeout_s > 0, "timeout_s", self.timeout_s, "a number > 0 or null")
        options_class = backend_options_class(self.backend)
        options = self.options
        if not isinstance(options, options_class):
            options = _options_mapping(options, options_class)
        object.__setattr__(self, "options", options_from_mapping(options_class, options, "options"))


def _options_mapping(options: Any, options_class: type) -> Any:
    """Options as a mapping for ``options_class``. Another backend's options (the backend changed in
    ``replace``) carry over only what was set, so that a setting the new backend lacks is an error,
    never silently dropped."""
    if options is None or isinstance(options, Mapping) or not dataclasses.is_dataclass(options):
        return options or {}
    if isinstance(options, options_class):
        return dataclasses.asdict(options)
    return set_fields(options)


register_scorer("hf", "repro_env.scoring.hf:HFScorer", options=HFOptions)
register_scorer("vllm", "repro_env.scoring.vllm:VLLMScorer", options=VLLMOptions)
register_scorer("vllm-server", "repro_env.scoring.server:VLLMServerScorer", options=ServerOptions)


@dataclass(frozen=True)
class ScoreRequest:
    """One response to score: J_0 is always computed; ``points`` are 1-based segment indices."""

    question: str
    segments: tuple[str, ...]
    answer: str
    points: tuple[int, ...] | None = None
    """Which points 1..T to score (sorted, unique); ``None`` scores every segment boundary."""

    def resolved_points(self) -> tuple[int, ...]:
        if self.points is None:
            return tuple(range(1, len(self.segments) + 1))
        return self.points


@dataclass(frozen=True)
class ScoreResult:
    """J at the baseline and at each scored point, and the first-token entropy of every segment."""

    J: np.ndarray
    """(1 + M,) float64: J_0 then J at ``points``."""
    points: tuple[int, ...]
    """(M,) the scored points, 1-based."""
    entropies: np.ndarray
    """(T,) float64: entropy (nats) of the next-token distribution at each segment's first token."""
    num_tokens: int
    """Tokens in ``q + τ≤T`` (without the answer)."""


@dataclass(frozen=True)
class StepScore:
    """What a session returns for one appended segment."""

    J: float
    """J after the segment (``nan`` if ``score=False``)."""
    entropy: float
    """Entropy at the segment's first token."""
    segment_tokens: int
    """Tokens the segment added to the prefix."""
    total_tokens: int
    """Tokens in ``q + τ≤t`` after the segment."""


@runtime_checkable
class ScoringSession(Protocol):
    """Incremental scoring of one episode: the prefix ``q + τ≤t`` stays cached between steps."""

    J_baseline: float
    total_tokens: int

    def append(self, segment: str, score: bool = True) -> StepScore:
        """Append ``segment`` to the prefix; if ``score``, compute J against the new prefix."""
        ...

    def close(self) -> None:
        """Free the cache."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """Computes J. Deterministic for the same inputs (greedy, float32 on CPU)."""

    config: ScorerConfig
    max_length: int
    tokenizer: Any
    """The model's tokenizer (a transformers tokenizer): envs and wrappers count tokens with it."""
    eos_token: str | None
    """End-of-text string; a segment that contains it ends the episode."""

    def reload_weights(self, weights: Any) -> None:
        """Load new weights (a state dict or a torch module) into the scoring model; learners call
        it after every update when the scorer follows the policy. Open sessions become stale."""
        ...

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Score many responses; about one forward pass over ``q + τ`` per response (§7)."""
        ...

    def session(self, question: str, answer: str) -> ScoringSession:
        """Start an episode; the baseline J_0 is computed at once."""
        ...

    def sessions_append(self, sessions: Sequence[ScoringSession], segments: Sequence[str],
                        score: Sequence[bool] | None = None) -> list[StepScore]:
        """Append one segment to each of several sessions in one batched call (vector env).

        A scorer may also have ``sessions(pairs)``: start one session per ``(question, answer)`` in
        one batched call (:func:`start_sessions` falls back to ``session`` one by one).

        Equal to calling ``append`` on each. If any session would overflow the context, raise
        ``ContextLengthError`` *before* changing any session, so the caller can retry one by one.
        """
        ...


@dataclass(frozen=True)
class TokenizedRequest:
    """A :class:`ScoreRequest` after tokenisation (see ``segments.tokenize_with_boundaries``)."""

    ids: list[int]
    """``q + τ≤T`` with special tokens."""
    boundaries: list[int]
    """(T + 1,) tokens in ``q + τ≤t`` for t = 0..T."""
    answer_ids: list[int]
    """``a`` without special tokens."""
    points: tuple[int, ...]
    """Scored points, 1-based, sorted and unique."""


NO_QUESTION_TOKENS = ("the question tokenises to no tokens and the tokenizer adds no BOS: "
                      "J_0 needs at least one token before the answer")


class TokenScorerBase:
    """What the transformers and vLLM scorers share: answer tokenisation and the context check.

    Subclasses set ``tokenizer`` and ``max_length``.
    """

    tokenizer: Any
    max_length: int

    @property
    def eos_token(self) -> str | None:
        return getattr(self.tokenizer, "eos_token", None)

    def answer_ids(self, answer: str) -> list[int]:
        """``a`` tokenised without special tokens (no BOS inside the answer span, §1)."""
        ids = list(self.tokenizer(answer, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ScorerError(f"the answer {answer!r} tokenises to no tokens; expected a non-empty answer")
        return ids

    def question_tokens(self, question: str, num_answer: int) -> tuple[list[int], list[tuple[int, int]]]:
        """A session's first prefix: ``q``'s ids and offsets, with at least one token and room for ``a``."""
        from repro_env.segments import tokenize_with_offsets

        ids, offsets = tokenize_with_offsets(self.tokenizer, question)
        if not ids:
            raise ScorerError(NO_QUESTION_TOKENS)
        self.check_length(len(ids), num_answer, question)
        return ids, offsets

    def extended_tokens(self, question: str, text: str, ids: list[int], offsets: list[tuple[int, int]],
                        segment: str, num_answer: int) -> tuple[str, list[int], list[tuple[int, int]], int]:
        """A session's step: ``text + segment`` (tokenised from ``ids``/``offsets``, only the tail again),
        checked for room for ``num_answer`` tokens; returns it with its ids, offsets and the token
        index where ``segment`` starts."""
        from repro_env.segments import char_to_token_boundaries, extend_tokens

        new_text = text + segment
        new_ids, new_offsets = extend_tokens(self.tokenizer, text, ids, offsets, new_text)
        self.check_length(len(new_ids), num_answer, question)
        return new_text, new_ids, new_offsets, char_to_token_boundaries(new_offsets, [len(text)])[0]

    def prepare(self, request: ScoreRequest) -> TokenizedRequest:
        """Tokenise a request (one string for ``q + τ``, the answer apart) and check it."""
        from repro_env.segments import tokenize_with_boundaries

        ids, boundaries = tokenize_with_boundaries(self.tokenizer, request.question, request.segments)
        answer = self.answer_ids(request.answer)
        points = tuple(request.resolved_points())
        T = len(request.segments)
        if list(points) != sorted(set(points)) or any(not 1 <= t <= T for t in points):
            raise ScorerError(
                f"ScoreRequest.points must be sorted unique segment indices in 1..{T}, got {points}")
        if boundaries[0] == 0:
            raise ScorerError(NO_QUESTION_TOKENS)
        self.check_length(len(ids), len(answer), request.question)
        return TokenizedRequest(ids, boundaries, answer, points)

    def check_length(self, num_prefix: int, num_answer: int, question: str) -> None:
        """Raise ``ContextLengthError`` when ``q + τ`` plus one answer copy exceeds ``max_length``."""
        if num_prefix + num_answer > self.max_length:
            raise ContextLengthError(
                f"prefix of {num_prefix} tokens + answer of {num_answer} tokens = "
                f"{num_prefix + num_answer} tokens exceeds max_length={self.max_length} "
                f"(question starting {question[:40]!r}); shorten the reasoning or raise max_length"
            )


SCORER_MEMBERS = ("config", "max_length", "tokenizer", "eos_token", "reload_weights", "score", "session",
                  "sessions_append")
"""What :class:`Scorer` requires; :func:`check_scorer` names the missing ones."""


def append_flags(scorer: Any, sessions: Sequence[Any], segments: Sequence[str],
                 score: Sequence[bool] | None) -> list[bool]:
    """The score flags of a ``sessions_append`` call (all true by default), after the checks every
    backend makes before it changes anything: one segment and one flag per session, no session
    twice (the second append would overwrite the first), every session started by ``scorer``."""
    flags = [True] * len(sessions) if score is None else list(score)
    if not len(sessions) == len(segments) == len(flags):
        raise ScorerError(f"sessions_append needs one segment and one score flag per session, got "
                          f"{len(sessions)} sessions, {len(segments)} segments, {len(flags)} flags")
    if len({id(s) for s in sessions}) != len(sessions):
        raise ScorerError("sessions_append got the same session twice; append to each session at most "
                          "once per call")
    if any(s.scorer is not scorer for s in sessions):
        raise ScorerError("sessions_append got a session started by another scorer; "
                          "use that scorer's sessions_append")
    return flags


def check_scorer(scorer: Any, where: str) -> Any:
    """``scorer`` if it has every :class:`Scorer` member, else a ``ScorerError`` naming the missing ones."""
    missing = [name for name in SCORER_MEMBERS if not hasattr(scorer, name)]
    if missing:
        raise ScorerError(f"{where}: {type(scorer).__name__} is not a Scorer: it lacks {', '.join(missing)} "
                          "(see repro_env.scoring.base.Scorer)")
    return scorer


def start_sessions(scorer: Scorer, pairs: Sequence[tuple[str, str]]) -> list[ScoringSession]:
    """One session per ``(question, answer)``: several in one batched call when the scorer has
    ``sessions``, else one ``session`` at a time (closing those already started if one fails)."""
    batched = getattr(scorer, "sessions", None)
    if batched is not None and len(pairs) > 1:  # batching is an optional speed-up; one is `session`
        return batched(pairs)
    sessions: list[ScoringSession] = []
    try:
        for question, answer in pairs:
            sessions.append(scorer.session(question, answer))
    except BaseException:
        for session in sessions:
            session.close()
        raise
    return sessions


def make_scorer(config: ScorerConfig | None = None, **overrides) -> Scorer:
    """Build the scorer that ``config`` describes (the bundled model on CPU by default)."""
    config = config or ScorerConfig()
    if overrides:
        config = dataclasses.replace(config, **overrides)
    scorer_class = SCORERS.get(config.backend, "backend")
    return check_scorer(scorer_class(config), f"scorer backend '{config.backend}'")


@functools.lru_cache(maxsize=4)
def shared_scorer(config: ScorerConfig) -> Scorer:
    """One scorer per config for the whole process, so ``gym.make`` twice loads the model once.

    Envs and the trainer that pass the same ``ScorerConfig`` share this instance: weights pushed to
    it (``reload_weights``) are seen by every env that uses it, which is the paper's setting.
    """
    return make_scorer(config)
