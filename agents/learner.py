"""What GRPO and PPO share: config fields, envs, policy, optimisation loop, evaluation, checkpoints.

:class:`LMLearner` implements the :class:`repro_env.agents.base.Learner` protocol except ``collect`` and
``update``. It owns its training envs (a :class:`repro_env.vector.ReasoningVectorEnv` with
``autoreset_mode=DISABLED``: one episode per sub-env per collect), the :class:`LMPolicy`, an AdamW
optimiser, an optional frozen reference copy for the KL term and, when ``scorer_follows_policy``,
its own scorer into which the policy's weights are pushed after every update (the paper's setting).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from repro_env.agents.episodes import Episode, TokenBatch, collect_episodes, rescore_topk, summarize
from repro_env.agents.losses import check_finite
from repro_env.agents.policy import LMPolicy, PolicyConfig, model_dir
from repro_env.assets import resolve_model
from repro_env.config import check, check_device, to_dict
from repro_env.errors import CheckpointError, ConfigError
from repro_env.scoring.base import BUNDLED_MODEL

WEIGHTS_FILE = "policy.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "learner.json"


@dataclass(frozen=True)
class LearnerConfig:
    """Fields every LM learner has (policy, optimisation, RePro switch, scorer sync, evaluation)."""

    model: str = BUNDLED_MODEL
    """Initial policy: a local model directory or ``bundled`` (the tiny math model)."""
    backend: str = "hf"
    """Generation backend: ``hf`` (transformers), ``vllm`` (in-process engine) or ``vllm-server`` (a vLLM
    server at ``generator_options.base_url``); vLLM backends get the weights pushed after each update."""
    device: str = "cpu"
    """torch device of the policy (``cpu``, ``cuda``)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Policy weights and activations."""
    temperature: float = 1.0
    """Sampling temperature of training rollouts (evaluation is greedy unless ``samples`` > 1)."""
    generator_options: Any = None
    """The generation backend's own settings (``PolicyConfig.options``): for ``vllm-server`` the
    server's ``ServerOptions`` (``base_url``, ``served_model_name``, ``api_key``,
    ``request_timeout_s``, ``retries``, ``concurrency``: requests in flight, one per segment,
    ``weights_dir``); for ``vllm`` ``gpu_memory_utilization``; none for ``hf``."""
    lr: float = 1e-6
    """AdamW learning rate of the policy (the paper's 1e-6; tiny models want ~1e-4)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    epochs: int = 1
    """Passes over each collected batch."""
    minibatches: int = 1
    """Optimiser steps per epoch; the batch is split into this many shuffled minibatches."""
    micro_batch_size: int = 8
    """Episodes per forward/backward; minibatches are accumulated over micro-batches."""
    max_grad_norm: float = 1.0
    """Gradient clipping (global L2 norm)."""
    clip_low: float = 0.2
    """ε_low of the PPO-clip ratio range [1 − ε_low, 1 + ε_high]."""
    clip_high: float = 0.28
    """ε_high (clip-higher, as in the paper's 0.2/0.28)."""
    kl_coef: float = 0.001
    """Weight of the k3 KL to the frozen initial policy in the loss; 0 disables (no reference copy)."""
    process_reward: bool = True
    """RePro on (Â = A + α·Ã); false gives the plain baseline (α = 0)."""
    alpha: float | None = None
    """α of Â = A + α·Ã; ``None`` takes the task's ``reward.alpha``."""
    scorer_follows_policy: bool = True
    """Push the policy's weights into the learner's own scorer after each update (the paper); false
    keeps the task's scorer frozen (shared with other envs of the process)."""
    eval_batch_size: int = 16
    """Episodes run in parallel during ``evaluate``."""

    @classmethod
    def normalise_mapping(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """Run directories written before ``generator_options`` saved the server's settings as
        ``server`` (with every backend): read them as ``generator_options`` for ``vllm-server``, drop
        them for the backends that ignored them."""
        data = dict(data)
        if "server" in data:
            if "generator_options" in data:
                raise ConfigError("field 'server' is the old name of 'generator_options'; give only one of them")
            server = data.pop("server")
            if data.get("backend", "hf") == "vllm-server":
                data["generator_options"] = server
        return data

    def __post_init__(self) -> None:
        policy = PolicyConfig(model=self.model, backend=self.backend, device=self.device, dtype=self.dtype,
                              temperature=self.temperature, options=self.generator_options)
        object.__setattr__(self, "generator_options", policy.options)  # resolved: saved in full, resumable
        check_device(self.device)
        check(_number(self.lr) and self.lr > 0, "lr", self.lr, "a number > 0")
        check(_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", self.weight_decay,
              "a number >= 0")
        for name in ("epochs", "minibatches", "micro_batch_size", "eval_batch_size"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, value,
                  "an int >= 1")
        check(_number(self.max_grad_norm) and self.max_grad_norm > 0, "max_grad_norm", self.max_grad_norm,
              "a number > 0")
        for name in ("clip_low", "clip_high"):
            value = getattr(self, name)
            check(_number(value) and 0 < value < 1, name, value, "a number in (0, 1)")
        check(_number(self.kl_coef) and self.kl_coef >= 0, "kl_coef", self.kl_coef, "a number >= 0")
        check(isinstance(self.process_reward, bool), "process_reward", self.process_reward, "a bool")
        check(self.alpha is None or (_number(self.alpha) and self.alpha >= 0), "alpha", self.alpha,
              "a number >= 0 or null (the task's)")
        check(isinstance(self.scorer_follows_policy, bool), "scorer_follows_policy",
              self.scorer_follows_policy, "a bool")


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x)


class LMLearner:
    """Base of :class:`repro_env.agents.grpo.GRPO` and :class:`repro_env.agents.ppo.PPO` (module docstring)."""

    config_class: type[LearnerConfig] = LearnerConfig

    def __init__(self, config: LearnerConfig, task: Any, *, seed: int, num_envs: int) -> None:
        from repro_env.scoring import make_scorer
        from repro_env.tasks import resolve_task
        from repro_env.vector import ReasoningVectorEnv

        check_device(config.device, "learner.device", present=True)  # before any model is loaded
        try:  # a missing policy model is named before any check that compares it with the scorer's
            resolve_model(config.model)
        except ConfigError as e:
            raise ConfigError(str(e).replace("field 'model'", "field 'learner.model'", 1)) from e
        self.config, self.seed = config, seed
        self.spec_task = resolve_task(task)
        # top-k needs whole trajectories: the envs score every boundary, rollouts() re-selects
        self.topk = self.spec_task.reward.selection == "topk_entropy"
        if self.topk:
            self.spec_task = dataclasses.replace(
                self.spec_task, reward=dataclasses.replace(self.spec_task.reward, selection="all"))
            self.topk_reward = resolve_task(task).reward
        self.rng = np.random.default_rng(seed)
        self.updates = 0
        scorer = None
        if config.scorer_follows_policy:
            if _model_path(self.spec_task.scorer.model) != _model_path(config.model):
                raise ConfigError(
                    f"field 'scorer_follows_policy' = true needs the task's scorer model "
                    f"({self.spec_task.scorer.model!r}) to be the policy model ({config.model!r}); "
                    "set scorer_follows_policy: false to score with a frozen reference")
            scorer = make_scorer(self.spec_task.scorer)  # our own: pushing weights must not touch other envs
        self.envs = ReasoningVectorEnv(self.spec_task, num_envs=num_envs, scorer=scorer,
                                       autoreset_mode=AutoresetMode.DISABLED)
        self.scorer = self.envs.scorer
        limits = self.spec_task.limits
        self.policy = LMPolicy(PolicyConfig(
            model=config.model, backend=config.backend, device=config.device, dtype=config.dtype,
            temperature=config.temperature, options=config.generator_options,
            max_segment_tokens=limits.max_segment_tokens,
            delimiter=self.spec_task.delimiter, max_segment_chars=limits.max_segment_chars), seed=seed)
        self.alpha = (self.spec_task.reward.alpha if config.alpha is None else config.alpha) \
            if config.process_reward else 0.0
        self.reference = None
        if config.kl_coef > 0:
            self.reference = copy.deepcopy(self.policy.model).eval().requires_grad_(False)
        self._eval_envs: dict[int, Any] = {}
        self.optimizer: torch.optim.Optimizer | None = None

    def rollouts(self, indices: list[int]) -> list[Episode]:
        """One training episode per sub-env on the given train problems (top-k re-selected if asked)."""
        episodes = collect_episodes(self.envs, self.policy, indices=indices, split="train")
        if self.topk:
            for episode in episodes:
                rescore_topk(episode, self.topk_reward)
        return episodes

    def make_optimizer(self, groups: list[dict[str, Any]]) -> None:
        self.optimizer = torch.optim.AdamW(groups, lr=self.config.lr, weight_decay=self.config.weight_decay)

    @property
    def train_size(self) -> int:
        return self.envs.envs[0].source.size("train")

    @property
    def pad_id(self) -> int:
        pad = self.policy.tokenizer.pad_token_id
        return 0 if pad is None else int(pad)

    # -- optimisation ---------------------------------------------------------------------------

    @torch.no_grad()
    def add_reference_log_probs(self, batch: TokenBatch) -> None:
        """``old_log_probs`` (and ``ref_log_probs`` with a KL term) of the batch, without gradient."""
        old, ref = torch.zeros_like(batch.response_mask, dtype=torch.float32), None
        if self.reference is not None:
            ref = torch.zeros_like(old)
        for rows in self._micro_rows(range(len(batch))):
            micro = batch.select(rows)
            L1 = micro.response_mask.shape[1]
            log_probs, _, hidden = self.policy.forward(micro.input_ids, micro.attention_mask)
            old[rows, :L1] = log_probs.float()
            self.on_old_forward(rows, micro, hidden)
            if ref is not None:
                ref_lp, _, _ = self.policy.forward(micro.input_ids, micro.attention_mask,
                                                   model=self.reference)
                ref[rows, :L1] = ref_lp.float()
        batch.values["old_log_probs"] = old
        if ref is not None:
            batch.values["ref_log_probs"] = ref

    def on_old_forward(self, rows: list[int], micro: TokenBatch, hidden: torch.Tensor) -> None:
        """Hook for PPO: the value head reads the old forward's hidden states."""

    def _micro_rows(self, rows) -> Iterator[list[int]]:
        rows = list(rows)
        size = self.config.micro_batch_size
        for start in range(0, len(rows), size):
            yield rows[start:start + size]

    def optimise(self, batch: TokenBatch, loss_fn: Callable[[TokenBatch, int], tuple[torch.Tensor, dict]]
                 ) -> dict[str, float]:
        """``epochs`` × ``minibatches`` optimiser steps, each accumulated over micro-batches.

        ``loss_fn(micro, num_tokens)`` returns the micro-batch's share of the minibatch's token-mean
        loss. A non-finite loss or gradient norm raises ``TrainingError`` before the step.
        """
        cfg = self.config
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        totals: dict[str, list[float]] = {}
        order_rng = np.random.default_rng([self.seed, self.updates])
        for _ in range(cfg.epochs):
            order = order_rng.permutation(len(batch))
            for minibatch in np.array_split(order, min(cfg.minibatches, len(batch))):
                num_tokens = max(1, int(batch.response_mask[torch.as_tensor(minibatch)].sum()))
                self.optimizer.zero_grad(set_to_none=True)
                for rows in self._micro_rows(minibatch.tolist()):
                    loss, stats = loss_fn(batch.select(rows), num_tokens)
                    check_finite(loss, "the loss", self.updates + 1)
                    loss.backward()
                    for key, value in stats.items():
                        totals.setdefault(key, []).append(value)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if not torch.isfinite(grad_norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    check_finite(grad_norm, "the gradient norm", self.updates + 1)
                totals.setdefault("grad_norm", []).append(float(grad_norm))
                self.optimizer.step()
        return {key: float(np.mean(values)) for key, values in totals.items()}

    def finish_update(self) -> None:
        """After the optimiser steps: push the weights, count the update."""
        self.push_weights()
        self.updates += 1

    def push_weights(self) -> None:
        """Sync the generator, and the scorer if it follows the policy, to the training weights."""
        self.policy.sync_generator()
        if self.config.scorer_follows_policy:
            self.scorer.reload_weights(self.policy.model)

    # -- evaluation -----------------------------------------------------------------------------

    def evaluate(self, *, num_problems: int, greedy: bool = True, samples: int = 1,
                 sample_seed: int | None = None) -> dict[str, float]:
        """Held-out metrics (:func:`summarize` of :meth:`evaluate_episodes`, same arguments), plus
        ``eval_seconds``."""
        t0 = time.perf_counter()
        episodes = self.evaluate_episodes(num_problems=num_problems, greedy=greedy, samples=samples,
                                          sample_seed=sample_seed)
        return {**summarize(episodes), "eval_seconds": time.perf_counter() - t0}

    def evaluate_episodes(self, *, num_problems: int, greedy: bool = True, samples: int = 1,
                          sample_seed: int | None = None) -> list[Episode]:
        """Held-out episodes over test problems 0..num_problems−1 (``samples`` episodes each, in
        problem order: episode ``i`` is problem ``i // samples``).

        With ``samples`` > 1 the episodes are sampled at the policy's temperature (their mean
        accuracy is avg@samples); with one, decoding is ``greedy``.
        Sampling draws from a generator seeded by ``sample_seed`` (default: (seed, updates)), never
        from the training one, so evaluating (or not) leaves the training run unchanged; pass the
        same ``sample_seed`` before and after training for a paired comparison.
        """
        from repro_env.vector import ReasoningVectorEnv

        if not (isinstance(num_problems, int) and num_problems >= 1
                and isinstance(samples, int) and samples >= 1):
            raise ConfigError(f"evaluate needs num_problems >= 1 and samples >= 1, got {num_problems!r} "
                              f"and {samples!r}")
        size = self.envs.envs[0].source.size("test")
        indices = np.repeat(np.arange(min(num_problems, size)), samples).tolist()
        episodes = []
        training_rng = self.policy.generator_rng
        if sample_seed is None:
            sample_seed = int(np.random.SeedSequence([self.seed, self.updates]).generate_state(1)[0])
        self.policy.generator_rng = torch.Generator(device="cpu").manual_seed(sample_seed)
        try:
            for start in range(0, len(indices), self.config.eval_batch_size):
                chunk = indices[start:start + self.config.eval_batch_size]
                if len(chunk) not in self._eval_envs:
                    self._eval_envs[len(chunk)] = ReasoningVectorEnv(
                        self.spec_task, num_envs=len(chunk), scorer=self.scorer, split="test",
                        autoreset_mode=AutoresetMode.DISABLED)
                episodes += collect_episodes(self._eval_envs[len(chunk)], self.policy, indices=chunk,
                                             split="test", greedy=greedy and samples == 1)
        finally:
            self.policy.generator_rng = training_rng
        return episodes

    # -- checkpoints ----------------------------------------------------------------------------

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors saved next to the policy weights (PPO: the value head)."""
        return {}

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`extra_tensors` saved."""

    def save(self, directory: Path) -> None:
        """Weights (safetensors), optimiser state, update count, RNG states and config (JSON)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"policy.{k}": v.detach().cpu().contiguous().clone()
                   for k, v in self.policy.model.state_dict().items()}
        tensors |= {k: v.detach().cpu().contiguous().clone() for k, v in self.extra_tensors().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE))
        torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_FILE)
        state = {"learner": type(self).__name__, "updates": self.updates,
                 "numpy_rng": self.rng.bit_generator.state,
                 "torch_rng": self.policy.generator_rng.get_state().tolist(),
                 "config": to_dict(self.config)}
        (directory / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")

    def load(self, directory: Path) -> None:
        """Restore :meth:`save`'s state; ``CheckpointError`` if a file is missing, corrupt or does not fit."""
        from safetensors.torch import load_file

        directory = Path(directory)
        for name in (WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE):
            if not (directory / name).is_file():
                raise CheckpointError(f"{directory}: missing {name}; expected a checkpoint written by "
                                      f"{type(self).__name__}.save")
        try:
            tensors = load_file(str(directory / WEIGHTS_FILE))
            state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
            optimizer_state = torch.load(directory / OPTIMIZER_FILE, weights_only=True)
            policy_state = {k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")}
            self.policy.model.load_state_dict(policy_state, strict=True)
            self.load_extra_tensors({k: v for k, v in tensors.items() if not k.startswith("policy.")})
            self.optimizer.load_state_dict(optimizer_state)
            self.rng.bit_generator.state = state["numpy_rng"]
            self.policy.generator_rng.set_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
            updates = int(state["updates"])
        except CheckpointError:
            raise
        except Exception as e:  # any parse/shape error means the checkpoint does not fit this learner
            raise CheckpointError(f"{directory}: cannot restore {type(self).__name__} from it: "
                                  f"{type(e).__name__}: {e}") from e
        self.updates = updates
        self.push_weights()


def _model_path(model: str) -> str:
    try:
        return str(model_dir(model).resolve())
    except Exception:  # unresolvable names compare as given; loading reports them properly
        return model
