"""Pretrain the bundled tiny math model from scratch on generated arithmetic word problems.

The model is the package's default scorer and starting policy: a small Llama-architecture causal LM
with a byte-level BPE tokenizer, both trained here on text from :mod:`repro_env.arithmetic`, so
everything runs on a laptop CPU with no download. A fixed share of the training responses contain
overthinking (redundant re-checks, "Wait" corrections, rumination: :func:`repro_env.arithmetic.
overthink`), so the model reproduces the behaviour RePro is meant to remove.

Run ``python -m repro_env.pretrain --out DIR`` (or ``repro-env pretrain-tiny``): it trains, saves
the model + tokenizer + generation config, evaluates on held-out problems and writes the model card
``README.md``. ``--eval-only`` re-evaluates a saved model.

Everything is seeded from ``--seed``: ``torch.manual_seed`` for initialisation and dropout-free
training, and problem ``i`` of step ``s`` is a pure function of (seed, i); no global numpy state.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from repro_env.arithmetic import (
    OVERTHINK_KINDS,
    ArithmeticConfig,
    generate_problem,
    overthink,
    problem_rng,
    solution_steps,
)
from repro_env.assets import ASSETS_DIR, BUNDLED_MODELS
from repro_env.config import check, from_mapping
from repro_env.overthinking import mark_segments, overthinking_segments, response_figures
from repro_env.problems import DEFAULT_ANSWER_TEMPLATE, DEFAULT_PROMPT_TEMPLATE, Problem
from repro_env.segments import reasoning_length, split_segments
from repro_env.tasks import TaskSpec, load_task

PRESET_DIRS = {preset: ASSETS_DIR / subdir for subdir, preset in BUNDLED_MODELS.values()}
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")
# Every word (with its leading space), digit, punctuation mark and other whitespace character is its
# own pre-token: numbers tokenise one digit per token (column arithmetic is learnable), and a string
# that starts without a space tokenises alone as inside a longer text (no merge crosses a digit,
# punctuation or "\n"), so the answer span "\boxed{N}" appended after "q + τ≤t" has the ids it has
# in context, and the prompt and the segments can be tokenised separately.
PRETOKENIZE_PATTERN = r" ?\p{L}+|\p{N}|[^\s\p{L}\p{N}]|\s"
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
TRAIN_SPLIT, TEST_SPLIT = "train", "test"
NOTES_FILE = "NOTES.md"
"""Hand-written model-card section (figures measured after training), appended to the card."""
MIX_VARIANTS = ("clean", *OVERTHINK_KINDS, "recheck_all")
"""Response variants of the pretraining mix; ``recheck_all`` re-checks every computing step."""
# Smaller numbers than the default task (values <= 20, factors <= 5, results <= 200): trained on these,
# the shipped model gets 93% of them right but 50-85% of the default task (measured; see its card).
PRETRAIN_ARITHMETIC = ArithmeticConfig(max_value=15, max_multiplier=4, max_result=120)


@dataclass(frozen=True)
class PretrainConfig:
    """Model size, data mix and optimisation of the tiny math model."""

    seed: int = 0
    """Seeds weight init (``torch.manual_seed``) and the training problems (``generate_problem`` seed)."""
    steps: int = 2000
    """Optimizer steps; every step sees ``batch_size`` fresh problems (no problem repeats)."""
    batch_size: int = 16
    """Problems per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, then cosine decay to 10 %)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    hidden_size: int = 192
    """Model width."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 6
    """Attention heads (head dim = hidden_size / num_heads)."""
    intermediate_size: int = 512
    """MLP width."""
    max_positions: int = 512
    """Context window in tokens."""
    vocab_size: int = 1024
    """Upper bound on the BPE vocabulary (the trainer stops earlier when no pair is left to merge)."""
    tokenizer_texts: int = 4000
    """Training texts the BPE tokenizer is trained on."""
    mix: dict[str, float] = field(default_factory=lambda: {
        "clean": 0.65, "recheck": 0.15, "false_start": 0.12, "rumination": 0.08})
    """Share of training responses per variant (:data:`MIX_VARIANTS`): the reference solution, one of
    the overthinking kinds of :func:`repro_env.arithmetic.overthink` (1 or 2 insertions), or
    ``recheck_all``, a re-check after **every** computing step."""
    threads: int = 2
    """torch intra-op threads (the reference machine has 2 cores; when other jobs share them, 1 thread
    was measured 3.5x faster than 2, whose threads wait on each other)."""
    arithmetic: ArithmeticConfig = field(default_factory=lambda: PRETRAIN_ARITHMETIC)
    """Difficulty of the training problems. Default: easier than the default task (``ArithmeticConfig()``),
    on which the model is evaluated, so that RL on the default task has room to improve."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "tokenizer_texts", "threads"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, name, value, "an int >= 1")
        check(self.hidden_size % self.num_heads == 0, "num_heads", self.num_heads,
              f"a divisor of hidden_size ({self.hidden_size})")
        check(self.lr > 0, "lr", self.lr, "a number > 0")
        check(self.max_positions >= 64, "max_positions", self.max_positions, "an int >= 64")
        check(self.vocab_size >= 300, "vocab_size", self.vocab_size, "an int >= 300 (256 bytes + merges)")
        kinds = MIX_VARIANTS
        check(isinstance(self.mix, dict) and set(self.mix) <= set(kinds) and all(v >= 0 for v in self.mix.values())
              and abs(sum(self.mix.values()) - 1.0) < 1e-6, "mix", self.mix,
              f"non-negative shares over {', '.join(kinds)} summing to 1")


