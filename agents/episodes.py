"""Rollouts through the public vector-env API, and their packing into token batches for training.

:func:`collect_episodes` runs exactly one episode in every sub-env of a
``gym.make_vec(..., vectorization_mode="vector_entry_point", autoreset_mode=DISABLED)`` env, with
optional per-sub-env problem indices (a GRPO group: G sub-envs share one index). It reads only
``reset``/``step`` and the documented ``info`` keys (``process_reward`` r̃ before α, ``scored``,
``outcome_reward``, ``correct``, ``backtrack``, ``overthinking``, ``after_answer``,
``answer_stated``), so any env with the same contract works.

:func:`pack` lays episodes out for a forward pass: right-padded ``(B, L)`` ids, and per-position
masks and values aligned with next-token log-probs ``(B, L−1)`` (position k predicts token k+1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from repro_env.agents.losses import TrainingError
from repro_env.agents.policy import LMPolicy, Trace
from repro_env.errors import ConfigError, ScorerError
from repro_env.overthinking import FIGURE_KEYS, SegmentMarks, response_figures
from repro_env.reward import RewardConfig, reward_points


@dataclass
class Episode:
    """One finished episode, as trainers need it: tokens, per-segment rewards and the outcome."""

    trace: Trace
    """Token ids of the whole episode; ``trace.segment`` maps generated tokens to their step."""
    segments: list[str] = field(default_factory=list)
    """The actions passed to ``env.step``."""
    process_rewards: list[float] = field(default_factory=list)
    """r̃ per step (before α; 0 at unscored steps), REPRO_SPEC §4."""
    scored: list[bool] = field(default_factory=list)
    """Whether each step was a scored point."""
    env_rewards: list[float] = field(default_factory=list)
    """What the env paid per step (α·r̃ + outcome at the last step)."""
    entropies: list[float] = field(default_factory=list)
    """Policy entropy at each segment's first token."""
    J: list[float] = field(default_factory=list)
    """J after each step (NaN where the env scored no point); lets a trainer re-select points."""
    J_baseline: float = float("nan")
    """J_0: the answer right after the question (REPRO_SPEC §2)."""
    backtracks: int = 0
    overthinking: list[bool | None] = field(default_factory=list)
    """Per step: a backtrack or a repeated computation (``info["overthinking"]``; None: not reported)."""
    after_answer: list[bool] = field(default_factory=list)
    """Per step: reasoning written after the gold answer was stated (``info["after_answer"]``)."""
    answer_stated: bool | None = None
    """The reasoning stated the gold answer (``info["answer_stated"]``); None: the env's task cannot
    locate the answer inside the reasoning, so tokens after the first correct answer do not apply."""
    outcome: float = 0.0
    """R: 1 if the final answer verified, else 0 (REPRO_SPEC §5)."""
    correct: bool = False
    truncated: bool = False
    problem_id: str = ""

    @property
    def num_steps(self) -> int:
        return len(self.segments)

    @property
    def response_tokens(self) -> int:
        """Tokens the policy generated in this episode."""
        return sum(1 for s in self.trace.segment if s >= 0)

    @property
    def process_return(self) -> float:
        """Σ_t r̃_t = S_T (telescoping, REPRO_SPEC §4)."""
        return float(sum(self.process_rewards))

    def segment_token_counts(self) -> np.ndarray:
        """(T,) generated tokens per step, in step order."""
        seg = np.asarray(self.trace.segment)
        return np.bincount(seg[seg >= 0], minlength=self.num_steps)[: self.num_steps].astype(np.int64)


