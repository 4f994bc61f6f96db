"""Cost of scoring J at M points of one response (REPRO_SPEC §7): per-prefix passes vs one tree pass.

    (a) one forward per point over ``q + τ≤t + a``, batched (what the authors' code does);
    (b) ``HFScorer.score_tokens``: one tree pass ``[q + τ, a', …, a']`` (the real code path);
    (c) one plain causal forward over ``q + τ`` (the floor: the trajectory read once).

A random-init Llama (8 layers, d=512, 8 heads, vocab 32000, fp32, CPU) on random token ids; the LM
head runs only on the positions J needs, in (a) as in (b). Prints a table with medians of a few
repeats. Targets: (b) ≥ 5× faster than (a) at M=20, L=1024; (b) within 1.5× of (c).

    python benchmarks/bench_scoring.py            # full table (a few minutes on 2 cores)
    python benchmarks/bench_scoring.py --quick    # smoke variant
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from repro_env.scoring.hf import HFScorer, TokenizedRequest

QUESTION_TOKENS = 64
SEGMENT_TOKENS = 50


def build_model(vocab: int, layers: int, attn: str) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=512, intermediate_size=1376, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096,
    )
    config._attn_implementation = attn
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def make_request(length: int, points: int | str, answer_len: int, vocab: int, seed: int) -> TokenizedRequest:
    """Random ids; ``points`` evenly spaced boundaries, or ``"all"``: one every SEGMENT_TOKENS tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (length,), generator=g).tolist()
    answer = torch.randint(3, vocab, (answer_len,), generator=g).tolist()
    reasoning = length - QUESTION_TOKENS
    T = max(1, reasoning // SEGMENT_TOKENS) if points == "all" else int(points)
    boundaries = [QUESTION_TOKENS + round(j * reasoning / T) for j in range(T + 1)]
    return TokenizedRequest(ids, boundaries, answer, tuple(range(1, T + 1)))


@torch.no_grad()
def per_prefix_passes(model: LlamaForCausalLM, item: TokenizedRequest, batch_size: int) -> list[float]:
    """(a): J at each point from its own forward over ``ids[:b_t] + a`` (right-padded batches)."""
    answer = item.answer_ids
    head = model.get_output_embeddings()
    J = []
    cuts = [item.boundaries[t] for t in (0, *item.points)]
    for start in range(0, len(cuts), batch_size):
        chunk = cuts[start:start + batch_size]
        length = max(chunk) + len(answer)
        input_ids = torch.zeros(len(chunk), length, dtype=torch.long)  # (B, L)
        attention = torch.zeros(len(chunk), length, dtype=torch.long)  # (B, L)
        for r, b in enumerate(chunk):
            input_ids[r, :b + len(answer)] = torch.tensor(item.ids[:b] + answer)
            attention[r, :b + len(answer)] = 1
        hidden = model.model(input_ids=input_ids, attention_mask=attention).last_hidden_state  # (B, L, H)
        for r, b in enumerate(chunk):
            log_probs = torch.log_softmax(head(hidden[r, b - 1:b - 1 + len(answer)]), -1)  # (|a|, V)
            J.append(float(log_probs.gather(1, torch.tensor(answer)[:, None]).mean()))
    return J


@torch.no_grad()
def plain_pass(model: LlamaForCausalLM, item: TokenizedRequest) -> None:
    """(c): one causal forward over the trajectory."""
    model.model(input_ids=torch.tensor([item.ids]))


def median_time(fn, repeats: int, clock) -> float:
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="L in (256, 1024), M in (5, 20), 1 repeat")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--points", nargs="+", default=["5", "10", "20", "all"])
    parser.add_argument("--answer-tokens", type=int, default=8)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per forward in (a)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--check", action="store_true", help="also assert (a) and (b) give the same J")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time, steadier than wall time on a shared machine")
    args = parser.parse_args()
    if args.quick:
        args.lengths, args.points, args.repeats = [256, 1024], ["5", "20"], 1
    torch.set_num_threads(args.threads)
    model = build_model(args.vocab, args.layers, args.attn)
    scorer = HFScorer.from_model(model, tokenizer=None)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    warm_up = make_request(256, "5", args.answer_tokens, args.vocab, seed=0)
    per_prefix_passes(model, warm_up, args.batch_size)  # allocator and kernel set-up, once
    scorer.score_tokens([warm_up])
    rows = []
    cases = [(L, M) for L in args.lengths for M in args.points]
    for L, M in tqdm(cases, desc="scoring benchmark"):
        item = make_request(L, M, args.answer_tokens, args.vocab, seed=L)
        num_points = len(item.points) + 1  # with the baseline point 0
        tokens_a = sum(item.boundaries[t] + args.answer_tokens for t in (0, *item.points))
        tokens_b = L + num_points * (args.answer_tokens - 1)
        if args.check:
            tree = scorer.score_tokens([item])[0].J
            separate = per_prefix_passes(model, item, args.batch_size)
            assert max(abs(x - y) for x, y in zip(tree, separate, strict=True)) < 1e-4, (tree, separate)
        time_a = median_time(lambda item=item: per_prefix_passes(model, item, args.batch_size), args.repeats, clock)
        time_b = median_time(lambda item=item: scorer.score_tokens([item]), args.repeats, clock)
        time_c = median_time(lambda item=item: plain_pass(model, item), args.repeats, clock)
        rows.append((L, f"{M}={num_points - 1}" if M == "all" else M, tokens_a, tokens_b,
                     time_a, time_b, time_c))
    print(f"\nLlama {args.layers}L d=512 vocab={args.vocab} fp32, {args.threads} threads, attn={args.attn}, "
          f"|a|={args.answer_tokens}, M points + baseline; {args.clock} time, median of {args.repeats}")
    header = f"{'L':>5} {'M':>7} {'tok (a)':>8} {'tok (b)':>8} {'t(a) s':>8} {'t(b) s':>8} {'t(c) s':>8}"
    print(header + f" {'(a)/(b)':>8} {'(b)/(c)':>8}")
    for L, M, tokens_a, tokens_b, time_a, time_b, time_c in rows:
        print(f"{L:>5} {M:>7} {tokens_a:>8} {tokens_b:>8} {time_a:>8.3f} {time_b:>8.3f} {time_c:>8.3f} "
              f"{time_a / time_b:>8.2f} {time_b / time_c:>8.2f}")


if __name__ == "__main__":
    main()
