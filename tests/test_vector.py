"""ReasoningVectorEnv: equal to independent envs, one scorer call per step, autoreset modes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import repro_env  # noqa: F401
from repro_env.errors import TaskSpecError

ACTIONS = [
    ["First I count the apples.", "Hmm, let me think.", "The answer is \\boxed{3}."],
    ["Then 3 + 4 = 7.", "Wait, actually it is 8.", "Another step."],
    ["The answer is \\boxed{12}.", "Next problem, first step.", "Still going."],
]


@pytest.fixture
def scorer_cfg(tiny_llama_dir):
    return {"model": str(tiny_llama_dir)}


def make_vec(scorer_cfg, n, **kwargs):
    return gym.make_vec("RePro-Math-v0", num_envs=n, vectorization_mode="vector_entry_point",
                        scorer=scorer_cfg, limits={"max_steps": 2}, **kwargs)


def test_vector_env_equals_independent_envs(scorer_cfg):
    n = 3
    envs = make_vec(scorer_cfg, n)
    singles = [gym.make("RePro-Math-v0", scorer=scorer_cfg, limits={"max_steps": 2}) for _ in range(n)]
    obs, infos = envs.reset(seed=11)
    for i, env in enumerate(singles):
        single_obs, single_info = env.reset(seed=11 + i)
        assert obs[i] == single_obs and infos["problem_id"][i] == single_info["problem_id"]
    single_done = [False] * n
    for t in range(3):
        actions = tuple(ACTIONS[i][t] for i in range(n))
        obs, rewards, terms, truncs, infos = envs.step(actions)
        for i, env in enumerate(singles):
            if single_done[i]:  # NEXT_STEP autoreset: this step reset sub-env i and ignored its action
                single_obs, _ = env.reset()
                assert obs[i] == single_obs and rewards[i] == 0.0 and not terms[i] and not truncs[i]
                single_done[i] = False
                continue
            single_obs, reward, term, trunc, info = env.step(actions[i])
            assert obs[i] == single_obs
            assert rewards[i] == pytest.approx(reward, abs=1e-6)
            assert (terms[i], truncs[i]) == (term, trunc)
            for key in ("J", "process_reward", "magnitude", "stability", "entropy", "segment_tokens"):
                np.testing.assert_allclose(infos[key][i], info[key], atol=1e-6, equal_nan=True)
            single_done[i] = term or trunc


def test_one_batched_scorer_call_per_step(scorer_cfg, monkeypatch):
    envs = make_vec(scorer_cfg, 3)
    envs.reset(seed=0)
    calls = []
    original = envs.scorer.sessions_append

    def counting(sessions, segments, score=None):
        calls.append(len(sessions))
        return original(sessions, segments)

    monkeypatch.setattr(envs.scorer, "sessions_append", counting)
    envs.step(("a step.", "another step.", "a third step."))
    assert calls == [3]


def test_disabled_autoreset_leaves_finished_envs_alone(scorer_cfg):
    envs = make_vec(scorer_cfg, 2, autoreset_mode="disabled")
    assert envs.metadata["autoreset_mode"] == AutoresetMode.DISABLED
    envs.reset(seed=0, options={"split": "test", "index": [4, 4]})
    _, _, terms, _, _ = envs.step(("The answer is \\boxed{1}.", "One step."))
    assert terms.tolist() == [True, False]
    finished_text = envs.envs[0].episode.text
    obs, rewards, terms, truncs, infos = envs.step(("ignored", "Two steps."))
    assert obs[0] == finished_text and rewards[0] == 0.0 and not infos["_J"][0]
    assert truncs[1]  # max_steps = 2
    obs, infos = envs.reset(options={"reset_mask": np.array([True, False]), "index": [5, 5], "split": "test"})
    assert infos["_problem_id"].tolist() == [True, False]
    assert infos["problem_id"][0] == envs.envs[0].source.get("test", 5).id


def test_group_of_envs_shares_one_problem(scorer_cfg):
    envs = make_vec(scorer_cfg, 4, autoreset_mode="disabled")
    _, infos = envs.reset(seed=3, options={"index": [7, 7, 9, 9]})
    ids = infos["problem_id"]
    assert ids[0] == ids[1] != ids[2] == ids[3]
    assert np.allclose(infos["J_baseline"][0], infos["J_baseline"][1])


@pytest.mark.parametrize("kwargs, options, message", [
    ({"autoreset_mode": "same-step"}, None, r"autoreset_mode"),
    ({}, {"index": [1, 2]}, r"one entry per sub-env \(3\)"),
])
def test_vector_errors(scorer_cfg, kwargs, options, message):
    with pytest.raises((TaskSpecError, ValueError), match=message):
        envs = make_vec(scorer_cfg, 3, **kwargs)
        envs.reset(options=options)
