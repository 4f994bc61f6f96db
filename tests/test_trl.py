"""RePro inside TRL (repro_env.integrations.trl): real GRPOTrainer runs on the bundled model, CPU."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig  # the trl extra, which `make test` installs: a failing import fails loudly

from repro_env import advantages as adv
from repro_env import reward as rp
from repro_env.assets import bundled_model_dir
from repro_env.errors import ConfigError
from repro_env.integrations.trl import (
    ReProGRPOTrainer,
    length_penalty_reward_func,
    outcome_reward_func,
    segment_token_counts,
    task_dataset,
)
from repro_env.reward import RewardConfig
from repro_env.scoring.base import ScorerConfig, ScoreRequest
from repro_env.scoring.hf import HFScorer
from repro_env.segments import split_segments
from repro_env.tasks import resolve_task

ROOT = Path(__file__).resolve().parent.parent
TASK = "RePro-Math-v0"


def make_trainer(per_device: int = 8, steps: int = 2, reward_funcs=None, *, texts: list[str] | None = None,
                 scorer=None, reward: RewardConfig | None = None, **overrides) -> ReProGRPOTrainer:
    """A trainer on the bundled model. ``texts``: instead of sampling, every step "generates" these
    completions of problem 0 (the dataset holds that problem only) through TRL's ``rollout_func``."""
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir(), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(bundled_model_dir(), dtype=torch.float32)
    settings = dict(output_dir=str(ROOT / ".tmp" / "trl-test"), max_steps=steps, learning_rate=5e-5, seed=0,
                    per_device_train_batch_size=per_device, num_generations=4, max_completion_length=96,
                    logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
                    gradient_checkpointing=False, use_vllm=False, dataloader_num_workers=0)
    settings.update(overrides)
    args = GRPOConfig(**settings)
    prompts = 1 if texts else max(16, steps * per_device // args.num_generations)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You are using 'rollout_func'")
        return ReProGRPOTrainer(model=model, args=args, processing_class=tokenizer,
                                reward_funcs=reward_funcs or outcome_reward_func(TASK),
                                train_dataset=task_dataset(TASK, size=prompts), task=TASK, scorer=scorer,
                                reward=reward, rollout_func=fixed_rollout(texts) if texts else None)


def fixed_rollout(texts: list[str]):
    """TRL ``rollout_func``: the completions are ``texts`` in TRL's global order, so process p
    "generates" rows p·B .. p·B + B − 1; each is its text's tokens followed by EOS."""

    def rollout(prompts: list[str], trainer: ReProGRPOTrainer) -> dict[str, list]:
        tokenizer, rank = trainer.processing_class, trainer.accelerator.process_index
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
        return {"prompt_ids": tokenizer(text=prompts)["input_ids"],
                "completion_ids": ids[rank * len(prompts):(rank + 1) * len(prompts)], "logprobs": None}

    return rollout


def fixed_texts() -> list[str]:
    """One group of 4 completions of problem 0: 2 correct, 2 wrong, different lengths; the segments
    that match the task's backtrack patterns: 0, 2 ("Wait, hmm.", "Actually, let me re-check."), 0,
    2 ("Hmm.", "No, wait.")."""
    right = f"\\boxed{{{task_dataset(TASK, size=1)[0]['answer']}}}"
    return [f"Let me think.\n\nSo the answer is {right}.",
            f"Wait, hmm.\n\nActually, let me re-check.\n\nThe answer is {right}.",
            "I guess.\n\nThe answer is \\boxed{0}.",
            "Hmm.\n\nNo, wait.\n\nMaybe.\n\nThe answer is \\boxed{1}."]


def fixed_batch(tokenizer, texts: list[str] | None = None):
    """:func:`fixed_texts` (or 4 other ``texts``, right, right, wrong, wrong) as TRL hands them over:
    prompts, answers, completion ids and mask, and R = (1, 1, 0, 0)."""
    problem = task_dataset(TASK, size=1)[0]
    return ([problem["prompt"]] * 4, [problem["answer"]] * 4, *padded(tokenizer, texts or fixed_texts()),
            np.array([1.0, 1.0, 0.0, 0.0]))


def padded(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(completion_ids, mask), (B, T) right-padded, each text's tokens followed by EOS."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    completion_ids = torch.full((len(ids), max(len(i) for i in ids)), tokenizer.pad_token_id)
    mask = torch.zeros(completion_ids.shape, dtype=torch.long)
    for b, row in enumerate(ids):
        completion_ids[b, :len(row)], mask[b, :len(row)] = torch.tensor(row), 1
    return completion_ids, mask


def by_hand(tokenizer, prompts, answers, completion_ids, mask, R, *, reward: RewardConfig | None = None,
            rows: list[int] | None = None) -> list[np.ndarray]:
    """Token advantages of ``rows`` (default: all; one group, R (len(rows),) their outcomes) straight
    from repro_env.reward, with J from a fresh scorer on the same model.

    Each completion's last segment states the answer: it is not scored (REPRO_SPEC §4), so J is asked
    at the T − 1 reasoning segments only and the last segment's r̃ is 0 and out of the pool. The
    scored points among them (§4): all, or the k of highest first-token entropy plus the last. An
    empty completion has no segments: its tokens (EOS) get A only."""
    spec = resolve_task(TASK)
    config = reward or spec.reward
    scorer = HFScorer.from_model(AutoModelForCausalLM.from_pretrained(bundled_model_dir(), dtype=torch.float32),
                                 tokenizer)
    rewards, masks, counts, tails = [], [], [], []
    for b in range(len(prompts)) if rows is None else rows:
        n = int(mask[b].sum())
        segments = split_segments(decode(tokenizer, completion_ids[b, :n]), spec.delimiter)
        T = len(segments)
        counts.append(segment_token_counts(tokenizer, completion_ids[b, :n].tolist(), segments))
        tails.append(n - sum(counts[-1]))
        if T == 0:
            rewards.append(np.zeros(0))
            masks.append(np.zeros(0, dtype=bool))
            continue
        assert "boxed" in segments[-1] and not any("boxed" in s for s in segments[:-1])
        result = scorer.score([ScoreRequest(prompts[b], tuple(segments[:-1]), f"\\boxed{{{answers[b]}}}")])[0]
        if config.selection == "all":
            points = list(range(1, T))
        else:  # topk_entropy: the k highest entropies among segments 1..T−2 (earlier first on ties), and T − 1
            top = np.argsort(-result.entropies[:-1], kind="stable")[:config.k] + 1
            points = sorted(int(p) for p in top) + [T - 1]
        rewards.append(rp.spread_rewards(points, rp.rewards_for(config, result.J[[0, *points]]), T))
        masks.append(rp.scored_mask(points, T))
    return adv.grpo_token_advantages(R, rewards, masks, counts, tails, alpha=config.alpha)


def test_a_short_run_completes_and_logs_the_repro_metrics():
    trainer = make_trainer(steps=2)
    trainer.train()
    logged = [record for record in trainer.state.log_history if "repro/process_return" in record]
    assert len(logged) == 2
    for record in logged:
        assert 0.0 < record["repro/tokens_per_response"] <= 96
        assert np.isfinite(record["repro/J_gain"]) and 0.0 <= record["repro/backtracks_per_response"]
        assert 0.0 < record["repro/process_return"] <= 1.0  # the r̃ of a response sum to S_T in (0, 1]


def test_advantages_equal_the_reward_module_by_hand():
    trainer = make_trainer()
    prompts, answers, ids, mask, R = fixed_batch(trainer.processing_class)
    got, _ = trainer.repro_advantages(prompts, answers, ids, mask, R, group=4)
    expected = by_hand(trainer.processing_class, prompts, answers, ids, mask, R)
    for b in range(4):
        n = int(mask[b].sum())
        np.testing.assert_allclose(got[b, :n].numpy(), expected[b], atol=1e-6, rtol=0)
        assert torch.all(got[b, n:] == 0)
    # the process term really is there: the tokens of one completion do not all share A
    assert len(set(np.round(got[1, :int(mask[1].sum())].numpy(), 6))) > 2


def recorded_requests(trainer) -> list[ScoreRequest]:
    """The list into which the trainer's scorer will record every ScoreRequest it scores."""
    requests = []
    scorer = trainer.repro_scorer()
    score = scorer.score
    scorer.score = lambda batch: requests.extend(batch) or score(batch)
    trainer._repro_scorer = scorer
    return requests


def test_the_final_answer_segment_gets_the_outcome_advantage_only():
    trainer = make_trainer()
    tokenizer = trainer.processing_class
    prompts, answers, ids, mask, R = fixed_batch(tokenizer)
    requests = recorded_requests(trainer)
    got, _ = trainer.repro_advantages(prompts, answers, ids, mask, R, group=4)
    A = adv.grpo_outcome_advantages(R)  # (4,)
    for b in range(4):
        n = int(mask[b].sum())
        segments = split_segments(tokenizer.decode(ids[b, :n], skip_special_tokens=True), "\n\n")
        assert requests[b].segments == tuple(segments[:-1])  # no J point at the final answer
        answer_start = sum(segment_token_counts(tokenizer, ids[b, :n].tolist(), segments)[:-1])
        # Ã = 0 on the final-answer segment and the EOS after it: Â = A exactly
        np.testing.assert_allclose(got[b, answer_start:n].numpy(), A[b], atol=1e-6, rtol=0)
        assert not np.allclose(got[b, :answer_start].numpy(), A[b], atol=1e-6)  # the reasoning is credited


THINK_TEMPLATE = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                  "{% if add_generation_prompt %}<think>\n{% endif %}")
"""A chat template that opens the think block in the generation prompt, as DeepSeek-R1-Distill's and Qwen3's do."""


def think_batch(trainer):
    """One group of 4 think-style completions of one problem under THINK_TEMPLATE: 2 right, 2 wrong;
    a \\boxed{} draft inside a think block, and one completion cut off inside its block."""
    tokenizer = trainer.processing_class
    tokenizer.chat_template = THINK_TEMPLATE
    problem = task_dataset(TASK, size=1)[0]
    prompt = trainer._prompt_text([{"role": "user", "content": problem["prompt"]}])
    right = f"\\boxed{{{problem['answer']}}}"
    texts = [f"Let me think.\n\nSo it is {right}?\n\nYes.\n</think>\n\nThe answer is {right}.",
             f"Hmm.\n\nWait, let me re-check.\n\nOK.\n</think>\n\nThe answer is {right}.",
             "I guess.\n\n</think>\n\nThe answer is \\boxed{0}.",
             "Maybe.\n\nStill thinking"]
    return [prompt] * 4, [problem["answer"]] * 4, *padded(tokenizer, texts), np.array([1.0, 1.0, 0.0, 0.0])


def test_think_completions_score_the_think_block_only_by_hand():
    """R1 / Qwen3 completions: J is scored at the segment ends inside the open think block (the
    prefix is the prompt, which ends with <think>); </think> and the final answer get the outcome
    advantage only; a block that never closes is all reasoning. Against a hand computation."""
    trainer = make_trainer()
    tokenizer = trainer.processing_class
    prompts, answers, ids, mask, R = think_batch(trainer)
    assert prompts[0] == task_dataset(TASK, size=1)[0]["prompt"] + "<think>\n"
    requests = recorded_requests(trainer)
    got, _ = trainer.repro_advantages(prompts, answers, ids, mask, R, group=4)
    spec = resolve_task(TASK)
    fresh = HFScorer.from_model(AutoModelForCausalLM.from_pretrained(bundled_model_dir(), dtype=torch.float32),
                                tokenizer)
    rewards, counts, tails, reasoning_ends = [], [], [], []
    for b in range(4):
        n = int(mask[b].sum())
        text = decode(tokenizer, ids[b, :n])
        think = text.split("</think>")[0]  # the block's inside: the prompt opened it
        segments = split_segments(think, "\n\n")
        segments[-1] = segments[-1].rstrip() + "\n\n"
        assert requests[b].question == prompts[b] and requests[b].segments == tuple(segments)
        result = fresh.score([ScoreRequest(prompts[b], tuple(segments), f"\\boxed{{{answers[b]}}}")])[0]
        rewards.append(rp.process_rewards(result.J, spec.reward.stability_weight, spec.reward.ema, spec.reward.eps))
        # a token belongs to the segment in which it starts: its start is the length of the text before it
        starts = [len(decode(tokenizer, ids[b, :k])) for k in range(n)]
        ends = np.cumsum([len(x) for x in split_segments(think, "\n\n")])
        segment_of = [int(np.searchsorted(ends, c, side="right")) for c in starts]
        counts.append([segment_of.count(t) for t in range(len(segments))])
        tails.append(n - sum(counts[-1]))
        reasoning_ends.append(sum(counts[-1]))
    assert [len(c) for c in counts] == [3, 3, 1, 2] and tails[3] == 1  # the cut-off one: only EOS after it
    expected = adv.grpo_token_advantages(R, rewards, None, counts, tails, alpha=spec.reward.alpha)
    A = adv.grpo_outcome_advantages(R)
    for b in range(4):
        n = int(mask[b].sum())
        np.testing.assert_allclose(got[b, :n].numpy(), expected[b], atol=1e-6, rtol=0)
        np.testing.assert_allclose(got[b, reasoning_ends[b]:n].numpy(), A[b], atol=1e-6, rtol=0)
        assert not np.allclose(got[b, :reasoning_ends[b]].numpy(), A[b], atol=1e-6)  # the reasoning is credited
        text = decode(tokenizer, ids[b, :n])
        assert decode(tokenizer, ids[b, reasoning_ends[b]:n]) == ("" if b == 3 else text[text.index("</think>"):])


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class GradientRecorder(TrainerCallback):
    """Keeps the step's loss gradient (after DDP's all-reduce, before the optimizer), flattened."""

    grad: torch.Tensor | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **_):
        self.grad = torch.cat([p.grad.flatten() for p in model.parameters()]).clone()  # (P,)


