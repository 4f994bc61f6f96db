"""Your own agent on RePro-Math-v0: plain REINFORCE on per-segment rewards, through gym.make only.

The env pays, after every segment, α·r̃_t (how much the segment moved the scorer towards the true
answer, REPRO_SPEC §4) plus the outcome (1 if the final answer verifies) at the last step. This
agent samples segments with the package's LMPolicy (any sampler works: the env takes strings). Each
update plays ``group`` episodes of one training problem and applies REINFORCE to the return-to-go
of every segment, minus a leave-one-out baseline (the mean return of the group's other episodes)::

    loss = −(1/N) Σ_g Σ_t (G_t^g − b^g) · log π(segment_t^g | q, τ<t),    G_t = Σ_{t' ≥ t} reward_t'
    b^g  = mean_{g' ≠ g} G_0^{g'}                                           N = generated tokens

The log-probs are recomputed at the sampling temperature (PolicyConfig.temperature), so they are
those of the sampled segments. The baseline does not depend on the episode it is subtracted from
(so the gradient stays unbiased) and removes how easy the problem is: in an all-correct or
all-wrong group only the small process rewards differ. A small Adam step keeps the policy near the
pretrained model without a KL term (at 3e-4, one episode per update, it lost a third of its
held-out return in 16 episodes and nearly all of it in 48: issue 17).

Run: ``python examples/custom_agent.py`` (about 20 s on a 2-core CPU); ``--model DIR`` uses another
local model for both the policy and the scorer.
"""

import argparse
import statistics
from dataclasses import dataclass

import gymnasium as gym
import torch

import repro_env  # noqa: F401  (registers RePro-Math-v0)
from repro_env.agents.policy import LMPolicy, PolicyConfig
from repro_env.config import check

LIMITS = {"max_steps": 6, "max_segment_tokens": 32}


@dataclass(frozen=True)
class ReinforceConfig:
    """The whole agent's settings."""

    model: str = "bundled"
    """Local model directory (or ``bundled``) of the policy and the scorer."""
    updates: int = 12
    """Policy updates; each one plays ``group`` episodes of one training problem."""
    group: int = 4
    """Episodes per problem: the others' mean return is each one's baseline (needs >= 2)."""
    lr: float = 3e-5
    """Adam step size. Adam moves every weight by about ``lr`` per update whatever the advantage's
    size, so this, not the gradient clip, is what bounds the drift from the pretrained model."""
    eval_problems: int = 16
    """Held-out (test split) problems 0..n−1 played greedily before and after training."""
    seed: int = 0
    """Seeds the sampling and the choice of training problems."""

    def __post_init__(self) -> None:
        check(isinstance(self.group, int) and self.group >= 2, "group", self.group,
              "an int >= 2 (a leave-one-out baseline needs another episode)")
        check(self.lr > 0, "lr", self.lr, "a number > 0")


def run_episode(env, policy, index, greedy=False):
    """One episode; returns the rewards and the (trace) token positions of each segment."""
    observation, _ = env.reset(options={"index": index})
    policy.reset([observation])
    rewards, done = [], False
    while not done:
        (segment,) = policy.act([observation], greedy=greedy)
        observation, reward, terminated, truncated, _ = env.step(segment.text)
        rewards.append(reward)
        done = terminated or truncated
    return rewards, policy.traces[0]


def segment_log_probs(policy, trace):
    """log π of each generated segment at the sampling temperature, with gradient. Returns (T,)."""
    ids = torch.tensor([trace.ids])  # (1, L)
    log_probs, _, _ = policy.forward(ids, torch.ones_like(ids))  # (1, L−1)
    owner = torch.tensor(trace.segment[1:])  # (L−1,) segment of each predicted token, −1 if not generated
    return torch.stack([log_probs[0][owner == t].sum() for t in range(trace.num_segments)])


def evaluate(env, policy, problems):
    """Mean greedy return over test problems 0..problems−1."""
    return statistics.mean(sum(run_episode(env, policy, i, greedy=True)[0]) for i in range(problems))


def reinforce_loss(policy, episodes):
    """The loss of the module docstring on a group of (rewards, trace) episodes of one problem."""
    returns = [torch.tensor(rewards).flip(0).cumsum(0).flip(0) for rewards, _ in episodes]  # (T_g,) G_t
    totals = torch.stack([g[0] for g in returns])  # (group,) episode returns G_0
    baselines = (totals.sum() - totals) / (len(episodes) - 1)  # (group,) leave-one-out means b^g
    tokens = sum(sum(s >= 0 for s in trace.segment) for _, trace in episodes)  # N
    return -sum(((g - b) * segment_log_probs(policy, trace)).sum()
                for g, b, (_, trace) in zip(returns, baselines, episodes, strict=True)) / max(tokens, 1)


def update(policy, optimizer, episodes):
    """One REINFORCE step on a group of episodes; returns their returns G_0. (group,)"""
    loss = reinforce_loss(policy, episodes)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.model.parameters(), 1.0)
    optimizer.step()
    policy.sync_generator()
    return [sum(rewards) for rewards, _ in episodes]


def train(config, log=print):
    """Evaluate, train for ``config.updates`` updates, evaluate again; returns (before, after)."""
    env = gym.make("RePro-Math-v0", scorer={"model": config.model}, limits=LIMITS)
    test_env = gym.make("RePro-Math-v0", scorer={"model": config.model}, limits=LIMITS, split="test")
    policy = LMPolicy(PolicyConfig(model=config.model, max_segment_tokens=LIMITS["max_segment_tokens"]),
                      seed=config.seed)
    optimizer = torch.optim.Adam(policy.model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    before = evaluate(test_env, policy, config.eval_problems)
    log(f"held-out mean return before: {before:.4f}")
    for step in range(config.updates):
        index = int(torch.randint(0, 10_000, (1,), generator=generator))
        totals = update(policy, optimizer, [run_episode(env, policy, index) for _ in range(config.group)])
        if step % 3 == 0:
            log(f"update {step:3d}  problem {index:4d}  group returns {' '.join(f'{r:+.3f}' for r in totals)}")
    after = evaluate(test_env, policy, config.eval_problems)
    log(f"held-out mean return after:  {after:.4f}")
    return before, after


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = ReinforceConfig()
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--updates", type=int, default=defaults.updates)
    parser.add_argument("--group", type=int, default=defaults.group)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--eval-problems", type=int, default=defaults.eval_problems)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args()
    train(ReinforceConfig(**vars(args)))


if __name__ == "__main__":
    main()
