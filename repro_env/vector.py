"""ReasoningVectorEnv: N reasoning envs whose new segments are scored in one batched scorer call."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from repro_env.config import describe
from repro_env.env import ReasoningEnv, reset_options, start_episodes
from repro_env.errors import ActionError, ContextLengthError, TaskSpecError
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

    Arguments are checked whole before any sub-env changes: ``step`` takes a list or tuple of
    exactly ``num_envs`` actions (``ActionError`` otherwise, or naming the sub-env whose action is
    invalid); ``reset`` takes ``seed`` as None, an int >= 0 (sub-env i gets ``seed + i``) or a list
    of ``num_envs`` of those, and ``index`` / ``reset_mask`` with one entry per sub-env
    (``TaskSpecError`` otherwise).
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
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise TaskSpecError(f"num_envs must be an int >= 1, got {describe(num_envs)}")
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
        seeds = self._seeds(seed)
        options = reset_options(options)
        mask = self._reset_mask(options.pop("reset_mask", None))
        index = options.pop("index", None)
        index = index.tolist() if isinstance(index, np.ndarray) else index
        indices = list(index) if isinstance(index, list | tuple) else [index] * self.num_envs
        if len(indices) != self.num_envs:
            raise TaskSpecError(f"reset options: 'index' needs one entry per sub-env ({self.num_envs}), "
                                f"got {describe(index)}")
        subs = {i: options if indices[i] is None else {**options, "index": indices[i]}
                for i in range(self.num_envs) if mask[i]}
        checked = {}
        for i, sub in subs.items():  # every sub-env's options are checked before any sub-env resets
            try:
                checked[i] = (seeds[i], *self.envs[i].check_reset_options(sub))
            except TaskSpecError as e:
                raise TaskSpecError(f"sub-env {i}: {e}") from e
        super().reset(seed=seed if isinstance(seed, int) else None)
        infos = self._start(checked)
        return self._observations(), infos

    def _start(self, subs: dict[int, tuple[int | None, str, int | None]]) -> dict[str, Any]:
        """Reset the given sub-envs, each with its (seed, split, index), in one batched session start;
        return their infos.

        As in the single env, the old episodes end either way: after a failure, each of these
        sub-envs needs a new reset.
        """
        infos: dict[str, Any] = {}
        for i, info in zip(subs, start_episodes([self.envs[i] for i in subs], list(subs.values())), strict=True):
            infos = self._add_info(infos, info, i)
            self._autoreset[i] = False
        return infos

    def _seeds(self, seed: Any) -> list[int | None]:
        """One seed per sub-env: ``seed + i`` for an int, the list itself for a list."""
        def valid(s: Any) -> bool:
            return s is None or (isinstance(s, int) and not isinstance(s, bool) and s >= 0)

        if valid(seed):
            return [None if seed is None else seed + i for i in range(self.num_envs)]
        if isinstance(seed, list | tuple) and len(seed) == self.num_envs and all(map(valid, seed)):
            return list(seed)
        raise TaskSpecError(f"reset seed must be None, an int >= 0 (sub-env i gets seed + i) or a list of "
                            f"{self.num_envs} ints >= 0 or None (one per sub-env), got {describe(seed)}")

    def _reset_mask(self, mask: Any) -> np.ndarray:
        if mask is None:
            return np.ones(self.num_envs, dtype=bool)
        array = np.asarray(mask)
        if array.dtype != bool or array.shape != (self.num_envs,):
            raise TaskSpecError(f"reset options: 'reset_mask' must be a bool array of shape ({self.num_envs},) "
                                f"(one entry per sub-env), got {describe(mask)}")
        return array

    def _observations(self) -> tuple[str, ...]:
        return tuple(env.episode.text if env.episode else "" for env in self.envs)

    def step(self, actions):
        actions = actions.tolist() if isinstance(actions, np.ndarray) else actions
        if not isinstance(actions, list | tuple) or len(actions) != self.num_envs:
            got = f"{type(actions).__name__} of length {len(actions)}" if isinstance(actions, Sized) \
                else describe(actions)
            raise ActionError(f"actions must be a list or tuple of {self.num_envs} segments (one str per "
                              f"sub-env), got {got}")
        disabled = self.metadata["autoreset_mode"] == AutoresetMode.DISABLED
        live = [i for i, env in enumerate(self.envs) if not self._autoreset[i]
                and not (disabled and env.episode is not None and env.episode.done)]
        segments = {}
        for i in live:  # every action is checked before any session changes
            try:
                segments[i] = self.envs[i].prepare_segment(actions[i])
            except ActionError as e:
                raise ActionError(f"actions[{i}]: {e}") from e
        # Autoresets first: if starting them fails, no session has changed and the step can be retried.
        infos = self._start({i: (None, self.envs[i].split, None) for i in range(self.num_envs) if self._autoreset[i]})
        scores = self._append_all(live, segments)
        rewards = np.zeros(self.num_envs)
        terminations = np.zeros(self.num_envs, dtype=bool)
        truncations = np.zeros(self.num_envs, dtype=bool)
        for i in segments:
            env = self.envs[i]
            _, rewards[i], terminations[i], truncations[i], info = env.finish_step(env.episode, segments[i], scores[i])
            infos = self._add_info(infos, info, i)
        self._autoreset = (terminations | truncations) & (not disabled)
        return self._observations(), rewards, terminations, truncations, infos

    def _append_all(self, live: list[int], segments: dict[int, str]) -> dict[int, StepScore | None]:
        sessions = [self.envs[i]._require_episode().session for i in live]
        score = {i: not self.envs[i].ends_reasoning_at(segments[i]) for i in live}  # no J for a final answer
        try:
            results = self.scorer.sessions_append(sessions, [segments[i] for i in live], [score[i] for i in live])
            return dict(zip(live, results, strict=True))
        except ContextLengthError:
            # Some sub-env overflowed its context: find which by appending one at a time.
            scores: dict[int, StepScore | None] = {}
            for i, session in zip(live, sessions, strict=True):
                try:
                    scores[i] = session.append(segments[i], score=score[i])
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