PRESETS: dict[str, PretrainConfig] = {
    "bundled": PretrainConfig(threads=1),
    "overthinker": PretrainConfig(
        steps=3000, threads=1,
        mix={"clean": 0.20, "recheck_all": 0.65, "rumination": 0.15}),
}
"""Named configs, one per shipped model: ``bundled`` (``tiny-math``, overthinking a minority of its
data) and ``overthinker`` (``tiny-math-overthinker``: re-checking every step is the majority, so
that greedy decoding takes it and outcome-only RL cannot see it; issue 24)."""


# ---------------------------------------------------------------- data


def training_text(problem: Problem, variant: str, rng: random.Random) -> tuple[str, str]:
    """``(prompt, response)`` for one problem: the policy sees the prompt, then the segments."""
    segments = problem.solution
    if variant == "recheck_all":
        segments = overthink(segments, rng, "recheck", count=len(solution_steps(segments)))
    elif variant != "clean":
        segments = overthink(segments, rng, variant, count=rng.choice((1, 1, 2)))
    return DEFAULT_PROMPT_TEMPLATE.format(question=problem.question), "".join(segments)


def training_example(config: PretrainConfig, index: int) -> tuple[str, str, str]:
    """``(prompt, response, variant)`` of training example ``index``: a pure function of (seed, index)."""
    problem = generate_problem(config.arithmetic, config.seed, index, split=TRAIN_SPLIT)
    rng = problem_rng(config.seed, "mix", index)
    u, variant = rng.random(), "clean"
    for kind, share in config.mix.items():
        if u < share:
            variant = kind
            break
        u -= share
    prompt, response = training_text(problem, variant, rng)
    return prompt, response, variant


def train_tokenizer(config: PretrainConfig):
    """Byte-level BPE on generated text, wrapped as a ``PreTrainedTokenizerFast`` that adds BOS."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=config.vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = ("".join(training_example(config, i)[:2]) for i in range(config.tokenizer_texts))
    backend.train_from_iterator(texts, trainer=trainer)
    bos_id = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)])
    backend.no_padding()
    backend.no_truncation()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", model_max_length=config.max_positions)
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()
    return tokenizer


def encode_batch(tokenizer, pairs: Sequence[tuple[str, str]], max_len: int):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding).

    The pre-tokenizer never merges across the prompt/response boundary, so tokenising the two parts
    separately gives the ids of the joined text; the loss covers the response and the final ``</s>``.
    """
    rows = []
    for prompt, response in pairs:
        p = tokenizer(prompt)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (p + r)[:max_len]
        rows.append((ids, ([-100] * len(p) + r)[:max_len]))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])  # (B, L)
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])  # (B, L)
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])  # (B, L)
    return input_ids, attention_mask, labels


# ---------------------------------------------------------------- training


