"""The ``hf`` generation backend of :class:`repro_env.agents.policy.LMPolicy`: transformers on CPU or CUDA.

One batched KV cache holds every sub-env's episode for the whole episode (preallocated buffers,
``repro_env.kv_cache``, appended in place); rows grow by chunks, padding columns are masked out by
a 4D **float** additive mask (a bool 4D mask is misread by eager attention, STACK_NOTES) and
position ids count only real tokens, so each row sees exactly its own sequence. A segment is as
long as its slowest row; rows that end early *look ahead* (:class:`LookAhead`): they go on sampling
their next segment from ``trace + segment``, the observation the env will return. The next call
starts those rows from the tokens already sampled when the new observation is exactly that;
otherwise their cache columns are masked out and they start afresh. The vLLM backends are in
``vllm_generator.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers.cache_utils import Cache

from repro_env.agents.policy import Generated, Trace, segment_done
from repro_env.kv_cache import buffer_layers

if TYPE_CHECKING:
    from repro_env.agents.policy import LMPolicy


@dataclass
class LookAhead:
    """A row's start of its next segment, sampled while other rows finished the current one."""

    base: int
    """Trace length (ids) it continues: the trace plus the segment that just ended."""
    limit: int
    """``max_new`` of that next segment."""
    greedy: bool
    generated: Generated
    columns: list[int]
    """Cache columns of its tokens fed so far (its last sampled token is never fed yet)."""