@dataclasses.dataclass
class Step:
    """What one real training step on :func:`fixed_texts` handed to TRL's loss, and what it logged."""

    grad: torch.Tensor
    """(P,) gradient of the step's loss (no clipping)."""
    advantages: torch.Tensor
    """(B, T) this process's rows, as ``_generate_and_score_completions`` returned them."""
    logged: dict
    """The step's record in ``trainer.state.log_history``."""
    rewards: dict
    """TRL's rewards per reward function, of every process's completions (global order)."""


def step_trainer(per_device: int = 4, **kwargs) -> ReProGRPOTrainer:
    """A one-step trainer on :func:`fixed_texts`, R = outcome + 0.5 · length reward (whose group
    statistics need every process's rows), no gradient clipping (the gradient stays linear in Â)."""
    funcs = [outcome_reward_func(TASK), length_penalty_reward_func(TASK, weight=0.5, num_generations=4)]
    return make_trainer(per_device=per_device, steps=1, texts=fixed_texts(), reward_funcs=funcs, max_grad_norm=0.0,
                        **kwargs)


def train_one_step(trainer: ReProGRPOTrainer) -> Step:
    recorder, outputs = GradientRecorder(), []
    trainer.add_callback(recorder)
    generate = trainer._generate_and_score_completions
    trainer._generate_and_score_completions = lambda inputs: outputs.append(generate(inputs)) or outputs[-1]
    trainer.train()
    (logged,) = [record for record in trainer.state.log_history if "repro/process_return" in record]
    rewards = {name: list(values) for name, values in trainer._logs["rewards"].items()}
    return Step(recorder.grad, outputs[0]["advantages"].cpu(), logged, rewards)


