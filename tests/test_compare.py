"""``repro-env compare``: the grid's layout, the tables by hand, top-k re-scoring, the learner registry,
and end-to-end smoke runs.

The end-to-end runs use configs/compare_smoke.yaml on the fixture model (1 seed, 2 updates), so they
check that files, table rows and finite numbers come out, not what the numbers are: the real grid
runs by hand (README "Results"). A third learner (tests/plugins/toy_learner.py) joins the grid with
one ``register_learner`` line.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from repro_env.agents.compare import (
    CompareConfig,
    ablation_jobs,
    load_compare_config,
    main,
    main_jobs,
    worker_learners,
)
from repro_env.agents.policy import Trace
from repro_env.agents.report import COLUMNS, aggregate, comparisons, results_table
from repro_env.agents.rollout import Episode, rescore_topk
from repro_env.agents.train import register_learner
from repro_env.config import from_mapping
from repro_env.errors import ConfigError
from repro_env.reward import RewardConfig

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "compare_smoke.yaml"
TINY = Path(__file__).resolve().parents[1] / "configs" / "compare_tiny.yaml"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a loaded 2-core box: 2 OpenMP threads spin-wait and run ~100x slower than 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- top-k re-scoring of finished rollouts (REPRO_SPEC §4) -----------------------------------------


def scored_episode(J: list[float], entropies: list[float], J_baseline: float) -> Episode:
    T = len(J)
    trace = Trace(ids=[1] * T, segment=list(range(T)), log_probs=[0.0] * T, text="", num_segments=T)
    return Episode(trace=trace, segments=["s"] * T, process_rewards=[0.5] * T, scored=[True] * T,
                   entropies=entropies, J=J, J_baseline=J_baseline)


def test_rescore_topk_keeps_the_highest_entropy_segments_and_the_last_by_hand():
    # steps 1-4 scored online, step 5 overflowed the context (no J); k = 1
    episode = scored_episode([-2.0, -1.5, -1.0, -0.5, math.nan], [math.nan, 2.0, 1.0, 0.1, 3.0], -3.0)
    rescore_topk(episode, RewardConfig(k=1, stability_weight=0.1, ema=0.01))
    # top-1 among steps 1..3 by entropy (step 1's NaN counts as lowest): step 2; the last J is step 4.
    # Points J = [-3, -1.5, -0.5]: Δ = 1.5/3 = 0.5 and 2.5/3; the EMA rises, so S_stab = 1 at both.
    S1 = 0.9 * (math.tanh(0.5 - 1) + 1) + 0.1 * 1.0
    S2 = 0.9 * (math.tanh(2.5 / 3 - 1) + 1) + 0.1 * 1.0
    np.testing.assert_allclose(episode.process_rewards, [0.0, S1, 0.0, S2 - S1, 0.0], rtol=1e-12)
    assert episode.scored == [False, True, False, True, False]


def test_rescore_topk_with_k_above_the_segments_scores_every_point_like_all():
    from repro_env.reward import process_rewards

    J = [-2.0, -2.5, -1.0]
    episode = scored_episode(J, [0.3, 0.2, 0.1], -3.0)
    rescore_topk(episode, RewardConfig(k=20))
    np.testing.assert_allclose(episode.process_rewards, process_rewards([-3.0, *J]), rtol=1e-12)
    assert episode.scored == [True, True, True]


def test_rescore_topk_leaves_an_episode_without_any_j_alone():
    episode = scored_episode([math.nan], [1.0], -3.0)
    rescore_topk(episode, RewardConfig(k=3))
    assert episode.process_rewards == [0.5] and episode.scored == [True]


# -- grid layout, aggregates and tables --------------------------------------------------------------


def test_main_grid_pairs_every_algorithm_with_and_without_repro_on_every_seed(tmp_path):
    config = CompareConfig(seeds=(0, 1), learners={"grpo": {"lr": 1e-3, "alpha": 0.2}}, model="/m")
    jobs = main_jobs(config, tmp_path)
    assert [j.name for j in jobs] == ["start", "grpo-seed0", "grpo-seed1", "grpo-repro-seed0",
                                      "grpo-repro-seed1", "ppo-seed0", "ppo-seed1", "ppo-repro-seed0",
                                      "ppo-repro-seed1"]
    grpo = jobs[3].train
    assert grpo["learner"] == {"lr": 1e-3, "alpha": 0.2, "model": "/m", "process_reward": True}
    assert grpo["task_overrides"]["scorer"]["model"] == "/m" and grpo["seed"] == 0
    assert grpo["out_dir"] == str(tmp_path / "runs" / "grpo-repro-seed0")
    assert jobs[1].train["learner"]["process_reward"] is False
    assert jobs[0].train is None and jobs[0].method == "starting model"
    assert [j.method for j in jobs[5:7]] == ["PPO", "PPO"] and jobs[3].method == "GRPO + RePro"
    assert jobs[5].train["learner"] == {"model": "/m", "process_reward": False}  # no section: defaults


def test_a_learner_named_by_its_path_gets_a_directory_safe_run_name(tmp_path):
    config = CompareConfig(seeds=(0,), algorithms=("tests.plugins.toy_learner:ToyGRPO",))
    jobs = main_jobs(config, tmp_path)
    assert [(j.name, j.method) for j in jobs[1:]] == [("tests.plugins.toy_learner-ToyGRPO-seed0", "Toy"),
                                                      ("tests.plugins.toy_learner-ToyGRPO-repro-seed0", "Toy + RePro")]


def test_ablation_changes_one_factor_at_a_time(tmp_path):
    config = CompareConfig(seeds=(0,), task_overrides={"reward": {"ema": 0.02}})
    jobs = ablation_jobs(config, tmp_path, defaults=(0.1, 0.1))
    assert [j.variant for j in jobs] == ["default", "w=0", "w=0.5", "k=3", "alpha=0.05", "alpha=0.2"]
    k3 = jobs[3].train
    assert k3["task_overrides"]["reward"] == {"ema": 0.02, "selection": "topk_entropy", "k": 3}
    assert jobs[1].train["task_overrides"]["reward"] == {"ema": 0.02, "stability_weight": 0.0}
    assert jobs[5].train["learner"]["alpha"] == 0.2 and jobs[5].train["learner"]["process_reward"] is True
    assert config.task_overrides == {"reward": {"ema": 0.02}}  # the base overrides are not mutated


def fake_rows(method: str, values: list[dict[str, float]]) -> list[dict]:
    return [{"method": method, "metrics": {k: v.get(k, 1.0) for k, _ in COLUMNS}} for v in values]


def test_aggregate_and_comparisons_by_hand():
    rows = fake_rows("GRPO", [{"greedy_accuracy": 0.5, "sampled_tokens_per_response": 100.0,
                               "sampled_backtracks_per_response": 2.0},
                              {"greedy_accuracy": 0.7, "sampled_tokens_per_response": 120.0,
                               "sampled_backtracks_per_response": 2.0}])
    rows += fake_rows("GRPO + RePro", [{"greedy_accuracy": 0.5, "sampled_tokens_per_response": 88.0,
                                        "sampled_backtracks_per_response": 1.0},
                                       {"greedy_accuracy": 0.5, "sampled_tokens_per_response": 88.0,
                                        "sampled_backtracks_per_response": 1.6}])
    stats = aggregate(rows)
    assert stats["GRPO"]["greedy_accuracy"] == pytest.approx((0.6, math.sqrt(0.02)))  # ddof = 1
    (grpo,) = comparisons(stats)
    assert grpo["greedy_accuracy"]["change"] == pytest.approx(-0.1)
    assert grpo["greedy_accuracy"]["met"]  # −0.1 is within one std (0.1414)
    assert grpo["tokens"]["change"] == pytest.approx(88 / 110 - 1)  # −20 %
    assert grpo["tokens"]["met"]
    assert grpo["backtracks"]["change"] == pytest.approx(1.3 / 2.0 - 1)  # −35 %
    assert grpo["backtracks"]["met"]
    table = results_table({k: 0.25 for k, _ in COLUMNS}, stats, seeds=2, samples=4)
    assert "| GRPO | 0.600 ± 0.141 |" in table and "| starting model | 0.250 |" in table
    assert "avg@4 (T=1)" in table


def test_a_zero_baseline_makes_the_relative_change_undefined_not_a_pass():
    rows = fake_rows("PPO", [{"sampled_backtracks_per_response": 0.0}])
    rows += fake_rows("PPO + RePro", [{"sampled_backtracks_per_response": 0.0}])
    (ppo,) = comparisons(aggregate(rows))
    assert math.isnan(ppo["backtracks"]["change"]) and not ppo["backtracks"]["met"]


# -- config errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "message"), [
    ({"seeds": []}, r"field 'seeds' must be a non-empty list of distinct ints, got \(\)"),
    ({"seeds": [1, 1]}, r"field 'seeds' must be a non-empty list of distinct ints"),
    ({"updates": 0}, r"field 'updates' must be an int >= 1, got 0"),
    ({"eval_problems": 0}, r"field 'eval_problems' must be an int >= 1"),
    ({"eval_samples": 1}, r"field 'eval_samples' must be an int >= 2 \(avg@n at T=1\), got 1"),
    ({"algorithms": []}, r"field 'algorithms' must be a non-empty list of distinct learner names, got \(\)"),
    ({"algorithms": ["grpo", "grpo"]}, r"field 'algorithms' must be a non-empty list of distinct learner names"),
    ({"algorithms": ["grpo", "grpp"]}, r"field 'algorithms\[1\]' must be one of .*'grpo', .*'ppo'.* or "
                                       r"'package.module:Name', got 'grpp' \(str\). Did you mean 'grpo'\?"),
    ({"learners": {"ppp": {}}}, r"field 'learners.ppp' must be one of .*'ppo'.* Did you mean 'ppo'\?"),
    ({"learners": {"ppo": 3}}, r"field 'learners.ppo' must be a mapping of ppo's config fields, got 3 \(int\)"),
    ({"grpo": [1]}, r"field 'learners.grpo' must be a mapping of grpo's config fields, got \[1\] \(list\)"),
    ({"grpo": {"lr": 1}, "learners": {"grpo": {"lr": 2}}}, r"field 'grpo.lr' is also set as 'learners.grpo.lr'; "
                                                           r"'grpo:' is the old spelling of 'learners: \{grpo: "
                                                           r"...\}', keep one"),
    ({"ablation": {"algorithm": "grp"}}, r"field 'ablation.algorithm' must be one of .* Did you mean 'grpo'\?"),
    ({"workers": 0}, r"field 'workers' must be an int >= 1"),
    ({"ablation": {"k": ["all", 0]}}, r"field 'ablation.k' must be a list of 'all' or ints >= 1"),
    ({"ablation": {"stability_weight": [1.5]}}, r"field 'ablation.stability_weight' must be a list of numbers "
                                                r"in \[0, 1\]"),
    ({"ablation": {"alpha": [-0.1]}}, r"field 'ablation.alpha' must be a list of numbers >= 0"),
    ({"sedes": [0]}, r"unknown key 'sedes'. Did you mean 'seeds'\?"),
])
def test_config_errors_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(CompareConfig, data, source="c.yaml")


def test_load_checks_the_learner_sections_and_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope.yaml' does not exist"):
        load_compare_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match=r"list.yaml: top level must be a mapping of CompareConfig fields"):
        load_compare_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match=r"unknown key 'learner.group_sise'. Did you mean 'group_size'\?"):
        load_compare_config(SMOKE, ["grpo.group_sise=4"])


def test_the_shipped_configs_load():
    assert load_compare_config(SMOKE).seeds == (0,)
    tiny = load_compare_config(TINY)
    assert len(tiny.seeds) == 3 and tiny.algorithms == ("grpo", "ppo")
    # their top-level grpo: / ppo: sections are the old spelling of learners:
    assert tiny.learners["grpo"]["group_size"] == 4 and tiny.learners["ppo"]["episodes_per_update"] == 16


def test_the_old_learner_sections_merge_with_learners():
    config = from_mapping(CompareConfig, {"grpo": {"lr": 1.0}, "ppo": {"lr": 2.0},
                                          "learners": {"grpo": {"group_size": 2}}})
    assert config.learners == {"grpo": {"group_size": 2, "lr": 1.0}, "ppo": {"lr": 2.0}}
    # --set takes either spelling on an old config
    assert load_compare_config(SMOKE, ["learners.grpo.alpha=0.3"]).learners["grpo"]["alpha"] == 0.3
    assert load_compare_config(SMOKE, ["grpo.alpha=0.3"]).learners["grpo"]["alpha"] == 0.3


def test_every_learner_must_collect_the_same_rollouts_per_update():
    with pytest.raises(ConfigError, match=r"compare_smoke.yaml: field 'learners': every learner must collect the "
                                          r"same rollouts per update \(the compared budget; each config's "
                                          r"rollouts_per_update\), got 4 for 'grpo', 8 for 'ppo'"):
        load_compare_config(SMOKE, ["ppo.episodes_per_update=8"])
    # GRPO's budget is P·G: 4 × 2 matches 8 episodes
    sets = ["ppo.episodes_per_update=8", "grpo.prompts_per_update=4"]
    config = load_compare_config(SMOKE, sets)
    assert config.learners["ppo"]["episodes_per_update"] == 8


@dataclass(frozen=True)
class NoBudgetConfig:
    model: str = "bundled"
    """Starting model."""
    process_reward: bool = True
    """RePro on."""


def no_budget_factory(config, run):
    raise AssertionError("never built: the config check fails first")


def test_a_learner_without_a_budget_or_with_a_taken_label_is_refused():
    register_learner("no-budget", NoBudgetConfig, no_budget_factory)
    with pytest.raises(ConfigError, match=r"compare_smoke.yaml: learner 'no-budget': NoBudgetConfig."
                                          r"rollouts_per_update must be an int >= 1 .* got None"):
        load_compare_config(SMOKE, ["algorithms=[no-budget]"])
    with pytest.raises(ConfigError, match=r"field 'algorithms': 'grpo' and 'repro_env.agents.grpo:GRPO' share "
                                          r"the label 'GRPO', so their table rows would merge"):
        load_compare_config(SMOKE, ["algorithms=[grpo, 'repro_env.agents.grpo:GRPO']"])
    with pytest.raises(ConfigError, match=r"compare_smoke.yaml: field 'algorithms\[0\]': learner "
                                          r"'repro_env.agents.grpo:Nope': cannot import 'Nope' from "
                                          r"'repro_env.agents.grpo'"):
        load_compare_config(SMOKE, ["algorithms=['repro_env.agents.grpo:Nope']"])


# -- the learners' side: top-k selection and an evaluation that leaves training alone --------------------


@pytest.fixture(scope="module")
def fixture_task(tiny_llama_dir):
    from repro_env.tasks import resolve_task

    return resolve_task("RePro-Math-v0", {"scorer": {"model": str(tiny_llama_dir)},
                                          "limits": {"max_steps": 6, "max_segment_tokens": 6},
                                          "reward": {"selection": "topk_entropy", "k": 2}})


def test_grpo_with_topk_selection_scores_at_most_k_plus_one_points(fixture_task, tiny_llama_dir):
    from repro_env.agents.grpo import GRPO, GRPOConfig

    learner = GRPO(GRPOConfig(model=str(tiny_llama_dir), prompts_per_update=2, group_size=2, kl_coef=0.0),
                   fixture_task, seed=0)
    assert learner.spec_task.reward.selection == "all"  # the envs score every boundary online
    batch = learner.collect()
    assert any(e.num_steps > 3 for e in batch.episodes)  # some episodes have unscored segments
    for e in batch.episodes:
        assert sum(e.scored) == min(e.num_steps, 3) and e.scored[-1] == np.isfinite(e.J[-1])
    metrics = learner.update(batch)
    assert all(math.isfinite(v) for v in metrics.values())


def test_evaluate_does_not_draw_from_the_training_generator(fixture_task, tiny_llama_dir):
    from repro_env.agents.grpo import GRPO, GRPOConfig

    learner = GRPO(GRPOConfig(model=str(tiny_llama_dir), prompts_per_update=1, group_size=2, kl_coef=0.0),
                   fixture_task, seed=3)
    state = learner.policy.generator_rng.get_state().clone()
    first = learner.evaluate(num_problems=2, greedy=False, samples=2)
    assert torch.equal(learner.policy.generator_rng.get_state(), state)
    second = learner.evaluate(num_problems=2, greedy=False, samples=2)
    assert first["tokens_per_response"] == second["tokens_per_response"]  # seeded by (seed, updates)


# -- end to end --------------------------------------------------------------------------------------


def test_compare_smoke_end_to_end(tmp_path, tiny_llama_dir, capsys):
    out = tmp_path / "cmp"
    code = main([str(SMOKE), "--ablation", "--no-progress", "--out", str(out), "--set", f"model={tiny_llama_dir}"])
    assert code == 0
    for name in ("results.md", "results.json", "ablation.md", "plots/accuracy.png", "plots/tokens.png",
                 "plots/backtracks.png", "runs/grpo-repro-seed0/metrics.jsonl"):
        assert (out / name).is_file(), name
    text = (out / "results.md").read_text()
    for row in ("| starting model |", "| GRPO |", "| GRPO + RePro |", "| PPO |", "| PPO + RePro |"):
        assert row in text
    ablation = (out / "ablation.md").read_text()
    for variant in ("| default |", "| w=0 |", "| w=0.5 |", "| k=3 |", "| alpha=0.05 |", "| alpha=0.2 |"):
        assert variant in ablation
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 4 and len(results["ablation"]) == 6
    for run in results["runs"] + results["ablation"] + [results["starting_model"]]:
        assert all(math.isfinite(run["metrics"][k]) for k, _ in COLUMNS), run["name"]
    assert [h["update"] for h in results["runs"][0]["history"]] == [1, 2]
    assert "Output directory" in capsys.readouterr().out


def test_a_registered_learner_joins_the_grid_end_to_end(tmp_path, tiny_llama_dir):
    """A third learner: one register line, its section under ``learners:``, the smoke budget (4)."""
    register_learner("toy", "tests.plugins.toy_learner:ToyGRPO")
    out = tmp_path / "cmp"
    toy = "{lr: 1.0e-3, micro_batch_size: 4, eval_batch_size: 8, prompts_per_update: 1, group_size: 4}"
    sets = [f"model={tiny_llama_dir}", "algorithms=[grpo, toy]", f"learners.toy={toy}",
            "ablation.algorithm=toy", "ablation.stability_weight=[0.1]", "ablation.k=[all]", "ablation.alpha=[]"]
    argv = [str(SMOKE), "--ablation", "--no-progress", "--out", str(out)]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    text = (out / "results.md").read_text()
    for row in ("| GRPO |", "| GRPO + RePro |", "| Toy |", "| Toy + RePro |"):
        assert row in text
    assert "| PPO" not in text
    results = json.loads((out / "results.json").read_text())
    assert [(r["name"], r["algorithm"]) for r in results["runs"]] == [
        ("grpo-seed0", "grpo"), ("grpo-repro-seed0", "grpo"), ("toy-seed0", "toy"), ("toy-repro-seed0", "toy")]
    assert [c["algorithm"] for c in results["comparisons"]] == ["GRPO", "Toy"]
    toy_run = yaml.safe_load((out / "runs" / "toy-repro-seed0" / "config.yaml").read_text())
    assert toy_run["algorithm"] == "toy" and toy_run["learner"]["group_size"] == 4
    # the only ablation variant is the default: the grid's Toy + RePro run, not trained again
    assert (out / "ablation.md").read_text().startswith("# Ablation: Toy + RePro, seed 0")
    assert [r["name"] for r in results["ablation"]] == ["toy-repro-seed0"]
    assert not (out / "runs" / "ablation-default-seed0").exists()


def test_spawned_workers_get_the_learners_registered_in_this_process():
    from repro_env.agents.grpo import GRPO
    from tests.plugins.toy_learner import ToyGRPO

    register_learner("toy", "tests.plugins.toy_learner:ToyGRPO")
    config = CompareConfig(algorithms=("toy", "tests.plugins.toy_learner:ToyGRPO"), workers=2)
    sent = pickle.loads(pickle.dumps(worker_learners(config)))  # what the spawn context sends
    assert sent == {"toy": ToyGRPO, "grpo": GRPO}  # paths import themselves; grpo is the ablation's


def test_a_bad_override_exits_2_with_the_field(capsys):
    assert main([str(SMOKE), "--set", "updates=0"]) == 2
    assert "field 'updates' must be an int >= 1, got 0" in capsys.readouterr().err


def test_workers_2_give_the_results_of_one_worker(tmp_path, tiny_llama_dir, monkeypatch):
    """How the README's results were produced: jobs in spawned worker processes. Each job is seeded
    on its own, so the parallel grid must equal the serial one, run for run, and keep the job order."""
    import repro_env.agents.compare as compare_module

    pools = []
    run_parallel = compare_module._run_parallel
    monkeypatch.setattr(compare_module, "_run_parallel",
                        lambda jobs, config, bar: pools.append(config.workers) or run_parallel(jobs, config, bar))
    sets = [f"model={tiny_llama_dir}", "algorithms=[grpo]", "threads=1"]
    results = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        argv = [str(SMOKE), "--no-progress", "--out", str(out), "--set", f"workers={workers}"]
        assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
        results[workers] = json.loads((out / "results.json").read_text())
    assert pools == [2]  # the second grid really ran in a pool of 2 spawned workers
    serial, parallel = results[1], results[2]
    assert [r["name"] for r in parallel["runs"]] == [r["name"] for r in serial["runs"]] == [
        "grpo-seed0", "grpo-repro-seed0"]
    for a, b in zip(serial["runs"] + [serial["starting_model"]], parallel["runs"] + [parallel["starting_model"]],
                    strict=True):
        untimed = [{k: v for k, v in r["metrics"].items() if not k.endswith("_seconds")} for r in (a, b)]
        assert untimed[0] == untimed[1] and len(untimed[0]) >= 10, a["name"]
        assert a["history"] == b["history"], a["name"]
    assert all([h["update"] for h in r["history"]] == [1, 2] for r in parallel["runs"])
