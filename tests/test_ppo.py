"""PPO: token-aligned rewards and advantages by hand, the value loss, the learner with its value head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repro_env.advantages import ppo_advantages
from repro_env.agents.episodes import Episode
from repro_env.agents.losses import value_loss
from repro_env.agents.policy import Trace
from repro_env.agents.ppo import PPO, PPOConfig, token_rewards
from repro_env.errors import ConfigError


def episode(segment: list[int], outcome: float, process: list[float], scored: list[bool]) -> Episode:
    trace = Trace(ids=list(range(len(segment))), segment=segment, log_probs=[0.0] * len(segment), text="")
    return Episode(trace=trace, segments=["s"] * len(process), process_rewards=process, scored=scored,
                   outcome=outcome)


def toy_batch() -> list[Episode]:
    # rollout 0: segments of 2 and 1 tokens, both scored; rollout 1: one scored segment of 2 tokens
    return [episode([-1, 0, 0, -1, 1], 1.0, [0.5, -0.1], [True, True]),
            episode([-1, 0, 0], 0.0, [0.2], [True])]


def test_token_rewards_sit_on_segment_ends():
    outcome, process, process_mask, mask = token_rewards(toy_batch())
    assert outcome.tolist() == [[0, 0, 1], [0, 1 * 0.0, 0]]
    assert process.tolist() == [[0, 0.5, -0.1], [0, 0.2, 0]]
    assert process_mask.tolist() == [[False, True, True], [False, True, False]]
    assert mask.tolist() == [[True, True, True], [True, True, False]]


def test_ppo_advantages_by_hand_with_zero_values():
    """V = 0, γ = λ = 1: each GAE is the reward-to-go; whiten each over the 5 real tokens."""
    outcome, process, process_mask, mask = token_rewards(toy_batch())
    advantages, returns = ppo_advantages(outcome, process, np.zeros(mask.shape), 0.1,
                                            process_mask=process_mask, mask=mask)
    # outcome-to-go: [1, 1, 1], [0, 0] → mean 0.6, sample std sqrt((3·0.4² + 2·0.6²)/(5 − 1)) = sqrt(0.3)
    s = math.sqrt((3 * 0.4 ** 2 + 2 * 0.6 ** 2) / (5 - 1))
    A = [[0.4 / s] * 3, [-0.6 / s] * 2]
    # r̃ pooled over 3 scored tokens [0.5, -0.1, 0.2]: mean 0.2, sample std sqrt((0.3² + 0.3² + 0²)/(3 − 1)) = 0.3
    # (with V = 0 the whitening below undoes the pool's scale, so this check cannot tell ddof 0 from 1;
    # tests/test_reward.py::test_ppo_advantages_compose_gae_and_whitening, with V ≠ 0, can)
    r = [(x - 0.2) / (math.sqrt((0.3 ** 2 + 0.3 ** 2 + 0 ** 2) / (3 - 1)) + 1e-6) for x in (0.5, -0.1, 0.2)]
    to_go = [r[0] + r[1], r[0] + r[1], r[1], r[2], r[2]]  # rows concatenated: [a, a, b], [c, c]
    mu = sum(to_go) / 5
    sd = math.sqrt(sum((x - mu) ** 2 for x in to_go) / (5 - 1))
    white = [(x - mu) / (sd + 1e-8) for x in to_go]
    expected = [A[0][0] + 0.1 * white[0], A[0][1] + 0.1 * white[1], A[0][2] + 0.1 * white[2],
                A[1][0] + 0.1 * white[3], A[1][1] + 0.1 * white[4]]
    np.testing.assert_allclose(advantages[mask], expected, rtol=1e-6, atol=1e-6)
    assert returns[mask].tolist() == [1, 1, 1, 0, 0]  # the critic regresses on the outcome return


def test_plain_ppo_ignores_process_rewards():
    outcome, process, process_mask, mask = token_rewards(toy_batch())
    plain, _ = ppo_advantages(outcome, process, np.zeros(mask.shape), 0.0, process_mask=process_mask,
                                 mask=mask)
    s = math.sqrt((3 * 0.4 ** 2 + 2 * 0.6 ** 2) / (5 - 1))  # whitening: sample std (§5)
    np.testing.assert_allclose(plain[mask], [0.4 / s] * 3 + [-0.6 / s] * 2, rtol=1e-6)


def test_value_loss_is_half_the_mean_squared_error():
    values = torch.tensor([[1.0, 2.0, 5.0]])
    returns = torch.tensor([[0.0, 2.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    assert float(value_loss(values, returns, mask, num_tokens=2)) == pytest.approx(0.5 * (1.0 + 0.0) / 2)


@pytest.fixture(scope="module")
def learner(tiny_llama_dir):
    from repro_env.tasks import resolve_task

    task = resolve_task("RePro-Math-v0", {"scorer": {"model": str(tiny_llama_dir)},
                                          "limits": {"max_steps": 3, "max_segment_tokens": 8}})
    config = PPOConfig(model=str(tiny_llama_dir), episodes_per_update=3, lr=1e-4, value_lr=1e-2, epochs=4,
                       micro_batch_size=2, kl_coef=0.0, scorer_follows_policy=False)
    return PPO(config, task, seed=0)


def test_ppo_update_trains_the_value_head_and_saves_it(learner, tmp_path):
    assert learner.reference is None  # kl_coef 0: no reference copy
    batch = learner.collect()
    batch[0].outcome = 1.0  # the random fixture never answers right: give the critic a return to fit
    metrics = learner.update(batch)
    assert all(math.isfinite(v) for v in metrics.values()) and learner.updates == 1
    assert metrics["value_loss"] > 0
    weights = learner.value_head.weight.detach().clone()
    assert weights.abs().sum() > 0 and learner.value_head.bias.item() > 0  # zero-initialised, pulled up
    learner.save(tmp_path / "ckpt")
    with torch.no_grad():
        learner.value_head.weight.zero_()
    learner.load(tmp_path / "ckpt")
    assert torch.equal(learner.value_head.weight, weights)


def test_frozen_scorer_keeps_its_weights(learner):
    scorer_state = {k: v.clone() for k, v in learner.scorer.model.state_dict().items()}
    learner.update(learner.collect())
    assert all(torch.equal(v, learner.scorer.model.state_dict()[k]) for k, v in scorer_state.items())


@pytest.mark.parametrize(("fields", "message"), [
    ({"episodes_per_update": 0}, "field 'episodes_per_update' must be an int >= 1, got 0"),
    ({"vf_coef": -1.0}, "field 'vf_coef' must be a number >= 0, got -1.0"),
    ({"value_lr": 0.0}, "field 'value_lr' must be a number > 0 or null (lr), got 0.0"),
    ({"gamma": 1.5}, "field 'gamma' must be a number in [0, 1], got 1.5"),
    ({"lam": -0.5}, "field 'lam' must be a number in [0, 1], got -0.5"),
])
def test_ppo_config_errors(fields, message):
    escaped = message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(ConfigError, match=escaped):
        PPOConfig(**fields)


def test_ppo_advantages_by_hand_with_a_real_critic_at_the_right_tokens(learner, monkeypatch):
    """V ≠ 0 from the value head: V_k is read at the position before generated token k (it predicts
    token k), GAE runs over the generated tokens in order, and Â lands at that same position."""
    saved = {k: v.clone() for k, v in learner.value_head.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        learner.value_head.weight.copy_(torch.randn(learner.value_head.weight.shape, generator=gen) * 0.5)
        learner.value_head.bias.fill_(0.3)
    captured = {}
    monkeypatch.setattr(learner, "optimise", lambda tokens, loss: captured.setdefault("tokens", tokens) and {})
    monkeypatch.setattr(learner, "finish_update", lambda: None)
    try:
        batch = learner.collect()
        for episode, outcome in zip(batch, [1.0, 0.0, 1.0], strict=True):
            episode.outcome = outcome
        learner.update(batch)
        cfg, alpha = learner.config, learner.alpha
        per_episode = []  # (positions, V, outcome rewards, process rewards, scored) per rollout
        with torch.no_grad():
            for episode in batch:
                ids = torch.tensor([episode.trace.ids], device=learner.policy.device)
                hidden = learner.policy.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
                seg = episode.trace.segment
                tokens = [k for k, s in enumerate(seg) if s >= 0]  # generated token indices
                v = [float(learner.value_head(hidden[k - 1].float())) for k in tokens]  # state before token k
                outcome = [0.0] * len(tokens)
                outcome[-1] = episode.outcome
                process, scored = [0.0] * len(tokens), [False] * len(tokens)
                for j, is_scored in enumerate(episode.scored):
                    last = max(i for i, k in enumerate(tokens) if seg[k] == j)  # segment j's last token
                    if is_scored:
                        process[last] += episode.process_rewards[j]
                        scored[last] = True
                per_episode.append(([k - 1 for k in tokens], v, outcome, process, scored))
        assert max(abs(x) for _, v, *_ in per_episode for x in v) > 0.05  # the critic is really not 0
        pool = [r for *_, process, scored in per_episode for r, s in zip(process, scored, strict=True) if s]
        mu = sum(pool) / len(pool)
        sigma = math.sqrt(sum((r - mu) ** 2 for r in pool) / (len(pool) - 1))

        def gae(rewards, values):
            adv, next_adv, next_v = [0.0] * len(rewards), 0.0, 0.0  # V after the last token: 0 (terminal)
            for t in reversed(range(len(rewards))):
                next_adv = rewards[t] + cfg.gamma * next_v - values[t] + cfg.gamma * cfg.lam * next_adv
                adv[t], next_v = next_adv, values[t]
            return adv

        outcome_adv, process_adv, returns = [], [], []
        for _, v, outcome, process, scored in per_episode:
            normalised = [(r - mu) / (sigma + 1e-6) if s else 0.0 for r, s in zip(process, scored, strict=True)]
            a = gae(outcome, v)
            outcome_adv += a
            process_adv += gae(normalised, v)
            returns += [x + y for x, y in zip(a, v, strict=True)]

        def white(x):
            m = sum(x) / len(x)
            return [(y - m) / (math.sqrt(sum((z - m) ** 2 for z in x) / (len(x) - 1)) + 1e-8) for y in x]

        expected = [a + alpha * p for a, p in zip(white(outcome_adv), white(process_adv), strict=True)]
        got_adv, got_ret = captured["tokens"].values["advantages"], captured["tokens"].values["returns"]
        mask = captured["tokens"].response_mask
        positions = [(b, p) for b, (pos, *_) in enumerate(per_episode) for p in pos]
        assert int(mask.sum()) == len(positions) and all(bool(mask[b, p]) for b, p in positions)
        np.testing.assert_allclose([float(got_adv[b, p]) for b, p in positions], expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose([float(got_ret[b, p]) for b, p in positions], returns, rtol=1e-4, atol=1e-5)
        assert float(got_adv[~mask].abs().sum()) == 0.0
    finally:
        learner.value_head.load_state_dict(saved)
