"""The bundled tiny math model (repro_env/assets/tiny-math) and the pretraining script around it.

Fast checks only: the model reloads offline, is small, its tokenizer is a byte-level BPE adding BOS,
and it behaves (boxed answers, J rising along a reference solution). Full figures come from
``repro-env pretrain-tiny --eval-only`` (printed, and kept in the model card).
"""

from __future__ import annotations

import json

import pytest
import torch

from repro_env.arithmetic import ArithmeticConfig, generate_problem
from repro_env.assets import bundled_model_dir
from repro_env.errors import ConfigError
from repro_env.pretrain import PretrainConfig, encode_batch, learning_rate, main, training_example
from repro_env.pretrain_eval import (
    answer_logprobs,
    answers_match,
    extract_boxed,
    format_figures,
    generate_responses,
    has_overthinking,
    held_out_problems,
    tokens_after_first_correct,
)
from repro_env.problems import DEFAULT_PROMPT_TEMPLATE

FIGURES = {"num_problems": 2, "split": "test", "eval_seed": 1, "greedy_accuracy": 0.5, "sampled_accuracy": 0.5,
           "sampled_overthinking_share": 0.5, "greedy_overthinking_share": 0.0, "j_gain_positive_share": 1.0,
           "mean_j0": -3.0, "mean_jT": -1.0}


@pytest.fixture(scope="module")
def bundled(monkeypatch_module):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    path = bundled_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return path, model, tokenizer


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_bundled_model_is_a_small_llama_in_safetensors(bundled):
    path, model, _ = bundled
    info = json.loads((path / "train_info.json").read_text())
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) == info["params"]
    assert (path / "model.safetensors").stat().st_size <= 20 * 2**20
    assert not list(path.glob("*.bin"))
    assert (path / "README.md").read_text().startswith("# tiny-math")


