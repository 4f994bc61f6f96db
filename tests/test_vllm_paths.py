"""vLLM beyond the bare scorer, on the real CPU engine: the env and the vector env with
``scorer: {backend: vllm}`` (as the README shows), and a GRPO learner that generates with a vLLM
policy engine while a second vLLM engine scores with the current policy weights.

Engines are shared per module: the envs' scorer comes from one process-wide instance per config.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from repro_env.env import ReasoningEnv
from repro_env.scoring.base import ScoreRequest

pytestmark = pytest.mark.vllm

SEGMENTS = ["So, 6 - 2 = 4.", "Wait, let me re-check that.", "The answer is \\boxed{4}."]
LIMITS = {"max_steps": 3, "max_segment_tokens": 8}


def run(env, seed: int) -> tuple[float, list[tuple[float, float, bool]]]:
    _, info = env.reset(seed=seed)
    steps = []
    for segment in SEGMENTS:
        _, reward, terminated, _, step_info = env.step(segment)
        steps.append((reward, step_info["process_score"], terminated))
    return info["J_baseline"], steps


@pytest.fixture(scope="module")
def vllm_scorer_options(tiny_llama_dir):
    return {"backend": "vllm", "model": str(tiny_llama_dir)}


def test_env_with_a_vllm_scorer_rewards_as_the_hf_env(vllm_scorer_options, tiny_llama_dir):
    env = ReasoningEnv("RePro-Math-v0", scorer=vllm_scorer_options, limits=LIMITS)
    reference = ReasoningEnv("RePro-Math-v0", scorer={"model": str(tiny_llama_dir)}, limits=LIMITS)
    assert type(env.scorer).__name__ == "VLLMScorer" and type(reference.scorer).__name__ == "HFScorer"
    (j0, got), (want_j0, want) = run(env, 3), run(reference, 3)
    assert j0 == pytest.approx(want_j0, abs=1e-4)
    np.testing.assert_allclose([g[:2] for g in got], [w[:2] for w in want], atol=1e-4)
    assert [g[2] for g in got] == [w[2] for w in want] == [False, False, True]


def test_vector_env_from_make_vec_with_a_vllm_scorer_equals_its_single_envs(vllm_scorer_options):
    envs = gym.make_vec("RePro-Math-v0", num_envs=2, vectorization_mode="vector_entry_point",
                        scorer=vllm_scorer_options, limits=LIMITS)
    single = ReasoningEnv("RePro-Math-v0", scorer=vllm_scorer_options, limits=LIMITS)
    assert envs.unwrapped.scorer is single.scorer  # one engine per scorer config in the process
    _, info = envs.reset(seed=5)  # sub-env i is seeded 5 + i
    steps = []
    for segment in SEGMENTS:
        _, reward, terminated, _, step_info = envs.step([segment, segment])
        steps.append(list(zip(reward, step_info["process_score"], terminated, strict=True)))
    for i in range(2):
        j0, want = run(single, 5 + i)  # one batched scorer call per step equals the env on its own
        assert info["J_baseline"][i] == pytest.approx(j0, abs=1e-5)
        np.testing.assert_allclose([step[i][:2] for step in steps], [w[:2] for w in want], atol=1e-5)
        assert [bool(step[i][2]) for step in steps] == [w[2] for w in want] == [False, False, True]


@pytest.fixture(scope="module")
def vllm_learner(tiny_llama_dir, vllm_scorer_options):
    from repro_env.agents.grpo import GRPO, GRPOConfig
    from repro_env.tasks import resolve_task

    task = resolve_task("RePro-Math-v0", {"scorer": vllm_scorer_options, "limits": LIMITS})
    config = GRPOConfig(model=str(tiny_llama_dir), backend="vllm", prompts_per_update=2, group_size=2,
                        lr=1e-2, epochs=1, micro_batch_size=4, kl_coef=0.0, scorer_follows_policy=True)
    return GRPO(config, task, seed=0)


def test_grpo_with_a_vllm_policy_and_a_vllm_scorer_that_follows_it(vllm_learner):
    from repro_env.scoring.hf import HFScorer

    learner = vllm_learner
    assert type(learner.scorer).__name__ == "VLLMScorer" and learner.policy.config.backend == "vllm"
    request = [ScoreRequest("Question: What is 6 - 2?\n\n", tuple(s + "\n\n" for s in SEGMENTS[:2]), "\\boxed{4}")]
    before = learner.scorer.score(request)[0].J
    batch = learner.collect()
    assert len(batch.episodes) == 4 and all(e.trace.log_probs and e.segments for e in batch.episodes)
    metrics = learner.update(batch)
    assert learner.updates == 1 and all(np.isfinite(v) for v in metrics.values())
    after = learner.scorer.score(request)[0].J
    trained = HFScorer.from_model(learner.policy.model, learner.scorer.tokenizer).score(request)[0].J
    np.testing.assert_allclose(after, trained, atol=1e-4)  # the scorer engine holds the new weights
    assert np.max(np.abs(np.asarray(after) - np.asarray(before))) > 1e-3  # and they did change
    # the policy engine follows too: its log-probs of a fresh rollout equal the trained model's
    episode = learner.collect().episodes[0]

    ids = torch.tensor([episode.trace.ids], device=learner.policy.device)
    log_probs, _, _ = learner.policy.forward(ids, torch.ones_like(ids))
    generated = [k for k, s in enumerate(episode.trace.segment) if s >= 0]
    sampled = [episode.trace.log_probs[k] for k in generated]
    np.testing.assert_allclose(sampled, log_probs[0, [k - 1 for k in generated]].tolist(), atol=2e-4)
