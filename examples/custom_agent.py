"""Your own agent on RePro-Math-v0: plain REINFORCE on per-segment rewards, through gym.make only.

The env pays, after every segment, α·r̃_t (how much the segment moved the scorer towards the true
answer, REPRO_SPEC §4) plus the outcome (1 if the final answer verifies) at the last step. This
agent samples segments with the package's LMPolicy (any sampler works: the env takes strings) and
updates with REINFORCE on the return-to-go of each segment, minus a running-mean baseline::

    loss = −Σ_t (G_t − b) · log π(segment_t | q, τ<t),      G_t = Σ_{t' ≥ t} reward_t'

Run: ``python examples/custom_agent.py`` (about a minute on a CPU). ``--model DIR`` uses another
local model for both the policy and the scorer.
"""

import argparse
import statistics

import gymnasium as gym
import torch

import repro_env  # noqa: F401  (registers RePro-Math-v0)
from repro_env.agents.policy import LMPolicy, PolicyConfig


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
    """log π of each generated segment, with gradient. Returns (T,)."""
    ids = torch.tensor([trace.ids])  # (1, L)
    log_probs, _, _ = policy.forward(ids, torch.ones_like(ids))  # (1, L−1)
    owner = torch.tensor(trace.segment[1:])  # (L−1,) segment of each predicted token, −1 if not generated
    return torch.stack([log_probs[0][owner == t].sum() for t in range(trace.num_segments)])


def evaluate(env, policy, problems):
    returns = [sum(run_episode(env, policy, i, greedy=True)[0]) for i in range(problems)]
    return statistics.mean(returns)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args()
    limits = {"max_steps": 6, "max_segment_tokens": 32}
    env = gym.make("RePro-Math-v0", scorer={"model": args.model}, limits=limits)
    test_env = gym.make("RePro-Math-v0", scorer={"model": args.model}, limits=limits, split="test")
    policy = LMPolicy(PolicyConfig(model=args.model, max_segment_tokens=32), seed=0)
    optimizer = torch.optim.Adam(policy.model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(0)
    print(f"held-out mean return before: {evaluate(test_env, policy, 8):.4f}")
    baseline = 0.0
    for episode in range(args.episodes):
        index = int(torch.randint(0, 10_000, (1,), generator=generator))
        rewards, trace = run_episode(env, policy, index)
        returns = torch.tensor(rewards).flip(0).cumsum(0).flip(0)  # (T,) return-to-go G_t
        loss = -((returns - baseline) * segment_log_probs(policy, trace)).sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.model.parameters(), 1.0)
        optimizer.step()
        policy.sync_generator()
        baseline = 0.9 * baseline + 0.1 * float(returns[0])
        if episode % 8 == 0:
            print(f"episode {episode:3d}  return {float(returns[0]):+.4f}  baseline {baseline:+.4f}")
    print(f"held-out mean return after:  {evaluate(test_env, policy, 8):.4f}")


if __name__ == "__main__":
    main()