def collect_episodes(envs, policy: LMPolicy, *, indices: Sequence[int] | None = None, split: str = "train",
                     greedy: bool = False, seed: int | None = None) -> list[Episode]:
    """Run one episode in every sub-env of ``envs`` with ``policy``; return them in sub-env order.

    ``indices``: one problem index per sub-env (``None``: the env draws). A scorer failure surfaces
    as :class:`ScorerError` naming the step at which it happened.
    """
    mode = envs.metadata.get("autoreset_mode")
    if mode != AutoresetMode.DISABLED:
        raise ConfigError(f"collect_episodes needs a vector env with autoreset_mode=DISABLED (one episode "
                          f"per sub-env), got {mode!r}; build it with gym.make_vec(..., "
                          "vectorization_mode='vector_entry_point', autoreset_mode=AutoresetMode.DISABLED)")
    n = envs.num_envs
    options: dict = {"split": split}
    if indices is not None:
        options["index"] = [int(i) for i in indices]
    observations, info = envs.reset(seed=seed, options=options)
    policy.reset(list(observations))
    episodes = [Episode(trace=policy.traces[i], problem_id=str(info.get("problem_id", [""] * n)[i]))
                for i in range(n)]
    done = np.zeros(n, dtype=bool)
    step = 0
    while not done.all():
        live = ~done
        actions = policy.act(list(observations), active=live.tolist(), greedy=greedy)
        try:
            observations, rewards, terminated, truncated, info = envs.step(
                [a.text if a is not None else "." for a in actions])
        except ScorerError as e:
            raise ScorerError(f"the env's scorer failed at rollout step {step} "
                              f"(episodes {np.flatnonzero(live).tolist()}): {e}") from e
        for i in np.flatnonzero(live):
            _record(episodes[i], actions[i], float(rewards[i]), info, i,
                    bool(terminated[i]), bool(truncated[i]))
        done |= np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
        step += 1
    return episodes


def _record(episode: Episode, action, reward: float, info: dict, i: int, terminated: bool,
            truncated: bool) -> None:
    def get(key: str, default):
        if key in info and info.get(f"_{key}", np.ones(i + 1, dtype=bool))[i]:
            return info[key][i]
        return default

    episode.segments.append(action.text)
    episode.entropies.append(action.entropy)
    episode.env_rewards.append(reward)
    process_reward = float(get("process_reward", 0.0))
    episode.process_rewards.append(process_reward if np.isfinite(process_reward) else 0.0)
    episode.scored.append(bool(get("scored", False)))
    episode.J.append(float(get("J", float("nan"))))
    episode.J_baseline = float(get("J_baseline", episode.J_baseline))
    episode.backtracks += int(bool(get("backtrack", False)))
    overthinking = get("overthinking", None)
    episode.overthinking.append(None if overthinking is None else bool(overthinking))
    stated = get("answer_stated", None)
    if stated is not None:
        episode.answer_stated = bool(stated)
    episode.after_answer.append(bool(get("after_answer", False)))
    if terminated or truncated:
        episode.outcome = float(get("outcome_reward", 0.0))
        episode.correct = bool(get("correct", False))
        episode.truncated = truncated


def rescore_topk(episode: Episode, reward: RewardConfig) -> None:
    """Keep process rewards only at the top-k segments by first-token entropy plus the end of the
    reasoning (§4).

    The paper's ``selection = "topk_entropy"`` needs the whole trajectory, so the env scores every
    boundary online and this re-selects afterwards: J_t depends only on ``q + τ≤t``, so the J the env
    recorded at the chosen points are exactly what a batch re-score would return. Then
    :func:`repro_env.reward.reward_points` computes r̃ over the chosen points only (S_T differs from
    the all-points one through the stability term). Steps without a J are never chosen: a context overflow, and the
    segment that states the final answer (the env scores no J there, REPRO_SPEC §4). So the last step
    with a J, the end of the reasoning, is always chosen, and the final-answer segment never is.
    """
    J = np.asarray([episode.J_baseline, *episode.J], dtype=np.float64)  # (T+1,)
    if not np.isfinite(J[0]) or not np.isfinite(J[1:]).any():
        return
    parts = reward_points(reward, J, episode.entropies, selection="topk_entropy")
    episode.process_rewards = parts.segment_rewards.tolist()
    episode.scored = parts.scored.tolist()


