"""Overthinking measures (repro_env.overthinking): the marks by hand, then end to end through the env,
``collect_episodes``, ``episode_metrics`` and ``summarize`` with the bundled model's tokenizer."""

from __future__ import annotations

import re
from types import SimpleNamespace

import gymnasium as gym
import pytest
import torch

from repro_env.agents.episodes import collect_episodes, episode_metrics, summarize
from repro_env.agents.policy import Trace
from repro_env.errors import ConfigError
from repro_env.overthinking import SegmentMarks, mark_segments, overthinking_segments, response_figures
from repro_env.tasks import DEFAULT_BACKTRACK_PATTERNS, load_task

FINAL = re.compile(r"\\boxed\{")
TASK = load_task("RePro-Math-v0")

CLEAN = ["12 + 5 = 17.\n\n", "The answer is \\boxed{17}.\n\n"]
RECHECK = ["12 + 5 = 17.\n\n", "Let me double-check: 12 + 5 = 17. Yes.\n\n", "The answer is \\boxed{17}.\n\n"]
REPEAT = ["12 + 5 = 17.\n\n", "So 12 + 5 = 17 again.\n\n", "The answer is \\boxed{17}.\n\n"]
WRONG = ["12 + 5 = 18.\n\n", "The answer is \\boxed{18}.\n\n"]
# Token counts of these segments with the bundled tokenizer (one digit per token).
TOKENS = {CLEAN[0]: 14, RECHECK[1]: 23, REPEAT[1]: 18, CLEAN[1]: 13, WRONG[0]: 14, WRONG[1]: 13}


def marks(segments, location="step_result"):
    return mark_segments(segments, "17", location=location, is_backtrack=TASK.is_backtrack, final_answer=FINAL)


# ---------------------------------------------------------------- marks and figures by hand


def test_overthinking_segments_are_backtracks_or_repeated_computations():
    segments = ["3 + 4 = 7.\n\n", "Hmm, let me think.\n\n", "7 * 2 = 14.\n\n", "So 3 + 4 = 7 again.\n\n",
                "4 + 3 = 7.\n\n", "The answer is \\boxed{14}.\n\n"]
    # 4 + 3 is a different computation from 3 + 4 (no commutativity).
    assert overthinking_segments(segments, TASK.is_backtrack) == [False, True, False, True, False, False]
    assert overthinking_segments(["2 * 3 = 6, and 2 * 3 = 6."], TASK.is_backtrack) == [True]


def test_a_clean_solution_has_no_tokens_after_the_first_correct_answer():
    m = marks(CLEAN)
    assert m == SegmentMarks((False, False), (False, False), True)
    assert response_figures(m, [14, 13]) == {"tokens_after_first_correct": 0.0, "overthinking": 0.0,
                                             "overthinking_segments": 0.0, "overthinking_tokens": 0.0}


def test_a_recheck_of_the_last_step_is_exactly_the_tokens_after():
    m = marks(RECHECK)
    assert m.after_answer == (False, True, False)  # the final-answer segment is not reasoning
    figures = response_figures(m, [14, 23, 13])
    assert figures == {"tokens_after_first_correct": 23.0, "overthinking": 1.0, "overthinking_segments": 1.0,
                       "overthinking_tokens": 23.0}


def test_the_answer_stated_only_in_the_final_answer_segment_or_never_gives_none():
    assert response_figures(marks(WRONG), [14, 13])["tokens_after_first_correct"] is None
    inside_final = ["12 + 4 = 16.\n\n", "16 + 1 = 17. The answer is \\boxed{17}.\n\n"]
    assert marks(inside_final).answer_stated is False


def test_segments_after_the_final_answer_are_not_reasoning_either():
    # REPRO_SPEC §4: the reasoning ends before the first final-answer segment, whatever follows it
    after_final = ["Let me think.\n\n", "The answer is \\boxed{17}.\n\n", "Check: 12 + 5 = 17.\n\n"]
    m = marks(after_final)
    assert m.answer_stated is False and m.after_answer == (False, False, False)
    assert response_figures(m, [4, 13, 9])["tokens_after_first_correct"] is None


