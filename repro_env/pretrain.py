"""Pretrain the bundled tiny math model from scratch on generated arithmetic word problems.

The model is the package's default scorer and starting policy: a small Llama-architecture causal LM
with a byte-level BPE tokenizer, both trained here on text from :mod:`repro_env.arithmetic`, so
everything runs on a laptop CPU with no download. A fixed share of the training responses contain
overthinking (redundant re-checks, "Wait" corrections, rumination: :func:`repro_env.arithmetic.
overthink`), so the model reproduces the behaviour RePro is meant to remove.

Run ``repro-env pretrain-tiny --preset bundled|overthinker`` (or ``python -m repro_env.pretrain``):
it trains, saves the model + tokenizer + generation config, evaluates on held-out problems and
writes the model card ``README.md`` (:mod:`repro_env.pretrain_eval`). ``--eval-only`` re-evaluates a
saved model.

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
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
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
from repro_env.config import check
from repro_env.problems import DEFAULT_PROMPT_TEMPLATE, Problem

PRESET_DIRS = {preset: ASSETS_DIR / subdir for subdir, preset in BUNDLED_MODELS.values()}
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")
# Every word (with its leading space), digit, punctuation mark and other whitespace character is its
# own pre-token: numbers tokenise one digit per token (column arithmetic is learnable), and a string
# that starts without a space tokenises alone as inside a longer text (no merge crosses a digit,
# punctuation or "\n"), so the answer span "\boxed{N}" appended after "q + τ≤t" has the ids it has
# in context, and the prompt and the segments can be tokenised separately.
PRETOKENIZE_PATTERN = r" ?\p{L}+|\p{N}|[^\s\p{L}\p{N}]|\s"
TRAIN_SPLIT, TEST_SPLIT = "train", "test"
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


# ---------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m repro_env.pretrain`` / ``repro-env pretrain-tiny``: train, evaluate, write the card."""
    from repro_env.pretrain_eval import evaluate, write_model_card

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
