"""One rank of the two-process TRL test (tests/test_trl.py): launched as torchrun/accelerate do
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment; gloo on the CPU)."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from tests.test_trl import fixed_batch, fixed_length_rewards, make_trainer


def main(out: str) -> None:
    trainer = make_trainer(per_device=2)  # 2 ranks x 2 completions: the group of 4 straddles both
    rank = trainer.accelerator.process_index
    prompts, answers, ids, mask, R = fixed_batch(trainer.processing_class)
    rows = slice(2 * rank, 2 * rank + 2)
    advantages, metrics = trainer.repro_advantages(prompts[rows], answers[rows], ids[rows], mask[rows], R, group=4)
    length = fixed_length_rewards(ids, mask, rows)
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"advantages": advantages.tolist(), "metrics": metrics, "length_rewards": length,
                   "world": trainer.accelerator.num_processes}, f)
    torch.distributed.barrier()


if __name__ == "__main__":
    np.seterr(all="raise")
    main(sys.argv[1])