@pytest.fixture(scope="module")
def one_process_step() -> Step:
    return train_one_step(step_trainer())


def completion_logps(model, tokenizer, prompt: str, completion_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) log π(y_t | q, y_<t) of each completion token under ``model``, one plain forward pass."""
    prompt_ids = torch.tensor(tokenizer(prompt)["input_ids"]).expand(len(completion_ids), -1)  # (B, P)
    P = prompt_ids.shape[1]
    logits = model(input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
                   attention_mask=torch.cat([torch.ones_like(prompt_ids), mask], dim=1)).logits  # (B, P + T, V)
    logps = torch.log_softmax(logits[:, P - 1:-1].float(), dim=-1)  # (B, T, V): the logits that predict y_t
    return logps.gather(-1, completion_ids[..., None]).squeeze(-1)  # (B, T)


def test_the_loss_gradient_moves_by_the_hand_computed_per_token_process_advantages(one_process_step):
    """TRL's loss really reads the (B, T) advantages, token by token (STACK_NOTES: an undocumented
    path of TRL 1.16). One real training step on the fixed batch with α = 0.1 and one with α = 0:
    with one step per generation the ratio π/π_old is 1, so the dapo loss is −Σ_{b,t} Â_bt·log π(y_bt)/N
    (N the batch's completion tokens) and the gradients differ by −∇ Σ α·Ã_bt·log π(y_bt)/N, with α·Ã
    per token from the hand computation (:func:`by_hand` at α minus at 0; A cancels).

    Null, tried once: ``repro_advantages`` patched to give every token of a completion that
    completion's mean Â (per-sequence advantages broadcast over the tokens, as TRL's (B,) path does)
    failed the comparison below: the gradient difference was off by 44% of its norm, against 5e-6
    (float32) for the real path.
    """
    reward = resolve_task(TASK).reward
    plain = train_one_step(step_trainer(reward=dataclasses.replace(reward, alpha=0.0)))
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    prompts, answers, ids, mask, R = fixed_batch(tokenizer)
    with_process = by_hand(tokenizer, prompts, answers, ids, mask, R)
    outcome_only = by_hand(tokenizer, prompts, answers, ids, mask, R, reward=dataclasses.replace(reward, alpha=0.0))
    process = torch.zeros(ids.shape)  # (B, T) α·Ã
    for b in range(4):
        n = int(mask[b].sum())
        process[b, :n] = torch.from_numpy(with_process[b] - outcome_only[b])
        assert len(set(np.round(process[b, :n].numpy(), 6))) >= 2  # Ã varies along every completion
    model = AutoModelForCausalLM.from_pretrained(bundled_model_dir(), dtype=torch.float32)
    logps = completion_logps(model, tokenizer, prompts[0], ids, mask)  # (B, T)
    (-(process * logps * mask).sum() / mask.sum()).backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters()])  # (P,)
    got = one_process_step.grad - plain.grad
    assert expected.norm() > 0.05 * plain.grad.norm()  # the process term is no rounding error
    assert (got - expected).norm() <= 1e-4 * expected.norm()


def hand_metrics(tokenizer, texts: list[str]) -> dict[str, float]:
    """The batch means TRL logs as ``repro/…``, from a fresh scorer: S_T = Σ r̃ and J_T − J_0 over
    the reasoning (every segment but the final answer; an empty completion has none: 0 and 0), the
    completion's tokens with EOS, and the backtracks the caller counts in :func:`fixed_texts`."""
    spec = resolve_task(TASK)
    problem = task_dataset(TASK, size=1)[0]
    scorer = HFScorer.from_model(AutoModelForCausalLM.from_pretrained(bundled_model_dir(), dtype=torch.float32),
                                 tokenizer)
    process_return, gain = [], []
    for text in texts:
        reasoning = split_segments(text, spec.delimiter)[:-1]
        J = np.zeros(1)  # without reasoning: S_T = 0 and J_T − J_0 = 0
        if reasoning:
            answer = f"\\boxed{{{problem['answer']}}}"
            J = scorer.score([ScoreRequest(problem["prompt"], tuple(reasoning), answer)])[0].J  # (1 + T,)
        process_return.append(rp.rewards_for(spec.reward, J).sum() if reasoning else 0.0)
        gain.append(J[-1] - J[0])
    tokens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]
    return {"repro/process_return": np.mean(process_return), "repro/J_gain": np.mean(gain),
            "repro/tokens_per_response": np.mean(tokens)}


