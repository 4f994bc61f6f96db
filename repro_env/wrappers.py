"""Gymnasium wrappers that let generic RL libraries (Stable-Baselines3 and the like) use a reasoning env.

- :class:`CandidateSegments`: ``Discrete(K)`` actions that pick one of K candidate next segments
  sampled from a language model, with a ``Box`` of numeric features as observation: the SB3 bridge.
- :class:`TokenIds`: the ``Text`` observation as a fixed-length ``Box`` of token ids.
- :class:`EpisodeStatistics`: ``info["episode"]`` with return, process return, outcome, tokens,
  backtracks and length when an episode ends (SB3's ``ep_info_buffer`` reads ``r``/``l``/``t``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from repro_env.errors import ActionError, ConfigError
from repro_env.proposer import Candidate, LMProposer, ProposeFn, ProposerConfig, find_cut

CANDIDATE_FEATURES = ("tokens", "mean_prob", "min_prob", "mean_prob_rel", "min_prob_rel", "final",
                      "backtrack", "repeat", "agreement", "cut_off")
"""Per-candidate observation features, each in [0, 1] (see :class:`CandidateSegments`)."""
EPISODE_FEATURES = ("step", "tokens_used", "process_score")
"""Episode observation features after the K candidate blocks, each in [0, 1]."""


class CandidateSegments(gym.Wrapper):
    r"""Choose the next reasoning segment among K candidates proposed by a language model.

    ## Action space

    ``Discrete(k)``: the index of the candidate to append. The inner env receives its text.

    ## Observation space

    ``Box(0, 1, shape=(k·10 + 3,), float32)``: for each candidate, in ``CANDIDATE_FEATURES`` order,

    - ``tokens``: its token count / the proposer's token cap;
    - ``mean_prob``, ``min_prob``: exp of the mean and of the minimum token log-prob under the
      proposer (0 when the proposer does not report log-probs, e.g. a plain callable);
    - ``mean_prob_rel``, ``min_prob_rel``: the same divided by their maximum over the k candidates
      (1 for the most likely one), so that a linear policy can pick the best;
    - ``final``: 1 if it holds the final answer (the task's ``final_answer_pattern``);
    - ``backtrack``: 1 if ``task.is_backtrack`` flags it;
    - ``repeat``: 1 if it repeats an earlier segment of the episode (whitespace-stripped);
    - ``agreement``: the share of the other k−1 candidates that say the same (the same final answer
      when both hold one, the same stripped text otherwise), a self-consistency vote;
    - ``cut_off``: 1 if the LM proposer stopped it at the token cap (or at ``max_segment_chars``)
      rather than at a delimiter, the final answer or eos (always 0 from a plain callable);

    then ``step / max_steps``, ``total_tokens / max_total_tokens`` and the process score ``S`` of the
    last scored point (0 at reset; REPRO_SPEC §3). After the episode ends the candidate blocks are 0.

    ## Rewards, episode end, info

    Passed through from the inner env; ``info["candidates"]`` holds the candidate texts that the
    *returned* observation describes (empty after the last step).

    ## Arguments

    ``env``: a ``ReasoningEnv`` (or a wrapper of one). ``k``: candidates per step. ``proposer``:
    ``None`` samples from the scorer's own model and tokenizer (the bundled model by default: no
    second copy is loaded); a model directory (or ``"bundled"``) loads that model; an
    :class:`~repro_env.proposer.LMProposer`; or any callable ``propose(text, k, rng) -> list[str]``.
    ``proposer_config``: token cap (default: the task's ``limits.max_segment_tokens``) and
    temperature for the LM proposers. Sampling is seeded from the env's ``np_random``.
    """

    def __init__(self, env: gym.Env, k: int = 4, *, proposer: LMProposer | ProposeFn | str | Path | None = None,
                 proposer_config: ProposerConfig | None = None) -> None:
        super().__init__(env)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
            raise ConfigError(f"field 'k' must be an int >= 2 (candidates to choose from), got {k!r}")
        self.k = int(k)
        base = env.unwrapped
        self.task = base.spec_task
        if proposer_config is None:
            proposer_config = ProposerConfig(max_new_tokens=self.task.limits.max_segment_tokens)
        self.propose = _resolve_proposer(proposer, base.scorer, self.task, proposer_config)
        self.token_cap = proposer_config.max_new_tokens
        self.tokenizer = getattr(self.propose, "tokenizer", None) or getattr(base.scorer, "tokenizer", None)
        size = self.k * len(CANDIDATE_FEATURES) + len(EPISODE_FEATURES)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(size,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(self.k)
        self.candidates: list[Candidate] = []
        self._text = ""
        self._segments: list[str] = []
        self._process_score = 0.0
        self._total_tokens = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        text, info = self.env.reset(seed=seed, options=options)
        self._text, self._segments, self._process_score = text, [], 0.0
        self._total_tokens = self._count_tokens(text)
        self.candidates = self._propose(text)
        return self._observation(), {**info, "candidates": tuple(c.text for c in self.candidates)}

    def step(self, action: Any):
        if not self.candidates:
            raise gym.error.ResetNeeded("call reset() before step(): the episode has ended or not started")
        index = _action_index(action, self.k)
        segment = self.candidates[index].text
        text, reward, terminated, truncated, info = self.env.step(segment)
        self._text = text
        self._segments.append(segment)
        self._total_tokens = int(info.get("total_tokens", self._total_tokens))
        if info.get("scored") and np.isfinite(info.get("process_score", np.nan)):
            self._process_score = float(info["process_score"])
        self.candidates = [] if terminated or truncated else self._propose(text)
        info = {**info, "candidates": tuple(c.text for c in self.candidates)}
        return self._observation(), reward, terminated, truncated, info

    # -- pieces --------------------------------------------------------------------------------

    def _propose(self, text: str) -> list[Candidate]:
        """K candidates continuing ``text``, each cut to ``max_segment_chars``."""
        rng = self.env.unwrapped.np_random
        if isinstance(self.propose, LMProposer):
            candidates = self.propose.sample(text, self.k, rng)
        else:
            candidates = [self._as_candidate(t) for t in _checked(self.propose(text, self.k, rng), self.k)]
        limit = self.task.limits.max_segment_chars
        return [c if len(c.text) <= limit else Candidate(c.text[:limit], c.num_tokens, c.mean_logprob,
                                                         c.min_logprob, "length")
                for c in candidates]

    def _as_candidate(self, text: str) -> Candidate:
        """A plain-string candidate: token count from the tokenizer, log-probs unknown."""
        return Candidate(text=text, num_tokens=self._count_tokens(text, special=False),
                         mean_logprob=float("nan"), min_logprob=float("nan"), stop="external")

    def _count_tokens(self, text: str, special: bool = True) -> int:
        if self.tokenizer is None:
            return len(text.split())
        return len(self.tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])

    def _observation(self) -> np.ndarray:
        """The feature vector described in the class docstring. (k·10 + 3,)"""
        blocks = np.zeros((self.k, len(CANDIDATE_FEATURES)), dtype=np.float32)  # (K, F)
        if self.candidates:
            blocks[:] = self._candidate_features(self.candidates)
        limits = self.task.limits
        episode = np.array([len(self._segments) / limits.max_steps,
                            self._total_tokens / limits.max_total_tokens,
                            self._process_score], dtype=np.float32)  # (3,)
        return np.clip(np.concatenate([blocks.ravel(), episode]), 0.0, 1.0).astype(np.float32)

    def _candidate_features(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """(K, F) features of the candidates, in ``CANDIDATE_FEATURES`` order."""
        previous = {s.strip() for s in self._segments}
        keys = [self._answer_key(c.text) for c in candidates]
        mean_prob = np.array([_prob(c.mean_logprob) for c in candidates])  # (K,)
        min_prob = np.array([_prob(c.min_logprob) for c in candidates])  # (K,)
        rows = []
        for i, (c, key) in enumerate(zip(candidates, keys, strict=True)):
            agree = (sum(other == key for other in keys) - 1) / (len(keys) - 1)
            rows.append([
                min(c.num_tokens / self.token_cap, 1.0),
                mean_prob[i], min_prob[i], _share_of_max(mean_prob, i), _share_of_max(min_prob, i),
                float(bool(self.task.final_answer_regex.search(c.text))),
                float(self.task.is_backtrack(c.text)),
                float(c.text.strip() in previous),
                agree,
                float(c.stop == "length"),
            ])
        return np.asarray(rows, dtype=np.float32)  # (K, F)

    def _answer_key(self, text: str) -> str:
        """What two candidates must share to agree: the final answer if there is one, else the text."""
        cut = find_cut(text, self.task.delimiter, self.task.final_answer_regex)
        match = self.task.final_answer_regex.search(text)
        if match is not None and cut is not None and cut[1] == "final":
            inside = text[match.end():cut[0]]
            return "final:" + (inside[:-1] if inside.endswith("}") else inside).strip()
        return text.strip()


def _prob(log_prob: float) -> float:
    return float(np.exp(log_prob)) if np.isfinite(log_prob) else 0.0


def _share_of_max(values: np.ndarray, i: int) -> float:
    top = float(values.max())
    return float(values[i]) / top if top > 0 else 0.0


def _action_index(action: Any, k: int) -> int:
    """An int index from what SB3 and Gymnasium pass (int, numpy scalar or 0-d/1-element array)."""
    value = np.asarray(action)
    if value.size != 1 or not np.issubdtype(value.dtype, np.integer):
        raise ActionError(f"action must be an int in [0, {k}) (the index of a candidate), got {action!r}")
    index = int(value.reshape(()))
    if not 0 <= index < k:
        raise ActionError(f"action must be an int in [0, {k}) (the index of a candidate), got {index}")
    return index


def _checked(texts: Any, k: int) -> list[str]:
    """The output of a user ``propose`` callable, validated: ``k`` non-blank strings."""
    if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) != k:
        raise ActionError(f"propose(text, k, rng) must return a list of k={k} strings, got {texts!r:.120}")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ActionError(f"propose(text, k, rng) returned candidate {i} = {text!r:.80}; "
                              "expected a non-blank string")
    return list(texts)


def _resolve_proposer(proposer: Any, scorer: Any, task: Any, config: ProposerConfig) -> LMProposer | ProposeFn:
    """``None`` / a model directory / an ``LMProposer`` / a callable → what ``_propose`` calls."""
    if isinstance(proposer, LMProposer) or (callable(proposer) and not isinstance(proposer, str | Path)):
        return proposer
    options = {"delimiter": task.delimiter, "final_answer": task.final_answer_regex, "config": config}
    if proposer is None or _same_model(proposer, scorer):
        if not (hasattr(scorer, "model") and hasattr(scorer, "tokenizer")):
            raise ConfigError(
                f"proposer=None samples from the scorer's model, but the {type(scorer).__name__} has no "
                "transformers .model/.tokenizer (only the hf backend has); pass proposer=<model dir> "
                "or a callable propose(text, k, rng) -> list[str]")
        return LMProposer(scorer.model, scorer.tokenizer, **options)
    if not isinstance(proposer, str | Path):
        raise ConfigError(f"field 'proposer' must be None, a model directory, an LMProposer or a callable "
                          f"propose(text, k, rng) -> list[str], got {type(proposer).__name__}")
    return LMProposer(*load_model(proposer), **options)


def _model_path(name: str | Path) -> Path:
    from repro_env.assets import resolve_model

    return Path(resolve_model(name)).expanduser().resolve()


def _same_model(proposer: Any, scorer: Any) -> bool:
    # Reusing the scorer's model needs a transformers model in this process, whatever the backend's name.
    if not isinstance(proposer, str | Path) or not hasattr(scorer, "model"):
        return False
    return _model_path(proposer) == _model_path(scorer.config.model)


def load_model(name: str | Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32")
    except (OSError, ValueError) as e:
        raise ConfigError(f"field 'proposer' = {str(name)!r}: could not load a model from {path}: {e}") from e
    return model.eval(), tokenizer


class TokenIds(gym.ObservationWrapper):
    """The ``Text`` observation as ``Box(0, vocab−1, shape=(max_tokens,), int64)`` of token ids.

    The text is tokenised (with special tokens, the scorer's convention), left-truncated to its
    latest ``max_tokens`` tokens and right-padded with the pad id (eos when there is no pad token).
    ``tokenizer`` defaults to the env's scorer tokenizer.
    """

    def __init__(self, env: gym.Env, max_tokens: int = 512, *, tokenizer: Any = None) -> None:
        super().__init__(env)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError(f"field 'max_tokens' must be an int >= 1, got {max_tokens!r}")
        tokenizer = tokenizer if tokenizer is not None else getattr(env.unwrapped.scorer, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("TokenIds needs a tokenizer: the env's scorer has none "
                              f"({type(env.unwrapped.scorer).__name__}); pass tokenizer=...")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.vocab_size = len(tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.observation_space = gym.spaces.Box(0, self.vocab_size - 1, shape=(max_tokens,), dtype=np.int64)

    def observation(self, observation: str) -> np.ndarray:
        ids = list(self.tokenizer(observation, verbose=False)["input_ids"])[-self.max_tokens:]
        out = np.full(self.max_tokens, self.pad_id, dtype=np.int64)  # (max_tokens,)
        out[:len(ids)] = ids
        return out


class EpisodeStatistics(gym.Wrapper):
    """On the last step of an episode, ``info["episode"]`` =
    ``{"r", "process_r", "outcome", "correct", "tokens", "backtracks", "l", "t"}``.

    ``r``: the return Σ reward; ``process_r``: Σ α·process_reward (REPRO_SPEC §4: α·S_T when every
    point is scored); ``outcome``: the outcome reward; ``correct``: whether the answer verified;
    ``tokens``: tokens of question + reasoning; ``backtracks``: segments flagged as backtracks;
    ``l``: steps; ``t``: seconds since reset. ``r``/``l``/``t`` are the keys of Gymnasium's
    ``RecordEpisodeStatistics`` and SB3's ``Monitor``. Put this wrapper *outside* SB3's ``Monitor``
    (``Monitor`` overwrites ``info["episode"]`` with its own three keys); SB3 then keeps the whole
    dict in ``model.ep_info_buffer``.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.alpha = float(env.unwrapped.spec_task.reward.alpha)
        self._start = time.perf_counter()
        self._totals = _zero_totals()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._start = time.perf_counter()
        self._totals = _zero_totals()
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any):
        observation, reward, terminated, truncated, info = self.env.step(action)
        totals = self._totals
        totals["r"] += float(reward)
        totals["process_r"] += self.alpha * float(info.get("process_reward", 0.0))
        totals["backtracks"] += int(bool(info.get("backtrack", False)))
        totals["l"] += 1
        if terminated or truncated:
            info = {**info, "episode": {
                **totals,
                "outcome": float(info.get("outcome_reward", 0.0)),
                "correct": bool(info.get("correct", False)),
                "tokens": int(info.get("total_tokens", 0)),
                "t": round(time.perf_counter() - self._start, 6),
            }}
        return observation, reward, terminated, truncated, info


def _zero_totals() -> dict[str, Any]:
    return {"r": 0.0, "process_r": 0.0, "backtracks": 0, "l": 0}