class HFGenerator:
    """Batched sampling with one KV cache for the whole episode of every sub-env (module docstring)."""

    def __init__(self, policy: LMPolicy, *, seed: int = 0) -> None:  # sampling uses policy.generator_rng
        self.policy = policy
        self.cache: Any = None
        self.real = torch.zeros(0, 0, dtype=torch.bool)  # (B, C) which cache columns are real tokens
        self.cached: list[int] = []  # per row: how many of the trace's ids the cache holds
        self.ahead: list[LookAhead | None] = []

    def invalidate(self) -> None:
        """Drop the cache: the next call re-encodes every trace (a new episode, changed weights)."""
        self.cache = None

    @torch.no_grad()
    def generate(self, traces: Sequence[Trace | None], active: Sequence[bool], *, greedy: bool,
                 max_new: Sequence[int]) -> list[Generated | None]:
        policy, cfg = self.policy, self.policy.config
        B = len(traces)
        if self.cache is None or len(self.cached) != B or self._wasteful():
            self._new_cache(B)
        running = [bool(active[b] and traces[b] is not None and max_new[b] > 0) for b in range(B)]
        out: list[Generated | None] = [Generated([], [], float("nan"), "context") if active[b] else None
                                       for b in range(B)]
        chunks = [[] for _ in range(B)]
        for b in range(B):
            if running[b]:
                chunks[b] = self._resume(b, traces[b], greedy, max_new[b], out)
                running[b] = not out[b].stop
        logits = self._feed(chunks) if any(chunks) else None  # (B, V)
        building: dict[int, LookAhead] = {}  # rows looking ahead in this call
        order = list(range(B))  # the cache row of each sub-env in order[i]; fewer rows once compacted
        full = None
        for step in range(max(max_new, default=0)):
            if not any(running):
                break
            rows = [b for b in range(B) if running[b] or (b in building and not building[b].generated.stop)]
            if full is None and 0 < step and len(rows) <= B // 2:
                # Most rows are done: decode the rest alone instead of feeding padding.
                full, order, logits = self._compact(rows), rows, logits[rows]
            at = {b: i for i, b in enumerate(order)}
            picked = logits[[at[b] for b in rows]]  # (R, V)
            raw = torch.log_softmax(picked.float(), dim=-1)  # (R, V)
            scaled = torch.log_softmax(picked.float() / cfg.temperature, dim=-1)  # (R, V)
            if greedy:
                tokens = scaled.argmax(-1)  # (R,)
            else:
                tokens = torch.multinomial(scaled.exp().cpu(), 1, generator=policy.generator_rng)[:, 0]
            tokens = tokens.to(scaled.device)
            chosen = scaled.gather(-1, tokens[:, None])[:, 0].tolist()  # (R,)
            starting = any(not (out[b] if running[b] else building[b].generated).ids for b in rows)
            entropy = (-(raw.exp() * raw).sum(-1)).tolist() if starting else None  # (R,) at first tokens
            chunks = [[] for _ in order]
            fed_ahead = []
            for r, (b, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
                g = out[b] if running[b] else building[b].generated
                if not g.ids:
                    g.entropy = entropy[r]
                g.ids.append(token)
                g.log_probs.append(chosen[r])
                g.stop = self._stop(g.ids, token, max_new[b] if running[b] else building[b].limit)
                if not running[b]:  # looking ahead
                    if not g.stop:
                        chunks[at[b]] = [token]
                        fed_ahead.append(b)
                elif not g.stop:
                    chunks[at[b]] = [token]
                else:
                    running[b] = False
                    base = len(traces[b].ids) + len(g.ids)
                    if (cfg.look_ahead and g.stop == "delimiter" and policy.room(base) > 0
                            and policy.decode(g.ids).endswith(cfg.delimiter)):  # else the env adds one
                        building[b] = LookAhead(base, policy.room(base), greedy,
                                                Generated([], [], float("nan"), ""), [])
                        chunks[at[b]] = [token]  # the segment's last token, so that the row can go on
            if any(chunks[at[b]] for b in range(B) if running[b]):
                for b in fed_ahead:
                    building[b].columns.append(self.real.shape[1])  # this feed's one column
                logits = self._feed(chunks)
        if full is not None:
            self._expand(full, order)
        for b, ahead in building.items():
            self.ahead[b] = ahead if ahead.generated.ids else None
        return out

    def _resume(self, b: int, trace: Trace, greedy: bool, limit: int, out: list) -> list[int]:
        """Row b's first chunk to feed. Its look-ahead becomes ``out[b]`` when it continues exactly
        this trace (same sampling mode and limit); otherwise it is masked out of the cache."""
        ahead, self.ahead[b] = self.ahead[b], None
        if ahead is not None and (ahead.base, ahead.greedy, ahead.limit) == (len(trace.ids), greedy, limit):
            g = ahead.generated
            out[b] = Generated(list(g.ids), list(g.log_probs), g.entropy, g.stop)
            return [] if g.stop else g.ids[-1:]
        if ahead is not None:
            self.real[b, ahead.columns] = False
            self.cached[b] -= len(ahead.columns)
        if self.cached[b] == len(trace.ids):  # all of it is cached: feed its last token again for the logits
            self.real[b, int(self.real[b].nonzero()[-1])] = False
            self.cached[b] -= 1
        out[b] = Generated([], [], float("nan"), "")
        return list(trace.ids[self.cached[b]:])

    def _compact(self, rows: list[int]) -> tuple[Any, torch.Tensor, list[int]]:
        """Keep only ``rows`` in the cache (a copy); return the full cache state for :meth:`_expand`."""
        full = (self.cache, self.real, self.cached)
        index = torch.tensor(rows, device=self.policy.device)
        layers = buffer_layers(self.policy.model, self.real.shape[1] + 64)
        for new, old in zip(layers, self.cache.layers, strict=True):
            new.write(0, old.keys[index], old.values[index])
        self.cache, self.real, self.cached = Cache(layers=layers), self.real[index], [self.cached[b] for b in rows]
        return full

    def _expand(self, full: tuple[Any, torch.Tensor, list[int]], rows: list[int]) -> None:
        """Back to the full cache: the compacted rows' new columns are copied in, padding (masked) elsewhere."""
        cache, real, cached = full
        C, index = real.shape[1], torch.tensor(rows, device=self.policy.device)
        for old, new in zip(cache.layers, self.cache.layers, strict=True):
            keys = new.keys.new_zeros(real.shape[0], *new.keys.shape[1:2], new.keys.shape[2] - C, new.keys.shape[3])
            values = new.values.new_zeros(*keys.shape[:3], new.values.shape[3])
            keys[index], values[index] = new.keys[:, :, C:], new.values[:, :, C:]
            old.write(C, keys, values)
        grown = torch.zeros(real.shape[0], self.real.shape[1] - C, dtype=torch.bool, device=real.device)
        grown[index] = self.real[:, C:]
        for b, count in zip(rows, self.cached, strict=True):
            cached[b] = count
        self.cache, self.real, self.cached = cache, torch.cat([real, grown], dim=1), cached

    def _stop(self, ids: list[int], token: int, limit: int) -> str:
        policy = self.policy
        if token == policy.eos_id:
            return "eos"
        if segment_done(policy.decode(ids), policy.config.delimiter):
            return "delimiter"
        if len(ids) >= limit:
            return "length" if limit >= policy.config.max_segment_tokens else "context"
        return ""

    def _wasteful(self) -> bool:
        """Padding columns dominate the cache: rebuilding it is cheaper than attending over them."""
        columns = self.real.shape[1]
        return columns > 2 * max(self.cached, default=0) + 64

    def _new_cache(self, B: int) -> None:
        # Preallocated buffers that grow by doubling: a decoded token is written in place, where a
        # DynamicCache would copy the whole cache (torch.cat) at every token.
        self.cache = Cache(layers=buffer_layers(self.policy.model, 256))
        self.real = torch.zeros(B, 0, dtype=torch.bool, device=self.policy.device)  # (B, 0)
        self.cached = [0] * B
        self.ahead = [None] * B

    def _feed(self, chunks: list[list[int]]) -> torch.Tensor:
        """Append one chunk of ids per row to the cache; logits after each row's last new token. (B, V)

        Shorter chunks are right-padded within the chunk; padding columns stay masked for every
        later query, and position ids count real tokens only, so each row is its own sequence.
        """
        policy = self.policy
        device = policy.device
        B, n = len(chunks), max(1, max(len(c) for c in chunks))
        pad = policy.tokenizer.pad_token_id if policy.tokenizer.pad_token_id is not None else 0
        ids = torch.full((B, n), pad, dtype=torch.long)  # (B, n)
        new_real = torch.zeros(B, n, dtype=torch.bool)  # (B, n)
        for b, chunk in enumerate(chunks):
            ids[b, :len(chunk)] = torch.tensor(chunk, dtype=torch.long)
            new_real[b, :len(chunk)] = True
        ids, new_real = ids.to(device), new_real.to(device)
        lengths = torch.tensor(self.cached, device=device)  # (B,) real tokens already cached
        positions = (lengths[:, None] + new_real.long().cumsum(1) - 1).clamp(min=0)  # (B, n)
        C = self.real.shape[1]
        kv_real = torch.cat([self.real, new_real], dim=1)  # (B, C+n)
        causal = torch.arange(C + n, device=device)[None, :] <= (C + torch.arange(n, device=device))[:, None]
        allowed = kv_real[:, None, :] & causal[None]  # (B, n, C+n)
        dtype = policy.model.dtype
        mask = torch.zeros(B, 1, n, C + n, dtype=dtype, device=device)  # (B, 1, n, C+n)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        hidden = policy.model.base_model(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=self.cache,
            use_cache=True).last_hidden_state  # (B, n, H)
        self.real = kv_real
        last = (torch.tensor([len(c) for c in chunks], device=device) - 1).clamp(min=0)  # (B,)
        self.cached = [c + len(chunk) for c, chunk in zip(self.cached, chunks, strict=True)]
        picked = hidden[torch.arange(B, device=device), last]  # (B, H)
        return policy.model.get_output_embeddings()(picked)  # (B, V)
