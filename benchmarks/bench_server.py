"""Scoring throughput of the backends on the bundled model: hf tree scorer, in-process vLLM, vLLM server.

    .venv/bin/python benchmarks/bench_server.py [--requests 64] [--repeats 3]

Scores the reference solutions of RePro-Math-v0's first ``--requests`` train problems (J at every
segment end, plus first-token entropies) and prints, per backend, responses' tokens scored per
second and J values per second (median of ``--repeats`` calls, after one warm-up call). The
server is started on loopback with ``repro-env vllm-serve`` and scored with 1 and with 8
concurrent requests (``options.concurrency``, 8 prompts per request).

The last row prices vLLM's missing prefix cache for prompt-log-prob requests: the same responses
with J at the final segment only (one prefill of ``q + τ + a`` each, the floor that a prefix
cache would approach), against J at every segment end (each J probe prefills its whole prefix).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from repro_env.assets import bundled_model_dir
from repro_env.scoring import ScorerConfig, ScoreRequest, make_scorer
from repro_env.scoring.server import wait_for_server
from repro_env.tasks import make_source, resolve_task


def requests(n: int) -> list[ScoreRequest]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny budget: 2 requests, 1 repeat (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.repeats = 2, 1
    load = os.getloadavg()[0]
    batch = requests(args.requests)
    rows = [("hf tree scorer", *measure(make_scorer(ScorerConfig()), batch, args.repeats)),
            ("vllm in-process", *measure(make_scorer(ScorerConfig(backend="vllm")), batch, args.repeats))]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(sys.executable).with_name("repro-env")
    server = subprocess.Popen([str(script), "vllm-serve", "--model", str(bundled_model_dir()), "--port", str(port),
                               "--max-model-len", "512"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(url, timeout_s=300, process=server)
        for concurrency in (1, 8):
            options = {"base_url": url, "max_logprobs": 600, "concurrency": concurrency, "batch_prompts": 8}
            scorer = make_scorer(ScorerConfig(backend="vllm-server", options=options))
            rows.append((f"vllm server, {concurrency} concurrent", *measure(scorer, batch, args.repeats)))
        final_only = [replace(r, points=(len(r.segments),)) for r in batch]
        rows.append(("  same, J at the end only", *measure(scorer, final_only, args.repeats)))
    finally:
        os.killpg(server.pid, signal.SIGKILL)
    print(f"\n{args.requests} reference solutions of RePro-Math-v0, bundled model, fp32, CPU; "
          f"load average {load:.2f} at start; median of {args.repeats}")
    print(f"{'backend':<28} {'tokens/s':>10} {'J/s':>8}")
    for name, tokens, points in rows:
        print(f"{name:<28} {tokens:>10.0f} {points:>8.0f}")
    every, final = rows[-2][1], rows[-1][1]
    print(f"J at every segment end costs {final / every:.2f}x the time of J at the end only on the server "
          "(no prefix cache for prompt log-probs)")


if __name__ == "__main__":
    main()