def build_model(config: PretrainConfig, tokenizer):
    """A freshly initialised ``LlamaForCausalLM`` (a Llama config: see STACK_NOTES on qwen2)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads, max_position_embeddings=config.max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(config.seed)
    return LlamaForCausalLM(model_config).to(torch.float32)


def learning_rate(config: PretrainConfig, step: int) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``0.1 · lr`` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(config: PretrainConfig, out_dir: Path, progress: bool = True) -> dict:
    """Train tokenizer and model, save both (safetensors) into ``out_dir``; return run facts."""
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    tokenizer = train_tokenizer(config)
    model = build_model(config, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.95))
    model.train()
    bar = tqdm(range(config.steps), desc="pretrain", unit="step", disable=not progress)
    losses: list[float] = []
    for step in bar:
        first = step * config.batch_size
        pairs = [training_example(config, i)[:2] for i in range(first, first + config.batch_size)]
        input_ids, attention_mask, labels = encode_batch(tokenizer, pairs, config.max_positions)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=256)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    info = {
        "config": asdict(config), "params": sum(p.numel() for p in model.parameters()),
        "vocab": len(tokenizer), "seconds": round(time.perf_counter() - started, 1),
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "weights_mb": round((out_dir / "model.safetensors").stat().st_size / 2**20, 2),
    }
    (out_dir / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


# ---------------------------------------------------------------- evaluation


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text``, or None."""
    found = BOXED.findall(text)
    return found[-1].strip() if found else None


def answers_match(predicted: str | None, answer: str) -> bool:
    """Numeric equality of two integer/decimal strings (a plain check; ``verify.py`` does the real one)."""
    if predicted is None:
        return False
    try:
        return float(predicted.replace(",", "")) == float(answer)
    except ValueError:
        return predicted == answer


@lru_cache(maxsize=1)
def _default_task() -> TaskSpec:
    """The default task, whose backtrack patterns and answer convention the evaluation uses."""
    return load_task("RePro-Math-v0")


def has_overthinking(response: str) -> bool:
    """A segment is an overthinking segment (:func:`repro_env.overthinking.overthinking_segments`): a
    backtrack by the default task's patterns (REPRO_SPEC §6) or a repeat of an earlier ``a op b``."""
    return any(overthinking_segments(response.split("\n\n"), _default_task().is_backtrack))


def tokens_after_first_correct(response: str, answer: str, tokenizer) -> int | None:
    """Reasoning tokens after the first segment that states ``answer`` (:mod:`repro_env.overthinking`,
    the default task's ``answer_location``); None when the reasoning never states it."""
    task = _default_task()
    segments = split_segments(response, task.delimiter)
    marks = mark_segments(segments, answer, location=task.answer_location, is_backtrack=task.is_backtrack,
                          final_answer=task.final_answer_regex)
    if not marks.answer_stated:
        return None
    # Segments tokenise alone as in context: no merge crosses "\n" (PRETOKENIZE_PATTERN).
    tokens = [len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in segments]
    return int(response_figures(marks, tokens)["tokens_after_first_correct"])


@torch.no_grad()
def generate_responses(model, tokenizer, prompts: Sequence[str], *, sample: bool, seed: int = 0,
                       max_new_tokens: int = 200, batch_size: int = 16) -> list[str]:
    """Greedy or temperature-1.0 (full distribution) continuations of ``prompts``, until ``</s>``."""
    tokenizer.padding_side = "left"
    if sample:
        torch.manual_seed(seed)
    responses = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[start:start + batch_size]), padding=True, return_tensors="pt")
        kwargs = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if sample else {
            "do_sample": False}
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **kwargs)  # (B, L + new)
        new = out[:, enc["input_ids"].shape[1]:]  # (B, new)
        responses += tokenizer.batch_decode(new, skip_special_tokens=True)
    return responses


@torch.no_grad()
def answer_logprobs(model, tokenizer, prompt: str, segments: Sequence[str], answer: str) -> list[float]:
    """``[J_0, …, J_T]`` along a solution by plain forward passes (REPRO_SPEC §2).

        J_t = (1/|a|) · Σ_i log π(a_i | q, τ≤t, a_<i),   a = answer template filled with ``answer``

    ``a`` is tokenised without special tokens and appended as ids after ``tokenizer(q + τ≤t)``.
    """
    answer_text = DEFAULT_ANSWER_TEMPLATE.format(answer=answer)
    answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    prefixes = [tokenizer(prompt + "".join(segments[:t]))["input_ids"] for t in range(len(segments) + 1)]
    rows = [p + answer_ids for p in prefixes]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])  # (T+1, L)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])  # (T+1, L)
    logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (T+1, L, V)
    logprobs = torch.log_softmax(logits, dim=-1)  # (T+1, L, V)
    n = len(answer_ids)
    targets = torch.tensor(answer_ids)  # (n,)
    values = []
    for row, prefix in enumerate(prefixes):
        positions = torch.arange(len(prefix) - 1, len(prefix) - 1 + n)  # (n,) predict a_i
        values.append(logprobs[row, positions, targets].mean().item())
    return values


