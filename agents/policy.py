"""A language-model policy that writes one reasoning segment per env step (REPRO_SPEC §1).

``LMPolicy.act(observations)`` takes the env observations (prompt + reasoning so far, one string per
sub-env) and returns the next segment of each: the text to pass to ``env.step``, the token ids the
model sampled, their log-probs under the sampling distribution and the entropy of the distribution
at the segment's first token. Generation of a segment stops when its text has some content followed
by the delimiter (matched on decoded *characters*: byte-level BPE merges ``".\\n\\n"`` into one
token), at the end-of-sequence token, or after ``max_segment_tokens`` tokens.

Each sub-env has a :class:`Trace`: the token ids of its episode as the policy saw it, with the
segment each generated token belongs to. An observation that extends the trace's text appends only
the new characters (the delimiter the env added); one that does not (a new episode) starts a new
trace. Training recomputes log-probs of the generated tokens with :meth:`LMPolicy.forward` on
exactly these ids, so the ratios of PPO/GRPO compare the same tokens.

Two generation backends behind :meth:`LMPolicy.act`:

- ``hf`` (:class:`HFGenerator`): transformers on CPU or CUDA. One batched KV cache holds every
  sub-env's episode for the whole episode (preallocated buffers, appended in place); rows grow by
  chunks, padding columns are masked out by a
  4D **float** additive mask (a bool 4D mask is misread by eager attention, STACK_NOTES) and
  position ids count only real tokens, so each row sees exactly its own sequence. A segment is
  as long as its slowest row; rows that end early *look ahead*: they go on sampling their next
  segment from ``trace + segment``, the observation the env will return (it appends the segment
  as given). The next ``act`` starts those rows from the tokens already sampled when the new
  observation is exactly that; otherwise their cache columns are masked out and they start afresh.
  The tokens are those the row would have sampled later, from the same distribution.
- ``vllm`` (:class:`repro_env.agents.vllm_generator.VLLMGenerator`): a vLLM engine fed with token ids; after
  each update :meth:`LMPolicy.sync_generator` pushes the trained weights into it in place.
- ``vllm-server`` (:class:`repro_env.agents.vllm_generator.ServerGenerator`): the same requests to a vLLM
  OpenAI server at ``server.base_url`` that serves ``model``; the weight push goes over HTTP.

The training copy of the model is always a transformers model (``policy.model``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from repro_env.assets import BUNDLED_MODEL, resolve_model
from repro_env.config import check
from repro_env.errors import ConfigError, ScorerError
from repro_env.registry import Registry
from repro_env.scoring.options import ServerOptions

EOS_SEGMENT = "eos"
STOP_REASONS = ("delimiter", "eos", "length", "context")


@dataclass(frozen=True)
class PolicyConfig:
    """Which model acts, on which backend, and how it samples."""

    model: str = BUNDLED_MODEL
    """A local model directory (config, safetensors, tokenizer) or ``bundled``."""
    backend: str = "hf"
    """Generation backend (``GENERATORS``): ``hf`` (transformers), ``vllm`` (in-process engine),
    ``vllm-server``, or a registered or ``package.module:Class`` one."""
    device: str = "cpu"
    """torch device of the training model and the hf generator."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights and activations of the policy."""
    temperature: float = 1.0
    """Sampling temperature; log-probs are those of ``softmax(logits / temperature)``."""
    max_segment_tokens: int = 64
    """Most tokens in one segment (the task's ``limits.max_segment_tokens`` is the usual value)."""
    delimiter: str = "\n\n"
    """Segment delimiter (the task's)."""
    max_segment_chars: int = 200
    """Longest action text the env accepts (the task's ``limits.max_segment_chars``)."""
    server: ServerOptions = field(default_factory=ServerOptions)
    """The vLLM server of ``backend: vllm-server`` (the scorer's ``vllm-server`` options)."""
    look_ahead: bool = True
    """``hf`` backend: a row whose segment ends with the delimiter while others still decode samples
    the start of its next segment meanwhile (module docstring); off, it waits idle."""

    def __post_init__(self) -> None:
        check(isinstance(self.model, str) and self.model != "", "model", self.model,
              "a model directory or 'bundled'")
        GENERATORS.check(self.backend, "backend")
        check(self.dtype in ("float32", "bfloat16", "float16"), "dtype", self.dtype,
              "one of 'float32', 'bfloat16', 'float16'")
        check(isinstance(self.temperature, int | float) and self.temperature > 0, "temperature",
              self.temperature, "a number > 0")
        check(isinstance(self.max_segment_tokens, int) and self.max_segment_tokens >= 1, "max_segment_tokens",
              self.max_segment_tokens, "an int >= 1")
        check(isinstance(self.delimiter, str) and self.delimiter != "", "delimiter", self.delimiter,
              "a non-empty string")
        check(isinstance(self.max_segment_chars, int) and self.max_segment_chars >= 1, "max_segment_chars",
              self.max_segment_chars, "an int >= 1")
        check(isinstance(self.look_ahead, bool), "look_ahead", self.look_ahead, "true or false")


