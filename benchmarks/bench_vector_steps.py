"""A vector env's scorer step at real trace lengths: B sessions, one ``sessions_append`` per step.

    python benchmarks/bench_vector_steps.py                  # B = 8, prefixes of 1k, 4k and 8k tokens
    python benchmarks/bench_vector_steps.py --batch 4 --lengths 2048 --repeats 5

Each of the B sessions holds a prefix of about L tokens (row b is 64·b tokens shorter, as sub-envs
of one vector env are), then appends a ~100-token segment and scores J. The same random Llama as
``bench_scoring.py`` (2 layers, d=512, fp32, CPU). Printed per L: seconds per batched step, and the
floor: one plain forward of the same new tokens (segment + |a|) for the B rows against a cache
that already holds B prefixes of the mean length, written in place, timed in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from bench_scoring import build_model  # noqa: E402  (benchmarks/ is the script's directory)
from tqdm import tqdm
from transformers import AutoTokenizer
from transformers.cache_utils import Cache

from repro_env.assets import bundled_model_dir
from repro_env.kv_cache import buffer_layers
from repro_env.scoring import hf

LINE = "Next, 17 + 25 = 42 and 42 * 3 = 126, so we carry 126 to the next step of the sum.\n\n"


@torch.no_grad()
def floor_step(model, batch: int, prefix: int, new: int, repeats: int) -> float:
    """Median seconds of B rows of ``new`` tokens through the model against B cached prefixes of
    one length: preallocated buffers written in place (no copy), the model's own causal mask."""
    cache = Cache(layers=buffer_layers(model, prefix + new))
    model.model(input_ids=torch.randint(3, 500, (batch, prefix)), past_key_values=cache, use_cache=True)
    ids = torch.randint(3, 500, (batch, new))
    positions = torch.arange(prefix, prefix + new)[None].expand(batch, -1)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True)
        times.append(time.perf_counter() - start)
        for layer in cache.layers:
            layer.truncate(prefix)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="sessions (sub-envs) per step")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny budget: B = 2, L = 512, 1 repeat (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.lengths, args.repeats = 2, [512], 1
    torch.set_num_threads(args.threads)
    model = build_model(1024, 2, "sdpa")
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    tokenizer.model_max_length = 1 << 30  # the random model has 32k positions, the bundled one 512
    scorer = hf.HFScorer.from_model(model, tokenizer, hf.ScorerConfig(model="<random>", batch_size=args.batch))
    per_line = len(tokenizer(LINE, add_special_tokens=False)["input_ids"])
    segment = LINE * max(1, round(100 / per_line))
    print(f"Llama 2L d=512 fp32, {args.threads} threads, B = {args.batch}; median of {args.repeats}; "
          f"load average {os.getloadavg()[0]:.2f} at start")
    rows = []
    for L in tqdm(args.lengths, desc="prefix lengths"):
        sessions = scorer.sessions([("Question: what is the sum of the numbers below?\n\n", "\\boxed{126}")]
                                   * args.batch)
        targets = [L - 64 * b for b in range(args.batch)]
        while any(s.total_tokens < t for s, t in zip(sessions, targets, strict=True)):
            chunks = [LINE * max(1, min(1000, t - s.total_tokens) // per_line) for s, t in
                      zip(sessions, targets, strict=True)]
            scorer.sessions_append(sessions, chunks, score=[False] * args.batch)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            steps = scorer.sessions_append(sessions, [segment] * args.batch)
            times.append(time.perf_counter() - start)
        prefix = round(statistics.mean(s.total_tokens for s in sessions))
        new = steps[0].segment_tokens + len(scorer.answer_ids("\\boxed{126}"))
        floor = floor_step(model, args.batch, prefix, new, args.repeats)
        rows.append((prefix, new, statistics.median(times), floor))
        for s in sessions:
            s.close()
    print(f"\n{'prefix':>7} {'new tok':>7} {'step s':>8} {'floor s':>8} {'step/floor':>10}")
    for prefix, new, step, floor in rows:
        print(f"{prefix:>7} {new:>7} {step:>8.4f} {floor:>8.4f} {step / floor:>10.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
