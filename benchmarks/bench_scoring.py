"""Cost of scoring J at M points of one response (REPRO_SPEC §7): per-prefix passes vs shared-prefix scoring.

    (a) one forward per point over ``q + τ≤t + a``, batched (what the authors' code does);
    (b) ``HFScorer.score_tokens``, the real code path: one tree pass ``[q + τ, a', …, a']`` up to
        ``TREE_MAX_TOKENS``, chunked prefill with answer probes on the cache above (``prefill.py``);
    (c) one plain causal forward over ``q + τ`` (the floor: the trajectory read once).

A random-init Llama (2 layers, d=512, 8 heads, vocab 1024, positions up to 32k, fp32, CPU) on
random token ids; the LM head runs only on the positions J needs, in (a) as in (b). M = 20 points,
and M = all (one point per ~100 tokens). Peak memory is the resident memory one run of (b) or
(c) adds at its peak (Linux /proc). Targets at 4k-16k: (a)/(b) >= 5 at M = 20;
(b)/(c) <= 1.5 at M = 20 and <= 2 at M = all; peak memory of (b) within 2x that of (c).

A second table gives the online session's cost per appended segment (~100 tokens) at each
prefix length, next to a plain forward of the same segment against a cache of that length.
``--crossover`` prints tree vs chunked prefill at short lengths (how ``TREE_MAX_TOKENS`` was set).

    python benchmarks/bench_scoring.py            # full table (about 10 minutes on 2 cores)
    python benchmarks/bench_scoring.py --quick    # smoke variant
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from tqdm import tqdm
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from repro_env.assets import bundled_model_dir
from repro_env.scoring import hf
from repro_env.scoring.hf import TokenizedRequest
from repro_env.scoring.options import HFOptions

QUESTION_TOKENS = 64
SEGMENT_TOKENS = 100
"""M = all: one scored point per this many tokens."""
M_MMAP_THRESHOLD = -3
"""glibc ``mallopt`` parameter (malloc.h)."""


def build_model(vocab: int, layers: int, attn: str) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=512, intermediate_size=1376, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=32768,
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


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def peak_extra_mb(fn) -> float:
    """Peak resident memory (MB) one call of ``fn`` adds above the resident memory before it.

    Linux: writing 5 to /proc/self/clear_refs resets the process's peak RSS (VmHWM) to its current
    RSS, so the peak after the call is this call's own (``--memory-only`` runs, in their own process).
    """
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    before = _status_mb("VmRSS")
    fn()
    return _status_mb("VmHWM") - before


def memory_table(scorer: hf.HFScorer, args: argparse.Namespace) -> list[tuple[float, float]]:
    """(peak MB of (b), peak MB of (c)) for every case, in the order of the timing table."""
    rows = []
    for L in args.lengths:
        for M in args.points:
            item = make_request(L, M, args.answer_tokens, args.vocab, seed=L)
            rows.append((peak_extra_mb(lambda item=item: scorer.score_tokens([item])),
                         peak_extra_mb(lambda item=item: plain_pass(scorer.model, item))))
    return rows


def session_costs(model: LlamaForCausalLM, lengths: list[int], repeats: int, clock) -> list[tuple]:
    """Seconds per appended ~100-token segment of an online session at each prefix length."""
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    tokenizer.model_max_length = 1 << 30  # the random model has 32k positions, the bundled one 512
    scorer = hf.HFScorer.from_model(model, tokenizer)
    line = "Next, 17 + 25 = 42 and 42 * 3 = 126, so we carry 126 to the next step of the sum.\n\n"
    per_line = len(tokenizer(line, add_special_tokens=False)["input_ids"])
    segment = line * max(1, round(SEGMENT_TOKENS / per_line))
    rows = []
    for L in lengths:
        session = scorer.session("Question: what is the sum of the numbers below?\n\n", "\\boxed{126}")
        while session.total_tokens < L - 1100:  # grow the prefix ~1000 tokens at a time
            session.append(line * (1000 // per_line), score=False)
        while session.total_tokens < L:
            session.append(segment, score=False)
        times = []
        for _ in range(repeats):
            start = clock()
            step = session.append(segment)
            times.append(clock() - start)
        prefix = session.total_tokens
        with torch.no_grad():  # the floor: the same segment's tokens against a cache of the prefix
            past = model.model(input_ids=torch.randint(3, 500, (1, prefix)), use_cache=True).past_key_values
            new = torch.randint(3, 500, (1, step.segment_tokens + 7))
            positions = torch.arange(prefix, prefix + new.shape[1])[None]
            start = clock()
            model.model(input_ids=new, position_ids=positions, past_key_values=past, use_cache=False)
            floor = clock() - start
        rows.append((prefix, step.segment_tokens, statistics.median(times), floor))
        session.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="L in (1024, 4096), M = 20 and all, 1 repeat")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192, 16384])
    parser.add_argument("--points", nargs="+", default=["20", "all"])
    parser.add_argument("--answer-tokens", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per forward in (a)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--max-a-tokens", type=int, default=400_000,
                        help="skip (a) where it would feed more tokens than this (it is quadratic)")
    parser.add_argument("--check", action="store_true", help="also assert (a) and (b) give the same J")
    parser.add_argument("--crossover", action="store_true", help="only tree vs chunked prefill at short lengths")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time, steadier than wall time on a shared machine")
    parser.add_argument("--smoke", action="store_true", help="tiny budget: L = 256, M = 4 and all, 1 repeat, "
                        "with --check (CI)")
    args = parser.parse_args()
    if args.quick:
        args.lengths, args.repeats = [1024, 4096], 1
    if args.smoke:
        args.lengths, args.points, args.repeats, args.check = [256], ["4", "all"], 1, True
    torch.set_num_threads(args.threads)
    if args.memory_only:
        # Every tensor >= 64 KB gets its own mmap, unmapped on free, so that a call's peak is its own
        # and not hidden by memory a previous call freed; it slows allocation, so nothing is timed here.
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 16)
    model = build_model(args.vocab, args.layers, args.attn)
    scorer = hf.HFScorer.from_model(model, tokenizer=None)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    warm_up = make_request(256, "5", args.answer_tokens, args.vocab, seed=0)
    per_prefix_passes(model, warm_up, args.batch_size)  # allocator and kernel set-up, once
    scorer.score_tokens([warm_up])
    if not args.memory_only:
        print(f"Llama {args.layers}L d=512 vocab={args.vocab} fp32, {args.threads} threads, attn={args.attn}, "
              f"|a|={args.answer_tokens}, M points + baseline; {args.clock} time, median of {args.repeats}; "
              f"load average {os.getloadavg()[0]:.2f} at start")
    if args.crossover:
        return crossover(model, args, clock)
    if args.memory_only:
        return print(json.dumps(memory_table(scorer, args)))
    rows = []
    cases = [(L, M) for L in args.lengths for M in args.points]
    for L, M in tqdm(cases, desc="scoring benchmark"):
        item = make_request(L, M, args.answer_tokens, args.vocab, seed=L)
        num_points = len(item.points) + 1  # with the baseline point 0
        tokens_a = sum(item.boundaries[t] + args.answer_tokens for t in (0, *item.points))
        tokens_b = L + num_points * (args.answer_tokens - 1)
        if args.check:
            separate = per_prefix_passes(model, item, args.batch_size)
            tree = scorer.score_tokens([item])[0].J
            assert max(abs(x - y) for x, y in zip(tree, separate, strict=True)) < 1e-4, (tree, separate)
        time_a = (median_time(lambda item=item: per_prefix_passes(model, item, args.batch_size), 1, clock)
                  if tokens_a <= args.max_a_tokens else float("nan"))
        time_b = median_time(lambda item=item: scorer.score_tokens([item]), args.repeats, clock)
        time_c = median_time(lambda item=item: plain_pass(model, item), args.repeats, clock)
        rows.append([L, f"{M}={num_points - 1}" if M == "all" else M, tokens_a, tokens_b, time_a, time_b, time_c])
    memory = json.loads(subprocess.run([sys.executable, __file__, "--memory-only", *sys.argv[1:]], check=True,
                                       capture_output=True, text=True).stdout)
    for row, (memory_b, memory_c) in zip(rows, memory, strict=True):
        row += [memory_b, memory_c]
    print(f"\n(b) = tree rows up to {hf.TREE_MAX_TOKENS} tokens, chunked prefill ({HFOptions().chunk_tokens}-token "
          f"pieces) above; (a) is timed once, '-' where it would feed over {args.max_a_tokens} tokens")
    header = (f"{'L':>5} {'M':>7} {'tok (a)':>8} {'tok (b)':>8} {'t(a) s':>8} {'t(b) s':>8} {'t(c) s':>8} "
              f"{'(a)/(b)':>8} {'(b)/(c)':>8} {'mem(b) MB':>9} {'mem(c) MB':>9} {'mem b/c':>7}")
    print(header)
    for L, M, tokens_a, tokens_b, time_a, time_b, time_c, memory_b, memory_c in rows:
        a, ab = ("-", "-") if time_a != time_a else (f"{time_a:.3f}", f"{time_a / time_b:.2f}")
        print(f"{L:>5} {M:>7} {tokens_a:>8} {tokens_b:>8} {a:>8} {time_b:>8.3f} {time_c:>8.3f} "
              f"{ab:>8} {time_b / time_c:>8.2f} {memory_b:>9.1f} {memory_c:>9.1f} "
              f"{memory_b / max(memory_c, 0.1):>7.2f}")
    print("\nOnline session: one appended segment (J + entropy) at each prefix length, vs the floor "
          "(the same number of tokens + |a| through the model against a cache of the prefix)")
    print(f"{'prefix':>7} {'seg tok':>7} {'append s':>9} {'floor s':>8} {'ratio':>6}")
    for prefix, segment_tokens, append, floor in session_costs(model, args.lengths, args.repeats, clock):
        print(f"{prefix:>7} {segment_tokens:>7} {append:>9.4f} {floor:>8.4f} {append / floor:>6.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


def crossover(model: LlamaForCausalLM, args, clock) -> None:
    """Tree rows vs chunked prefill, the same requests, at short lengths: where TREE_MAX_TOKENS goes."""
    tree = hf.HFScorer.from_model(model, tokenizer=None)
    print(f"{'L':>5} {'M':>7} {'tree s':>8} {'prefill s':>9} {'tree/prefill':>12}")
    for L in (256, 512, 768, 1024, 1536, 2048):
        for M in args.points:
            item = make_request(L, M, args.answer_tokens, args.vocab, seed=L)
            hf.TREE_MAX_TOKENS = 1 << 30
            time_tree = median_time(lambda item=item: tree.score_tokens([item]), args.repeats, clock)
            hf.TREE_MAX_TOKENS = 0
            time_prefill = median_time(lambda item=item: tree.score_tokens([item]), args.repeats, clock)
            print(f"{L:>5} {M:>7} {time_tree:>8.3f} {time_prefill:>9.3f} {time_tree / time_prefill:>12.2f}")


if __name__ == "__main__":
    main()