def test_tokenizer_is_byte_level_bpe_with_bos_and_single_digits(bundled):
    _, model, tokenizer = bundled
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    assert backend["model"]["type"] == "BPE"
    assert backend["decoder"]["type"] == "ByteLevel"
    assert backend["padding"] is None and backend["truncation"] is None
    ids = tokenizer("12 + 345 = 357.")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == model.config.bos_token_id
    assert tokenizer.eos_token_id not in ids
    digits = [t for t in tokenizer.convert_ids_to_tokens(ids) if any(c.isdigit() for c in t)]
    assert digits == ["1", "2", "3", "4", "5", "3", "5", "7"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "12 + 345 = 357."
    specials = tokenizer.convert_ids_to_tokens([tokenizer.eos_token_id, tokenizer.pad_token_id])
    assert specials == ["</s>", "<pad>"]


def test_prompt_and_segments_tokenise_the_same_apart_and_joined(bundled):
    _, _, tokenizer = bundled
    p = generate_problem(ArithmeticConfig(), seed=3, index=0, split="test")
    prompt = DEFAULT_PROMPT_TEMPLATE.format(question=p.question)
    apart = tokenizer(prompt)["input_ids"]
    for segment in p.solution:
        apart += tokenizer(segment, add_special_tokens=False)["input_ids"]
    assert apart == tokenizer(prompt + "".join(p.solution))["input_ids"]


def test_greedy_answers_are_boxed_and_mostly_right(bundled):
    # The model card's held-out set (default task ArithmeticConfig(), split test, seed 1234), first 40:
    # measured 25/40 (62.5%; 54.0% on all 200). "Mostly right" is more than half: a model at the
    # 40% the old bound allowed scores 16/40 on average and would reach 21 with probability 0.07.
    _, model, tokenizer = bundled
    problems = [generate_problem(ArithmeticConfig(), 1234, i, split="test") for i in range(40)]
    prompts = [DEFAULT_PROMPT_TEMPLATE.format(question=p.question) for p in problems]
    responses = generate_responses(model, tokenizer, prompts, sample=False, max_new_tokens=160)
    answers = [extract_boxed(r) for r in responses]
    assert all(a is not None for a in answers), responses
    assert sum(answers_match(a, p.answer) for a, p in zip(answers, problems, strict=True)) >= 21


def test_j_rises_along_a_reference_solution(bundled):
    _, model, tokenizer = bundled
    p = generate_problem(ArithmeticConfig(), seed=1234, index=0, split="test")
    prompt = DEFAULT_PROMPT_TEMPLATE.format(question=p.question)
    j = answer_logprobs(model, tokenizer, prompt, p.solution, p.answer)
    assert len(j) == len(p.solution) + 1
    assert all(v <= 0 for v in j)
    assert j[-1] > j[0] + 1.0


def test_answer_logprobs_match_one_unpadded_forward_per_prefix(bundled):
    _, model, tokenizer = bundled
    p = generate_problem(ArithmeticConfig(), seed=1234, index=1, split="test")
    prompt = DEFAULT_PROMPT_TEMPLATE.format(question=p.question)
    batched = answer_logprobs(model, tokenizer, prompt, p.solution, p.answer)
    answer = tokenizer(f"\\boxed{{{p.answer}}}", add_special_tokens=False)["input_ids"]
    for t in (0, len(p.solution) - 1):
        prefix = tokenizer(prompt + "".join(p.solution[:t]))["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prefix + answer])).logits[0]  # (L, V)
        logprobs = torch.log_softmax(logits, dim=-1)  # (L, V)
        picked = [logprobs[len(prefix) - 1 + i, a].item() for i, a in enumerate(answer)]
        assert batched[t] == pytest.approx(sum(picked) / len(answer), abs=1e-4)


# ---------------------------------------------------------------- pretraining helpers


def test_extract_boxed_and_answers_match():
    assert extract_boxed("so 3 + 4 = 7.\n\nThe answer is \\boxed{7}. Or \\boxed{ 8 }") == "8"
    assert extract_boxed("The answer is 7.") is None
    assert answers_match("20", "20") and answers_match("20.0", "20") and answers_match("1,200", "1200")
    assert not answers_match("21", "20") and not answers_match(None, "20") and not answers_match("x", "20")


@pytest.mark.parametrize("response, expected", [
    ("3 + 4 = 7.\n\n7 * 2 = 14.\n\nThe answer is \\boxed{14}.\n\n", False),
    ("3 + 4 = 7.\n\nLet me double-check: 3 + 4 = 7. Yes.\n\nThe answer is \\boxed{7}.\n\n", True),
    ("3 + 4 = 8.\n\nWait, that's wrong. 3 + 4 = 7.\n\nThe answer is \\boxed{7}.\n\n", True),
    ("Hmm, let me think about this carefully.\n\n3 + 4 = 7.\n\n", True),
    ("3 + 4 = 7.\n\nSo 3 + 4 = 7 again.\n\n", True),  # a repeated computation, no keyword
])
def test_has_overthinking(response, expected):
    assert has_overthinking(response) is expected


def test_tokens_after_first_correct_counts_the_recheck_with_the_bundled_tokenizer(bundled):
    _, _, tokenizer = bundled
    clean = "12 + 5 = 17.\n\nThe answer is \\boxed{17}.\n\n"
    recheck = "12 + 5 = 17.\n\nLet me double-check: 12 + 5 = 17. Yes.\n\nThe answer is \\boxed{17}."
    assert tokens_after_first_correct(clean, "17", tokenizer) == 0
    assert tokens_after_first_correct(recheck, "17", tokenizer) == 23  # the re-check with its "\n\n"
    assert tokens_after_first_correct("12 + 5 = 18.\n\nThe answer is \\boxed{18}.", "17", tokenizer) is None
    figures = {"greedy_tokens_after_first_correct": 1.5, "sampled_tokens_after_first_correct": None}
    assert "greedy 1.5, sampled n/a" in format_figures({**FIGURES, **figures})


def test_training_examples_are_seeded_and_follow_the_mix():
    config = PretrainConfig()
    assert training_example(config, 11) == training_example(config, 11)
    assert training_example(config, 11) != training_example(PretrainConfig(seed=1), 11)
    variants = [training_example(config, i)[2] for i in range(2000)]
    # Expected counts 0.65·2000 = 1300, 0.15·2000 = 300, 0.12·2000 = 240, 0.08·2000 = 160 (±~4 sd).
    assert abs(variants.count("clean") - 1300) < 90
    assert abs(variants.count("recheck") - 300) < 65
    assert abs(variants.count("false_start") - 240) < 60
    assert abs(variants.count("rumination") - 160) < 50
    overthought = [training_example(config, i)[1] for i, v in enumerate(variants[:200]) if v != "clean"]
    assert all(has_overthinking(r) for r in overthought)


def test_encode_batch_masks_prompt_and_padding(bundled):
    _, _, tokenizer = bundled
    input_ids, attention_mask, labels = encode_batch(tokenizer, [("Q: 1 + 1?\n\n", "1 + 1 = 2.\n\n"),
                                                                 ("Q: 2?\n\n", "2.\n\n")], max_len=64)
    prompt_len = len(tokenizer("Q: 1 + 1?\n\n")["input_ids"])
    response_len = len(tokenizer("1 + 1 = 2.\n\n", add_special_tokens=False)["input_ids"]) + 1  # + </s>
    assert input_ids.shape == labels.shape == attention_mask.shape == (2, prompt_len + response_len)
    assert (labels[0, :prompt_len] == -100).all() and (labels[0, prompt_len:] != -100).all()
    assert labels[0, -1] == tokenizer.eos_token_id
    short = int(attention_mask[1].sum())
    assert (labels[1, short:] == -100).all() and (input_ids[1, short:] == tokenizer.pad_token_id).all()


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    config = PretrainConfig(steps=1100, warmup_steps=100, lr=1e-3)
    assert learning_rate(config, 0) == pytest.approx(1e-3 * 1 / 100)
    assert learning_rate(config, 99) == pytest.approx(1e-3)
    assert learning_rate(config, 600) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # halfway: cos(π/2) = 0
    assert learning_rate(config, 1100) == pytest.approx(1e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, r"field 'steps' must be an int >= 1, got 0 \(int\)"),
    ({"num_heads": 5}, r"field 'num_heads' must be a divisor of hidden_size \(192\), got 5 \(int\)"),
    ({"lr": 0.0}, r"field 'lr' must be a number > 0, got 0.0 \(float\)"),
    ({"max_positions": 32}, r"field 'max_positions' must be an int >= 64, got 32 \(int\)"),
    ({"vocab_size": 100}, r"field 'vocab_size' must be an int >= 300 \(256 bytes \+ merges\), got 100"),
    ({"mix": {"clean": 0.5, "recheck": 0.4}}, r"field 'mix' must be non-negative shares over clean, "
                                              r"recheck, false_start, rumination, recheck_all summing to 1"),
    ({"mix": {"clean": 0.9, "ramble": 0.1}}, r"field 'mix' must be non-negative shares"),
])
def test_pretrain_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PretrainConfig(**kwargs)


def test_held_out_problems_refuse_the_training_seed():
    message = r"field 'eval_seed' must be a seed other than the training seed \(0\), got 0 \(int\)"
    with pytest.raises(ConfigError, match=message):
        held_out_problems(PretrainConfig(seed=0), num_problems=3, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["bundled", "overthinker"])
def test_pretraining_is_deterministic(tmp_path, preset):
    from safetensors.torch import load_file

    args = ["--preset", preset, "--steps", "3", "--batch-size", "2", "--hidden-size", "48", "--layers", "1",
            "--quiet", "--eval-problems", "2"]
    for name in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / name)]) == 0
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
    assert "greedy accuracy" in (tmp_path / "a" / "README.md").read_text()
