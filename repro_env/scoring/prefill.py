"""Batch scoring of long traces: one causal pass over ``q + τ`` in pieces, answer probes on the cache (REPRO_SPEC §7).

For a response with scored boundaries ``c_0 < c_1 < … < c_M`` (``c_0`` is the end of ``q``), the
trajectory is fed in pieces that end at the boundaries, against a growing key/value cache. The
piece that ends at ``c_k`` is followed, in the same forward, by the answer copy ``a' = a[:-1]``:
plain causal attention then lets the copy see exactly ``q + τ≤t_k``, so no custom mask is needed.
The copy's keys and values are dropped from the cache afterwards (the next piece overwrites them).

    tokens fed: |q + τ| + M·|a'|      forwards: M + 1 (more when a piece exceeds ``chunk_tokens``)
    memory:     the cache, O(L), plus one piece's activations, O(chunk_tokens · L) attention scores

The tree layout of ``hf.py`` needs an (L', L') mask with ``L' = L + M·|a'|``: quadratic memory and,
on CPU, no fused attention kernel. It wins on short traces (one forward, several responses
batched); :meth:`HFScorer.score_tokens` picks this path above ``TREE_MAX_TOKENS``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from transformers.cache_utils import Cache

from repro_env.errors import ScorerError
from repro_env.kv_cache import buffer_layers
from repro_env.scoring.base import TokenizedRequest


def finite_values(values: torch.Tensor, what: str) -> torch.Tensor:
    """``values``, or a ``ScorerError`` when the model returned a NaN or an infinity among them."""
    if not torch.isfinite(values).all():
        raise ScorerError(f"the scorer model returned non-finite {what}: {values.tolist()[:8]}; "
                          "check the weights (NaN after an update?) or use dtype float32")
    return values


def next_token_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """H = −Σ p log p per row, from log-probs. (K, V) → (K,)"""
    return -(log_probs.exp() * log_probs).sum(-1)  # (K,)


def _pieces(request: TokenizedRequest, chunk_tokens: int) -> Iterator[tuple[int, int, bool]]:
    """(start, end, probe) spans of ``ids`` to feed in order; ``probe``: the answer copy follows.

    Cuts fall at every scored boundary; the trajectory is fed as far as the last first-token
    entropy needs (position ``b_{T−1} − 1``), and no piece is longer than ``chunk_tokens``.
    """
    copies = sorted({request.boundaries[t] for t in (0, *request.points)})
    cuts = [(c, True) for c in copies]
    needed = request.boundaries[-2] if len(request.boundaries) > 1 else 0  # entropies read up to b_{T-1} - 1
    if needed > copies[-1]:
        cuts.append((needed, False))
    start = 0
    for end, probe in cuts:
        while end - start > chunk_tokens:
            yield start, start + chunk_tokens, False
            start += chunk_tokens
        yield start, end, probe
        start = end


@torch.no_grad()
def score_prefill(scorer, request: TokenizedRequest, chunk_tokens: int) -> tuple[dict[int, float], np.ndarray]:
    """J at each distinct scored boundary (by token position) and the T first-token entropies.

        J_t = (1/|a|) · Σ_i log π(a_i | q, τ≤t, a_<i)

    ``scorer`` is an :class:`~repro_env.scoring.hf.HFScorer` (its model, head and finiteness check).
    """
    answer = request.answer_ids
    copy = answer[:-1]
    model = scorer.model
    cache = Cache(layers=buffer_layers(model, len(request.ids) + len(copy)))
    entropy_positions = [b - 1 for b in request.boundaries[:-1]]
    J: dict[int, float] = {}
    entropies = np.empty(len(entropy_positions), dtype=np.float64)
    targets = torch.tensor(answer, device=scorer.device)  # (|a|,)
    for start, end, probe in _pieces(request, chunk_tokens):
        inputs = request.ids[start:end] + (copy if probe else [])
        positions = torch.arange(start, start + len(inputs), device=scorer.device)[None]  # (1, n)
        hidden = model.base_model(
            input_ids=torch.tensor([inputs], device=scorer.device), position_ids=positions,
            past_key_values=cache, use_cache=True,
        ).last_hidden_state[0]  # (n, H)
        for layer in cache.layers:
            layer.truncate(end)  # never keep the answer copy
        here = [t for t, p in enumerate(entropy_positions) if start <= p < end]
        rows = [entropy_positions[t] - start for t in here]
        if probe:  # the prefix token before the boundary predicts a_0, the copy the rest
            rows += [end - 1 - start, *range(end - start, end - start + len(copy))]
        if not rows:
            continue
        log_probs = torch.log_softmax(scorer.head_logits(hidden[rows]).float(), dim=-1)  # (K, V)
        if here:
            H = finite_values(next_token_entropy(log_probs[:len(here)]), "entropies")  # (k,)
            entropies[here] = H.double().cpu().numpy()
        if probe:
            token_lp = log_probs[len(here):].gather(1, targets[:, None])[:, 0]  # (|a|,)
            J[end] = float(finite_values(token_lp, "answer log-probs").mean())
    return J, entropies
