"""What the RePro process reward costs: one GRPO update's time split, with and without RePro.

    .venv/bin/python benchmarks/bench_training.py [--updates 5] [--threads 1] [--model bundled]

Runs ``--updates`` GRPO updates (after one warm-up update) on RePro-Math-v0 for each of
``process_reward`` false and true, from the same model and seed, and splits each update into:

- generation: the policy sampling segments (``LMPolicy.act`` / ``reset``);
- scoring: the scorer computing J (baseline at reset, prefix extension + answer probe per step,
  ``Scorer.session`` / ``sessions_append``) and pushing the trained weights into the scorer;
- env: the rest of the rollout (env bookkeeping, answer verification);
- advantage: group advantages (A, plus α·Ã with RePro) and packing the token batch;
- optimisation: old/reference log-probs, the PPO-clip steps, syncing the generator.

The envs of this package compute J whether or not the learner uses it, so the outcome-only row
still spends time in "scoring". An outcome-only trainer needs no scorer at all, so the cost of
RePro is the RePro update over the same update without its scoring (same rollouts, so response
length does not confound it; the issue's target is below 1.25 on the bundled model). The ratios
between the two separate runs are printed too; their responses differ in length.
"""

from __future__ import annotations

import argparse
import functools
import platform
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

PHASES = ("generation", "scoring", "env", "advantage", "optimisation")


def timed(owner: Any, name: str, bucket: str, times: dict[str, float]) -> None:
    """Replace ``owner.name`` with a wrapper adding its wall time to ``times[bucket]``."""
    original: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            times[bucket] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def instrument(learner: Any, times: dict[str, float]) -> None:
    """Time the learner's pieces (instance attributes: other learners are not affected)."""
    timed(learner.policy, "act", "generation", times)
    timed(learner.policy, "reset", "generation", times)
    timed(learner.scorer, "session", "scoring", times)
    timed(learner.scorer, "sessions_append", "scoring", times)
    timed(learner.scorer, "reload_weights", "scoring", times)
    timed(learner, "collect", "collect", times)
    timed(learner, "update", "update", times)


ADVANTAGE: dict[str, float] = defaultdict(float)
"""Time in repro_env.agents.grpo's advantage and packing functions (module-level, wrapped once in main)."""


def split(times: dict[str, float]) -> dict[str, float]:
    """Raw timers → the five phases (collect and update minus what was timed inside them)."""
    reload = times.get("reload", 0.0)
    return {
        "generation": times["generation"],
        "scoring": times["scoring"],
        "env": times["collect"] - times["generation"] - (times["scoring"] - reload),
        "advantage": times["advantage"],
        "optimisation": times["update"] - times["advantage"] - reload,
    }


def bench(process_reward: bool, args: argparse.Namespace) -> dict[str, float]:
    """Mean seconds per update of each phase for one learner."""
    from repro_env.agents.grpo import GRPO, GRPOConfig
    from repro_env.tasks import resolve_task

    task = resolve_task("RePro-Math-v0", {"scorer": {"model": args.model}})
    config = GRPOConfig(model=args.model, lr=1e-4, prompts_per_update=args.prompts, group_size=args.group,
                        micro_batch_size=8, process_reward=process_reward)
    learner = GRPO(config, task, seed=args.seed)
    times: dict[str, float] = defaultdict(float)
    instrument(learner, times)
    reload_times: dict[str, float] = defaultdict(float)
    timed(learner.scorer, "reload_weights", "reload", reload_times)
    learner.update(learner.collect())  # warm-up: first-call allocations, lazy imports
    times.clear()
    reload_times.clear()
    ADVANTAGE.clear()
    tokens = 0.0
    for _ in range(args.updates):
        metrics = learner.update(learner.collect())
        tokens += metrics["tokens_per_response"]
    times["advantage"] = ADVANTAGE["advantage"]
    times["reload"] = reload_times["reload"]
    phases = {k: v / args.updates for k, v in split(times).items()}
    phases["tokens_per_response"] = tokens / args.updates
    return phases