def test_a_task_that_cannot_locate_the_answer_reports_none_never_zero():
    m = marks(RECHECK, location="none")
    assert m.after_answer is None and m.answer_stated is None
    figures = response_figures(m, [14, 23, 13])
    assert figures["tokens_after_first_correct"] is None and figures["overthinking"] == 1.0


def test_wrong_token_count_is_an_error():
    with pytest.raises(ConfigError, match=r"field 'tokens' must hold one count per segment \(2\), got 3 counts"):
        response_figures(marks(CLEAN), [1, 2, 3])


def test_the_default_patterns_are_the_tasks():
    assert TASK.backtrack_patterns == DEFAULT_BACKTRACK_PATTERNS


# ---------------------------------------------------------------- end to end through the env's public API


class ScriptedPolicy:
    """Writes fixed segments, tokenised with the bundled tokenizer as the LM policy's traces are."""

    def __init__(self, tokenizer, scripts):
        self.tokenizer, self.scripts = tokenizer, scripts

    def reset(self, observations):
        self.traces = [Trace.start(self.tokenizer, o) for o in observations]
        self.steps = [0] * len(observations)

    def act(self, observations, *, active, greedy):
        actions = []
        for i, live in enumerate(active):
            if not live:
                actions.append(None)
                continue
            text = self.scripts[i][self.steps[i]]
            self.traces[i].extend(self.tokenizer(text, add_special_tokens=False)["input_ids"], text,
                                  segment=self.steps[i])
            self.steps[i] += 1
            actions.append(SimpleNamespace(text=text, entropy=0.0))
        return actions


ITEMS = [{"question": "Mia has 12 apples. She buys 5 more apples. How many apples does Mia have now?",
          "answer": "17"},
         {"question": "Tom has 10 cards. He finds 7 more cards. How many cards does Tom have now?", "answer": "17"}]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from repro_env.assets import bundled_model_dir

    return AutoTokenizer.from_pretrained(bundled_model_dir())


def rollout(tokenizer, scripts, **overrides):
    torch.set_num_threads(1)
    envs = gym.make_vec("RePro-Math-v0", num_envs=len(scripts), vectorization_mode="vector_entry_point",
                        autoreset_mode="disabled", source={"kind": "inline", "items": ITEMS},
                        splits={"test_fraction": 0.5}, **overrides)
    try:
        return collect_episodes(envs, ScriptedPolicy(tokenizer, scripts), indices=[0] * len(scripts))
    finally:
        envs.close()


def test_episode_metrics_through_the_env_count_the_bundled_tokens(tokenizer):
    assert {s: len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in TOKENS} == TOKENS
    episodes = rollout(tokenizer, [CLEAN, RECHECK, REPEAT, WRONG])
    rows = [episode_metrics(e) for e in episodes]
    assert [r["tokens_after_first_correct"] for r in rows] == [0.0, 23.0, 18.0, None]
    assert [r["overthinking"] for r in rows] == [0.0, 1.0, 1.0, 0.0]
    assert [r["overthinking_segments"] for r in rows] == [0.0, 1.0, 1.0, 0.0]
    assert [r["overthinking_tokens"] for r in rows] == [0.0, 23.0, 18.0, 0.0]
    assert [r["accuracy"] for r in rows] == [1.0, 1.0, 1.0, 0.0]
    means = summarize(episodes)
    assert means["tokens_after_first_correct"] == pytest.approx((0 + 23 + 18) / 3)  # the wrong one skipped
    assert means["overthinking"] == pytest.approx(0.5)
    assert means["overthinking_tokens"] == pytest.approx((23 + 18) / 4)


def test_a_task_without_answer_location_leaves_the_figure_out_of_the_means(tokenizer):
    episodes = rollout(tokenizer, [CLEAN, RECHECK], answer_location="none")
    assert [episode_metrics(e)["tokens_after_first_correct"] for e in episodes] == [None, None]
    means = summarize(episodes)
    assert "tokens_after_first_correct" not in means
    assert means["overthinking"] == pytest.approx(0.5) and means["overthinking_tokens"] == pytest.approx(11.5)