def test_the_logged_metrics_equal_a_hand_computation(one_process_step):
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    expected = hand_metrics(tokenizer, fixed_texts())
    expected["repro/backtracks_per_response"] = (0 + 2 + 0 + 2) / 4  # fixed_texts' docstring
    got = {name: one_process_step.logged[name] for name in expected}
    assert got == pytest.approx(expected, abs=1e-6, rel=0)


def test_a_training_step_on_two_processes_equals_one_on_one(one_process_step, tmp_path):
    """One real training step on 2 processes (gloo, tests/trl_worker.py; the group of 4 straddles
    both) against one process: the same advantages per row, the same metrics, the same gradient after
    DDP's all-reduce, and the length reward's group statistics over all 4 rows (the one-process
    function's values). About 30 s, nearly all of it two Python start-ups on 2 cores. Tried once
    against a null (each process's group statistics over its own 2 rows, nothing gathered): failed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank"
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ACCELERATE_USE_CPU="true",
                   PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.trl_worker", str(out)], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    _, _, ids, mask, _ = fixed_batch(AutoTokenizer.from_pretrained(bundled_model_dir()))
    alone = one_process_step
    rows = [row for r in ranks for row in r["advantages"]]
    for b in range(4):
        n = int(mask[b].sum())
        torch.testing.assert_close(rows[b][:n], alone.advantages[b, :n], atol=1e-6, rtol=0)
    repro = {k: v for k, v in alone.logged.items() if k.startswith("repro/")}
    for r in ranks:
        assert {k: r["logged"][k] for k in repro} == pytest.approx(repro, abs=1e-6, rel=0)
        torch.testing.assert_close(r["grad"], alone.grad, atol=1e-6 * alone.grad.abs().max().item(), rtol=1e-4)
        assert r["rewards"].keys() == alone.rewards.keys()
        for name, values in alone.rewards.items():
            assert r["rewards"][name] == pytest.approx(values, abs=1e-6)
    assert alone.rewards["repro_length_penalty"] == pytest.approx(fixed_length_rewards(ids, mask, weight=0.5))


def perturb(model) -> None:
    """Move every weight by a fixed random 10%, as updates move the policy."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.1 * torch.randn(p.shape, generator=generator))


