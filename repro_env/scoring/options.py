"""The built-in backends' own settings (``scorer.options``), importable without torch or vLLM.

Task files are checked when ``repro_env`` is imported, before any model loads, so a backend's
options dataclass lives apart from its scorer (see ``register_scorer(..., options=...)``).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Literal

from repro_env.config import check


@dataclass(frozen=True)
class HFOptions:
    """``scorer.options`` of the hf backend."""

    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """transformers attention kernel."""
    chunk_tokens: int = 1024
    """Longest piece of a long trace fed in one forward by batch scoring (chunked prefill, ``prefill.py``)."""

    def __post_init__(self) -> None:
        check(self.chunk_tokens >= 1, "chunk_tokens", self.chunk_tokens, "an int >= 1")


@dataclass(frozen=True)
class VLLMOptions:
    """``scorer.options`` of the vllm backend."""

    gpu_memory_utilization: float = 0.5
    """Share of GPU memory for the engine (ignored on CPU)."""

    def __post_init__(self) -> None:
        check(0.0 < self.gpu_memory_utilization <= 1.0, "gpu_memory_utilization",
              self.gpu_memory_utilization, "a number in (0, 1]")


def redact_url(url: str) -> str:
    """``url`` with its user and password, if any, written as ``***`` (for messages and logs)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


@dataclass(frozen=True)
class ServerOptions:
    """``scorer.options`` of the vllm-server backend."""

    base_url: str = "http://127.0.0.1:8000"
    """The server's address (``/v1/completions`` etc. are appended); the OpenAI form ending in
    ``/v1`` is the same server. A user and password in it are sent as HTTP basic auth and never
    shown in messages."""
    served_model_name: str = ""
    """The model name the server serves; empty: the only one it lists."""
    api_key: str = ""
    """Sent as ``Authorization: Bearer``; empty: the ``VLLM_API_KEY`` variable (the server's own), if set.
    Prefer the variable: run directories keep a copy of the config."""
    request_timeout_s: float = 60.0
    """Time limit of one HTTP request."""
    retries: int = 3
    """Retries of a request after a connection error or HTTP 5xx (backoff 0.5 s, 1 s, 2 s ...)."""
    concurrency: int = 4
    """Requests in flight at once."""
    batch_prompts: int = 64
    """Prompts per request."""
    max_logprobs: int = 20
    """Top log-probs per entropy probe; the server's ``--max-logprobs`` must allow it."""
    j_probes: Literal["auto", "cached", "prompt_logprobs"] = "auto"
    """How J is read on the server. ``prompt_logprobs``: one prompt per point, ``q + τ≤t + a`` with
    prompt log-probs, which vLLM serves without its prefix cache (each probe prefills its whole
    prefix: about M·L/2 tokens for M points on a response of L). ``cached``: one-token reads, the
    log-prob of answer token ``a_i`` after ``q + τ≤t + a[:i]`` through ``logprob_token_ids``, which
    read the prefix cache once the longest prefix of each response has been sent (about
    L + M·|a|·(block/2 + |a|/2) tokens). ``auto``: ``cached`` for probes of at least
    ``server.AUTO_CACHED_MIN_PREFIX`` tokens, where it is the faster, else ``prompt_logprobs``."""
    weights_dir: str = ""
    """Where weight pushes write the weights for the server to read (rewritten by each push); empty: a
    temporary directory, one per scorer or generator, removed when it is."""

    def __post_init__(self) -> None:
        check(isinstance(self.base_url, str) and self.base_url.startswith(("http://", "https://")), "base_url",
              redact_url(self.base_url) if isinstance(self.base_url, str) else self.base_url, "an http(s) URL")
        check(self.request_timeout_s > 0, "request_timeout_s", self.request_timeout_s, "a number > 0")
        for name in ("concurrency", "batch_prompts", "max_logprobs"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "an int >= 1")
        check(self.retries >= 0, "retries", self.retries, "an int >= 0")
        check(self.j_probes in ("auto", "cached", "prompt_logprobs"), "j_probes", self.j_probes,
              "'auto', 'cached' or 'prompt_logprobs'")
