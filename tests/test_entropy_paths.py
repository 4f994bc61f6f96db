"""The approximate entropy path that real models take: top-N log-probs of a vocabulary larger than N.

Real models (vocabularies of ~150k tokens, ``max_logprobs`` ~20) never see the whole next-token
distribution, so ``entropy_from_top_logprobs`` lumps the missing tail mass r into one bucket. That
is a lower bound on the exact entropy, and it is off by r·H(tail), at most r·ln(V − N). These tests
hold the vLLM CPU engine and the server, both at N = 20, to that bound against the exact entropies
of the hf scorer, and measure how often ``topk_entropy`` selection picks other points.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from repro_env.arithmetic import overthink
from repro_env.reward import select_points
from repro_env.scoring import ScorerConfig, ScoreRequest, make_scorer
from repro_env.scoring.hf import HFScorer
from repro_env.scoring.vllm import VLLMScorer
from repro_env.tasks import load_task, make_source

pytestmark = pytest.mark.vllm

TOP_N = 20


def overthinking_requests(n: int) -> list[ScoreRequest]:
    """Held-out RePro-Math-v0 problems, their reference solutions with re-checks, false starts and
    rumination inserted: 9-19 segments, the kind of trace ``topk_entropy`` selects among."""
    spec = load_task("RePro-Math-v0")
    source = make_source(spec)
    rng = random.Random(0)
    requests = []
    for i in range(n):
        problem = source.get("test", i)
        segments = problem.solution
        for kind, count in (("recheck", 3), ("false_start", 2), ("rumination", 2)):
            segments = overthink(segments, rng, kind, count)
        requests.append(ScoreRequest(spec.render_prompt(problem), segments, spec.render_answer(problem)))
    return requests


@torch.no_grad()
def exact_and_tail(hf: HFScorer, request: ScoreRequest) -> tuple[np.ndarray, np.ndarray]:
    """Exact first-token entropies of the segments (hf scorer) and the mass r outside the top N."""
    prepared = hf.prepare(request)
    logits = hf.model(torch.tensor([prepared.ids])).logits[0]  # (L, V)
    probs = torch.softmax(logits[[b - 1 for b in prepared.boundaries[:-1]]].double(), -1)  # (T, V)
    tail = 1.0 - probs.topk(TOP_N, -1).values.sum(-1)  # (T,)
    return hf.score([request])[0].entropies, tail.numpy()


def check_bound(approx: np.ndarray, exact: np.ndarray, tail: np.ndarray, vocab: int) -> np.ndarray:
    """Assert exact − r·ln(V − N) ≤ approx ≤ exact (to 1e-4); return the gaps."""
    gap = exact - approx
    assert (gap >= -1e-4).all(), gap.min()
    assert (gap <= tail * math.log(vocab - TOP_N) + 1e-4).all()
    return gap


def test_top_n_entropies_on_the_vllm_engine_are_within_the_tail_bound():
    """The bundled model (vocabulary 572), 40 overthinking traces, 406 entropy probes. Measured on
    this machine: mean gap 0.005 nats, max 0.117; ``topk_entropy`` with k = 5 picks the same points
    on 40 of 40 traces. Tried once against a null, the top-N entropy without its tail bucket: the
    bound failed on the first trace (gaps up to 0.038 against bounds of 0.0002-0.025).
    """
    import vllm

    from repro_env.assets import bundled_model_dir

    path = str(bundled_model_dir())
    engine = vllm.LLM(model=path, tokenizer=path, dtype="float32", seed=0, enforce_eager=True,
                      max_model_len=512, enable_prefix_caching=True, max_logprobs=TOP_N)
    scorer = VLLMScorer(ScorerConfig(backend="vllm", max_length=512), engine=engine)
    hf = HFScorer(ScorerConfig(max_length=512))
    assert scorer.entropy_top_n == TOP_N and not scorer.exact_entropy
    requests = overthinking_requests(40)
    gaps, same = [], 0
    for request, result in zip(requests, scorer.score(requests), strict=True):
        exact, tail = exact_and_tail(hf, request)
        gaps.append(check_bound(result.entropies, exact, tail, scorer.vocab_size))
        same += select_points(result.entropies, 5) == select_points(exact, 5)
    gaps = np.concatenate(gaps)
    print(f"{len(gaps)} probes: mean gap {gaps.mean():.3f}, max {gaps.max():.3f}; same top-5 points on "
          f"{same}/{len(requests)} traces")
    assert gaps.mean() < 0.02 and same >= 38


def test_top_n_entropies_on_the_server_are_within_the_tail_bound(vllm_server, tiny_llama_dir):
    """The suite's server (random tiny Llama, vocabulary 500: nearly flat distributions, r ≈ 0.9,
    so the bound is wide and the gap large; the path, not the model, is under test here)."""
    config = ScorerConfig(model=str(tiny_llama_dir), max_length=192)
    hf = HFScorer(config)
    scorer = make_scorer(ScorerConfig(backend="vllm-server", model=str(tiny_llama_dir), max_length=192,
                                      options={"base_url": vllm_server.url, "max_logprobs": TOP_N}))
    assert scorer.entropy_top_n == TOP_N and not scorer.exact_entropy
    request = ScoreRequest("Question: what is 3 + 4 times 5?\n\n",
                           ("First, 4 * 5 = 20.\n\n", "Then, 3 + 20 = 23.\n\n", "So \\boxed{23}."), "\\boxed{23}")
    exact, tail = exact_and_tail(hf, request)
    gap = check_bound(scorer.score([request])[0].entropies, exact, tail, scorer.vocab_size)
    assert (gap > 0.5).all()  # the tail bucket misses most of a flat distribution's entropy
