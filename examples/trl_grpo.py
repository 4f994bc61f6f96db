"""RePro in a TRL run: ``ReProGRPOTrainer`` on the bundled tiny math model, on the CPU.

    python examples/trl_grpo.py                 # 10 steps of 4 prompts x 4 completions, about a minute
    python examples/trl_grpo.py --steps 30 --out runs/trl
    python examples/trl_grpo.py --smoke         # 2 steps of 2 prompts x 2 completions (the test suite's run)

Scaling out is TRL's: ``accelerate launch --num_processes 8 examples/trl_grpo.py --model Qwen/Qwen3-1.7B``
(DeepSpeed/FSDP through an accelerate config), generation on a vLLM server with TRL's
``use_vllm=True, vllm_mode="server"``. See the README's "Scaling out with TRL".
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig

from repro_env.assets import resolve_model
from repro_env.integrations.trl import ReProGRPOTrainer, outcome_reward_func, task_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--task", default="RePro-Math-v0")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="completions per prompt")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--out", default="runs/trl_grpo")
    parser.add_argument("--smoke", action="store_true", help="tiny budget: 2 steps of 2 prompts x 2 completions (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.prompts, args.group = 2, 2, 2
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cpu = not torch.cuda.is_available()
    config = GRPOConfig(
        output_dir=args.out, max_steps=args.steps, learning_rate=args.lr, seed=0,
        per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
        max_completion_length=128, temperature=1.0, beta=0.001, logging_steps=1, report_to="none",
        save_strategy="no", use_cpu=cpu, bf16=not cpu, gradient_checkpointing=False, use_vllm=False,
    )
    trainer = ReProGRPOTrainer(model=model, args=config, processing_class=tokenizer,
                               reward_funcs=outcome_reward_func(args.task),
                               train_dataset=task_dataset(args.task, size=args.steps * args.prompts),
                               task=args.task)
    trainer.train()
    steps = [record for record in trainer.state.log_history if "reward" in record]  # not the run's summary
    for record in steps[-3:]:
        print({k: round(v, 4) for k, v in record.items() if k.startswith(("repro/", "reward")) or k == "step"})


if __name__ == "__main__":
    main()