def model_dir(model: str) -> Path:
    """The directory of ``model``: ``bundled`` → the package's tiny math model; a hub id → its files,
    downloaded (or found in the Hugging Face cache), since vLLM and checkpoints need a directory."""
    resolved = resolve_model(model)  # fails fast on a missing path, or a hub id with no hub
    path = Path(resolved)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(resolved))
        except Exception as e:  # network, auth, missing repo: all mean the same to the user
            raise ConfigError(f"field 'model': could not fetch {model!r} from the Hugging Face hub: "
                              f"{type(e).__name__}: {e}") from e
    if not (path / "config.json").is_file():
        raise ConfigError(f"field 'model' must be a model directory with a config.json, a hub id or 'bundled', "
                          f"got {model!r}: {path} has no config.json")
    return path


@dataclass
class Trace:
    """One sub-env's episode in tokens: ``ids`` decode (piecewise) to ``text``.

    ``segment[k]`` is the 0-based index of the generated segment token k belongs to, or -1 for a
    token the policy did not sample (prompt, delimiter added by the env). ``log_probs[k]`` is the
    behaviour log-prob of a generated token (NaN elsewhere).
    """

    ids: list[int]
    segment: list[int]
    log_probs: list[float]
    text: str
    num_segments: int = 0

    @classmethod
    def start(cls, tokenizer: Any, prompt: str) -> Trace:
        ids = list(tokenizer(prompt)["input_ids"])
        return cls(ids=ids, segment=[-1] * len(ids), log_probs=[float("nan")] * len(ids), text=prompt)

    def extend(self, ids: Sequence[int], text: str, segment: int = -1,
               log_probs: Sequence[float] | None = None) -> None:
        self.ids += list(ids)
        self.segment += [segment] * len(ids)
        self.log_probs += list(log_probs) if log_probs is not None else [float("nan")] * len(ids)
        self.text += text


@dataclass
class Generated:
    """What a generator returns for one sub-env: the sampled tokens of one segment."""

    ids: list[int]
    log_probs: list[float]
    entropy: float
    stop: str


@dataclass
class Segment:
    """The policy's action for one sub-env."""

    text: str
    """Pass this to ``env.step`` (non-empty; the env appends the delimiter when missing)."""
    ids: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    entropy: float = float("nan")
    """Entropy (nats) of the policy's distribution (temperature 1) at the segment's first token."""
    stop: str = "delimiter"
    """Why generation stopped: one of ``STOP_REASONS``."""


class Generator(Protocol):
    """A generation backend: one segment per active trace; built as ``Class(policy, seed=seed)``."""

    def generate(self, traces: Sequence[Trace | None], active: Sequence[bool], *, greedy: bool,
                 max_new: Sequence[int]) -> list[Generated | None]: ...

    def invalidate(self) -> None: ...


def segment_done(text: str, delimiter: str) -> bool:
    """True when ``text`` has non-whitespace content followed by ``delimiter`` (a finished segment).

    Leading whitespace never ends a segment: the env rejects whitespace-only actions.
    """
    stripped = text.lstrip()
    return bool(stripped) and delimiter in stripped


