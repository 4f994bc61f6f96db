"""A custom agent that is not a language model: a value table over kinds of candidate segments.

``CandidateSegments`` turns RePro-Math-v0 into a ``Discrete(K)`` choice among K next segments that
the bundled model proposes, observed as K blocks of features (``CANDIDATE_FEATURES``). This agent
reads four of them as a candidate's *kind*: does it hold the final answer, does it agree with the
other candidates, is it a backtrack or a repeat, was it cut off at the token cap. It keeps the mean
return-to-go that followed each kind (Monte Carlo, every visit) and picks a candidate of the best
kind, the most likely one among ties. Unseen kinds start at an optimistic value, so each gets tried::

    V(kind) = (1/n(kind)) Σ_{visits t of kind} G_t,      G_t = Σ_{t' ≥ t} reward_t'

Run: ``python examples/tabular_agent.py`` (about 10 s on a 2-core CPU).
"""

import argparse
from collections import defaultdict

import gymnasium as gym
import numpy as np

import repro_env  # noqa: F401  (registers RePro-Math-v0)
from repro_env.wrappers import CANDIDATE_FEATURES, CandidateSegments

USED = ("final", "agreement", "backtrack", "repeat", "cut_off", "mean_prob_rel")
OPTIMISTIC = 2.0  # above any return (outcome 1 + α·S ≤ 1.1): every kind is tried before it is judged


def kinds(observation, k):
    """The kind of each of the k candidates and their likelihood share. ((k,) tuples, (k,) floats)"""
    blocks = observation[: k * len(CANDIDATE_FEATURES)].reshape(k, len(CANDIDATE_FEATURES))  # (K, F)
    f = {name: blocks[:, CANDIDATE_FEATURES.index(name)] for name in USED}  # each (K,)
    rows = zip(f["final"] > 0, f["agreement"] >= 0.5, (f["backtrack"] > 0) | (f["repeat"] > 0), f["cut_off"] > 0,
               strict=True)
    return [tuple(bool(x) for x in row) for row in rows], f["mean_prob_rel"]


def describe(kind):
    names = ("final", "agrees", "backtrack/repeat", "cut off")
    return "+".join(n for n, on in zip(names, kind, strict=True) if on) or "plain step"


class TabularAgent:
    """V(kind) = total / n(kind); ``act`` picks the best-valued kind, ``learn`` adds returns to it."""

    def __init__(self):
        self.total = defaultdict(float)
        self.count = defaultdict(int)

    def value(self, kind):
        return self.total[kind] / self.count[kind] if kind in self.count else OPTIMISTIC

    def act(self, observation, k):
        candidate_kinds, likelihood = kinds(observation, k)
        scores = [self.value(kind) for kind in candidate_kinds]
        best = [i for i in range(k) if scores[i] == max(scores)]
        action = max(best, key=lambda i: likelihood[i])
        return action, candidate_kinds[action]

    def learn(self, chosen, rewards):
        """Every-visit Monte Carlo: each chosen kind averages the return-to-go that followed it."""
        returns = np.cumsum(rewards[::-1])[::-1]  # (T,) G_t
        for kind, g in zip(chosen, returns, strict=True):
            self.count[kind] += 1
            self.total[kind] += float(g)


def play(env, agent, seed=None):
    """One episode with learning at its end; returns the rewards and the kinds chosen."""
    observation, _ = env.reset(seed=seed)
    chosen, rewards, done = [], [], False
    while not done:
        action, kind = agent.act(observation, env.k)
        observation, reward, terminated, truncated, _ = env.step(action)
        chosen.append(kind)
        rewards.append(float(reward))
        done = terminated or truncated
    agent.learn(chosen, rewards)
    return rewards, chosen


def train(episodes=12, k=4, seed=0, log=print):
    """Play ``episodes`` training problems; returns the agent and each episode's return."""
    env = CandidateSegments(gym.make("RePro-Math-v0", limits={"max_steps": 6, "max_segment_tokens": 32}), k=k)
    agent, returns = TabularAgent(), []
    for episode in range(episodes):
        rewards, chosen = play(env, agent, seed=seed if episode == 0 else None)
        returns.append(sum(rewards))
        log(f"episode {episode:2d}  return {returns[-1]:+.3f}  chose: {', '.join(map(describe, chosen))}")
    log("kind of segment                     visits  mean return-to-go")
    for kind in sorted(agent.count, key=lambda kind: -agent.value(kind)):
        log(f"{describe(kind):34s} {agent.count[kind]:7d}  {agent.value(kind):+.3f}")
    return agent, returns


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--k", type=int, default=4, help="candidates per step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train(args.episodes, args.k, args.seed)


if __name__ == "__main__":
    main()
