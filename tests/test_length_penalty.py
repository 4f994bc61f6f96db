"""Kimi k1.5's length reward: the formula by hand, in GRPO's advantages, in the config and its YAML."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from repro_env.agents import grpo as grpo_module
from repro_env.agents.checkpoint import CONFIG
from repro_env.agents.episodes import Episode
from repro_env.agents.grpo import GRPO, GRPOBatch, GRPOConfig, grpo_token_advantages
from repro_env.agents.policy import Trace
from repro_env.agents.run_config import dump_config, load_config, resume_config
from repro_env.errors import ConfigError, RewardInputError
from repro_env.length_penalty import length_rewards

ROOT = Path(__file__).resolve().parent.parent


def test_mixed_lengths_by_hand():
    # min 10, max 50: λ = 0.5 − (len − 10)/40 = [0.5, 0.25, 0.0, −0.5]
    # correct keep λ; incorrect get min(0, λ): the short wrong one is not paid (0.25 → 0)
    got = length_rewards([10, 20, 30, 50], [True, False, True, False])
    np.testing.assert_allclose(got, [0.5, 0.0, 0.0, -0.5], rtol=0, atol=1e-15)


def test_an_all_incorrect_group_is_only_penalised():
    # λ = 0.5 − (len − 5)/20 = [0.5, 0.0, −0.5] → min(0, λ) = [0, 0, −0.5]
    got = length_rewards([5, 15, 25], [False, False, False])
    np.testing.assert_allclose(got, [0.0, 0.0, -0.5], rtol=0, atol=1e-15)


def test_equal_lengths_carry_no_length_signal():
    # max_len = min_len: 0/0 in the formula; no length information, so every λ is 0 (correct or not)
    np.testing.assert_array_equal(length_rewards([7, 7, 7], [True, False, True]), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(length_rewards([12], [True]), [0.0])  # a group of one
    assert length_rewards([], []).shape == (0,)


def test_min_and_max_are_taken_within_each_group():
    # group 0: lengths 1, 3 → λ = [0.5, −0.5]; group 1: 100, 200 → [0.5, −0.5]; group 2: equal → 0
    got = length_rewards([1, 100, 3, 200, 9, 9], [True] * 6, groups=[0, 1, 0, 1, 2, 2])
    np.testing.assert_allclose(got, [0.5, 0.5, -0.5, -0.5, 0.0, 0.0], rtol=0, atol=1e-15)


@pytest.mark.parametrize(("args", "message"), [
    (([3, -1], [True, True]), "lengths[1] must be a finite number >= 0 (tokens), got -1.0"),
    (([3, float("nan")], [True, True]), "lengths[1] must be a finite number >= 0 (tokens), got nan"),
    (([3, 4], [True]), "correct must have one flag per response (2), got [True] (list)"),
    (([3, 4], [1, 0]), "correct must hold bools (whether each answer verified), got [1, 0] (list)"),
    (([3, 4], [True, True], [0]), "groups must have one id per response (2), got [0] (list)"),
    (([[3, 4]], [True]), "lengths must be 1-D, got shape (1, 2)"),
])
def test_input_errors_name_the_argument_and_value(args, message):
    with pytest.raises(RewardInputError, match=re.escape(message)):
        length_rewards(*args)


# -- GRPO --------------------------------------------------------------------------------------


def episode(segment: list[int], correct: bool, process: list[float]) -> Episode:
    """An episode with prompt tokens (-1) and generated tokens in the given segments, all scored."""
    trace = Trace(ids=list(range(10, 10 + len(segment))), segment=segment, log_probs=[0.0] * len(segment),
                  text="", num_segments=len(process))
    return Episode(trace=trace, segments=["s"] * len(process), process_rewards=process,
                   scored=[True] * len(process), outcome=float(correct), correct=correct)


def group_of_three() -> list[Episode]:
    # 2, 4 and 6 generated tokens; the first two correct
    return [episode([-1, 0, 1], True, [0.4, 0.1]),
            episode([-1, 0, 0, 1, 1], True, [0.2, 0.2]),
            episode([-1, 0, 0, 0, 1, 1, 1], False, [0.3, -0.1])]


def test_grpo_advantages_with_the_length_penalty_by_hand():
    # lengths 2, 4, 6: λ = 0.5 − (len − 2)/4 = [0.5, 0, −0.5]; the third is wrong: min(0, −0.5) = −0.5
    # w = 0.4: R' = R + 0.4·[0.5, 0, −0.5] = [1.2, 1.0, −0.2]
    R = [1.2, 1.0, -0.2]
    mean = sum(R) / 3
    std = math.sqrt(sum((r - mean) ** 2 for r in R) / (3 - 1))  # sample std, 0.7572
    A = [(r - mean) / (std + 1e-6) for r in R]  # [0.7043, 0.4402, −1.1446]
    adv = grpo_token_advantages(group_of_three(), [0, 0, 0], alpha=0.0, length_penalty=0.4)
    for a, expected, n in zip(adv, A, (2, 4, 6), strict=True):
        np.testing.assert_allclose(a, [expected] * n, rtol=1e-12)
    # without the penalty the two correct responses are tied: R = [1, 1, 0]
    plain = grpo_token_advantages(group_of_three(), [0, 0, 0], alpha=0.0)
    assert plain[0][0] == pytest.approx(plain[1][0]) and adv[0][0] > adv[1][0]


def test_the_length_penalty_leaves_the_process_advantage_unchanged():
    # Â = A' + α·Ã: the penalty moves A only, so Â(α) − Â(0) is the same with and without it
    episodes, groups = group_of_three(), [0, 0, 0]
    with_penalty = [grpo_token_advantages(episodes, groups, alpha=a, length_penalty=0.4) for a in (0.1, 0.0)]
    without = [grpo_token_advantages(episodes, groups, alpha=a) for a in (0.1, 0.0)]
    for i in range(3):
        np.testing.assert_allclose(with_penalty[0][i] - with_penalty[1][i], without[0][i] - without[1][i],
                                   rtol=0, atol=1e-12)
        assert len(set(np.round(with_penalty[0][i], 9))) == 2  # the process term is there: 2 segments


def test_a_zero_weight_is_plain_grpo():
    episodes = group_of_three()
    for a, b in zip(grpo_token_advantages(episodes, [0, 0, 0], 0.1, 0.0),
                    grpo_token_advantages(episodes, [0, 0, 0], 0.1), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("value", "message"), [
    (-0.5, "field 'length_penalty' must be a finite number >= 0 (the weight of the length reward; 0 turns it "
           "off), got -0.5"),
    (float("inf"), "field 'length_penalty' must be a finite number >= 0"),
    (float("nan"), "field 'length_penalty' must be a finite number >= 0"),
    (True, "field 'length_penalty' must be a finite number >= 0 (the weight of the length reward; 0 turns it "
           "off), got True"),
])
def test_a_bad_weight_is_a_config_error(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        GRPOConfig(length_penalty=value)


def test_the_weight_round_trips_through_yaml_and_resume(tmp_path):
    config, learner = load_config(ROOT / "configs" / "grpo_tiny.yaml", ["learner.length_penalty=0.5"])
    assert learner.length_penalty == 0.5
    assert load_config(ROOT / "configs" / "grpo_tiny.yaml")[1].length_penalty == 0.0
    (tmp_path / CONFIG).write_text(dump_config(config, learner), encoding="utf-8")
    assert resume_config(tmp_path, None, [])[1] == learner
    with pytest.raises(ConfigError, match="field 'learner' cannot change on resume"):
        resume_config(tmp_path, None, ["learner.length_penalty=0.2"])


@pytest.fixture(scope="module")
def learner(tiny_llama_dir):
    from repro_env.tasks import resolve_task

    task = resolve_task("RePro-Math-v0", {"scorer": {"model": str(tiny_llama_dir)},
                                          "limits": {"max_steps": 3, "max_segment_tokens": 8}})
    config = GRPOConfig(model=str(tiny_llama_dir), prompts_per_update=2, group_size=2, lr=1e-3,
                        micro_batch_size=2, kl_coef=0.0, length_penalty=0.5)
    return GRPO(config, task, seed=0)


def test_an_update_logs_the_mean_length_term(learner, monkeypatch):
    # group 0: λ terms [0.5, 0, −0.5]; group 1, both wrong, 2 and 6 tokens: [0, −0.5]
    # mean of w·len_reward = 0.5 · (0.5 + 0 − 0.5 + 0 − 0.5) / 5 = −0.05
    episodes = group_of_three() + [episode([-1, 0, 1], False, [0.1, 0.1]),
                                   episode([-1, 0, 0, 0, 1, 1, 1], False, [0.2, 0.0])]
    seen = []
    original = grpo_module.grpo_token_advantages

    def spy(*args, **kwargs):
        seen.append(args[3] if len(args) > 3 else kwargs.get("length_penalty"))
        return original(*args, **kwargs)

    monkeypatch.setattr(grpo_module, "grpo_token_advantages", spy)
    metrics = learner.update(GRPOBatch(episodes, np.array([0, 0, 0, 1, 1])))
    assert metrics["length_reward"] == pytest.approx(-0.05, abs=1e-12)
    assert seen == [0.5]  # the advantages the loss uses carry the weight
    assert math.isfinite(metrics["loss"])
