"""Seconds per GRPO update, side by side: TRL's GRPOTrainer, TRL with RePro, and our own GRPO + RePro.

    .venv/bin/python benchmarks/bench_vs_trl.py [--updates 5] [--threads 1]

Same bundled model, same P prompts × G completions per update (default 4 × 4), sampling at
temperature 1.0, one optimisation pass per update, KL coefficient 0.001, lr 5e-5, completions
capped at the same token budget. Each row times ``--updates`` updates after one warm-up update:

1. TRL ``GRPOTrainer``, outcome reward only (``repro_env.integrations.trl.outcome_reward_func``);
2. TRL with RePro (``ReProGRPOTrainer``: J at every segment end with the policy's weights);
3. this package's ``repro_env.agents.grpo.GRPO`` with RePro (the env computes J as it steps).

Targets: (2)/(1) <= 1.25, and (3) <= (1).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch


def trl_seconds(repro: bool, args: argparse.Namespace) -> tuple[list[float], float]:
    """Per-update wall times (after the warm-up) and mean completion tokens of a TRL run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from repro_env.assets import bundled_model_dir
    from repro_env.integrations.trl import ReProGRPOTrainer, outcome_reward_func, task_dataset

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_step_begin(self, *_, **__) -> None:
            self.marks.append(time.perf_counter())

        def on_train_end(self, *_, **__) -> None:
            self.marks.append(time.perf_counter())

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir(), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(bundled_model_dir(), dtype=torch.float32)
    steps = args.updates + 1
    config = GRPOConfig(output_dir="runs/bench_vs_trl", max_steps=steps, learning_rate=5e-5, seed=0,
                        per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
                        max_completion_length=args.max_tokens, temperature=1.0, beta=0.001, logging_steps=1,
                        report_to="none", save_strategy="no", use_cpu=True, bf16=False,
                        gradient_checkpointing=False, use_vllm=False, disable_tqdm=True)
    kwargs = dict(model=model, args=config, processing_class=tokenizer,
                  reward_funcs=outcome_reward_func("RePro-Math-v0"),
                  train_dataset=task_dataset("RePro-Math-v0", size=steps * args.prompts))
    trainer = ReProGRPOTrainer(**kwargs, task="RePro-Math-v0") if repro else GRPOTrainer(**kwargs)
    clock = Clock()
    trainer.add_callback(clock)
    trainer.train()
    times = [b - a for a, b in zip(clock.marks, clock.marks[1:], strict=False)][1:]  # drop the warm-up
    lengths = [r["completions/mean_length"] for r in trainer.state.log_history if "completions/mean_length" in r]
    return times, statistics.mean(lengths)


def ours_seconds(args: argparse.Namespace) -> tuple[list[float], float]:
    from repro_env.agents.grpo import GRPO, GRPOConfig

    config = GRPOConfig(lr=5e-5, prompts_per_update=args.prompts, group_size=args.group, epochs=1,
                        kl_coef=0.001, micro_batch_size=args.prompts * args.group)
    learner = GRPO(config, "RePro-Math-v0", seed=0)
    learner.update(learner.collect())  # warm-up
    times, tokens = [], []
    for _ in range(args.updates):
        start = time.perf_counter()
        metrics = learner.update(learner.collect())
        times.append(time.perf_counter() - start)
        tokens.append(metrics["tokens_per_response"])
    return times, statistics.mean(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=256, help="completion token cap (TRL)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny budget: 1 update, P = 1 x G = 2, 16 tokens (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.updates, args.prompts, args.group, args.max_tokens = 1, 1, 2, 16
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rows = [("TRL GRPOTrainer, outcome only", *trl_seconds(False, args)),
            ("TRL ReProGRPOTrainer", *trl_seconds(True, args)),
            ("repro-env GRPO + RePro", *ours_seconds(args))]
    print(f"\nRePro-Math-v0, bundled model, P={args.prompts} x G={args.group}, {args.updates} timed updates after "
          f"one warm-up, {args.threads} torch thread(s), {platform.machine()}, load average {load:.2f} at start")
    print(f"{'run':<32} {'s / update':>10} {'min':>7} {'max':>7}")
    means = []
    for name, times, _ in rows:
        means.append(statistics.mean(times))
        print(f"{name:<32} {means[-1]:>10.3f} {min(times):>7.3f} {max(times):>7.3f}")
    print(f"(2)/(1) = {means[1] / means[0]:.3f}  (target <= 1.25)")
    print(f"(3)/(1) = {means[2] / means[0]:.3f}  (target <= 1)")
    print("mean tokens per response: " + ", ".join(f"({i + 1}) {row[2]:.1f}" for i, row in enumerate(rows)))


if __name__ == "__main__":
    main()
