"""vLLM generation backends of :class:`repro_env.agents.policy.LMPolicy`: an in-process engine
(``backend: vllm``, :class:`VLLMGenerator`) or a vLLM OpenAI server (``backend: vllm-server``,
:class:`ServerGenerator`).

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

The server backend sends the same requests to ``/v1/completions`` (token-id prompt, ``stop``,
``return_token_ids``), one request per trace with its own seed, ``options.concurrency`` at a time
(the server batches them). Its weight push writes safetensors for the server to load
(:meth:`repro_env.scoring.server.ServerClient.push_weights`, dev mode); on a GPU cluster vLLM's
NCCL weight transfer (``/init_weight_transfer_engine``, ``/update_weights``) replaces the disk
round trip. The server must serve the policy's model: its name and tokenizer are checked at start.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from repro_env.agents.policy import Generated, Trace, segment_done
from repro_env.errors import ScorerError
from repro_env.scoring.base import ScorerConfig, checked_log_probs
from repro_env.scoring.options import ServerOptions, VLLMOptions

MAX_CONTINUATIONS = 4
"""Rounds that continue a whitespace-only segment before giving up."""


@dataclass
class Completion:
    """One engine reply: the sampled ids, their log-probs and why it ended (``Generated.stop``)."""

    ids: list[int]
    log_probs: list[float]
    stop: str


class VLLMGenerator:
    """Segments from a vLLM engine on the policy's model directory (module docstring)."""

    options_class = VLLMOptions

    def __init__(self, policy: Any, *, seed: int = 0) -> None:
        from repro_env.scoring.vllm import ENGINE_ENVIRONMENT, VLLMScorer, import_vllm

        self.policy = policy
        gpu_memory_utilization = policy.config.options.gpu_memory_utilization
        for name, value in ENGINE_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        vllm = import_vllm()
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
            prompts = [list(traces[b].ids) + out[b].ids for b in pending]
            results = self._complete(prompts, greedy, [max_new[b] - len(out[b].ids) for b in pending])
            again = []
            for b, completion in zip(pending, results, strict=True):
                out[b].ids += completion.ids
                out[b].log_probs += completion.log_probs
                out[b].stop = completion.stop
                room = max_new[b] - len(out[b].ids)
                # A stop string before any content (e.g. a leading blank line): keep writing.
                if out[b].stop == "delimiter" and room > 0 and \
                        not segment_done(self.policy.decode(out[b].ids), self.policy.config.delimiter):
                    again.append(b)
            pending = again
        return out

    def _seed(self) -> int:
        return int(torch.randint(0, 2**31 - 1, (1,), generator=self.policy.generator_rng))

    def _complete(self, prompts: list[list[int]], greedy: bool, max_tokens: list[int]) -> list[Completion]:
        params = [self._sampling_params(
            n=1, temperature=0.0 if greedy else self.policy.config.temperature, max_tokens=n,
            stop=[self.policy.config.delimiter], include_stop_str_in_output=True, logprobs=0, seed=self._seed())
            for n in max_tokens]
        results = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
        return [self._completion(result.outputs[0]) for result in results]

    @staticmethod
    def _completion(output: Any) -> Completion:
        ids = list(output.token_ids)
        log_probs = []
        for token, candidates in zip(ids, output.logprobs or [{}] * len(ids), strict=True):
            entry = candidates.get(token) if candidates else None
            log_probs.append(entry.logprob if entry is not None else None)
        log_probs = checked_log_probs(log_probs, "the sampled tokens' log-probs", allow_missing=True)
        return Completion(ids, log_probs, stop_reason(output.finish_reason, output.stop_reason))


def stop_reason(finish: str | None, stopped_by: Any) -> str:
    """vLLM's finish reason and stop reason as a ``Generated.stop``: a stop string is the delimiter."""
    if finish == "length":
        return "length"
    return "delimiter" if isinstance(stopped_by, str) else "eos"


class ServerGenerator(VLLMGenerator):
    """Segments from a vLLM OpenAI server that serves the policy's model (module docstring)."""

    options_class = ServerOptions

    def __init__(self, policy: Any, *, seed: int = 0) -> None:  # no engine: the server is one; seeds per request
        from repro_env.scoring.server import ServerClient
        from repro_env.scoring.vllm import checkpoint_keys

        self.policy = policy
        self.client = ServerClient(policy.config.options)
        self.served = self.client.check_model(policy.tokenizer, policy.config.model)
        self._checkpoint_keys = checkpoint_keys(Path(policy.path))

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Have the server load ``model``'s weights and reset its prefix cache (dev mode)."""
        self.client.push_weights(model, self._checkpoint_keys)

    def _complete(self, prompts: list[list[int]], greedy: bool, max_tokens: list[int]) -> list[Completion]:
        bodies = [{"model": self.served, "prompt": ids, "max_tokens": n, "seed": self._seed(),
                   "temperature": 0.0 if greedy else self.policy.config.temperature,
                   "stop": [self.policy.config.delimiter], "include_stop_str_in_output": True,
                   "skip_special_tokens": False, "logprobs": 0, "return_token_ids": True}
                  for ids, n in zip(prompts, max_tokens, strict=True)]
        with ThreadPoolExecutor(max_workers=self.client.options.concurrency) as pool:
            return list(pool.map(self._request, bodies))

    def _request(self, body: dict[str, Any]) -> Completion:
        reply = self.client.request("POST", "/v1/completions", body)
        try:
            choice = reply["choices"][0]
            ids = [int(t) for t in choice["token_ids"]]
            log_probs = checked_log_probs(choice["logprobs"]["token_logprobs"],
                                          f"POST {self.client.url}/v1/completions: the sampled tokens' log-probs",
                                          allow_missing=True)
        except (TypeError, KeyError, IndexError, ValueError) as e:
            raise ScorerError(f"POST {self.client.url}/v1/completions: the reply lacks the sampled token ids "
                              f"or their log-probs ({type(e).__name__}: {e})") from e
        if len(log_probs) != len(ids) or len(ids) > body["max_tokens"]:
            raise ScorerError(f"POST {self.client.url}/v1/completions: {len(ids)} token ids and "
                              f"{len(log_probs)} log-probs for max_tokens {body['max_tokens']}")
        return Completion(ids, log_probs, stop_reason(choice.get("finish_reason"), choice.get("stop_reason")))
