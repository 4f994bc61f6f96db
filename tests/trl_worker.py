"""One rank of the two-process TRL test (tests/test_trl.py): launched as torchrun/accelerate do
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment; gloo on the CPU). It runs one real
training step on rows 2·rank, 2·rank + 1 of the fixed group of 4 and saves what the step produced."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import torch

from tests.test_trl import step_trainer, train_one_step


def main(out: str) -> None:
    trainer = step_trainer(per_device=2)  # 2 ranks x 2 completions: the group of 4 straddles both
    step = train_one_step(trainer)
    torch.save({**dataclasses.asdict(step), "world": trainer.accelerator.num_processes},
               f"{out}.{trainer.accelerator.process_index}")
    torch.distributed.barrier()


if __name__ == "__main__":
    np.seterr(all="raise")
    main(sys.argv[1])
