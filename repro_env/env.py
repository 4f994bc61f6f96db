"""ReasoningEnv: one Gymnasium step is one chain-of-thought segment, rewarded by RePro."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from repro_env import reward as rp
from repro_env.config import describe
from repro_env.errors import ActionError, ContextLengthError, TaskSpecError
from repro_env.overthinking import SegmentMarker
from repro_env.problems import Problem
from repro_env.scoring import (
    Scorer,
    ScorerConfig,
    ScoringSession,
    StepScore,
    check_scorer,
    shared_scorer,
    start_sessions,
)
from repro_env.spaces import ReasoningText
from repro_env.tasks import TaskSpec, load_task, make_source, resolve_task


class Drawn(NamedTuple):
    """A problem chosen for the next episode, with its rendered prompt and answer."""

    problem: Problem
    prompt: str
    answer: str


@dataclass
class EpisodeState:
    """The state of one episode: the problem, the reasoning so far and the scored J history."""

    problem: Problem
    prompt: str
    answer: str
    """The answer string whose log-prob is J (the task's answer template applied)."""
    session: ScoringSession
    segments: list[str] = field(default_factory=list)
    J_points: list[float] = field(default_factory=list)
    """J at the baseline and at every scored point so far: [J_0, J_t1, J_t2, ...]."""
    rewards: list[float] = field(default_factory=list)
    marker: SegmentMarker | None = None
    """The overthinking marks of the segments so far (:mod:`repro_env.overthinking`)."""
    done: bool = False

    @property
    def text(self) -> str:
        return self.prompt + "".join(self.segments)


class ReasoningEnv(gym.Env[str, str]):
    r"""A reasoning task in which each step appends one chain-of-thought segment.

    ## Description

    The agent answers a question by writing its reasoning one segment at a time (by default a
    segment is a paragraph: text up to a blank line). After every segment a scorer model computes
    J, the mean log-probability of the true answer given the question and the reasoning so far
    (REPRO_SPEC §2), and the env pays the RePro process reward: how much this segment moved J
    towards the answer, and how steadily (§3–§4). The reasoning ends before the segment that states
    the final answer; that segment is not scored and pays the outcome reward: 1 if the final answer
    verifies against the ground truth.

    ## Observation space

    ``ReasoningText(max_length = max prompt length + max_steps · max_segment_chars)``: the prompt
    followed by all segments so far (any unicode string). After ``reset`` it is the prompt.

    ## Action space

    ``ReasoningText(min_length=1, max_length=limits.max_segment_chars, blank=False)``: the next
    segment. The task delimiter (``"\n\n"``) is appended when the segment does not end with it.
    ``step`` raises ``ActionError`` exactly for what ``action_space.contains`` rejects: a non-string,
    an empty or whitespace-only string, a string longer than ``max_segment_chars``, or one with a
    lone surrogate (``"\ud800"``, which no tokenizer can encode). Stepping a finished episode, or
    one whose ``reset`` failed, raises ``gymnasium.error.ResetNeeded``.

    ## Rewards

    With J_0 the baseline (answer right after the question) and J_t after segment t::

        Δ_t      = (J_t − J_0) / max(|J_0|, ε)
        S_magn,t = tanh(Δ_t − 1) + 1
        S_stab,t = (τ_K(EMA_β(J_0..J_t)) + 1) / 2          Kendall's tau-a against time
        S_t      = (1 − w)·S_magn,t + w·S_stab,t
        r̃_t      = S_t − S_{t'}                             t' the previous scored point (S_0 = 0)
        reward_t = α · r̃_t  +  [final step] · 1{answer verifies}

    with α, w, β, ε from the task's ``reward`` section. With ``selection: all`` the end of the
    reasoning is always a scored point: the segment before the one that states the final answer, or
    the last segment of a truncated episode (which states none).

    The segment that states the final answer (matches the task's ``final_answer_pattern``) is not
    scored (REPRO_SPEC §4): once the answer is written, J no longer measures confidence in it (the
    model expects the end of the text, not the answer again), so scoring it would punish the act of
    concluding. Its process reward is 0, its J-derived components are NaN, and no J is computed for
    it (the scorer only appends it); trainers give its tokens the outcome advantage only.

    Unscored segments earn 0 and the next scored one earns the difference since the last scored
    point, so the process rewards of an episode always sum to α·S at its last scored point
    (telescoping). With ``selection: entropy_threshold`` the env cannot know that a segment ends
    the reasoning until the next one states the answer, so a terminated episode's end of the
    reasoning is scored only when its entropy passes the threshold (use ``all``, and re-select
    points afterwards, for the paper's top-k rule).

    ``info`` carries every component: ``J``, ``J_baseline``, ``magnitude``, ``stability``,
    ``process_score``, ``process_reward`` (r̃, before α), ``outcome_reward``, ``correct`` (last step),
    ``scored``, ``entropy``, ``segment_tokens``, ``total_tokens``, ``backtrack``, ``context_overflow``;
    unscored steps report NaN for the J-derived components. Overthinking marks
    (:mod:`repro_env.overthinking`): ``overthinking`` (a backtrack or a repeated ``a op b``) and,
    for tasks with ``answer_location: step_result`` only, ``answer_stated`` (the reasoning so far
    has stated the gold answer) and ``after_answer`` (this reasoning segment comes after it).

    ## Starting state

    ``reset`` draws a problem uniformly from the split with the env's ``np_random``. ``options``:
    ``{"split": "train"|"test", "index": i}`` selects one problem (so a GRPO group of G envs can
    share it). ``reset`` info: ``problem_id`` and ``J_baseline`` (the ground truth is not exposed).

    ## Episode end

    Termination: the segment contains the final answer (the task's ``final_answer_pattern``, by
    default ``\boxed{``) or the scorer's end-of-text token. Truncation: ``max_steps`` segments,
    ``max_total_tokens`` tokens of question + reasoning, or the scorer's context limit (a segment
    that would overflow the context is not appended). A truncated episode has outcome 0.

    ## Arguments

    ``gym.make("RePro-Math-v0", **overrides)`` or ``ReasoningEnv(task, scorer=None, split="train",
    render_mode=None, **overrides)``. ``task``: a TaskSpec, a YAML path or a registered id.
    ``scorer``: a ``Scorer`` instance, a ``ScorerConfig`` or a mapping of its fields (default: the
    task's scorer). ``overrides``: any TaskSpec field (``reward={"alpha": 0.2}``,
    ``limits={"max_steps": 8}``, ``source={...}``); unknown keys raise ``TaskSpecError``.

    ## Version history

    * v0: initial release.
    * v0, changed in place (issue 24): the segment that states the final answer is no longer
      scored and needs no J (REPRO_SPEC §4); it used to be the last scored point, so episodes that
      end with an answer now pay α·S at the end of the reasoning instead of α·S_T.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4}

    def __init__(
        self,
        task: TaskSpec | str | Path = "RePro-Math-v0",
        *,
        scorer: Scorer | ScorerConfig | Mapping[str, Any] | None = None,
        split: str = "train",
        render_mode: str | None = None,
        **overrides: Any,
    ):
        self.spec_task = resolve_task(task, overrides)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise TaskSpecError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}"
            )
        if self.spec_task.reward.selection == "topk_entropy":
            raise TaskSpecError(
                f"{self.spec_task.id}: field 'reward.selection' = 'topk_entropy' needs the whole "
                "trajectory; online envs support 'all' or 'entropy_threshold' (trainers apply top-k "
                "when they re-score finished rollouts)"
            )
        self.render_mode = render_mode
        self.source = make_source(self.spec_task)
        self.source.split(split)  # an unknown split fails here, not at the first reset
        self.split = split
        self.scorer = _resolve_scorer(scorer, self.spec_task)  # last: loading a model is the slow part
        limits = self.spec_task.limits
        self.action_space = ReasoningText(limits.max_segment_chars, min_length=1, blank=False)
        self.observation_space = ReasoningText(
            self.spec_task.max_prompt_chars + limits.max_steps * (limits.max_segment_chars
                                                                  + len(self.spec_task.delimiter))
        )
        self.episode: EpisodeState | None = None

    # -- Gymnasium API -------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        split, index = self.check_reset_options(options)
        info = start_episodes([self], [(seed, split, index)])[0]
        return self.episode.text, info

    def step(self, action: str):
        episode = self._require_episode()
        segment = self.prepare_segment(action)
        try:
            step = episode.session.append(segment, score=not self.ends_reasoning_at(segment))
        except ContextLengthError:
            step = None
        return self.finish_step(episode, segment, step)

    def render(self) -> str | None:
        if self.episode is None:
            return None
        text = self.transcript(self.episode, colour=self.render_mode == "human")
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def close(self) -> None:
        self._end_episode()

    # -- steps in pieces, so that the vector env can batch the scorer call ----------------------

    def check_reset_options(self, options: Mapping[str, Any] | None) -> tuple[str, int | None]:
        """The split and problem index (``None``: draw one) that ``reset`` options ask for.

        Raises ``TaskSpecError`` for anything ``reset`` would reject on its options, before
        ``reset`` changes any state.
        """
        options = reset_options(options)
        unknown = set(options) - {"split", "index"}
        if unknown:
            raise TaskSpecError(f"reset options: unknown key(s) {sorted(unknown, key=str)}; valid: 'split', 'index'")
        split = options.get("split", self.split)
        size = self.source.size(split)
        index = options.get("index")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int | np.integer)
                                  or not 0 <= index < size):
            raise TaskSpecError(f"reset options: 'index' must be an int in [0, {size}), got {describe(index)}")
        return split, None if index is None else int(index)

    def draw_problem(self, split: str, index: int | None) -> Drawn:
        """The problem of the next episode (``index``, or one drawn with ``np_random``), rendered."""
        if index is None:
            index = int(self.np_random.integers(self.source.size(split)))
        problem = self.source.get(split, index)
        prompt, answer = self.spec_task.render_prompt(problem), self.spec_task.render_answer(problem)
        if len(prompt) > self.spec_task.max_prompt_chars:
            raise TaskSpecError(f"{self.spec_task.id}: problem {problem.id} renders a prompt of {len(prompt)} "
                                f"characters, more than limits.max_prompt_chars = {self.spec_task.max_prompt_chars}")
        return Drawn(problem, prompt, answer)

    def start_episode(self, drawn: Drawn, session: ScoringSession) -> tuple[str, dict[str, Any]]:
        """Make ``drawn`` the current episode, scored by ``session``; ``reset``'s return value."""
        task = self.spec_task
        marker = SegmentMarker(drawn.problem.answer, location=task.answer_location, is_backtrack=task.is_backtrack,
                               final_answer=task.final_answer_regex)
        self.episode = EpisodeState(problem=drawn.problem, prompt=drawn.prompt, answer=drawn.answer,
                               session=session, J_points=[session.J_baseline], marker=marker)
        return self.episode.text, {"problem_id": drawn.problem.id, "J_baseline": session.J_baseline}

    def _end_episode(self) -> None:
        if self.episode is not None:
            if not self.episode.done:
                self.episode.session.close()
            self.episode = None

    def _require_episode(self) -> EpisodeState:
        if self.episode is None or self.episode.done:
            raise gym.error.ResetNeeded("call reset() before step(): the episode has ended or not started")
        return self.episode

    def prepare_segment(self, action: Any) -> str:
        """Validate an action and return the segment to append (delimiter added when missing).

        ``ActionError`` exactly when ``action_space.contains(action)`` is false.
        """
        problem = self.action_space.violation(action)
        if problem is not None:
            raise ActionError(f"action {problem}; an action is one reasoning segment: a str of 1 to "
                              f"{self.action_space.max_length} characters (limits.max_segment_chars), "
                              "not only whitespace")
        delimiter = self.spec_task.delimiter
        return action if action.endswith(delimiter) else action + delimiter

    def finish_step(self, episode: EpisodeState, segment: str, step: StepScore | None):
        """Account a scored (or context-overflowing, ``step=None``) segment: reward, flags, info."""
        task, limits = self.spec_task, self.spec_task.limits
        overflow = step is None
        if not overflow:
            episode.segments.append(segment)
        t = len(episode.segments)
        answered = not overflow and self.ends_reasoning_at(segment)
        terminated = answered or (not overflow and self._ends_text(segment))
        truncated = not terminated and (
            overflow or t >= limits.max_steps or step.total_tokens >= limits.max_total_tokens)
        info: dict[str, Any] = {
            "J": float("nan"), "J_baseline": episode.J_points[0], "magnitude": float("nan"),
            "stability": float("nan"), "process_score": float("nan"), "process_reward": 0.0,
            "outcome_reward": 0.0, "scored": False,
            "entropy": float("nan") if overflow else step.entropy,
            "segment_tokens": 0 if overflow else step.segment_tokens,
            "total_tokens": episode.session.total_tokens,
            "backtrack": task.is_backtrack(segment), "context_overflow": overflow,
            **self._overthinking_info(episode, segment),
        }
        if not overflow and not answered and self._selected(step, last=terminated or truncated):
            info.update(self._score_point(episode, step.J))
        if terminated or truncated:
            correct = terminated and task.verify("".join(episode.segments), episode.problem)
            info["correct"] = correct
            info["outcome_reward"] = float(correct)
            episode.done = True
            episode.session.close()  # no step follows: its cache can go now, not at the next reset
        reward = task.reward.alpha * info["process_reward"] + info["outcome_reward"]
        episode.rewards.append(reward)
        if self.render_mode == "human":
            self.render()
        return episode.text, reward, terminated, truncated, info

    def _selected(self, step: StepScore, *, last: bool) -> bool:
        reward_cfg = self.spec_task.reward
        if last or reward_cfg.selection == "all":
            return True
        return step.entropy >= reward_cfg.entropy_threshold

    def _score_point(self, episode: EpisodeState, J: float) -> dict[str, Any]:
        """Add a scored point and return its RePro components (REPRO_SPEC §3–§4)."""
        episode.J_points.append(J)
        parts = rp.reward_points(self.spec_task.reward, episode.J_points, selection="all")
        return {"J": J, "magnitude": float(parts.magnitude[-1]), "stability": float(parts.stability[-1]),
                "process_score": float(parts.score[-1]), "process_reward": float(parts.rewards[-1]), "scored": True}

    @staticmethod
    def _overthinking_info(episode: EpisodeState, segment: str) -> dict[str, bool]:
        """The segment's marks (:class:`repro_env.overthinking.SegmentMarker`): ``overthinking``;
        ``after_answer`` and ``answer_stated`` only for tasks that locate the answer in the reasoning."""
        overthinking, after = episode.marker.mark(segment)
        if after is None:
            return {"overthinking": overthinking}
        return {"overthinking": overthinking, "after_answer": after, "answer_stated": episode.marker.answer_stated}

    def ends_reasoning_at(self, segment: str) -> bool:
        """Whether ``segment`` states the final answer: it ends the episode and is not scored, so no J
        is computed for it (REPRO_SPEC §4, ``TaskSpec.split_response``'s rule for a response without a
        think block). The one place the env and the vector env decide this."""
        return not self.spec_task.split_response("", [segment]).segments

    def _ends_text(self, segment: str) -> bool:
        eos = self.scorer.eos_token
        return bool(eos and eos in segment)

    @staticmethod
    def transcript(episode: EpisodeState, colour: bool = False) -> str:
        """The prompt and each segment with its reward, for ``render``."""
        green, red, dim, end = ("\x1b[32m", "\x1b[31m", "\x1b[2m", "\x1b[0m") if colour else ("",) * 4
        lines = [f"{dim}{episode.prompt.rstrip()}{end}"]
        for segment, r in zip(episode.segments, episode.rewards, strict=False):
            c = green if r > 0 else red if r < 0 else dim
            lines.append(f"{c}[{r:+.4f}]{end} {segment.rstrip()}")
        return "\n".join(lines) + "\n"


def reset_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``reset``'s ``options`` as a dict; ``TaskSpecError`` unless a mapping or ``None``."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TaskSpecError(f"reset options must be a dict such as {{'split': 'test', 'index': 3}} or None, "
                            f"got {describe(options)}")
    return dict(options)