def generation_vs_decoding(args: argparse.Namespace, batch: int = 16, steps: int = 6, *,
                           look_ahead: bool = True) -> tuple[float, float, int, int]:
    """Tokens/s of ``LMPolicy`` sampling ``steps`` segments for ``batch`` prompts, and of raw cached
    decoding (one token per forward, a ``DynamicCache``, sampling from the logits) of the same number
    of tokens per row from the same prompts, in the same run; and the forward passes of each."""
    import torch
    from transformers import DynamicCache

    from repro_env.agents.policy import LMPolicy, PolicyConfig
    from repro_env.tasks import make_source, resolve_task

    spec = resolve_task("RePro-Math-v0")
    source = make_source(spec)
    prompts = [spec.render_prompt(source.get("train", i)) for i in range(batch)]
    policy = LMPolicy(PolicyConfig(model=args.model, max_segment_tokens=spec.limits.max_segment_tokens,
                                   look_ahead=look_ahead), seed=0)
    forwards = [0]
    counting = policy.model.base_model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    observations, generated = list(prompts), 0
    start = time.perf_counter()
    policy.reset(observations)
    for _ in range(steps):
        segments = policy.act(observations)
        generated += sum(len(s.ids) for s in segments)
        observations = [o + s.text + ("" if s.text.endswith(spec.delimiter) else spec.delimiter)
                        for o, s in zip(observations, segments, strict=True)]
    policy_rate = generated / (time.perf_counter() - start)
    counting.remove()

    new_tokens = generated // batch  # the same tokens per row, decoded in one run
    tokenizer, model = policy.tokenizer, policy.model
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        start = time.perf_counter()
        cache, mask = DynamicCache(config=model.config), encoded["attention_mask"]
        out = model(input_ids=encoded["input_ids"], attention_mask=mask, past_key_values=cache, use_cache=True)
        for _ in range(new_tokens):
            token = torch.multinomial(torch.softmax(out.logits[:, -1].float(), -1), 1, generator=rng)  # (B, 1)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            out = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
        raw_rate = batch * new_tokens / (time.perf_counter() - start)
    return policy_rate, raw_rate, forwards[0], new_tokens + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=5, help="timed updates per variant (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--model", default="bundled", help="'bundled' or a local model directory")
    parser.add_argument("--prompts", type=int, default=4, help="GRPO prompts per update (P)")
    parser.add_argument("--group", type=int, default=4, help="GRPO group size (G)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generation-runs", type=int, default=5, help="generation runs per variant (median)")
    parser.add_argument("--smoke", action="store_true", help="tiny budget: 1 update, P = 1 x G = 2 (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.updates, args.prompts, args.group, args.generation_runs = 1, 1, 2, 1
    import torch

    import repro_env.agents.grpo as grpo_module

    torch.set_num_threads(args.threads)
    for name in ("grpo_token_advantages", "pack"):
        timed(grpo_module, name, "advantage", ADVANTAGE)
    rows = {"outcome-only": bench(False, args), "RePro": bench(True, args)}
    print(f"GRPO update on RePro-Math-v0, model {args.model}, P={args.prompts} x G={args.group} rollouts, "
          f"{args.updates} timed updates, {args.threads} torch thread(s), {platform.machine()}")
    print(f"{'phase (s / update)':<22}{'outcome-only':>14}{'RePro':>10}")
    for phase in PHASES:
        print(f"{phase:<22}{rows['outcome-only'][phase]:>14.3f}{rows['RePro'][phase]:>10.3f}")
    totals = {name: sum(row[p] for p in PHASES) for name, row in rows.items()}
    print(f"{'total':<22}{totals['outcome-only']:>14.3f}{totals['RePro']:>10.3f}")
    print(f"{'tokens / response':<22}{rows['outcome-only']['tokens_per_response']:>14.1f}"
          f"{rows['RePro']['tokens_per_response']:>10.1f}")
    repro = rows["RePro"]
    print(f"RePro update / the same update without scoring (target < 1.25): "
          f"{totals['RePro'] / (totals['RePro'] - repro['scoring']):.3f}  (scoring {repro['scoring']:.3f} s, "
          f"{repro['scoring'] / totals['RePro']:.1%} of the update)")
    no_scorer = totals["outcome-only"] - rows["outcome-only"]["scoring"]
    print(f"RePro / outcome-only without a scorer, separate runs: {totals['RePro'] / no_scorer:.3f}  "
          f"(responses differ in length between the runs)")
    print(f"RePro / outcome-only as the package runs them (both envs score J): "
          f"{totals['RePro'] / totals['outcome-only']:.3f}")
    for look_ahead in (True, False):
        runs = sorted((generation_vs_decoding(args, look_ahead=look_ahead) for _ in range(args.generation_runs)),
                      key=lambda run: run[0] / run[1])
        policy_rate, raw_rate, forwards, raw_forwards = runs[len(runs) // 2]  # the median run by ratio
        print(f"generation at batch 16, look_ahead={look_ahead}: LMPolicy {policy_rate:.0f} tokens/s in "
              f"{forwards} forwards, raw cached decoding {raw_rate:.0f} tokens/s in {raw_forwards} forwards "
              f"(same prompts and tokens per row): {policy_rate / raw_rate:.0%} (target >= 80%); "
              f"median of {len(runs)} runs, ratios {', '.join(f'{r[0] / r[1]:.2f}' for r in runs)}")

if __name__ == "__main__":
    main()