def test_a_frozen_scorer_keeps_scoring_with_its_own_weights():
    """``scorer=ScorerConfig()`` (README): J from the bundled model loaded on its own, whatever
    the policy becomes; the default (``scorer=None``) scores with the policy as it is now."""
    frozen, policy = make_trainer(scorer=ScorerConfig()), make_trainer()
    for trainer in (frozen, policy):
        perturb(trainer.model)
    tokenizer = frozen.processing_class
    batch = fixed_batch(tokenizer)
    expected = by_hand(tokenizer, *batch)  # J of the unmoved bundled model
    got_frozen, _ = frozen.repro_advantages(*batch, group=4)
    got_policy, _ = policy.repro_advantages(*batch, group=4)
    mask = batch[3]
    for b in range(4):
        n = int(mask[b].sum())
        np.testing.assert_allclose(got_frozen[b, :n].numpy(), expected[b], atol=1e-6, rtol=0)
    # the policy's J moved with its weights, so the same comparison fails for the default scorer
    assert max(np.abs(got_policy[b, :int(mask[b].sum())].numpy() - expected[b]).max() for b in range(4)) > 1e-3


def test_topk_entropy_selection_by_hand():
    """``reward=RewardConfig(selection="topk_entropy", k=1)`` (README, REPRO_SPEC §4): J counts at the
    reasoning segment of highest first-token entropy and at the last one only. Completion 3 has 3
    reasoning segments, so it loses a point; the others have at most 2 and keep theirs."""
    config = RewardConfig(selection="topk_entropy", k=1)
    trainer = make_trainer(reward=config)
    tokenizer = trainer.processing_class
    batch = fixed_batch(tokenizer)
    got, _ = trainer.repro_advantages(*batch, group=4)
    expected = by_hand(tokenizer, *batch, reward=config)
    every_point = by_hand(tokenizer, *batch)
    mask = batch[3]
    for b in range(4):
        np.testing.assert_allclose(got[b, :int(mask[b].sum())].numpy(), expected[b], atol=1e-6, rtol=0)
    assert np.abs(expected[3] - every_point[3]).max() > 1e-3  # the selection changed completion 3's credit


