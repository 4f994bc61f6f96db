"""vLLM generation backend of :class:`repro_env.agents.policy.LMPolicy` (``backend: vllm``).

Each call sends every active trace's token ids (``{"prompt_token_ids": ids}``: no re-tokenisation)
with ``SamplingParams(stop=[delimiter], include_stop_str_in_output=True, logprobs=0)``; automatic
prefix caching plays the role of the hf backend's episode KV cache. The segment's text is decoded
from the returned token ids by the policy, so tokens and text always agree.

vLLM's stop strings end a segment even before any content; a whitespace-only segment is therefore
continued (up to the token budget), matching the hf backend's rule (``segment_done``).

Differences from the hf backend, both documented in the returned :class:`Generated`: the behaviour
log-probs are vLLM's (of the raw distribution; learners recompute the old log-probs with the
training model anyway), and the first-token entropy is NaN (vLLM returns top-k log-probs only).

Weights: :meth:`VLLMGenerator.sync_weights` pushes the training model in place with the vLLM
scorer's own weight push (:meth:`repro_env.scoring.vllm.VLLMScorer.reload_weights`, through a
scorer view of this engine), which also clears the prefix cache.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from repro_env.agents.policy import Generated, Trace, segment_done
from repro_env.scoring.base import ScorerConfig

MAX_CONTINUATIONS = 4
"""Rounds that continue a whitespace-only segment before giving up."""


class VLLMGenerator:
    """Segments from a vLLM engine on the policy's model directory (module docstring)."""

    def __init__(self, policy: Any, *, seed: int = 0, gpu_memory_utilization: float = 0.5) -> None:
        from repro_env.scoring.vllm import ENGINE_ENVIRONMENT, VLLMScorer, _import_vllm

        self.policy = policy
        for name, value in ENGINE_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        vllm = _import_vllm()
        path = str(policy.path)
        scorer_config = ScorerConfig(backend="vllm", model=path, dtype=policy.config.dtype,
                                     max_length=policy.max_positions,
                                     options={"gpu_memory_utilization": gpu_memory_utilization})
        self.llm = vllm.LLM(model=path, tokenizer=path, dtype=policy.config.dtype, seed=seed,
                            enforce_eager=True, max_model_len=policy.max_positions,
                            enable_prefix_caching=True, gpu_memory_utilization=gpu_memory_utilization)
        self.weights = VLLMScorer(scorer_config, engine=self.llm)
        """A scorer view of this engine: its ``reload_weights`` is the weight push."""
        self._sampling_params = vllm.SamplingParams

    def invalidate(self) -> None:
        """Nothing to drop: the engine's prefix cache is keyed by token ids."""

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Load ``model``'s weights into the engine in place and clear its prefix cache."""
        self.weights.reload_weights(model)

    def generate(self, traces: Sequence[Trace | None], active: Sequence[bool], *, greedy: bool,
                 max_new: Sequence[int]) -> list[Generated | None]:
        out: list[Generated | None] = [Generated([], [], float("nan"), "context") if a else None for a in active]
        pending = [b for b, a in enumerate(active) if a and traces[b] is not None and max_new[b] > 0]
        for _ in range(MAX_CONTINUATIONS):
            if not pending:
                break
            prompts = [{"prompt_token_ids": list(traces[b].ids) + out[b].ids} for b in pending]
            params = [self._params(greedy, max_new[b] - len(out[b].ids)) for b in pending]
            results = self.llm.generate(prompts, params, use_tqdm=False)
            again = []
            for b, result in zip(pending, results, strict=True):
                completion = result.outputs[0]
                self._append(out[b], completion)
                room = max_new[b] - len(out[b].ids)
                # A stop string before any content (e.g. a leading blank line): keep writing.
                if out[b].stop == "delimiter" and room > 0 and \
                        not segment_done(self.policy.decode(out[b].ids), self.policy.config.delimiter):
                    again.append(b)
            pending = again
        return out

    def _params(self, greedy: bool, max_tokens: int) -> Any:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.policy.generator_rng))
        return self._sampling_params(
            n=1, temperature=0.0 if greedy else self.policy.config.temperature, max_tokens=max_tokens,
            stop=[self.policy.config.delimiter], include_stop_str_in_output=True, logprobs=0, seed=seed)

    def _append(self, generated: Generated, completion: Any) -> None:
        ids = list(completion.token_ids)
        log_probs = []
        for token, candidates in zip(ids, completion.logprobs or [{}] * len(ids), strict=True):
            entry = candidates.get(token) if candidates else None
            log_probs.append(float(entry.logprob) if entry is not None else float("nan"))
        generated.ids += ids
        generated.log_probs += log_probs
        if completion.finish_reason == "length":
            generated.stop = "length"
        elif isinstance(completion.stop_reason, str):
            generated.stop = "delimiter"
        else:
            generated.stop = "eos"
