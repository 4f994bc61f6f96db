"""RePro inside TRL (repro_env.integrations.trl): real GRPOTrainer runs on the bundled model, CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trl")  # the trl extra; `make test` installs it
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import GRPOConfig  # noqa: E402

from repro_env import reward as rp  # noqa: E402
from repro_env.assets import bundled_model_dir  # noqa: E402
from repro_env.errors import ConfigError  # noqa: E402
from repro_env.integrations.trl import (  # noqa: E402
    ReProGRPOTrainer,
    outcome_reward_func,
    segment_token_counts,
    task_dataset,
)
from repro_env.scoring.base import ScoreRequest  # noqa: E402
from repro_env.scoring.hf import HFScorer  # noqa: E402
from repro_env.segments import split_segments  # noqa: E402
from repro_env.tasks import resolve_task  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TASK = "RePro-Math-v0"


def make_trainer(per_device: int = 8, steps: int = 2, **overrides) -> ReProGRPOTrainer:
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir(), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(bundled_model_dir(), dtype=torch.float32)
    settings = dict(output_dir=str(ROOT / ".tmp" / "trl-test"), max_steps=steps, learning_rate=5e-5, seed=0,
                    per_device_train_batch_size=per_device, num_generations=4, max_completion_length=96,
                    logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
                    gradient_checkpointing=False, use_vllm=False, dataloader_num_workers=0)
    settings.update(overrides)
    return ReProGRPOTrainer(model=model, args=GRPOConfig(**settings), processing_class=tokenizer,
                            reward_funcs=outcome_reward_func(TASK), train_dataset=task_dataset(TASK, size=16),
                            task=TASK)


def fixed_batch(tokenizer):
    """One group of 4 completions of the same problem: 2 correct, 2 wrong, different lengths."""
    problem = task_dataset(TASK, size=1)[0]
    right = f"\\boxed{{{problem['answer']}}}"
    texts = [f"Let me think.\n\nSo the answer is {right}.",
             f"Wait, hmm.\n\nActually, let me re-check.\n\nThe answer is {right}.",
             "I guess.\n\nThe answer is \\boxed{0}.",
             "Hmm.\n\nNo, wait.\n\nMaybe.\n\nThe answer is \\boxed{1}."]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = max(len(i) for i in ids)
    completion_ids = torch.full((4, width), tokenizer.pad_token_id)
    mask = torch.zeros(4, width, dtype=torch.long)
    for b, row in enumerate(ids):
        completion_ids[b, :len(row)], mask[b, :len(row)] = torch.tensor(row), 1
    R = np.array([1.0, 1.0, 0.0, 0.0])
    return [problem["prompt"]] * 4, [problem["answer"]] * 4, completion_ids, mask, R


def by_hand(tokenizer, prompts, answers, completion_ids, mask, R) -> list[np.ndarray]:
    """Token advantages straight from repro_env.reward, with J from a fresh scorer on the same model."""
    spec = resolve_task(TASK)
    scorer = HFScorer.from_model(AutoModelForCausalLM.from_pretrained(bundled_model_dir(), dtype=torch.float32),
                                 tokenizer)
    rewards, masks, counts, tails = [], [], [], []
    for b in range(4):
        n = int(mask[b].sum())
        text = tokenizer.decode(completion_ids[b, :n], skip_special_tokens=True)
        segments = split_segments(text, spec.delimiter)
        result = scorer.score([ScoreRequest(prompts[b], tuple(segments), f"\\boxed{{{answers[b]}}}")])[0]
        T = len(segments)
        rewards.append(rp.spread_rewards(range(1, T + 1), rp.rewards_for(spec.reward, result.J), T))
        masks.append(np.ones(T, dtype=bool))
        counts.append(segment_token_counts(tokenizer, completion_ids[b, :n].tolist(), segments))
        tails.append(n - sum(counts[-1]))
    return rp.grpo_token_advantages(R, rewards, masks, counts, tails, alpha=spec.reward.alpha)


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


def test_two_processes_give_the_advantages_of_one(tmp_path):
    single = make_trainer()
    prompts, answers, ids, mask, R = fixed_batch(single.processing_class)
    alone, metrics = single.repro_advantages(prompts, answers, ids, mask, R, group=4)
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
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    both = [row for r in ranks for row in r["advantages"]]
    width = max(len(row) for row in both)
    for b in range(4):
        n = int(mask[b].sum())
        np.testing.assert_allclose(both[b][:n], alone[b, :n].numpy(), atol=1e-6, rtol=0)
    assert ranks[0]["metrics"] == pytest.approx(metrics) and ranks[1]["metrics"] == pytest.approx(metrics)
    assert width == ids.shape[1]


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


def test_segment_token_counts_follow_characters():
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    segments = ["So 3 + 4 = 7.\n\n", "The answer is \\boxed{7}."]
    ids = tokenizer("".join(segments), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    counts = segment_token_counts(tokenizer, ids, segments)
    assert sum(counts) == len(ids) - 1  # EOS is after the reasoning
    first = tokenizer.decode(ids[:counts[0]])
    assert first.startswith("So 3 + 4 = 7.") and "answer" not in first
