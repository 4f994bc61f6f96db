"""GRPO: hand-computed advantages, the loss against a direct computation, learner errors and state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repro_env.agents.episodes import Episode, pack
from repro_env.agents.grpo import GRPO, GRPOConfig, grpo_token_advantages
from repro_env.agents.losses import clipped_policy_loss, kl_k3
from repro_env.agents.policy import Trace
from repro_env.errors import CheckpointError, ConfigError, ScorerError, TrainingError


def episode(segment: list[int], outcome: float, process: list[float], scored: list[bool]) -> Episode:
    """An episode whose trace has prompt tokens (-1) and generated tokens of the given segments."""
    trace = Trace(ids=list(range(10, 10 + len(segment))), segment=segment, log_probs=[0.0] * len(segment),
                  text="", num_segments=len(process))
    return Episode(trace=trace, segments=["s"] * len(process), process_rewards=process, scored=scored,
                   outcome=outcome, correct=outcome == 1.0)


# R = [1, 0]: mean 0.5, sample std sqrt(((1 − 0.5)² + (0 − 0.5)²)/(2 − 1)) = sqrt(0.5)
SQRT_HALF = math.sqrt(((1 - 0.5) ** 2 + (0 - 0.5) ** 2) / (2 - 1))


def two_rollouts() -> list[Episode]:
    # rollout 0: 2 segments of 2 and 3 tokens; rollout 1: 2 segments of 1 and 2 tokens, the first unscored
    return [episode([-1, -1, 0, 0, -1, 1, 1, 1], 1.0, [0.4, 0.2], [True, True]),
            episode([-1, 0, -1, 1, 1], 0.0, [0.0, 0.3], [False, True])]


def test_grpo_advantages_by_hand():
    e0, e1 = two_rollouts()
    adv = grpo_token_advantages([e0, e1], [0, 0], alpha=0.1)
    A = 0.5 / (SQRT_HALF + 1e-6)  # R = [1, 0]: mean 0.5, sample std sqrt(0.5)
    mu = (0.4 + 0.2 + 0.3) / 3  # pooled over the 3 scored segments only
    sigma = math.sqrt(((0.4 - mu) ** 2 + (0.2 - mu) ** 2 + (0.3 - mu) ** 2) / (3 - 1))  # 0.1
    n = [(r - mu) / (sigma + 1e-6) for r in (0.4, 0.2, 0.3)]  # [0.99999, -0.99999, 0]
    rollout0 = [A + 0.1 * (n[0] + n[1])] * 2 + [A + 0.1 * n[1]] * 3  # return-to-go per segment
    rollout1 = [-A + 0.1 * (0.0 + n[2])] * 1 + [-A + 0.1 * n[2]] * 2  # unscored segment adds 0
    np.testing.assert_allclose(adv[0], rollout0, rtol=1e-9)
    np.testing.assert_allclose(adv[1], rollout1, rtol=1e-9)


def test_plain_grpo_is_the_outcome_advantage_on_every_token():
    e0, e1 = two_rollouts()
    adv = grpo_token_advantages([e0, e1], [0, 0], alpha=0.0)
    np.testing.assert_allclose(adv[0], [0.5 / (SQRT_HALF + 1e-6)] * 5)  # 0.7071, not 1
    np.testing.assert_allclose(adv[1], [-0.5 / (SQRT_HALF + 1e-6)] * 3)


def test_groups_are_normalised_separately():
    e0, e1 = two_rollouts()
    e2, e3 = two_rollouts()
    e2.outcome = e3.outcome = 1.0  # a group that all solved: no outcome signal
    adv = grpo_token_advantages([e0, e1, e2, e3], [0, 0, 1, 1], alpha=0.0)
    np.testing.assert_allclose(adv[2], [0.0] * 5)
    np.testing.assert_allclose(adv[0], [0.5 / (SQRT_HALF + 1e-6)] * 5)


def test_a_group_of_one_rollout_normalises_with_mean_0_std_1():
    # groups [0, 0, 1]: the lone rollout of group 1 has A = R / (1 + 1e-6) and a pool of one scored
    # segment, r̃' = 0.3 / (1 + 1e-6); its second segment is unscored (adds 0, stays out of the pool)
    e0, e1 = two_rollouts()
    lone = episode([-1, 0, 0, -1, 1], 1.0, [0.3, 0.0], [True, False])
    adv = grpo_token_advantages([e0, e1, lone], [0, 0, 1], alpha=0.1)
    A, n = 1 / (1 + 1e-6), 0.3 / (1 + 1e-6)
    np.testing.assert_allclose(adv[2], [A + 0.1 * n] * 2 + [A], rtol=1e-12)
    # group 0 keeps its own normalisation: R = [1, 0] → A = ±0.5 / (sqrt(0.5) + 1e-6) at α = 0
    plain = grpo_token_advantages([e0, e1, lone], [0, 0, 1], alpha=0.0)
    np.testing.assert_allclose(plain[1], [-0.5 / (SQRT_HALF + 1e-6)] * 3, rtol=1e-12)
    np.testing.assert_allclose(grpo_token_advantages([lone], [0], alpha=0.0)[0], [A] * 3, rtol=1e-12)


def test_a_group_of_8_uses_the_sample_std():
    # 2 of 8 correct: mean 1/4, Σ(R − mean)² = 2·(3/4)² + 6·(1/4)² = 3/2; sample std sqrt(3/2 / 7)
    episodes = [episode([-1, 0], 1.0 if i < 2 else 0.0, [0.0], [False]) for i in range(8)]
    adv = grpo_token_advantages(episodes, [0] * 8, alpha=0.1)
    std = math.sqrt((2 * (3 / 4) ** 2 + 6 * (1 / 4) ** 2) / (8 - 1)) + 1e-6
    population = math.sqrt((2 * (3 / 4) ** 2 + 6 * (1 / 4) ** 2) / 8) + 1e-6
    np.testing.assert_allclose(np.concatenate(adv), [(3 / 4) / std] * 2 + [-(1 / 4) / std] * 6, rtol=1e-12)
    assert adv[0][0] != pytest.approx((3 / 4) / population, rel=0.05)  # population std: 7% larger


def test_pack_puts_token_values_at_the_positions_that_predict_them():
    e0, e1 = two_rollouts()
    batch = pack([e0, e1], pad_id=0, per_token={"advantages": [np.arange(1, 6), np.arange(1, 4)]})
    # position k predicts token k+1: rollout 0's generated tokens are 2, 3, 5, 6, 7 → positions 1, 2, 4, 5, 6
    assert batch.response_mask[0].tolist() == [False, True, True, False, True, True, True]
    assert batch.values["advantages"][0].tolist() == [0, 1, 2, 0, 3, 4, 5]
    assert batch.values["advantages"][1].tolist() == [1, 0, 2, 3, 0, 0, 0]
    assert batch.attention_mask[1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]


def test_clipped_loss_equals_a_direct_computation():
    new = torch.tensor([[-1.0, -0.5, -2.0], [-0.2, -3.0, -1.0]])
    old = torch.tensor([[-1.2, -0.5, -1.0], [-0.9, -3.0, -1.0]])
    adv = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 3.0, 7.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss, stats = clipped_policy_loss(new, old, adv, mask, num_tokens=5, clip_low=0.2, clip_high=0.28)
    total, clipped = 0.0, 0
    for b in range(2):
        for k in range(3):
            if not mask[b, k]:
                continue
            ratio = math.exp(new[b, k] - old[b, k])
            a = float(adv[b, k])
            surrogate = min(ratio * a, min(max(ratio, 0.8), 1.28) * a)
            clipped += surrogate != ratio * a
            total += -surrogate
    assert float(loss) == pytest.approx(total / 5, rel=1e-6)
    # clipped: token (0,0) ratio e^0.2 = 1.22 no; (0,2) e^-1 = 0.37, A>0 → min takes 0.37·A, no;
    # (1,0) ratio e^0.7 = 2.01, A<0 → min takes 2.01·A (unclipped): no clipping either.
    assert stats["clip_frac"] == clipped / 5 == 0.0


def test_clipping_kicks_in_above_one_plus_clip_high():
    new, old = torch.tensor([[0.0]]), torch.tensor([[-1.0]])  # ratio e = 2.718
    loss, stats = clipped_policy_loss(new, old, torch.tensor([[2.0]]), torch.tensor([[True]]), 1)
    assert float(loss) == pytest.approx(-1.28 * 2.0) and stats["clip_frac"] == 1.0


def test_clipping_kicks_in_below_one_minus_clip_low_for_a_negative_advantage():
    # ratio e^-1 = 0.368 < 1 − ε_low, Â = −2: min(0.368·(−2), (1 − ε_low)·(−2)) takes the clipped term,
    # so lowering a bad token's probability further earns nothing past 1 − ε_low.
    new, old = torch.tensor([[-1.0, -1.0]]), torch.tensor([[0.0, 0.0]])
    adv, mask = torch.tensor([[-2.0, 2.0]]), torch.tensor([[True, False]])
    loss, stats = clipped_policy_loss(new, old, adv, mask, 1, clip_low=0.2, clip_high=0.28)
    assert float(loss) == pytest.approx(0.8 * 2.0) and stats["clip_frac"] == 1.0
    loss, _ = clipped_policy_loss(new, old, adv, mask, 1, clip_low=0.1, clip_high=0.28)
    assert float(loss) == pytest.approx(0.9 * 2.0)  # ε_low, not ε_high, sets the bound
    # Â > 0 at the same ratio: the unclipped term is the smaller one, no clipping
    loss, stats = clipped_policy_loss(new, old, -adv, mask, 1, clip_low=0.2, clip_high=0.28)
    assert float(loss) == pytest.approx(-math.exp(-1.0) * 2.0) and stats["clip_frac"] == 0.0


def test_kl_k3_by_hand():
    # π = 0.5, π_ref = 0.25: r = log 0.5; exp(r) − r − 1 = 0.5 + ln 2 − 1
    value = kl_k3(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert float(value) == pytest.approx(0.5 + math.log(2) - 1)
    assert float(kl_k3(torch.tensor([-0.3]), torch.tensor([-0.3]))) == 0.0


# -- the learner on the fixture model ----------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_task(tiny_llama_dir):
    from repro_env.tasks import resolve_task

    return resolve_task("RePro-Math-v0", {"scorer": {"model": str(tiny_llama_dir)},
                                          "limits": {"max_steps": 3, "max_segment_tokens": 8}})


@pytest.fixture(scope="module")
def learner(fixture_task, tiny_llama_dir):
    config = GRPOConfig(model=str(tiny_llama_dir), prompts_per_update=2, group_size=2, lr=1e-3, epochs=2,
                        minibatches=2, micro_batch_size=1, kl_coef=0.01)
    return GRPO(config, fixture_task, seed=0)


def test_update_moves_the_policy_and_the_scorer_follows(learner):
    before = {k: v.clone() for k, v in learner.policy.model.state_dict().items()}
    updates = learner.updates
    metrics = learner.update(learner.collect())
    assert learner.updates == updates + 1
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["segments_per_response"] <= 3 and metrics["grad_norm"] > 0
    after = learner.policy.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    scorer_state = learner.scorer.model.state_dict()
    assert all(torch.equal(scorer_state[k], after[k]) for k in after)


def test_a_nan_loss_raises_training_error_and_keeps_the_weights(learner, monkeypatch):
    batch = learner.collect()
    before = {k: v.clone() for k, v in learner.policy.model.state_dict().items()}
    nan_loss = torch.tensor(float("nan"), requires_grad=True)
    monkeypatch.setattr(learner, "loss", lambda micro, num_tokens: (nan_loss * 1.0, {}))
    with pytest.raises(TrainingError, match=rf"the loss is nan at update {learner.updates + 1}: training stopped"):
        learner.update(batch)
    assert all(torch.equal(v, learner.policy.model.state_dict()[k]) for k, v in before.items())


def test_a_scorer_error_mid_rollout_surfaces_as_scorer_error(learner, monkeypatch):
    calls = []
    real = learner.scorer.sessions_append

    def failing(sessions, segments, score=None):
        calls.append(1)
        if len(calls) == 2:
            raise ScorerError("engine died")
        return real(sessions, segments, score)

    monkeypatch.setattr(learner.scorer, "sessions_append", failing)
    with pytest.raises(ScorerError, match=r"the env's scorer failed at rollout step 1 \(episodes \[0, 1, 2, 3\]\)"
                                          r": engine died"):
        learner.collect()


def test_save_load_round_trip_and_missing_checkpoint(learner, tmp_path):
    learner.save(tmp_path / "ckpt")
    saved = {k: v.clone() for k, v in learner.policy.model.state_dict().items()}
    updates, draw = learner.updates, learner.rng.integers(1 << 30)
    learner.update(learner.collect())
    learner.load(tmp_path / "ckpt")
    assert learner.updates == updates and learner.rng.integers(1 << 30) == draw
    assert all(torch.equal(v, learner.policy.model.state_dict()[k]) for k, v in saved.items())
    with pytest.raises(CheckpointError, match="missing policy.safetensors; expected a checkpoint written by GRPO.save"):
        learner.load(tmp_path / "empty")


def test_evaluate_reports_the_protocol_metrics(learner):
    metrics = learner.evaluate(num_problems=3)
    for key in ("accuracy", "tokens_per_response", "backtracks_per_response", "process_return"):
        assert math.isfinite(metrics[key])
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["tokens_per_response"] > 0
    with pytest.raises(ConfigError, match="evaluate needs num_problems >= 1 and samples >= 1, got 0 and 1"):
        learner.evaluate(num_problems=0)


def test_scorer_follows_policy_needs_the_same_model(fixture_task, tiny_llama_dir, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_llama_dir, other)
    with pytest.raises(ConfigError, match="field 'scorer_follows_policy' = true needs the task's scorer model"):
        GRPO(GRPOConfig(model=str(other)), fixture_task)
    # issue 28: a missing policy model is named first, not as a scorer mismatch
    with pytest.raises(ConfigError, match=r"field 'learner.model' must be a model directory .* got "
                                          r"'/nonexistent/model': there is no directory"):
        GRPO(GRPOConfig(model="/nonexistent/model"), fixture_task)


@pytest.mark.parametrize(("fields", "message"), [
    ({"group_size": 1}, "field 'group_size' must be an int >= 2 (a group needs a spread to normalise), got 1"),
    ({"prompts_per_update": 0}, "field 'prompts_per_update' must be an int >= 1, got 0"),
    ({"lr": 0.0}, "field 'lr' must be a number > 0, got 0.0"),
    ({"clip_high": 1.5}, "field 'clip_high' must be a number in (0, 1), got 1.5"),
    ({"kl_coef": -1.0}, "field 'kl_coef' must be a number >= 0, got -1.0"),
    ({"alpha": -0.1}, "field 'alpha' must be a number >= 0 or null (the task's), got -0.1"),
    ({"epochs": 0}, "field 'epochs' must be an int >= 1, got 0"),
    ({"max_grad_norm": 0}, "field 'max_grad_norm' must be a number > 0, got 0"),
    ({"weight_decay": -1}, "field 'weight_decay' must be a number >= 0, got -1"),
    ({"process_reward": 1}, "field 'process_reward' must be a bool, got 1"),
    ({"scorer_follows_policy": "yes"}, "field 'scorer_follows_policy' must be a bool, got 'yes'"),
    ({"temperature": -1.0}, "field 'temperature' must be a number > 0, got -1.0"),
])
def test_grpo_config_errors(fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GRPOConfig(**fields)


def test_grpo_config_loads_from_a_mapping_with_did_you_mean():
    from repro_env.config import from_mapping

    config = from_mapping(GRPOConfig, {"group_size": 4, "lr": 1e-4, "process_reward": False})
    assert (config.group_size, config.lr, config.process_reward) == (4, 1e-4, False)
    with pytest.raises(ConfigError, match="unknown key 'grup_size'. Did you mean 'group_size'?"):
        from_mapping(GRPOConfig, {"grup_size": 4})