def generate_and_score(trainer: ReProGRPOTrainer) -> dict:
    """TRL's ``_generate_and_score_completions`` on one generation batch of problem 0, in train mode."""
    trainer.model.train()
    return trainer._generate_and_score_completions([dict(trainer.train_dataset[0]) for _ in range(4)])


def test_a_completion_no_reward_function_scores_gets_no_advantage():
    """A completion for which every reward function returns None is unscorable (TRL 1.16: NaN R,
    advantage 0). RePro follows: the completion is out of the group's statistics (A and
    the r̃ pool are over the other 3) and every token of it gets Â = 0. Tried once against a null
    (the line that sets R to NaN for such rows removed: R = 0 for it): failed."""
    outcome = outcome_reward_func(TASK)

    def third_unscorable(completions, answer, **_):
        return [None if i == 2 else r for i, r in enumerate(outcome(completions, answer))]

    trainer = make_trainer(per_device=4, steps=1, texts=fixed_texts(), reward_funcs=third_unscorable)
    output = generate_and_score(trainer)
    tokenizer = trainer.processing_class
    prompts, answers, ids, mask, _ = fixed_batch(tokenizer)
    expected = by_hand(tokenizer, prompts, answers, ids, mask, np.array([1.0, 1.0, 0.0]), rows=[0, 1, 3])
    got = output["advantages"]
    assert torch.all(got[2] == 0)
    for b, row in zip([0, 1, 3], expected, strict=True):
        n = int(mask[b].sum())
        np.testing.assert_allclose(got[b, :n].numpy(), row, atol=1e-6, rtol=0)


