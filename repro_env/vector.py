"""ReasoningVectorEnv: N reasoning envs whose new segments are scored in one batched scorer call."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from repro_env.env import ReasoningEnv
from repro_env.errors import ContextLengthError, TaskSpecError
from repro_env.scoring import StepScore


class ReasoningVectorEnv(VectorEnv):
    """``num_envs`` copies of a :class:`ReasoningEnv` sharing one scorer.

    Each ``step`` validates every action, then appends all new segments with **one**
    ``scorer.sessions_append`` call, then accounts rewards exactly as the single env does, so the
    rewards and infos equal ``num_envs`` independent envs stepped with the same actions.

    ``autoreset_mode``:

    - ``NEXT_STEP`` (default, Gymnasium 1.x): the step after a sub-env ends resets it, ignores its
      action and returns the new prompt with reward 0 and both flags False.
    - ``DISABLED``: a finished sub-env is left alone until ``reset(options={"reset_mask": m})``;
      its actions are ignored, and it returns its final observation, reward 0, both flags False
      and no info. Trainers that collect exactly one episode per sub-env use this.

    ``reset(options=...)`` takes the single env's options, where ``index`` may also be a sequence
    with one problem index per sub-env (a GRPO group: G sub-envs share one index).
    Observations are tuples of strings; infos are dicts of arrays with ``_key`` masks.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": ["ansi"]}

    def __init__(self, task: Any = "RePro-Math-v0", num_envs: int = 1, *,
                 autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP, **kwargs: Any):
        modes = {"next_step": AutoresetMode.NEXT_STEP, "nextstep": AutoresetMode.NEXT_STEP,
                 "disabled": AutoresetMode.DISABLED}
        mode = modes.get(str(getattr(autoreset_mode, "value", autoreset_mode)).lower())
        if mode is None:
            raise TaskSpecError(f"autoreset_mode must be 'next_step' or 'disabled' (AutoresetMode.NEXT_STEP "
                                f"or DISABLED), got {autoreset_mode!r}")
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        if num_envs < 1:
            raise TaskSpecError(f"num_envs must be an int >= 1, got {num_envs!r}")
        self.envs = [ReasoningEnv(task, **kwargs)]
        scorer = self.envs[0].scorer
        self.envs += [ReasoningEnv(self.envs[0].spec_task, scorer=scorer, split=self.envs[0].split,
                                   render_mode=kwargs.get("render_mode"))
                      for _ in range(num_envs - 1)]
        self.scorer = scorer
        self.num_envs = num_envs
        self.render_mode = kwargs.get("render_mode")
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._autoreset = np.zeros(num_envs, dtype=bool)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed if isinstance(seed, int) else None)
        seeds = seed if isinstance(seed, list) else [None if seed is None else seed + i for i in range(self.num_envs)]
        options = dict(options or {})
        mask = np.asarray(options.pop("reset_mask", np.ones(self.num_envs, dtype=bool)), dtype=bool)
        index = options.pop("index", None)
        indices = list(index) if isinstance(index, list | tuple | np.ndarray) else [index] * self.num_envs
        if len(indices) != self.num_envs or mask.shape != (self.num_envs,):
            raise TaskSpecError(f"reset options: 'index' and 'reset_mask' need one entry per sub-env "
                                f"({self.num_envs}), got {index!r} and {mask.tolist()}")
        infos: dict[str, Any] = {}
        for i, env in enumerate(self.envs):
            if mask[i]:
                sub = options if indices[i] is None else {**options, "index": int(indices[i])}
                _, info = env.reset(seed=seeds[i], options=sub)
                infos = self._add_info(infos, info, i)
                self._autoreset[i] = False
        return self._observations(), infos

    def _observations(self) -> tuple[str, ...]:
        return tuple(env.episode.text if env.episode else "" for env in self.envs)

    def step(self, actions):
        actions = list(actions)
        disabled = self.metadata["autoreset_mode"] == AutoresetMode.DISABLED
        live = [i for i, env in enumerate(self.envs) if not self._autoreset[i]
                and not (disabled and env.episode is not None and env.episode.done)]
        segments = {i: self.envs[i].prepare_segment(actions[i]) for i in live}
        scores = self._append_all(live, segments)
        rewards = np.zeros(self.num_envs)
        terminations = np.zeros(self.num_envs, dtype=bool)
        truncations = np.zeros(self.num_envs, dtype=bool)
        infos: dict[str, Any] = {}
        for i, env in enumerate(self.envs):
            if i in segments:
                _, rewards[i], terminations[i], truncations[i], info = env.finish_step(
                    env.episode, segments[i], scores[i])
            elif self._autoreset[i]:
                _, info = env.reset()
            else:
                continue
            infos = self._add_info(infos, info, i)
        self._autoreset = (terminations | truncations) & (not disabled)
        return self._observations(), rewards, terminations, truncations, infos

    def _append_all(self, live: list[int], segments: dict[int, str]) -> dict[int, StepScore | None]:
        sessions = [self.envs[i]._require_episode().session for i in live]
        try:
            results = self.scorer.sessions_append(sessions, [segments[i] for i in live])
            return dict(zip(live, results, strict=True))
        except ContextLengthError:
            # Some sub-env overflowed its context: find which by appending one at a time.
            scores: dict[int, StepScore | None] = {}
            for i, session in zip(live, sessions, strict=True):
                try:
                    scores[i] = session.append(segments[i])
                except ContextLengthError:
                    scores[i] = None
            return scores

    def render(self) -> tuple[str | None, ...]:
        return tuple(env.render() for env in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()


def make_vector_env(task: Any, num_envs: int = 1, **kwargs: Any) -> gym.vector.VectorEnv:
    """Vector entry point registered for every task id (``gym.make_vec(..., "vector_entry_point")``)."""
    return ReasoningVectorEnv(task, num_envs=num_envs, **kwargs)
