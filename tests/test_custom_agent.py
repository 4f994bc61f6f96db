"""examples/custom_agent.py: the plain REINFORCE agent raises the return on the problems it practises.

The agent is imported from the example file, so these tests exercise the code the README points to,
at the example's default budget (4 updates × 4 problems × 4 episodes; 4 samples of each problem
before and after, from a fixed seed).

Margin. The mean return on the training problems, measured at seeds 0, 1, 2:

| agent | after | lead of the agent |
|---|---|---|
| the example's | 0.942, 0.946, 0.880 | |
| doing nothing (no update: its after is the shared before) | 0.378 at every seed | 0.50 to 0.57 |
| the loss's sign flipped | 0.063, 0.065, 0.062 | 0.82 to 0.88 |

The test asserts a lead of ``MARGIN`` = 0.25 over both, at seed 0: half the smallest measured lead,
and about four of the 16 evaluation episodes turning from wrong to right (each moves the mean
return by about 1.07/16 = 0.067). Tried once with the example's loss sign flipped: the learning test fails with
``the agent's 0.0626 does not beat doing nothing (0.3777) by 0.25``, and the hand computation of
the loss with ``0.15000002 == -0.15``. The file takes 20 to 27 s on the 2-core machine at load
below 1.
"""

from types import SimpleNamespace

import pytest
import torch

from tests.conftest import load_example

MARGIN = 0.25


@pytest.fixture(scope="module")
def example():
    return load_example("custom_agent")


def test_reinforce_beats_doing_nothing_and_the_sign_flipped_agent(example, monkeypatch):
    config = example.ReinforceConfig(seed=0)
    lines = []
    before, after = example.train(config, log=lines.append)
    assert lines[0] == f"mean return on the training problems before: {before:.4f}"
    assert lines[-1] == f"mean return on the training problems after:  {after:.4f}"
    assert len(lines) == config.updates + 2

    nothing_before, nothing_after = example.train(example.ReinforceConfig(seed=0, updates=0), log=lambda _: None)
    assert nothing_before == nothing_after == before, "before and after should be the same draws"

    loss = example.reinforce_loss
    monkeypatch.setattr(example, "reinforce_loss", lambda policy, groups: -loss(policy, groups))
    _, flipped_after = example.train(config, log=lambda _: None)
    print(f"mean return on the training problems: before {before:.4f}; after: the agent {after:.4f}, "
          f"doing nothing {nothing_after:.4f}, sign flipped {flipped_after:.4f}")
    assert after > nothing_after + MARGIN, \
        f"the agent's {after:.4f} does not beat doing nothing ({nothing_after:.4f}) by {MARGIN}"
    assert after > flipped_after + MARGIN, \
        f"the agent's {after:.4f} does not beat the sign-flipped agent ({flipped_after:.4f}) by {MARGIN}"


def test_leave_one_out_baselines_match_a_hand_computation(example):
    totals = torch.tensor([1.0, 0.0, 0.5, 0.1])
    expected = [(0.0 + 0.5 + 0.1) / 3, (1.0 + 0.5 + 0.1) / 3, (1.0 + 0.0 + 0.1) / 3, (1.0 + 0.0 + 0.5) / 3]
    assert example.leave_one_out_baselines(totals).tolist() == pytest.approx(expected, abs=1e-6)


def test_reinforce_loss_matches_a_hand_computation(example, monkeypatch):
    """Two problems, two episodes each; log π of each segment given, so the loss is arithmetic.

    Problem A: rewards (0.1, 1.0) and (0.2, 0.0): G = (1.1, 1.0) and (0.2, 0.0), b = 0.2 and 1.1,
    G − b = (0.9, 0.8) and (−0.9, −1.1). Problem B: rewards (0.5) and (0.0, 0.1): G = (0.5) and
    (0.1, 0.1), b = 0.1 and 0.5, G − b = (0.4) and (−0.4, −0.4). With log π = (−1, −2), (−3, −0.5),
    (−1.5), (−2, −1): Σ (G − b)·log π = −2.5 + 3.25 − 0.6 + 1.2 = 1.35 over N = 3 + 2 + 1 + 3 = 9
    generated tokens, so loss = −1.35 / 9 = −0.15.
    """
    def episode(rewards, log_probs, segment):
        return rewards, SimpleNamespace(log_probs=torch.tensor(log_probs), segment=segment)

    monkeypatch.setattr(example, "segment_log_probs", lambda policy, trace: trace.log_probs)
    groups = [[episode([0.1, 1.0], [-1.0, -2.0], [-1, -1, 0, 0, 1]), episode([0.2, 0.0], [-3.0, -0.5], [-1, 0, 1])],
              [episode([0.5], [-1.5], [-1, -1, 0]), episode([0.0, 0.1], [-2.0, -1.0], [-1, 0, 1, 1])]]
    assert float(example.reinforce_loss(None, groups)) == pytest.approx(-0.15, abs=1e-6)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("group", 1, r"field 'group' must be an int >= 2 .*got 1"),
    ("lr", 0.0, r"field 'lr' must be a number > 0, got 0.0"),
    ("problems", (), r"field 'problems' must be at least one train problem index, got \(\)"),
    ("updates", -1, r"field 'updates' must be an int >= 0 .*got -1"),
    ("eval_samples", 0, r"field 'eval_samples' must be an int >= 1, got 0"),
])
def test_config_names_the_bad_field(example, field, value, message):
    from repro_env.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        example.ReinforceConfig(**{field: value})