def test_an_empty_completion_gets_the_outcome_advantage_only():
    """A completion that is only EOS has no reasoning: no J is asked for it, its token gets A, it
    adds nothing to the group's r̃ pool, and its S_T and J_T − J_0 count as 0 in the logged means.
    In a batch of empty completions, each EOS gets its A and every metric but the tokens is 0."""
    texts = fixed_texts()
    texts[2] = ""
    trainer = make_trainer(per_device=4, steps=1, texts=texts)
    requests = recorded_requests(trainer)
    output = generate_and_score(trainer)
    tokenizer = trainer.processing_class
    prompts, answers, ids, mask, R = fixed_batch(tokenizer, texts)
    assert len(requests) == 3  # none for the empty completion
    assert int(mask[2].sum()) == 1  # EOS
    A = adv.grpo_outcome_advantages(R)  # (4,)
    expected = by_hand(tokenizer, prompts, answers, ids, mask, R)
    got = output["advantages"]
    assert got[2, 0].item() == pytest.approx(A[2], abs=1e-6)
    for b in range(4):
        n = int(mask[b].sum())
        np.testing.assert_allclose(got[b, :n].numpy(), expected[b], atol=1e-6, rtol=0)
    logged = {name: values[-1] for name, values in trainer._metrics["train"].items() if name.startswith("repro/")}
    metrics = hand_metrics(tokenizer, texts)
    metrics["repro/backtracks_per_response"] = (0 + 2 + 0 + 2) / 4
    assert logged == pytest.approx(metrics, abs=1e-6, rel=0)

    empty = [""] * 4
    advantages, metrics = trainer.repro_advantages(prompts, answers, *padded(tokenizer, empty), R, group=4)
    assert torch.all(advantages[:, 0] == torch.from_numpy(A).float()) and metrics == {
        "process_return": 0.0, "J_gain": 0.0, "tokens_per_response": 1.0, "backtracks_per_response": 0.0}


@pytest.mark.parametrize("setting, message", [
    ({"loss_type": "luspo", "importance_sampling_level": "sequence"}, "loss_type='luspo'"),
    ({"loss_type": "vespo"}, "loss_type='vespo'"),
    ({"off_policy_mask_threshold": 0.5}, "off_policy_mask_threshold=0.5"),
    ({"scale_rewards": "batch"}, "scale_rewards='batch'"),
])
def test_sequence_level_settings_are_refused(setting, message):
    with pytest.raises(ConfigError, match=f"ReProGRPOTrainer cannot use GRPOConfig .*{message}"):
        make_trainer(**setting)


def test_dataset_and_outcome_reward_func():
    data = task_dataset(TASK, size=3)
    assert data.column_names == ["prompt", "answer", "problem_id"] and len(data) == 3
    assert data[0]["prompt"].startswith("Question:")
    reward = outcome_reward_func(TASK)
    answer = data[0]["answer"]
    assert reward([f"So \\boxed{{{answer}}}.", "So \\boxed{-12345}."], [answer, answer]) == [1.0, 0.0]


def fixed_length_rewards(ids: torch.Tensor, mask: torch.Tensor, weight: float) -> list[float]:
    """:func:`length_penalty_reward_func` (groups of 4) on :func:`fixed_batch`, in one process."""
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    problem = task_dataset(TASK, size=1)[0]
    completion_ids = [row[:n].tolist() for row, n in zip(ids, mask.sum(dim=1), strict=True)]
    reward = length_penalty_reward_func(TASK, weight=weight, num_generations=4)
    return reward(prompts=[problem["prompt"]] * len(completion_ids), completion_ids=completion_ids,
                  completions=tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
                  answer=[problem["answer"]] * len(completion_ids))