def held_out_problems(config: PretrainConfig, num_problems: int, seed: int) -> list[Problem]:
    """Test-split problems from a seed that training never uses."""
    check(seed != config.seed, "eval_seed", seed, f"a seed other than the training seed ({config.seed})")
    return [generate_problem(config.arithmetic, seed, i, split=TEST_SPLIT) for i in range(num_problems)]


def evaluate(model_dir: Path, num_problems: int = 200, seed: int = 1234, progress: bool = True,
             arithmetic: ArithmeticConfig | None = None) -> dict:
    """Held-out figures: greedy and sampled accuracy, overthinking share, share with J_T > J_0.

    Problems come from ``arithmetic`` (default: the default task ``ArithmeticConfig()``), split
    ``test``, with a seed that training did not use.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    info_path = model_dir / "train_info.json"
    # The training config fixes the problem difficulty and the seed the held-out set must avoid.
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    config = from_mapping(PretrainConfig, info["config"], source=str(info_path)) if info else PretrainConfig()
    task = arithmetic if arithmetic is not None else ArithmeticConfig()
    problems = held_out_problems(dataclasses.replace(config, arithmetic=task), num_problems, seed)
    prompts = [DEFAULT_PROMPT_TEMPLATE.format(question=p.question) for p in problems]
    started = time.perf_counter()
    greedy = generate_responses(model, tokenizer, prompts, sample=False)
    sampled = generate_responses(model, tokenizer, prompts, sample=True, seed=seed)
    gen_seconds = time.perf_counter() - started
    gains, curves = [], []
    for p, prompt in zip(problems, prompts, strict=True):
        # J_T at the end of the reasoning (REPRO_SPEC §4): the final-answer segment is not part of it
        reasoning = p.solution[:reasoning_length(p.solution, _default_task().final_answer_regex)]
        curve = answer_logprobs(model, tokenizer, prompt, reasoning, p.answer)
        curves.append(curve)
        gains.append(curve[-1] - curve[0])
    figures = {
        "preset": info.get("preset", "bundled"), "num_problems": num_problems, "eval_seed": seed,
        "split": TEST_SPLIT, "task": asdict(task),
        "greedy_accuracy": _accuracy(greedy, problems),
        "sampled_accuracy": _accuracy(sampled, problems),
        "sampled_overthinking_share": _mean(has_overthinking(r) for r in sampled),
        "greedy_overthinking_share": _mean(has_overthinking(r) for r in greedy),
        **{f"{name}_tokens_after_first_correct": _mean_defined(
            tokens_after_first_correct(r, p.answer, tokenizer) for r, p in zip(responses, problems, strict=True))
           for name, responses in (("greedy", greedy), ("sampled", sampled))},
        "sampled_mean_segments": _mean(len([s for s in r.split("\n\n") if s.strip()]) for r in sampled),
        "j_gain_positive_share": _mean(g > 0 for g in gains),
        "mean_j0": _mean(c[0] for c in curves), "mean_jT": _mean(c[-1] for c in curves),
        "generation_seconds": round(gen_seconds, 1),
        "example_greedy": greedy[0], "example_sampled": sampled[0], "example_question": problems[0].question,
    }
    if progress:
        print(format_figures(figures))
    return figures


def _accuracy(responses: Sequence[str], problems: Sequence[Problem]) -> float:
    return _mean(answers_match(extract_boxed(r), p.answer) for r, p in zip(responses, problems, strict=True))


def _mean_defined(values) -> float | None:
    """The mean of the values that are not None; None when there are none (never a made-up 0)."""
    values = [v for v in values if v is not None]
    return _mean(values) if values else None


def _mean(values) -> float:
    values = [float(v) for v in values]
    return round(sum(values) / len(values), 4) if values else float("nan")


TARGETS = {
    "bundled": {"greedy_accuracy": "50-85%", "sampled_overthinking": ">= 20%", "greedy_overthinking": None},
    "overthinker": {"greedy_accuracy": ">= 45%", "sampled_overthinking": ">= 60%", "greedy_overthinking": ">= 50%"},
}
"""Each preset's targets for the held-out figures (the overthinker's from issue 24)."""


def format_figures(figures: dict) -> str:
    """Figures with their preset's targets, one per line."""
    targets = TARGETS[figures.get("preset", "bundled")]

    def target(name: str) -> str:
        return f" (target {targets[name]})" if targets[name] else ""

    return "\n".join([
        f"held-out problems: {figures['num_problems']} "
        f"(split '{figures['split']}', seed {figures['eval_seed']})",
        f"greedy accuracy: {figures['greedy_accuracy']:.1%}{target('greedy_accuracy')}",
        f"sampled accuracy (T=1.0): {figures['sampled_accuracy']:.1%}",
        f"sampled responses with a backtrack or redundant segment: "
        f"{figures['sampled_overthinking_share']:.1%}{target('sampled_overthinking')}",
        f"greedy responses with a backtrack or redundant segment: {figures['greedy_overthinking_share']:.1%}"
        f"{target('greedy_overthinking')}",
        "tokens after the first correct answer (responses whose reasoning states it): greedy "
        f"{_tokens_after(figures, 'greedy')}, sampled {_tokens_after(figures, 'sampled')}",
        f"reference solutions with J_T - J_0 > 0 (T: the end of the reasoning): "
        f"{figures['j_gain_positive_share']:.1%} (target >= 90%); "
        f"mean J_0 {figures['mean_j0']:.3f}, mean J_T {figures['mean_jT']:.3f}",
    ])


