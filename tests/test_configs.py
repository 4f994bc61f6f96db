"""Every shipped YAML in configs/ builds its learner, not just parses: on CPU with the fixture model.

Only the model, the device and the dtype are swapped (the fixture model is float32 on CPU); every
other field, the vLLM backends of the GPU configs included, is built as shipped. The GPU configs
build on the real CUDA device in the ``gpu`` test: ``make test`` deselects it, ``make test-gpu`` runs it
on a machine with CUDA (and stops at once on one without).
"""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import pytest

from repro_env.agents.compare import load_compare_config, plan
from repro_env.agents.run_config import build_learner, load_config, parse_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAIN_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("compare_"))
COMPARE_CONFIGS = sorted(p.name for p in CONFIGS.glob("compare_*.yaml"))


def uses_vllm(name: str) -> bool:
    config, learner = load_config(CONFIGS / name)
    return learner.backend == "vllm" or config.task_overrides.get("scorer", {}).get("backend") == "vllm"


def swapped(model: Path, device: str, dtype: str) -> list[str]:
    return [f"learner.model={model}", f"learner.device={device}", f"learner.dtype={dtype}",
            f"task_overrides.scorer.model={model}", f"task_overrides.scorer.device={device}",
            f"task_overrides.scorer.dtype={dtype}"]


def check_built(name: str, model: Path, device: str, dtype: str) -> None:
    shipped_config, shipped = load_config(CONFIGS / name)
    config, learner_config = load_config(CONFIGS / name, swapped(model, device, dtype))
    # the swap changed exactly model, device and dtype
    assert learner_config == dataclasses.replace(shipped, model=str(model), device=device, dtype=dtype)
    learner = build_learner(config, learner_config)
    try:
        assert type(learner).__name__ == config.algorithm.upper()
        assert learner.policy.config.backend == shipped.backend
        shipped_scorer = shipped_config.task_overrides.get("scorer", {}).get("backend", "hf")
        assert type(learner.scorer).__name__ == {"hf": "HFScorer", "vllm": "VLLMScorer"}[shipped_scorer]
        assert learner.envs.num_envs == shipped.rollouts_per_update
        assert (learner.reference is not None) == (shipped.kl_coef > 0)
        assert learner.alpha == ((learner.spec_task.reward.alpha if shipped.alpha is None else shipped.alpha)
                                 if shipped.process_reward else 0.0)
        for key, value in shipped_config.task_overrides.get("reward", {}).items():
            assert getattr(learner.spec_task.reward, key) == value, key
        if "prompt_template" in shipped_config.task_overrides:
            assert learner.spec_task.prompt_template == shipped_config.task_overrides["prompt_template"]
        assert next(learner.policy.model.parameters()).device.type == device
    finally:
        del learner
        gc.collect()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.vllm) if uses_vllm(n) else n
                                  for n in TRAIN_CONFIGS])
def test_every_shipped_train_config_builds_its_learner_on_cpu(name, tiny_llama_dir):
    check_built(name, tiny_llama_dir, "cpu", "float32")


def test_the_gpu_configs_are_among_those_built():
    gpu = [n for n in TRAIN_CONFIGS if load_config(CONFIGS / n)[1].device == "cuda"]
    assert len(gpu) >= 3 and all(uses_vllm(n) for n in gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("name", [n for n in TRAIN_CONFIGS if load_config(CONFIGS / n)[1].device == "cuda"])
def test_gpu_configs_build_on_cuda_as_shipped_but_for_the_model(name, tiny_llama_dir):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    check_built(name, tiny_llama_dir, "cuda", load_config(CONFIGS / name)[1].dtype)


@pytest.mark.parametrize("name", COMPARE_CONFIGS)
def test_every_compare_config_builds_each_of_its_learners(name, tiny_llama_dir, tmp_path):
    config = load_compare_config(CONFIGS / name, [f"model={tiny_llama_dir}"])
    jobs = {job.name: job for job in plan(config, tmp_path)[0] if job.trains}
    repro = {}  # algorithm → the first RePro run of it
    for row, runs in plan(config, tmp_path)[1].items():
        method = config.methods.get(row)
        if method is not None and method.process_reward:
            repro.setdefault(method.algorithm, jobs[next(iter(runs.values()))])
    assert set(repro) == {m.algorithm for m in config.methods.values()}
    for algorithm, job in repro.items():
        train_config, learner_config = parse_config(job.train, source=job.name)
        learner = build_learner(train_config, learner_config)
        try:
            assert type(learner).__name__ == algorithm.upper()
            assert learner.envs.num_envs == learner_config.rollouts_per_update
            assert learner.alpha > 0 and (learner.reference is not None) == (learner_config.kl_coef > 0)
            for key, value in config.learners.get(algorithm, {}).items():
                assert getattr(learner_config, key) == value, key
        finally:
            del learner
            gc.collect()
