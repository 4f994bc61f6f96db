"""RePro inside TRL: a ``GRPOTrainer`` whose advantages carry the process reward per token.

Needs the ``trl`` extra (``pip install 'repro-env[trl]'``). TRL's reward functions return one
number per completion, so RePro's per-segment credit cannot pass through them; TRL 1.16 lets a
subclass hand ``_compute_loss`` a (B, T) advantage instead of (B,). After TRL has generated the
completions and computed their rewards, :class:`ReProGRPOTrainer`

1. splits each completion as ``repro-env score`` and the env do (``TaskSpec.split_response``,
   REPRO_SPEC §1, §4): with a think block (``<think>`` in the completion or at the end of the
   prompt, as R1 and Qwen3 chat templates write it), the reasoning is the block's inside, J is
   scored inside the open block, and ``</think>`` and the final answer after it are not scored;
   without one, the reasoning ends before the segment that states the final answer. The tokens
   after the reasoning get the outcome advantage only;
2. computes J at every reasoning segment end with one batch-scoring call (the policy's current
   weights by default, as in the paper; or any scorer: frozen, vLLM, remote), and turns it into
   segment rewards r̃ with ``reward.reward_points`` (``selection: all`` or ``topk_entropy``, §3–§4);
3. gathers what the group statistics need from every process (a group may straddle ranks) and sets
   each token's advantage to Â = A + α·Ã (§5), A the group-normalised outcome advantage of TRL's
   summed reward (sample std, as TRL computes it, ε = 1e-6 as the spec), Ã the return-to-go of
   the group-normalised r̃, 0 after the reasoning.

It logs ``repro/process_return`` (S_T), ``repro/J_gain`` (J_T − J_0), ``repro/tokens_per_response``
and ``repro/backtracks_per_response`` through TRL's own metrics.

    trainer = ReProGRPOTrainer(model=model, args=GRPOConfig(...), processing_class=tokenizer,
                               reward_funcs=outcome_reward_func("RePro-Math-v0"),
                               train_dataset=task_dataset("RePro-Math-v0", size=1000), task="RePro-Math-v0")

:func:`length_penalty_reward_func` is a length-penalty baseline for TRL users: Kimi k1.5's length
reward, to add to :func:`outcome_reward_func` as a second reward function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from trl import GRPOTrainer

from repro_env import advantages as adv
from repro_env import reward as rp
from repro_env.config import describe
from repro_env.errors import ConfigError
from repro_env.length_penalty import length_rewards
from repro_env.problems import Problem
from repro_env.reward import RewardConfig
from repro_env.scoring.base import Scorer, ScorerConfig, ScoreRequest, make_scorer
from repro_env.segments import SplitResponse
from repro_env.tasks import TaskSpec, make_source, resolve_task

SEQUENCE_LOSSES = ("luspo", "vespo")
"""TRL loss types whose loss assumes one advantage per sequence."""


def task_dataset(task: str | TaskSpec, split: str = "train", size: int | None = None):
    """A ``datasets.Dataset`` of a task's problems with the columns TRL expects: ``prompt`` (the
    rendered prompt text), ``answer`` (the ground truth) and ``problem_id``."""
    from datasets import Dataset

    spec = resolve_task(task)
    source = make_source(spec)
    n = source.size(split) if size is None else min(size, source.size(split))
    problems = [source.get(split, i) for i in range(n)]
    return Dataset.from_dict({"prompt": [spec.render_prompt(p) for p in problems],
                              "answer": [p.answer for p in problems], "problem_id": [p.id for p in problems]})


def _answer_task(task: str | TaskSpec, func: str) -> TaskSpec:
    """The task of a reward function that verifies against the dataset's ``answer`` column alone."""
    spec = resolve_task(task)
    if spec.verifier.kind == "reasoning_gym":
        raise ConfigError(f"{spec.id}: verifier.kind 'reasoning_gym' needs the dataset entry of each problem; "
                          f"{func} supports 'math' and 'exact'")
    return spec


def outcome_reward_func(task: str | TaskSpec) -> Callable[..., list[float]]:
    """TRL reward function: R = 1 when a completion's final answer verifies against ``answer`` (§5)."""
    spec = _answer_task(task, "outcome_reward_func")

    def repro_outcome(completions: Sequence[Any], answer: Sequence[str], **_: Any) -> list[float]:
        return [spec.outcome_reward(_text(c), Problem(id="", question="", answer=str(a)))
                for c, a in zip(completions, answer, strict=True)]

    return repro_outcome


