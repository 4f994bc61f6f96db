"""examples/tabular_agent.py: a value table over kinds of CandidateSegments' proposals (no LM agent).

Imported from the example file. The choice rule is checked on a hand-built observation; a short
run (2 episodes, k = 2) checks that the table is the mean return-to-go of the env's own rewards.
"""


import numpy as np
import pytest

from repro_env.wrappers import CANDIDATE_FEATURES, EPISODE_FEATURES
from tests.conftest import load_example


@pytest.fixture(scope="module")
def example():
    return load_example("tabular_agent")


def observation(*candidates):
    """A CandidateSegments observation from per-candidate {feature: value} dicts."""
    blocks = np.zeros((len(candidates), len(CANDIDATE_FEATURES)), dtype=np.float32)
    for row, features in zip(blocks, candidates, strict=True):
        for name, value in features.items():
            row[CANDIDATE_FEATURES.index(name)] = value
    return np.concatenate([blocks.ravel(), np.zeros(len(EPISODE_FEATURES), dtype=np.float32)])


def test_act_picks_the_best_valued_kind_then_the_most_likely(example):
    agent = example.TabularAgent()
    plain, final = (False, False, False, False), (True, True, False, False)
    agent.count[plain], agent.total[plain] = 2, 0.2  # V = 0.1
    agent.count[final], agent.total[final] = 1, 1.05  # V = 1.05
    obs = observation({"mean_prob_rel": 1.0}, {"final": 1, "agreement": 1.0, "mean_prob_rel": 0.4},
                      {"final": 1, "agreement": 1.0, "mean_prob_rel": 0.7})
    assert agent.act(obs, 3) == (2, final)
    backtrack = (False, False, True, False)  # unseen: optimistic, so it is tried first
    assert agent.act(observation({"backtrack": 1}, {"final": 1, "agreement": 1.0}), 2) == (0, backtrack)
    assert agent.value(backtrack) == example.OPTIMISTIC


def test_the_table_is_the_mean_return_to_go_of_each_kind(example):
    import gymnasium as gym

    from repro_env.wrappers import CandidateSegments

    env = CandidateSegments(gym.make("RePro-Math-v0", limits={"max_steps": 4, "max_segment_tokens": 16}), k=2)
    agent, visits = example.TabularAgent(), {}
    for episode in range(2):
        rewards, chosen = example.play(env, agent, seed=0 if episode == 0 else None)
        assert 1 <= len(rewards) == len(chosen) <= 4
        for t, kind in enumerate(chosen):
            visits.setdefault(kind, []).append(sum(rewards[t:]))
    assert set(agent.count) == set(visits)
    for kind, returns in visits.items():
        assert agent.count[kind] == len(returns)
        assert agent.value(kind) == pytest.approx(np.mean(returns))
