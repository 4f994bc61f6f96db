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

Three generation backends behind :meth:`LMPolicy.act`:

- ``hf`` (:class:`repro_env.agents.hf_generator.HFGenerator`): transformers on CPU or CUDA, one
  batched KV cache for the whole episode of every sub-env; rows that end their segment early look
  ahead into the next one.
- ``vllm`` (:class:`repro_env.agents.vllm_generator.VLLMGenerator`): a vLLM engine fed with token ids; after
  each update :meth:`LMPolicy.sync_generator` pushes the trained weights into it in place.
- ``vllm-server`` (:class:`repro_env.agents.vllm_generator.ServerGenerator`): the same requests to a vLLM
  OpenAI server at ``options.base_url`` that serves ``model``; the weight push goes over HTTP.

A backend's own settings are its generator class's ``options_class`` (a frozen dataclass), given as
``PolicyConfig.options`` (the learner's ``generator_options``) and checked like any config.

The training copy of the model is always a transformers model (``policy.model``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from repro_env.assets import BUNDLED_MODEL, resolve_model
from repro_env.config import check, options_from_mapping
from repro_env.errors import ConfigError, ScorerError
from repro_env.registry import Registry
from repro_env.scoring.base import NoOptions

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
    options: Any = None
    """The backend's own settings, fields of its generator class's ``options_class`` (a mapping or
    that dataclass): ``vllm-server`` → ``ServerOptions`` (``base_url``, ``concurrency`` ...),
    ``vllm`` → ``VLLMOptions`` (``gpu_memory_utilization``), ``hf`` → none."""
    look_ahead: bool = True
    """``hf`` backend: a row whose segment ends with the delimiter while others still decode samples
    the start of its next segment meanwhile (module docstring); off, it waits idle."""

    def __post_init__(self) -> None:
        check(isinstance(self.model, str) and self.model != "", "model", self.model,
              "a model directory or 'bundled'")
        GENERATORS.check(self.backend, "backend")
        options_class = getattr(GENERATORS.get(self.backend, "backend"), "options_class", NoOptions)
        options = {} if self.options is None else self.options
        if dataclasses.is_dataclass(options) and not isinstance(options, options_class):
            options = dataclasses.asdict(options)  # another backend's: its fields must fit this one
        object.__setattr__(self, "options", options_from_mapping(options_class, options, "options"))
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


GENERATORS = Registry("generation backend", "repro_env.generators", accepts=lambda target: isinstance(target, type),
                      expected="a generator class")
"""``backend:`` names of :class:`PolicyConfig` → generator classes (or their paths); plugins add theirs
under the entry-point group ``repro_env.generators``."""
GENERATORS.register("hf", "repro_env.agents.hf_generator:HFGenerator")
GENERATORS.register("vllm", "repro_env.agents.vllm_generator:VLLMGenerator")
GENERATORS.register("vllm-server", "repro_env.agents.vllm_generator:ServerGenerator")