@dataclass
class TokenBatch:
    """Episodes laid out for one forward pass (module docstring)."""

    input_ids: torch.Tensor
    """(B, L) right-padded token ids."""
    attention_mask: torch.Tensor
    """(B, L) 1 on real tokens."""
    response_mask: torch.Tensor
    """(B, L−1) True where the predicted token ``input_ids[:, 1:]`` was generated by the policy."""
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    """Named (B, L−1) per-position tensors (advantages, old log-probs, returns ...)."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, rows: Sequence[int] | slice) -> TokenBatch:
        """The sub-batch of ``rows``, trimmed to its longest sequence."""
        ids, attention = self.input_ids[rows], self.attention_mask[rows]  # (b, L)
        L = max(2, int(attention.sum(1).max()))
        return TokenBatch(ids[:, :L], attention[:, :L], self.response_mask[rows][:, : L - 1],
                          {k: v[rows][:, : L - 1] for k, v in self.values.items()})


def pack(episodes: Sequence[Episode], pad_id: int, per_token: dict[str, Sequence[np.ndarray]] | None = None,
         device: torch.device | str = "cpu") -> TokenBatch:
    """Right-pad the episodes' traces into a :class:`TokenBatch`.

    ``per_token[name][b]`` holds one value per *generated* token of episode b, in order; it is
    scattered to the positions that predict those tokens (0 elsewhere).
    """
    B = len(episodes)
    L = max(2, max(len(e.trace.ids) for e in episodes))
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)  # (B, L)
    attention = torch.zeros(B, L, dtype=torch.long)  # (B, L)
    response = torch.zeros(B, L - 1, dtype=torch.bool)  # (B, L−1)
    values = {name: torch.zeros(B, L - 1) for name in (per_token or {})}  # (B, L−1) each
    for b, episode in enumerate(episodes):
        ids = episode.trace.ids
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[b, : len(ids)] = 1
        generated = torch.tensor(episode.trace.segment[1:], dtype=torch.long) >= 0  # (len−1,)
        response[b, : len(ids) - 1] = generated
        positions = torch.nonzero(generated)[:, 0]  # (N_b,)
        for name, rows in (per_token or {}).items():
            row = torch.as_tensor(np.asarray(rows[b], dtype=np.float32))  # (N_b,)
            if row.shape[0] != positions.shape[0]:
                raise TrainingError(f"per_token[{name!r}][{b}] has {row.shape[0]} values for "
                                 f"{positions.shape[0]} generated tokens")
            values[name][b, positions] = row
    return TokenBatch(input_ids.to(device), attention.to(device), response.to(device),
                      {k: v.to(device) for k, v in values.items()})


def episode_metrics(episode: Episode) -> dict[str, float | None]:
    """One response's figures; ``None`` where a figure does not apply (never a made-up zero).

    :func:`summarize` averages these over a batch, and ``repro-env compare`` bootstraps them
    over problems and seeds, so a new per-response metric is added here once.
    """
    figures = dict.fromkeys(FIGURE_KEYS)
    if episode.num_steps and None not in episode.overthinking and len(episode.overthinking) == episode.num_steps:
        after = episode.after_answer if episode.answer_stated is not None else None
        marks = SegmentMarks(tuple(episode.overthinking), None if after is None else tuple(after),
                             episode.answer_stated)
        figures = response_figures(marks, episode.segment_token_counts().tolist())
    return {
        "accuracy": float(episode.correct),
        "outcome_reward": episode.outcome,
        "process_return": episode.process_return,
        "mean_return": float(sum(episode.env_rewards)),
        "tokens_per_response": float(episode.response_tokens),
        "segments_per_response": float(episode.num_steps),
        "backtracks_per_response": float(episode.backtracks),
        "truncated": float(episode.truncated),
        **figures,
    }


def summarize(episodes: Sequence[Episode]) -> dict[str, float]:
    """Per-batch means of :func:`episode_metrics`, each over the episodes where it applies."""
    rows = [episode_metrics(e) for e in episodes] or [episode_metrics(Episode(trace=Trace([], [], [], "")))]
    means = {}
    for key in rows[0]:
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            means[key] = sum(values) / len(values)
    return means
