"""Scoring on a vLLM server: the HTTP path on the bundled model, and J probes at 1k-16k tokens.

    .venv/bin/python benchmarks/bench_server.py [--requests 64] [--repeats 3] [--lengths 1024 4096 8192 16384]

Table 1 scores the reference solutions of RePro-Math-v0's first ``--requests`` train problems (J
at every segment end, plus first-token entropies) and prints, per backend, responses' tokens scored
per second and J values per second (median of ``--repeats`` calls, after one warm-up call). The
server is started on loopback with ``repro-env vllm-serve`` and scored with 1 and with 8
concurrent requests (``options.concurrency``, 8 prompts per request), with each way of reading J
(``options.j_probes``; the server runs with ``repro-env vllm-serve``'s 32-token cache blocks).

Table 2 prices one response of L tokens scored at M points (M = 20, and M = all: one point per
~100 tokens) on a second server, serving a random-init Llama (2 layers, d=512, positions up to
32k, fp32, the bundled tokenizer; random token ids, |a| = 8, as ``bench_scoring.py``):

    (a) ``j_probes: prompt_logprobs``: each J probe is a prompt ``q + τ≤t + a`` with prompt
        log-probs, which vLLM serves without its prefix cache;
    (b) ``j_probes: cached``: the longest prefix once, then one-token reads through the cache;
    (c) one plain prompt of the whole response on the same server (the floor).

(a) and (b) include the M first-token entropies. Each timed call gets fresh random ids and an
emptied prefix cache (``/reset_prefix_cache``), so that nothing is served from an earlier call; (a)
is timed once and skipped ('-') where it would feed over 400,000 tokens. Targets at 4k-16k:
(a)/(b) >= 5 at M = 20, and (b)/(c) <= 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from bench_scoring import build_model, make_request
from tqdm import tqdm
from transformers import AutoTokenizer

from repro_env.assets import bundled_model_dir
from repro_env.scoring import ScorerConfig, ScoreRequest, make_scorer
from repro_env.scoring.server import BLOCK_SIZE, wait_for_server

ANSWER_TOKENS = 8
MAX_PREFILL_A = 400_000
"""(a) is skipped where its probes would feed more tokens than this (minutes per call)."""


def requests(n: int) -> list[ScoreRequest]:
    from repro_env.tasks import make_source, resolve_task

    spec = resolve_task("RePro-Math-v0")
    source = make_source(spec)
    problems = [source.get("train", i) for i in range(n)]
    return [ScoreRequest(spec.render_prompt(p), tuple(p.solution), spec.render_answer(p)) for p in problems]


def measure(scorer, batch: list[ScoreRequest], repeats: int) -> tuple[float, float]:
    results = scorer.score(batch)  # warm-up
    tokens = sum(r.num_tokens for r in results)
    points = sum(len(r.J) for r in results)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        scorer.score(batch)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return tokens / seconds, points / seconds


@contextlib.contextmanager
def served(model: str, max_model_len: int, *extra: str) -> Iterator[str]:
    """A ``repro-env vllm-serve`` server of ``model`` on a free loopback port; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(sys.executable).with_name("repro-env")
    server = subprocess.Popen([str(script), "vllm-serve", "--model", model, "--port", str(port),
                               "--max-model-len", str(max_model_len), "--", *extra], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(url, timeout_s=300, process=server)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGKILL)


def bundled_table(args: argparse.Namespace) -> list[tuple[str, float, float]]:
    batch = requests(args.requests)
    rows = [("hf tree scorer", *measure(make_scorer(ScorerConfig()), batch, args.repeats)),
            ("vllm in-process", *measure(make_scorer(ScorerConfig(backend="vllm")), batch, args.repeats))]
    with served(str(bundled_model_dir()), 512) as url:
        for concurrency in (1, 8):
            for j_probes in ("prompt_logprobs", "cached", "auto"):
                options = {"base_url": url, "max_logprobs": 600, "concurrency": concurrency, "batch_prompts": 8,
                           "j_probes": j_probes}
                scorer = make_scorer(ScorerConfig(backend="vllm-server", options=options))
                rows.append((f"vllm server, {concurrency} concurrent, {j_probes}",
                             *measure(scorer, batch, args.repeats)))
        final_only = [replace(r, points=(len(r.segments),)) for r in batch]
        scorer = make_scorer(ScorerConfig(backend="vllm-server", options={**options, "j_probes": "prompt_logprobs"}))
        rows.append(("  prompt_logprobs, J at the end only", *measure(scorer, final_only, args.repeats)))
    return rows


