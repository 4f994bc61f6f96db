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
from transformers.cache_utils import Cache, DynamicLayer

from repro_env.errors import ScorerError
from repro_env.scoring.base import TokenizedRequest


class BufferLayer(DynamicLayer):
    """A cache layer over one preallocated buffer: appends write in place, ``truncate`` drops the tail.

    ``DynamicLayer`` concatenates on every update, copying the whole cache once per forward: O(L)
    per scored point here, and per step in an online session. The buffer grows by doubling.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self._keys = key_states.new_empty(batch, heads, self.capacity, dim)  # (B, kv_heads, capacity, d)
        self._values = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` tokens, keeping the first ``length``."""
        if capacity <= self.capacity:
            return
        size = max(capacity, 2 * self.capacity)
        if self.is_initialized:
            self._keys, self._values = (grown(self._keys, size, self.length),
                                        grown(self._values, size, self.length))
            self.truncate(self.length)
        self.capacity = size

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.write(self.length, key_states, value_states)
        return self.keys, self.values

    def write(self, start: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Store keys/values ``(B, kv_heads, n, d)`` at positions ``start..start+n−1``; length becomes the end."""
        end = start + key_states.shape[-2]
        self.reserve(end)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._keys[:, :, start:end] = key_states
        self._values[:, :, start:end] = value_states
        self.truncate(end)

    def truncate(self, length: int) -> None:
        self.length = length
        if self.is_initialized:
            self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]

    def get_seq_length(self) -> int:
        return self.length


def finite_values(values: torch.Tensor, what: str) -> torch.Tensor:
    """``values``, or a ``ScorerError`` when the model returned a NaN or an infinity among them."""
    if not torch.isfinite(values).all():
        raise ScorerError(f"the scorer model returned non-finite {what}: {values.tolist()[:8]}; "
                          "check the weights (NaN after an update?) or use dtype float32")
    return values


def grown(buffer: torch.Tensor, capacity: int, keep: int, zeros: bool = False) -> torch.Tensor:
    """A copy of a (B, heads, C, d) cache buffer with room for ``capacity`` positions, its first ``keep``
    kept. The new buffer is allocated before anything changes: a failed allocation loses nothing."""
    new = (buffer.new_zeros if zeros else buffer.new_empty)(*buffer.shape[:2], capacity, buffer.shape[3])
    new[:, :, :keep] = buffer[:, :, :keep]
    return new


def buffer_layers(model, capacity: int) -> list[BufferLayer]:
    """One empty :class:`BufferLayer` per decoder layer of ``model``, each with room for ``capacity`` tokens."""
    num_layers = model.config.get_text_config(decoder=True).num_hidden_layers
    return [BufferLayer(capacity) for _ in range(num_layers)]


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