def _resolve_scorer(scorer: Scorer | ScorerConfig | Mapping[str, Any] | None, task: TaskSpec) -> Scorer:
    from repro_env.config import replace

    if scorer is None:
        return shared_scorer(task.scorer)
    if isinstance(scorer, ScorerConfig):
        return shared_scorer(scorer)
    if isinstance(scorer, Mapping):
        return shared_scorer(replace(task.scorer, scorer, source="scorer", error=TaskSpecError))
    if hasattr(scorer, "session") and hasattr(scorer, "sessions_append"):
        return check_scorer(scorer, "ReasoningEnv(scorer=...)")
    raise TaskSpecError(f"scorer must be a Scorer, a ScorerConfig, a mapping of its fields or None, "
                        f"got {type(scorer).__name__}")


def make_env(task: str | Path, **kwargs: Any) -> ReasoningEnv:
    """Entry point registered for every task id (``gym.make``)."""
    return ReasoningEnv(load_task(task), **kwargs)


def start_episodes(envs: Sequence[ReasoningEnv], starts: Sequence[tuple[int | None, str, int | None]]
                   ) -> list[dict[str, Any]]:
    """Reset each env to its checked ``(seed, split, index)``, the sessions of all of them started in one
    batched call of their shared scorer; each env's reset info. The old episodes end either way (the
    new sessions are built first): after a failure, each of these envs needs a new reset."""
    if not envs:
        return []
    drawn = []
    try:
        for env, (seed, split, index) in zip(envs, starts, strict=True):
            gym.Env.reset(env, seed=seed)
            drawn.append(env.draw_problem(split, index))
        sessions = start_sessions(envs[0].scorer, [(d.prompt, d.answer) for d in drawn])
    finally:
        for env in envs:
            env._end_episode()
    return [env.start_episode(d, session)[1] for env, d, session in zip(envs, drawn, sessions, strict=True)]