def test_length_penalty_reward_func_by_hand():
    reward = length_penalty_reward_func(TASK, weight=0.5, num_generations=4)
    right, wrong = "So \\boxed{7}.", "So \\boxed{8}."
    # group 0 (lengths 10, 20, 30, 50): λ = 0.5 − (len − 10)/40 = [0.5, 0.25, 0, −0.5]; the wrong ones
    # get min(0, λ) = [0, −0.5]. Group 1: equal lengths, no length signal, all 0.
    completions = [right, wrong, right, wrong] + [right, right, wrong, wrong]
    lengths = [10, 20, 30, 50] + [4, 4, 4, 4]
    kwargs = dict(prompts=["Q"] * 8, completions=completions, answer=["7"] * 8,
                  completion_ids=[[1] * n for n in lengths], trainer_state=None)
    got = reward(**kwargs)
    assert got == pytest.approx([0.25, 0.0, 0.0, -0.25, 0.0, 0.0, 0.0, 0.0], abs=1e-12)
    # TRL sums its reward functions (reward_weights 1) before the group normalisation: R' = R + 0.5·len_reward
    total = np.add(outcome_reward_func(TASK)(**kwargs), got)
    np.testing.assert_allclose(total, [1.25, 0.0, 1.0, -0.25, 1.0, 1.0, 0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize(("settings", "message"), [
    ({"weight": -1.0, "num_generations": 4}, "'weight' must be a finite number >= 0, got -1.0 (float)"),
    ({"weight": 0.5, "num_generations": 0}, "'num_generations' must be an int >= 1 (the GRPOConfig's), got 0"),
])
def test_length_penalty_reward_func_errors(settings, message):
    with pytest.raises(ConfigError, match=re.escape(f"length_penalty_reward_func: {message}")):
        length_penalty_reward_func(TASK, **settings)
    reward = length_penalty_reward_func(TASK, weight=1.0, num_generations=4)
    with pytest.raises(ConfigError, match=re.escape("a batch of 6 completions is not whole groups of "
                                                    "num_generations=4")):
        reward(completions=["x"] * 6, answer=["1"] * 6, completion_ids=[[1]] * 6)


def test_a_short_run_with_the_length_penalty_logs_it():
    funcs = [outcome_reward_func(TASK), length_penalty_reward_func(TASK, weight=0.5, num_generations=4)]
    trainer = make_trainer(steps=1, reward_funcs=funcs)
    trainer.train()
    logged = [r for r in trainer.state.log_history if "rewards/repro_length_penalty/mean" in r]
    assert len(logged) == 1 and "rewards/repro_length_penalty/std" in logged[0]
    # a group of 4 whose lengths differ pays +0.5·0.5 to its shortest correct and −0.5·0.5 to its longest
    assert logged[0]["rewards/repro_length_penalty/mean"] != 0.0 or logged[0]["rewards/repro_length_penalty/std"] > 0


def test_segment_token_counts_follow_characters():
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    segments = ["So 3 + 4 = 7.\n\n", "The answer is \\boxed{7}."]
    ids = tokenizer("".join(segments), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    counts = segment_token_counts(tokenizer, ids, segments)
    assert sum(counts) == len(ids) - 1  # EOS is after the reasoning
    first = tokenizer.decode(ids[:counts[0]])
    assert first.startswith("So 3 + 4 = 7.") and "answer" not in first


def test_segment_token_counts_give_a_token_cut_by_a_boundary_to_the_segment_it_starts_in():
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    text = "So 3 + 4 = 7.\n\nThe answer is \\boxed{7}."
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    k = next(i for i, (a, b) in enumerate(offsets) if b - a >= 3 and a > 0)  # a token of several characters
    cut = offsets[k][0] + 1  # a segment boundary inside it
    assert segment_token_counts(tokenizer, ids, [text[:cut], text[cut:]]) == [k + 1, len(ids) - k - 1]


def held_out_accuracy(model, tokenizer, problems: int = 48, samples: int = 2) -> float:
    """Mean outcome reward of sampled completions (T = 1, fixed seed) on test problems 0..N−1."""
    data = task_dataset(TASK, split="test", size=problems)
    reward = outcome_reward_func(TASK)
    torch.manual_seed(1234)
    scores = []
    with torch.no_grad():
        for start in range(0, problems, 16):
            rows = data[start:start + 16]
            batch = tokenizer(rows["prompt"], return_tensors="pt", padding=True)
            out = model.generate(**batch, do_sample=True, temperature=1.0, max_new_tokens=96,
                                 num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            scores += reward(texts, [a for a in rows["answer"] for _ in range(samples)])
    return float(np.mean(scores))


@pytest.mark.slow
@pytest.mark.parametrize("signal", [True, False])
def test_a_short_trl_run_raises_held_out_accuracy(signal):
    """16 steps of 8 prompts x 8 completions at lr 1e-4, about 2 minutes. Measured with this seed:
    held-out accuracy 0.531 -> 0.562 (+0.031; at 12 steps and lr 5e-5, +0.021). Null (signal=False):
    coin-flip rewards and α = 0, updates of the same size that carry no signal; the same check must
    fail for it."""
    trainer = make_trainer(per_device=64, steps=16, num_generations=8, max_completion_length=96, learning_rate=1e-4)
    if not signal:
        coin = np.random.default_rng(0)
        trainer.reward_funcs = [lambda completions, **_: coin.integers(0, 2, len(completions)).astype(float).tolist()]
        trainer.repro_reward = dataclasses.replace(trainer.repro_reward, alpha=0.0)
    model, tokenizer = trainer.model, trainer.processing_class
    before = held_out_accuracy(model.eval(), tokenizer)
    trainer.train()
    after = held_out_accuracy(model.eval(), tokenizer)
    print(f"held-out accuracy (T=1, 2 x 48): {before:.3f} -> {after:.3f} (signal={signal})")
    assert (after >= before + 0.02) == signal