def length_penalty_reward_func(task: str | TaskSpec, *, weight: float, num_generations: int
                               ) -> Callable[..., list[float]]:
    """TRL reward function: ``weight`` · Kimi k1.5's length reward of each completion
    (:mod:`repro_env.length_penalty`, arXiv 2501.12599 §2.3.3); a baseline, not part of RePro.

    A group is TRL's ``num_generations`` consecutive completions of the global batch (pass the
    ``GRPOConfig``'s; an evaluation with another ``num_generations_eval`` needs its own function).
    A completion's length is its tokens (TRL's ``completion_ids``), its correctness the task's
    verifier against the ``answer`` column, as in :func:`outcome_reward_func`. A group may straddle
    processes, so the lengths and verdicts are gathered from every process before min and max.

    TRL adds its reward functions, times ``GRPOConfig.reward_weights`` (default 1 each), before the
    group normalisation, so ``reward_funcs=[outcome_reward_func(task), length_penalty_reward_func(task,
    weight=0.5, num_generations=8)]`` trains on R' = R + 0.5·len_reward, like the GRPO learner's
    ``length_penalty: 0.5``. (``weight=1`` with ``reward_weights=[1.0, 0.5]`` is the same reward.)
    """
    spec = _answer_task(task, "length_penalty_reward_func")
    if not (isinstance(weight, int | float) and not isinstance(weight, bool) and 0 <= weight < np.inf):
        raise ConfigError(f"length_penalty_reward_func: 'weight' must be a finite number >= 0, got {describe(weight)}")
    if not (isinstance(num_generations, int) and not isinstance(num_generations, bool) and num_generations >= 1):
        raise ConfigError(f"length_penalty_reward_func: 'num_generations' must be an int >= 1 (the GRPOConfig's), "
                          f"got {describe(num_generations)}")

    def repro_length_penalty(completions: Sequence[Any], answer: Sequence[str], completion_ids: Sequence[Sequence[int]],
                             **_: Any) -> list[float]:
        local = [(len(ids), spec.verify(_text(c), Problem(id="", question="", answer=str(a))))
                 for c, a, ids in zip(completions, answer, completion_ids, strict=True)]
        rows, offset = _gather_rows(local)
        if len(rows) % num_generations:
            raise ConfigError(f"length_penalty_reward_func: a batch of {len(rows)} completions is not whole groups "
                              f"of num_generations={num_generations}; pass the GRPOConfig's num_generations")
        lengths, correct = zip(*rows, strict=True) if rows else ((), ())
        groups = np.arange(len(rows)) // num_generations  # (N_all,)
        rewards = weight * length_rewards(lengths, list(correct), groups)  # (N_all,)
        return rewards[offset:offset + len(local)].tolist()

    return repro_length_penalty


def _gather_rows(local: list[Any]) -> tuple[list[Any], int]:
    """Every process's rows in TRL's global order, and where this process's rows start."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    if state.num_processes == 1:
        return local, 0
    return gather_object(local), state.process_index * len(local)  # TRL: equal rows per process


def _text(completion: Any) -> str:
    """A completion as text (TRL gives strings, or message lists for conversational data)."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content", "") for message in completion)


@dataclass
class _Scored:
    """One completion's RePro quantities, gathered across processes for the group statistics."""

    segment_rewards: np.ndarray
    """(R,) r̃ spread over the reasoning segments, 0 where unscored."""
    scored: np.ndarray
    """(R,) bool: the scored segments."""
    process_return: float
    """S_T (the sum of r̃)."""
    J_gain: float
    """J_T − J_0."""
    backtracks: int
    tokens: int
    """Completion tokens."""


def segment_token_counts(tokenizer: Any, completion_ids: Sequence[int], segments: Sequence[str], *,
                         start: int = 0) -> list[int]:
    """Tokens of each segment of the decoded completion, the segments being its consecutive pieces
    from character ``start`` on (a token belongs to the segment in which it starts, §1; the tokens
    before ``start``, such as ``<think>``, count with the first segment); the rest of
    ``completion_ids`` (``</think>``, the final answer, EOS) is after the reasoning.

    Token k starts at character ``len(decode(ids[:k]))``; the boundaries are found by binary search
    on that (monotone) function, ``T·log n`` decodes per completion.
    """
    ends = (start + np.cumsum([len(s) for s in segments])).tolist()
    ids = list(completion_ids)

    def start(k: int) -> int:
        return len(tokenizer.decode(ids[:k], skip_special_tokens=True, clean_up_tokenization_spaces=False))

    cuts, lo = [], 0
    for end in ends:
        hi = len(ids)
        while lo < hi:  # the first token that starts at or after ``end``
            mid = (lo + hi) // 2
            if start(mid) >= end:
                hi = mid
            else:
                lo = mid + 1
        cuts.append(lo)
    return np.diff([0, *cuts]).astype(int).tolist()


class ReProGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` with RePro step-wise advantages (module docstring).

    Arguments besides ``GRPOTrainer``'s: ``task`` (id, YAML or ``TaskSpec``: delimiter, answer
    template, backtrack patterns, reward defaults), ``reward`` (a ``RewardConfig`` replacing the
    task's: α, w, selection, k, β), ``scorer`` (``None``: the policy being trained, its current
    weights; a ``ScorerConfig`` or a ``Scorer``: that model, e.g. a frozen reference or a vLLM
    scorer). With ZeRO-3 or FSDP the policy's weights are sharded: pass a scorer.
    """

    def __init__(self, *args: Any, task: str | TaskSpec = "RePro-Math-v0", reward: RewardConfig | None = None,
                 scorer: Scorer | ScorerConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.repro_task = resolve_task(task)
        self.repro_reward = reward or self.repro_task.reward
        check_trl_args(self.args)
        self._repro_scorer = make_scorer(scorer) if isinstance(scorer, ScorerConfig) else scorer

    def repro_scorer(self) -> Scorer:
        """The scorer of J: the one given, or the policy as it is now (a view, no copy)."""
        if self._repro_scorer is not None:
            return self._repro_scorer
        from repro_env.scoring.hf import HFScorer

        model = self.accelerator.unwrap_model(self.model)
        config = ScorerConfig(model="<policy>", device=str(next(model.parameters()).device))
        return HFScorer.from_model(model, self.processing_class, config)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._repro_rewards_per_func = rewards_per_func  # (N_all, F): gathered over every process
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        weights = self.reward_weights.to(self._repro_rewards_per_func.device)
        R = (self._repro_rewards_per_func * weights[None]).nansum(dim=1)  # (N_all,)
        R[torch.isnan(self._repro_rewards_per_func).all(dim=1)] = torch.nan
        advantages, metrics = self.repro_advantages(
            [self._prompt_text(x["prompt"]) for x in inputs], [str(x["answer"]) for x in inputs],
            output["completion_ids"], output["completion_mask"], R.cpu().numpy(), group)
        output["advantages"] = advantages.to(output["completion_ids"].device)
        for name, value in metrics.items():
            self._metrics[mode][f"repro/{name}"].append(value)
        return output

    def _prompt_text(self, prompt: Any) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.processing_class.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    @torch.no_grad()
    def repro_advantages(self, prompts: Sequence[str], answers: Sequence[str], completion_ids: torch.Tensor,
                         completion_mask: torch.Tensor, R: np.ndarray, group: int
                         ) -> tuple[torch.Tensor, dict[str, float]]:
        """(B, T) token advantages Â of this process's completions, and the batch's RePro metrics.

        ``R``: (N_all,) summed rewards of every process's completions in TRL's global order; this
        process holds rows ``rank·B .. rank·B + B − 1``. Two cases have defined values:

        - NaN R (every reward function returned None: TRL's unscorable completion): Â = 0 on every
          token, and the completion is out of its group's statistics (A and the r̃ pool);
        - a completion with no reasoning segment (empty: only EOS; or the final answer at once): no
          J is asked, every token gets A, and it adds nothing to the r̃ pool.

        The metrics are means over every completion of the batch, these included (S_T = 0 and
        J_T − J_0 = 0 without reasoning).
        """
        from accelerate.utils import gather_object

        spec, tokenizer = self.repro_task, self.processing_class
        lengths = completion_mask.sum(dim=1).tolist()  # (B,)
        # decoded as segment_token_counts decodes, so that character positions agree
        texts = [tokenizer.decode(ids[:n], skip_special_tokens=True, clean_up_tokenization_spaces=False)
                 for ids, n in zip(completion_ids.tolist(), lengths, strict=True)]
        splits = [spec.split_response(prompt, text) for prompt, text in zip(prompts, texts, strict=True)]
        local = self._score(answers, splits, lengths)
        scored: list[_Scored] = gather_object(local)  # every process's completions, global order
        rank, B = self.accelerator.process_index, len(prompts)
        A_all = np.zeros(len(scored))
        process_all: list[np.ndarray] = [np.zeros(s.segment_rewards.size) for s in scored]
        for start in range(0, len(scored), group):
            rows = [i for i in range(start, start + group) if np.isfinite(R[i])]
            if not rows:
                continue
            A_all[rows] = adv.grpo_outcome_advantages(R[rows])
            process = adv.grpo_process_advantages([scored[i].segment_rewards for i in rows],
                                                 [scored[i].scored for i in rows])
            for i, p in zip(rows, process, strict=True):
                process_all[i] = p
        alpha = self.repro_reward.alpha
        advantages = torch.zeros(completion_ids.shape, dtype=torch.float32)  # (B, T)
        for b in range(B):
            i = rank * B + b
            split = splits[b]
            counts = segment_token_counts(tokenizer, completion_ids[b, :lengths[b]].tolist(),
                                          [texts[b][x:y] for x, y in split.spans],
                                          start=split.spans[0][0] if split.spans else 0)
            tokens = adv.token_advantages(A_all[i] + alpha * process_all[i], counts, lengths[b] - sum(counts),
                                         outcome_advantage=A_all[i])  # (L_b,)
            advantages[b, :lengths[b]] = torch.from_numpy(tokens)
        metrics = {
            "process_return": float(np.mean([s.process_return for s in scored])),
            "J_gain": float(np.mean([s.J_gain for s in scored])),
            "tokens_per_response": float(np.mean([s.tokens for s in scored])),
            "backtracks_per_response": float(np.mean([s.backtracks for s in scored])),
        }
        return advantages, metrics

    def _score(self, answers: Sequence[str], splits: Sequence[SplitResponse], lengths: Sequence[int]
               ) -> list[_Scored]:
        """r̃ per reasoning segment of each local completion, from one batch-scoring call over the
        reasoning segments (§2–§4); the text after the reasoning is not scored."""
        spec = self.repro_task
        requests = [ScoreRequest(split.prefix, split.segments, spec.answer_template.format(answer=a))
                    for a, split in zip(answers, splits, strict=True) if split.segments]
        results = iter(self.repro_scorer().score(requests))
        out = []
        for split, tokens in zip(splits, lengths, strict=True):
            backtracks = sum(spec.is_backtrack(segment) for segment in split.segments + split.after)
            if not split.segments:  # an empty completion, or the answer at once: no reasoning to credit
                out.append(_Scored(np.zeros(0), np.zeros(0, dtype=bool), 0.0, 0.0, backtracks, tokens))
                continue
            result = next(results)  # J (1 + R,) at every reasoning segment end, entropies (R,)
            parts = rp.reward_points(self.repro_reward, result.J, result.entropies)
            out.append(_Scored(parts.segment_rewards, parts.scored, parts.process_return,
                               float(parts.J[-1] - parts.J[0]), backtracks, tokens))
        return out


def check_trl_args(args: Any) -> None:
    """``ConfigError`` for TRL settings that assume one advantage per sequence or another A."""
    problems = []
    if args.loss_type in SEQUENCE_LOSSES:
        problems.append(f"loss_type={args.loss_type!r} (a sequence-level loss; use 'dapo', 'grpo', 'bnpo', "
                        "'dr_grpo', 'cispo' or 'sapo')")
    if getattr(args, "importance_sampling_level", "token") != "token":
        problems.append(f"importance_sampling_level={args.importance_sampling_level!r} (use 'token')")
    if getattr(args, "off_policy_mask_threshold", None) is not None:
        problems.append(f"off_policy_mask_threshold={args.off_policy_mask_threshold!r} (the off-policy sequence "
                        "mask reads one advantage per sequence; use null)")
    if args.scale_rewards != "group":
        problems.append(f"scale_rewards={args.scale_rewards!r} (RePro normalises per group, REPRO_SPEC §5: use "
                        "'group')")
    if getattr(args, "multi_objective_aggregation", "sum_then_normalize") != "sum_then_normalize":
        problems.append(f"multi_objective_aggregation={args.multi_objective_aggregation!r} (use "
                        "'sum_then_normalize')")
    if problems:
        raise ConfigError("ReProGRPOTrainer cannot use GRPOConfig " + "; ".join(problems))
