"""Held-out evaluation and model card of the pretrained tiny math models (:mod:`repro_env.pretrain`).

:func:`evaluate` generates greedy and sampled (T = 1) answers to held-out problems of the default
task and measures accuracy, the overthinking measures of :mod:`repro_env.overthinking` and how J
moves along the reference solutions; :func:`write_model_card` writes ``README.md`` beside the
weights, with the preset's targets and an optional hand-written ``NOTES.md``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import torch

from repro_env.arithmetic import ArithmeticConfig, generate_problem
from repro_env.config import check, from_mapping
from repro_env.overthinking import mark_segments, overthinking_segments, response_figures
from repro_env.pretrain import TEST_SPLIT, PretrainConfig
from repro_env.problems import DEFAULT_ANSWER_TEMPLATE, DEFAULT_PROMPT_TEMPLATE, Problem
from repro_env.segments import reasoning_length, split_segments
from repro_env.tasks import TaskSpec, load_task

BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
NOTES_FILE = "NOTES.md"
"""Hand-written model-card section (figures measured after training), appended to the card."""


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