def timed(scorer, call) -> float:
    """Seconds of ``call()`` after emptying the server's prefix cache."""
    scorer.client.request("POST", "/reset_prefix_cache")
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def long_table(args: argparse.Namespace) -> list[tuple]:
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    vocab = len(tokenizer)
    rows = []
    with tempfile.TemporaryDirectory() as model_dir:
        build_model(vocab, layers=2, attn="sdpa").save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        with served(model_dir, max(args.lengths) + ANSWER_TOKENS + 16, "--block-size", str(args.block_size)) as url:
            options = {"base_url": url, "request_timeout_s": 1800.0}
            a = make_scorer(ScorerConfig(backend="vllm-server", model=model_dir,
                                         options={**options, "j_probes": "prompt_logprobs"}))
            b = make_scorer(ScorerConfig(backend="vllm-server", model=model_dir,
                                         options={**options, "j_probes": "cached"}))
            b.score_tokens([make_request(512, 4, ANSWER_TOKENS, vocab, seed=99)])  # warm-up
            cases = [(L, M) for L in args.lengths for M in args.points]
            for L, M in tqdm(cases, desc="lengths x points", unit="case"):
                items = [make_request(L, M, ANSWER_TOKENS, vocab, seed=1000 * L + r) for r in range(args.repeats)]
                item = items[0]
                cuts = [item.boundaries[t] for t in (0, *item.points)]
                fed_a = sum(c + ANSWER_TOKENS for c in cuts)
                t_c = statistics.median(timed(b, lambda i=i: b.client.request(
                    "POST", "/v1/completions", {"model": b.served, "prompt": [i.ids], "max_tokens": 1}))
                    for i in items)
                t_b = statistics.median(timed(b, lambda i=i: b.score_tokens([i])) for i in items)
                t_a, gap = None, None
                if fed_a <= MAX_PREFILL_A:
                    t_a = timed(a, lambda i=item: a.score_tokens([i]))
                    gap = abs(a.score_tokens([item])[0].J - b.score_tokens([item])[0].J).max()
                rows.append((L, f"{len(item.points)}" if M != "all" else f"all={len(item.points)}", fed_a,
                             t_a, t_b, t_c, gap))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192, 16384])
    parser.add_argument("--points", nargs="+", default=["20", "all"])
    parser.add_argument("--block-size", type=int, default=BLOCK_SIZE, help="table 2's server: tokens per cache block")
    parser.add_argument("--skip-bundled", action="store_true", help="table 2 only")
    parser.add_argument("--smoke", action="store_true", help="tiny budget: 2 requests, L = 512, 1 repeat (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.repeats, args.lengths, args.points = 2, 1, [512], ["4"]
    load = os.getloadavg()[0]
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    if not args.skip_bundled:
        rows = bundled_table(args)
        print(f"\n{args.requests} reference solutions of RePro-Math-v0, bundled model, fp32, CPU; "
              f"load average {load:.2f} at start; OMP_NUM_THREADS {threads}; median of {args.repeats}")
        print(f"{'backend':<44} {'tokens/s':>10} {'J/s':>8}")
        for name, tokens, points in rows:
            print(f"{name:<44} {tokens:>10.0f} {points:>8.0f}")
        load = os.getloadavg()[0]
    rows = long_table(args)
    print(f"\nOne response of L tokens at M points (+ J_0 and M entropies), random Llama 2L d=512 fp32 on a vLLM "
          f"CPU server (block {args.block_size}); |a| = {ANSWER_TOKENS}; load average {load:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at the end; OMP_NUM_THREADS {threads}; (b), (c) median of {args.repeats}, "
          "(a) once")
    print(f"{'L':>6} {'M':>7} {'tok (a)':>8} {'t(a) s':>8} {'t(b) s':>8} {'t(c) s':>8} {'tok/s (a)':>10} "
          f"{'tok/s (b)':>10} {'tok/s (c)':>10} {'(a)/(b)':>8} {'(b)/(c)':>8} {'max|ΔJ|':>8}")
    for L, M, fed_a, t_a, t_b, t_c, gap in rows:
        a_cols = (f"{t_a:>8.3f}", f"{L / t_a:>10.0f}", f"{t_a / t_b:>8.2f}", f"{gap:>8.1e}") if t_a else \
            (f"{'-':>8}", f"{'-':>10}", f"{'-':>8}", f"{'-':>8}")
        print(f"{L:>6} {M:>7} {fed_a:>8} {a_cols[0]} {t_b:>8.3f} {t_c:>8.3f} {a_cols[1]} {L / t_b:>10.0f} "
              f"{L / t_c:>10.0f} {a_cols[2]} {t_b / t_c:>8.2f} {a_cols[3]}")


if __name__ == "__main__":
    main()