class LMPolicy:
    """A causal LM acting one segment per step in a batch of reasoning envs (module docstring)."""

    def __init__(self, config: PolicyConfig, *, seed: int = 0) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.path = model_dir(config.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
            self.model = AutoModelForCausalLM.from_pretrained(str(self.path),
                                                              dtype=getattr(torch, config.dtype))
        except (OSError, ValueError) as e:
            raise ScorerError(f"could not load the policy model '{config.model}' from {self.path}: "
                              f"{e}") from e
        self.device = torch.device(config.device)
        self.model.to(self.device)
        self.max_positions: int = self.model.config.max_position_embeddings
        self.eos_id: int | None = self.tokenizer.eos_token_id
        self.generator_rng = torch.Generator(device="cpu").manual_seed(seed)
        self.traces: list[Trace | None] = []
        self.generator: Generator = self._make_generator(seed)

    def _make_generator(self, seed: int) -> Generator:
        return GENERATORS.get(self.config.backend, "backend")(self, seed=seed)

    # -- acting ---------------------------------------------------------------------------------

    def reset(self, observations: Sequence[str], mask: Sequence[bool] | None = None) -> None:
        """Start new traces (new episodes) for the sub-envs in ``mask`` (all by default)."""
        mask = [True] * len(observations) if mask is None else list(mask)
        if len(self.traces) != len(observations):
            self.traces = [None] * len(observations)
        for i, (obs, fresh) in enumerate(zip(observations, mask, strict=True)):
            if fresh:
                self.traces[i] = Trace.start(self.tokenizer, obs)
        self.generator.invalidate()

    def act(self, observations: Sequence[str], *, active: Sequence[bool] | None = None,
            greedy: bool = False) -> list[Segment | None]:
        """The next segment for each active sub-env (``None`` for inactive ones)."""
        active = [True] * len(observations) if active is None else [bool(a) for a in active]
        if len(self.traces) != len(observations):
            self.reset(observations, [False] * len(observations))
        for i, obs in enumerate(observations):
            if active[i]:
                self._sync(i, obs)
        max_new = [self.room(len(trace.ids)) if trace is not None else 0 for trace in self.traces]
        generated = self.generator.generate(self.traces, active, greedy=greedy, max_new=max_new)
        return [self._accept(i, g) if active[i] else None for i, g in enumerate(generated)]

    def _sync(self, i: int, observation: str) -> None:
        """Bring trace i up to ``observation``: append the new characters, or start over."""
        trace = self.traces[i]
        if trace is None or not observation.startswith(trace.text):
            # A new episode, or an env that rewrote the text: re-encode it as context.
            self.traces[i] = Trace.start(self.tokenizer, observation)
            self.generator.invalidate()
        elif len(observation) > len(trace.text):
            suffix = observation[len(trace.text):]
            trace.extend(self.tokenizer(suffix, add_special_tokens=False)["input_ids"], suffix)

    def room(self, length: int) -> int:
        """Most tokens the next segment of a trace of ``length`` tokens may have."""
        return max(0, min(self.config.max_segment_tokens, self.max_positions - length - 1))

    def _accept(self, i: int, generated: Generated | None) -> Segment:
        """Record the sampled tokens in trace i and turn them into an action the env accepts."""
        trace = self.traces[i]
        if generated is None or not generated.ids:
            # No room left in the context: end the episode with the eos text.
            return Segment(text=self._eos_text(), stop="context")
        ids, log_probs = list(generated.ids), list(generated.log_probs)
        text = self.decode(ids)
        while len(text) > self.config.max_segment_chars and len(ids) > 1:
            ids, log_probs = ids[:-1], log_probs[:-1]
            text = self.decode(ids)
            self.generator.invalidate()  # the cache holds the dropped tokens
        trace.extend(ids, text, segment=trace.num_segments, log_probs=log_probs)
        trace.num_segments += 1
        action = text
        if not action.strip():
            # Whitespace only (e.g. a lone eos): the env needs content; the eos text ends the episode.
            action = text + self._eos_text()
        return Segment(text=action[: self.config.max_segment_chars], ids=ids, log_probs=log_probs,
                       entropy=generated.entropy, stop=generated.stop)

    def _eos_text(self) -> str:
        return self.tokenizer.eos_token or "."

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids → text, special tokens kept (an eos becomes its text, which ends the episode)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def sync_generator(self) -> None:
        """Make the generation backend use the current training weights (vLLM, server: a push)."""
        sync = getattr(self.generator, "sync_weights", None)
        if sync is not None:
            sync(self.model)
        self.generator.invalidate()

    # -- training -------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, model: Any = None,
                temperature: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs of each next token, entropies and last hidden states of right-padded sequences.

        ``input_ids``, ``attention_mask``: (B, L). Returns ``log_probs`` (B, L−1) of ``input_ids[:, 1:]``
        under ``softmax(logits / temperature)``, the ``entropy`` (B, L−1) of that distribution, and
        ``hidden`` (B, L, H) for a value head. Gradients flow unless called under ``no_grad``.
        """
        model = self.model if model is None else model
        temperature = self.config.temperature if temperature is None else temperature
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        logits = out.logits[:, :-1].float() / temperature  # (B, L−1, V)
        all_log_probs = torch.log_softmax(logits, dim=-1)  # (B, L−1, V)
        log_probs = all_log_probs.gather(-1, input_ids[:, 1:, None])[..., 0]  # (B, L−1)
        entropy = -(all_log_probs.exp() * all_log_probs).sum(-1)  # (B, L−1)
        return log_probs, entropy, out.hidden_states[-1]


# ---------------------------------------------------------------------------------------------
# transformers backend


@dataclass
class _Ahead:
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
        self.ahead: list[_Ahead | None] = []

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
        building: dict[int, _Ahead] = {}  # rows looking ahead in this call
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
                        building[b] = _Ahead(base, policy.room(base), greedy, Generated([], [], float("nan"), ""), [])
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
        from transformers.cache_utils import Cache

        from repro_env.scoring.prefill import buffer_layers

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
        from transformers.cache_utils import Cache

        from repro_env.scoring.prefill import buffer_layers

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


GENERATORS = Registry("generation backend", "repro_env.generators")
"""``backend:`` names of :class:`PolicyConfig` → generator classes (or their paths); plugins add theirs
under the entry-point group ``repro_env.generators``."""
GENERATORS.register("hf", HFGenerator)
GENERATORS.register("vllm", "repro_env.agents.vllm_generator:VLLMGenerator")
GENERATORS.register("vllm-server", "repro_env.agents.vllm_generator:ServerGenerator")