def _tokens_after(figures: dict, name: str) -> str:
    value = figures.get(f"{name}_tokens_after_first_correct")
    return "n/a" if value is None else f"{value:.1f}"


# ---------------------------------------------------------------- model card and CLI


def write_model_card(out_dir: Path, info: dict, figures: dict | None, command: str) -> Path:
    """``README.md`` in ``out_dir``: architecture, size, data mix, training run and measured figures."""
    cfg = info["config"]
    mix = ", ".join(f"{share:.0%} {kind.replace('_', ' ')}" for kind, share in cfg["mix"].items())
    arith = cfg["arithmetic"]
    intro = {
        "bundled": ["# tiny-math: the bundled arithmetic model of repro-env (`model: bundled`)", "",
                    "A small Llama-architecture causal LM trained from scratch on generated multi-step arithmetic",
                    "word problems (`repro_env.arithmetic`). It is repro-env's default scorer and starting policy:",
                    "it runs on a laptop CPU and needs no download. It was trained to *overthink* on part of its",
                    "data (re-checks, \"Wait\" corrections, rumination), the behaviour the RePro process reward is",
                    "meant to remove."],
        "overthinker": ["# tiny-math-overthinker: a bundled model that overthinks by default "
                        "(`model: bundled-overthinker`)", "",
                        "The same architecture and pretraining code as `tiny-math` (`model: bundled`), with a",
                        "different response mix: in most training responses every computing step is followed by",
                        "a redundant re-check (\"Let me double-check: 5 + 3 = 8. Yes.\"), and some hold idle",
                        "rumination. The re-check is the likelier continuation after each step, so greedy decoding",
                        "overthinks and still reaches the right answer: the setting of R1-style models, where an",
                        "outcome reward cannot see the waste and RePro's claim can be tested."],
    }[info.get("preset", "bundled")]
    load = info.get("load_average")
    lines = [
        *intro, "",
        "## Model", "",
        f"- `LlamaForCausalLM`: {cfg['num_layers']} layers, hidden {cfg['hidden_size']}, "
        f"{cfg['num_heads']} heads, MLP {cfg['intermediate_size']}, context {cfg['max_positions']} tokens, "
        "tied input/output embeddings.",
        f"- {info['params']:,} parameters; float32 safetensors, {info['weights_mb']} MB.",
        f"- Tokenizer: byte-level BPE (`tokenizers`), {info['vocab']} tokens, special `<s>` (BOS, added by "
        "the tokenizer), `</s>` (end of text), `<pad>`. Words keep their leading space; every digit, "
        "punctuation mark and line break is its own pre-token, so numbers are one token per digit and "
        "no token crosses a segment boundary (`\\boxed{N}` has the same ids alone as in context).", "",
        "## Data", "",
        f"Each step draws {cfg['batch_size']} fresh training problems (split `train`, seed {cfg['seed']}): "
        f"{arith['min_ops']}-{arith['max_ops']} operations among {' '.join(arith['operations'])}, values "
        f"{arith['min_value']}-{arith['max_value']}, factors up to {arith['max_multiplier']}, intermediate "
        f"results up to {arith['max_result']}. Text = `Question: {{question}}\\n\\n` + solution segments "
        "(each ending with a blank line, the last `The answer is \\boxed{N}.`) + `</s>`; the loss covers "
        "the response tokens only.", "",
        f"Response mix: {mix} (" + ("recheck all: a re-check after every computing step; other " if "recheck_all"
                                    in cfg["mix"] else "") + "overthinking variants insert 1 or 2 segments).", "",
        "## Training", "",
        f"- Command: `{command}`",
        f"- {cfg['steps']} steps x {cfg['batch_size']} problems, AdamW (lr {cfg['lr']}, warm-up "
        f"{cfg['warmup_steps']}, cosine to 10%), seed {cfg['seed']}, {cfg['threads']} CPU threads.",
        f"- Wall time: {info['seconds'] / 60:.1f} min (tokenizer + model, on a 2-core CPU"
        + (f", load average {load[0]:.2f} at the start and {load[1]:.2f} at the end" if load else
           " shared with other jobs")
        + f"); final training loss (response tokens, mean of the last 50 steps) {info['final_loss']}.", "",
        "- Only arithmetic word problems in this format: it is a test model for RePro, not a general LM.",
        "",
    ]
    if figures is not None:
        task = figures["task"]
        lines += ["## Measured on held-out problems", "",
                  f"Held-out problems of the default task `ArithmeticConfig()` (harder than the training "
                  f"data: values {task['min_value']}-{task['max_value']}, factors up to "
                  f"{task['max_multiplier']}, results up to {task['max_result']}), measured by "
                  "`repro-env pretrain-tiny --eval-only --preset PRESET`:", "", "```",
                  format_figures(figures), "```", "",
                  "J_t is the mean log-prob of `\\boxed{answer}` right after the prompt and the first t "
                  "reference segments (REPRO_SPEC §2). Example (greedy):", "", "```",
                  figures["example_question"], "", figures["example_greedy"].strip(), "```", ""]
    notes = out_dir / NOTES_FILE
    if notes.is_file():  # figures measured after training (e.g. by the test suite), kept across rewrites
        lines += [notes.read_text(encoding="utf-8").strip(), ""]
    path = out_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m repro_env.pretrain`` / ``repro-env pretrain-tiny``: train, evaluate, write the card."""
    parser = argparse.ArgumentParser(prog="repro-env pretrain-tiny", description=main.__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="bundled",
                        help="named config (data mix, steps, threads) that the other options override: "
                             "'bundled' (tiny-math) or 'overthinker' (tiny-math-overthinker)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: the preset's asset directory)")
    overrides = {"seed": int, "steps": int, "batch_size": int, "lr": float, "hidden_size": int,
                 "num_layers": int, "threads": int}
    for name, kind in overrides.items():
        flag = "--layers" if name == "num_layers" else "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, type=kind, default=None,
                            help="override the preset's value" + (
                                "; 1 is faster when other jobs share the cores" if name == "threads" else ""))
    parser.add_argument("--eval-only", action="store_true", help="evaluate the model saved in --out")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    parser.add_argument("--eval-problems", type=int, default=200)
    parser.add_argument("--eval-seed", type=int, default=1234)
    parser.add_argument("--quiet", action="store_true", help="no progress bar or figures")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else PRESET_DIRS[args.preset]
    config = dataclasses.replace(PRESETS[args.preset], **{
        name: getattr(args, name) for name in overrides if getattr(args, name) is not None})
    torch.set_num_threads(config.threads)
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if not args.eval_only:
        info = pretrain(config, out, progress=not args.quiet)
        info["command"] = "repro-env pretrain-tiny " + " ".join(
            argv if argv is not None else __import__("sys").argv[1:])
        info["preset"] = args.preset
        if load_at_start is not None:
            info["load_average"] = [load_at_start, os.getloadavg()[0]]
        (out / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
        if not args.quiet:
            print(f"trained {info['params']:,} parameters in {info['seconds']:.0f} s -> {out}")
    info = json.loads((out / "train_info.json").read_text())
    figures = None
    if not args.no_eval:
        figures = evaluate(out, args.eval_problems, args.eval_seed, progress=not args.quiet)
        (out / "eval.json").write_text(json.dumps(figures, indent=2) + "\n")
    elif (out / "eval.json").is_file():
        figures = json.loads((out / "eval.json").read_text())
    write_model_card(out, info, figures, info.get("command", "python -m repro_env.pretrain"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
