"""``repro-env compare``: bootstrap intervals by hand, methods and their parsing, the grid's layout,
the saved-config check, and end-to-end runs (the smoke config, a kill and resume through the CLI).

The end-to-end runs use the fixture model with tiny budgets, so they check files, rows, pairing and
resumption, not what the numbers are: the real grid runs by hand (README "Results").
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from repro_env.agents.bootstrap import Bootstrap, cells, interval
from repro_env.agents.compare import (
    START,
    AblationConfig,
    CompareConfig,
    MethodConfig,
    baseline_of,
    load_compare_config,
    main,
    plan,
    with_ablation,
)
from repro_env.agents.episodes import Episode, rescore_topk
from repro_env.agents.grid import check_saved_config, eval_seed, first_difference, worker_learners
from repro_env.agents.plots import mean_band
from repro_env.agents.policy import Trace
from repro_env.agents.run_config import register_learner
from repro_env.config import from_mapping
from repro_env.errors import ConfigError
from repro_env.reward import RewardConfig

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "compare_smoke.yaml"
TINY = ROOT / "configs" / "compare_tiny.yaml"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a loaded 2-core box: 2 OpenMP threads spin-wait and run ~100x slower than 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- bootstrap intervals -------------------------------------------------------------------------------


def rows(values: list[list[float | None]], mode: str = "sampled") -> list[dict]:
    """Episode rows of one seed: values[p] are problem p's samples."""
    return [{"mode": mode, "problem": p, "sample": j, "m": v} for p, vs in enumerate(values) for j, v in enumerate(vs)]


def test_cells_sum_and_count_the_applicable_episodes_by_hand():
    sums, counts = cells([rows([[1.0, None], [2.0, 4.0]]), rows([[None, None], [3.0, 3.0]])], "m", "sampled", 2)
    np.testing.assert_array_equal(sums, [[1.0, 6.0], [0.0, 6.0]])
    np.testing.assert_array_equal(counts, [[1, 2], [0, 2]])
    assert cells([rows([[1.0]], mode="greedy")], "m", "sampled", 1)[1].sum() == 0  # other mode left out


def test_equal_values_give_a_zero_width_interval_and_the_mean_skips_none():
    boot = Bootstrap(4, draws=500, seed=1)
    data = cells([rows([[0.7, None]] * 4), rows([[0.7, 0.7]] * 4)], "m", "sampled", 4)
    summary = boot.summary(*data, seeds=[0, 1])
    assert summary["mean"] == pytest.approx(0.7, abs=1e-15) and summary["episodes"] == 12
    lo, hi = summary["ci"]
    assert lo == pytest.approx(0.7, abs=1e-12) and hi == pytest.approx(0.7, abs=1e-12)


def test_the_pooled_mean_by_hand():
    # seed 0: problems (1, 3) and (2); seed 1: (4) and (none): mean of applicable episodes = 10 / 4
    data = cells([rows([[1.0, 3.0], [2.0, None]]), rows([[4.0, None], [None, None]])], "m", "sampled", 2)
    assert Bootstrap(2, draws=10).summary(*data, seeds=[0, 1])["mean"] == 2.5


def test_a_known_difference_lies_inside_its_paired_interval_and_identical_methods_differ_by_exactly_zero():
    rng = np.random.default_rng(0)
    problem_effect = rng.normal(size=(3, 50))  # (S, P): shared by both methods, as pairing intends
    base = [rows([[10 + x] for x in problem_effect[s]]) for s in range(3)]
    shifted = [rows([[8 + x + 0.01 * rng.normal()] for x in problem_effect[s]]) for s in range(3)]
    boot = Bootstrap(50, draws=2000, seed=0)
    a, m = (cells(r, "m", "sampled", 50) for r in (base, shifted))
    d = boot.paired(m, a, seeds=[0, 1, 2])
    assert d["ci"][0] < -2 < d["ci"][1] and d["ci"][1] - d["ci"][0] < 0.05  # pairing removes the problem spread
    assert d["difference"] == pytest.approx(-2, abs=0.01)
    assert d["relative_ci"][0] < d["relative_percent"] < d["relative_ci"][1]
    assert d["relative_percent"] == pytest.approx(100 * (m[0].sum() / a[0].sum() - 1))
    # unpaired, each method's own interval is much wider than the paired one
    lo, hi = boot.summary(*a, seeds=[0, 1, 2])["ci"]
    assert hi - lo > 10 * (d["ci"][1] - d["ci"][0])
    same = boot.paired(a, a, seeds=[0, 1, 2])
    assert same["difference"] == 0.0 and same["ci"] == [0.0, 0.0] and same["relative_ci"] == [0.0, 0.0]


def test_the_share_of_removed_tokens_that_were_overthinking():
    """Base: 100 tokens, 40 of them overthinking; method: 60 and 10 (± noise) -> 30 of the 40 removed, 0.75."""
    rng = np.random.default_rng(1)
    noise = rng.normal(scale=2.0, size=(2, 3, 40))
    tokens = [[rows([[100 + x] for x in noise[0, s]]) for s in range(3)],
              [rows([[60 + x] for x in noise[1, s]]) for s in range(3)]]
    overthinking = [[rows([[40 + x] for x in noise[0, s]]) for s in range(3)],
                    [rows([[10 + x] for x in noise[1, s]]) for s in range(3)]]
    base_tokens, method_tokens = (cells(r, "m", "sampled", 40) for r in tokens)
    base_over, method_over = (cells(r, "m", "sampled", 40) for r in overthinking)
    boot = Bootstrap(40, draws=1000, seed=0)
    share = boot.removed_share((method_over, base_over), (method_tokens, base_tokens), seeds=[0, 1, 2])
    assert share["share"] == pytest.approx(0.75, abs=0.01) and share["ci"][0] < share["share"] < share["ci"][1]
    assert share["ci"][1] - share["ci"][0] < 0.05
    # shortening only useful tokens: share 0; removing nothing (or adding tokens): no share at all
    useful = boot.removed_share((base_over, base_over), (method_tokens, base_tokens), seeds=[0, 1, 2])
    assert useful["share"] == 0.0 and useful["ci"] == [0.0, 0.0]
    assert boot.removed_share((base_over, method_over), (base_tokens, method_tokens), seeds=[0, 1, 2]) == {
        "share": None, "ci": None}


def test_a_zero_baseline_has_no_relative_difference_and_draws_are_reproducible():
    zero = cells([rows([[0.0], [0.0]])], "m", "sampled", 2)
    some = cells([rows([[1.0], [0.0]])], "m", "sampled", 2)
    d = Bootstrap(2, draws=100).paired(some, zero, seeds=[0])
    assert d["difference"] == 0.5 and d["relative_percent"] is None and d["relative_ci"] is None
    assert interval(np.array([np.nan, np.nan])) is None
    a, b = Bootstrap(5, draws=50, seed=3), Bootstrap(5, draws=50, seed=3)
    np.testing.assert_array_equal(a.problem_weights, b.problem_weights)
    np.testing.assert_array_equal(a.seed_weights([0, 4]), b.seed_weights([0, 4]))
    assert (a.problem_weights.sum(axis=1) == 5).all() and (a.seed_weights([7]) == 1).all()


def test_training_band_is_the_t_interval_over_seeds_by_hand():
    mean, half = mean_band([[1.0, 2.0], [3.0, 2.0], [2.0, 2.0]])
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(half, [4.303 * 1.0 / math.sqrt(3), 0.0])  # t_{0.975, 2}, s = 1
    assert mean_band([[1.0, 5.0]])[1].tolist() == [0.0, 0.0]


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


def test_rescore_topk_scores_the_end_of_the_reasoning_and_never_the_final_answer_segment():
    # steps 1-3 reason; step 4 states the answer, so the env scored no J there (REPRO_SPEC §4), even
    # though its first-token entropy is the highest. k = 1
    episode = scored_episode([-2.0, -1.5, -1.0, math.nan], [0.5, 2.0, 0.1, 9.0], -3.0)
    rescore_topk(episode, RewardConfig(k=1, stability_weight=0.1, ema=0.01))
    # top-1 among steps 1..2: step 2; the end of the reasoning is step 3, although its entropy is lowest.
    # Points J = [-3, -1.5, -1]: Δ = 0.5 and 2/3; the EMA rises, so S_stab = 1 at both.
    S1 = 0.9 * (math.tanh(0.5 - 1) + 1) + 0.1 * 1.0
    S2 = 0.9 * (math.tanh(2 / 3 - 1) + 1) + 0.1 * 1.0
    np.testing.assert_allclose(episode.process_rewards, [0.0, S1, S2 - S1, 0.0], rtol=1e-12)
    assert episode.scored == [False, True, True, False]


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


# -- methods ------------------------------------------------------------------------------------------

METHODS = {
    "GRPO": {"algorithm": "grpo"},
    "GRPO + RePro": {"algorithm": "grpo", "process_reward": True},
    "GRPO + length penalty (λ = 0.5)": {"algorithm": "grpo", "learner": {"kl_coef": 0.5}},
    "GRPO + RePro, w = 0": {"algorithm": "grpo", "process_reward": True,
                            "task_overrides": {"reward": {"stability_weight": 0.0}}, "seeds": [0]},
    "vs RePro": {"algorithm": "grpo", "process_reward": True, "learner": {"alpha": 0.3},
                 "baseline": "GRPO + RePro"},
}


def test_the_report_names_the_sampling_temperature_of_the_grid():
    """It said T = 1.0 whatever the learners sampled at."""
    from repro_env.agents.report import sampling_temperature

    assert sampling_temperature(from_mapping(CompareConfig, {"methods": METHODS})) == "1"
    warm = {"methods": METHODS, "learners": {"grpo": {"temperature": 0.7}}}
    assert sampling_temperature(from_mapping(CompareConfig, warm)) == "0.7"
    mixed = {**warm, "methods": {**METHODS, "hot": {"algorithm": "grpo", "learner": {"temperature": 1.2}}}}
    assert sampling_temperature(from_mapping(CompareConfig, mixed)) == "per method"


def test_methods_are_named_rows_with_default_and_explicit_baselines(tmp_path):
    config = from_mapping(CompareConfig, {"seeds": [0, 1], "methods": METHODS, "model": "/m",
                                          "task_overrides": {"reward": {"ema": 0.02}}})
    assert list(config.methods) == list(METHODS)
    assert config.methods["GRPO + RePro, w = 0"] == MethodConfig(
        "grpo", True, task_overrides={"reward": {"stability_weight": 0.0}}, seeds=(0,))
    assert {n: baseline_of(config, n) for n in METHODS} == {
        "GRPO": None, "GRPO + RePro": "GRPO", "GRPO + length penalty (λ = 0.5)": "GRPO",
        "GRPO + RePro, w = 0": "GRPO", "vs RePro": "GRPO + RePro"}
    jobs, table = plan(config, tmp_path)
    assert table[START] == {0: "start"} and table["GRPO + RePro, w = 0"] == {0: "grpo-repro-w-0-seed0"}
    assert table["GRPO + length penalty (λ = 0.5)"] == {0: "grpo-length-penalty-lambda-0.5-seed0",
                                                        1: "grpo-length-penalty-lambda-0.5-seed1"}
    by_name = {j.name: j for j in jobs}
    w0 = by_name["grpo-repro-w-0-seed0"].train
    assert w0["task_overrides"] == {"reward": {"ema": 0.02, "stability_weight": 0.0}, "scorer": {"model": "/m"}}
    assert w0["learner"] == {"model": "/m", "process_reward": True} and w0["seed"] == 0
    lp = by_name["grpo-length-penalty-lambda-0.5-seed1"].train
    assert lp["learner"] == {"kl_coef": 0.5, "model": "/m", "process_reward": False} and lp["seed"] == 1
    assert lp["out_dir"] == str(tmp_path / "runs" / "grpo-length-penalty-lambda-0.5-seed1")
    assert config.task_overrides == {"reward": {"ema": 0.02}}  # the base overrides are not mutated
    assert len(jobs) == 1 + 2 + 2 + 2 + 1 + 2


def test_the_old_algorithms_list_expands_into_methods_and_the_ablation_into_one_seed_rows(tmp_path):
    config = CompareConfig(seeds=(0, 1), learners={"grpo": {"lr": 1e-3, "alpha": 0.2}}, model="/m")
    assert list(config.methods) == ["GRPO", "GRPO + RePro", "PPO", "PPO + RePro"]
    assert config.methods["PPO + RePro"] == MethodConfig("ppo", process_reward=True)
    jobs, _ = plan(config, tmp_path)
    assert [j.name for j in jobs] == ["start", "grpo-seed0", "grpo-seed1", "grpo-repro-seed0", "grpo-repro-seed1",
                                      "ppo-seed0", "ppo-seed1", "ppo-repro-seed0", "ppo-repro-seed1"]
    assert jobs[3].train["learner"] == {"lr": 1e-3, "alpha": 0.2, "model": "/m", "process_reward": True}
    assert jobs[0].trains is False and all(j.trains for j in jobs[1:])
    ablated = with_ablation(config)  # the task's defaults: w = 0.1, k = all; α = 0.2 from learners.grpo
    rows = list(ablated.methods)[4:]
    assert rows == ["GRPO + RePro, w=0", "GRPO + RePro, w=0.5", "GRPO + RePro, k=3", "GRPO + RePro, α=0.05",
                    "GRPO + RePro, α=0.1"]
    assert ablated.methods["GRPO + RePro, k=3"].task_overrides == {"reward": {"selection": "topk_entropy", "k": 3}}
    assert ablated.methods["GRPO + RePro, α=0.1"].learner == {"alpha": 0.1}
    assert all(ablated.methods[r].seeds == (0,) and baseline_of(ablated, r) == "GRPO" for r in rows)
    # an ablation seed that the main rows do not run gets its own default row, and no baseline
    other = with_ablation(CompareConfig(seeds=(0,), algorithms=("grpo",), ablation=AblationConfig(seed=5, alpha=())))
    assert "GRPO + RePro, default" in other.methods and baseline_of(other, "GRPO + RePro, w=0") is None


def test_identical_run_configs_share_one_run(tmp_path):
    config = CompareConfig(seeds=(0, 1), algorithms=("grpo",),
                           methods={"A": {"algorithm": "grpo"}, "B": {"algorithm": "grpo", "seeds": [1]}})
    jobs, table = plan(config, tmp_path)
    assert [j.name for j in jobs] == ["start", "a-seed0", "a-seed1"] and table["B"] == {1: "a-seed1"}


@pytest.mark.parametrize(("data", "message"), [
    ({"methods": {"GRPO": {"algoritm": "grpo"}}},
     r"c.yaml: unknown key 'methods.GRPO.algoritm'. Did you mean 'algorithm'\?"),
    ({"methods": {"GRPO": {"algorithm": "grpp"}}},
     r"c.yaml: field 'methods.GRPO.algorithm' must be one of .* got 'grpp' \(str\). Did you mean 'grpo'\?"),
    ({"methods": {"GRPO": {}, "B": {"baseline": "GRP"}}},
     r"field 'methods.B.baseline' must name another row of 'methods', got 'GRP' \(str\). Did you mean 'GRPO'\?"),
    ({"methods": {"A": {"baseline": "A"}}}, r"field 'methods.A.baseline' must name another row"),
    ({"seeds": [0, 1], "methods": {"A": {"seeds": [0]}, "B": {"baseline": "A"}}},
     r"field 'methods.B.baseline': 'A' does not run seed\(s\) \[1\] of 'B', so the two cannot be paired"),
    ({"methods": {"A": {"learner": {"process_reward": True}}}},
     r"field 'methods.A.learner.process_reward' must be unset here .*'process_reward' is the method's own field"),
    ({"methods": {"A": {"seeds": []}}}, r"field 'methods.A.seeds' must be a non-empty list of distinct ints"),
    ({"methods": {"A": 3}}, r"methods.A must be a mapping, got 3 \(int\)"),
    ({"methods": {"w=0": {}, "w 0": {}}}, r"field 'methods.w 0' must be a name whose directory stem \('w-0'\) "
                                          r"differs from that of 'w=0', got 'w 0'"),
    ({"methods": {"starting model": {}}}, r"field 'methods.starting model' must be another name"),
    ({"methods": {"A": {}}, "algorithms": ["grpo"]}, r"field 'algorithms' is the old spelling of 'methods'"),
    ({"seeds": []}, r"field 'seeds' must be a non-empty list of distinct ints in \[0, 2\*\*32 - 1\], got \(\)"),
    ({"seeds": [0, -1]}, r"field 'seeds' must be a non-empty list of distinct ints in \[0, 2\*\*32 - 1\], got "
     r"\(0, -1\)"),
    ({"seeds": [2**64]}, r"field 'seeds' must be a non-empty list of distinct ints in \[0, 2\*\*32 - 1\]"),
    ({"updates": 0}, r"field 'updates' must be an int >= 1, got 0"),
    ({"checkpoint_every": 0}, r"field 'checkpoint_every' must be an int >= 1, got 0"),
    ({"bootstrap_samples": 0}, r"field 'bootstrap_samples' must be an int >= 1"),
    ({"eval_samples": 1}, r"field 'eval_samples' must be an int >= 2 \(avg@n at T=1\), got 1"),
    ({"algorithms": []}, r"field 'algorithms' must be a non-empty list of distinct learner names, got \(\)"),
    ({"algorithms": ["grpo", "grpp"]}, r"field 'algorithms\[1\]' must be one of .*'grpo', .*'ppo'.* or "
                                       r"'package.module:Name', got 'grpp' \(str\). Did you mean 'grpo'\?"),
    ({"learners": {"ppp": {}}}, r"field 'learners.ppp' must be one of .*'ppo'.* Did you mean 'ppo'\?"),
    ({"grpo": [1]}, r"field 'learners.grpo' must be a mapping of grpo's config fields, got \[1\] \(list\)"),
    ({"grpo": {"lr": 1}, "learners": {"grpo": {"lr": 2}}}, r"field 'grpo.lr' is also set as 'learners.grpo.lr'"),
    ({"ablation": {"algorithm": "grp"}}, r"field 'ablation.algorithm' must be one of .* Did you mean 'grpo'\?"),
    ({"ablation": {"k": ["all", 0]}}, r"field 'ablation.k' must be a list of 'all' or ints >= 1"),
    ({"sedes": [0]}, r"unknown key 'sedes'. Did you mean 'seeds'\?"),
])
def test_config_errors_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(CompareConfig, data, source="c.yaml")


def test_load_checks_every_methods_learner_section_and_budget(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope.yaml' does not exist"):
        load_compare_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"\(methods.GRPO\): unknown key 'learner.group_sise'. Did you mean "
                                          r"'group_size'\?"):
        load_compare_config(SMOKE, ["grpo.group_sise=4"])
    with pytest.raises(ConfigError, match=r"compare_smoke.yaml: every method must collect the same rollouts per "
                                          r"update .*got 4 for 'GRPO', 'GRPO \+ RePro'; 8 for 'PPO', 'PPO \+ RePro'"):
        load_compare_config(SMOKE, ["ppo.episodes_per_update=8"])
    assert load_compare_config(SMOKE, ["ppo.episodes_per_update=8", "grpo.prompts_per_update=4"])
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"seeds": [0], "learners": {"grpo": {"prompts_per_update": 2, "group_size": 2}},
                                    "methods": {"A": {"algorithm": "grpo", "learner": {"group_size": 4}},
                                                "B": {"algorithm": "grpo", "learner": {"lr": 1.0}}}}))
    with pytest.raises(ConfigError, match=r"got 8 for 'A'; 4 for 'B'"):
        load_compare_config(path)
    with pytest.raises(ConfigError, match=r"\(methods.A\): unknown key 'learner.alpah'. Did you mean 'alpha'\?"):
        load_compare_config(path, ["methods.A.learner={alpah: 0.2}"])


def test_the_shipped_configs_load():
    smoke, tiny = load_compare_config(SMOKE), load_compare_config(TINY)
    assert smoke.seeds == (0,) and list(smoke.methods) == ["GRPO", "GRPO + RePro", "PPO", "PPO + RePro"]
    assert len(tiny.seeds) == 3 and tiny.learners["grpo"]["group_size"] == 4


def test_a_learner_label_shared_by_two_algorithms_is_refused():
    with pytest.raises(ConfigError, match=r"field 'algorithms': 'grpo' and 'repro_env.agents.grpo:GRPO' share "
                                          r"the label 'GRPO', so their table rows would merge"):
        load_compare_config(SMOKE, ["algorithms=[grpo, 'repro_env.agents.grpo:GRPO']"])
    with pytest.raises(ConfigError, match=r"compare_smoke.yaml: field 'algorithms\[0\]': learner "
                                          r"'repro_env.agents.grpo:Nope': cannot import 'Nope'"):
        load_compare_config(SMOKE, ["algorithms=['repro_env.agents.grpo:Nope']"])


# -- the output directory's config ---------------------------------------------------------------------


def test_first_difference_names_the_path():
    assert first_difference({"a": 1, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": [1, 3]}}) == ("b.c[1]", 2, 3)
    assert first_difference({"a": 1}, {"a": 1.0}) == ("a", 1, 1.0)
    assert first_difference({"a": {"x": 1}}, {"a": {"x": 1}}) is None
    assert first_difference({"m": {"A": {}}}, {"m": {"A": {}, "B": {}}})[0] == "m.B"


def test_a_different_config_in_an_existing_output_dir_is_an_error_naming_the_first_difference(tmp_path):
    config = from_mapping(CompareConfig, {"seeds": [0], "methods": METHODS | {"GRPO + RePro, w = 0": {}}})
    check_saved_config(tmp_path, config)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["methods"]["GRPO + length penalty (λ = 0.5)"]["learner"] == {"kl_coef": 0.5}
    check_saved_config(tmp_path, config)  # the same config: fine
    check_saved_config(tmp_path, from_mapping(CompareConfig, {**saved, "workers": 2, "bootstrap_samples": 50,
                                                              "checkpoint_every": 1}))
    changed = json.loads(json.dumps(saved))
    changed["methods"]["vs RePro"]["learner"]["alpha"] = 0.4
    with pytest.raises(ConfigError, match=r"config.yaml: the output directory holds a grid with another config: "
                                          r"field 'methods.vs RePro.learner.alpha' was 0.3 \(float\), now 0.4 "
                                          r"\(float\); rerun with the same config to resume it, or choose another "
                                          r"--out"):
        check_saved_config(tmp_path, from_mapping(CompareConfig, changed))
    with pytest.raises(ConfigError, match=r"field 'updates' was 40 \(int\), now 41 \(int\)"):
        check_saved_config(tmp_path, from_mapping(CompareConfig, {**saved, "updates": 41}))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"--out '.*other' holds files but no config.yaml"):
        check_saved_config(tmp_path / "other", config)


def test_paired_sampling_seeds_depend_on_the_seed_only():
    assert eval_seed(0) == eval_seed(0) != eval_seed(1)


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
    for e in batch.episodes:  # steps without a J: a context overflow, or the segment that states the answer
        assert sum(e.scored) == min(int(np.isfinite(e.J).sum()), 3) and e.scored[-1] == np.isfinite(e.J[-1])
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
    code = main([str(SMOKE), "--ablation", "--no-progress", "--out", str(out), "--set", f"model={tiny_llama_dir}",
                 "--set", "ablation.stability_weight=[0.0]", "--set", "ablation.alpha=[0.2]"])
    assert code == 0
    for name in ("config.yaml", "results.md", "results.json", "plots/accuracy.png", "plots/tokens_per_response.png",
                 "plots/backtracks_per_response.png", "runs/grpo-repro-seed0/metrics.jsonl",
                 "runs/grpo-repro-seed0/eval_episodes.jsonl", "runs/start/result.json"):
        assert (out / name).is_file(), name
    text = (out / "results.md").read_text()
    for row in ("| starting model | 1 |", "| GRPO | 1 |", "| GRPO + RePro | 1 |", "| PPO |", "| PPO + RePro |",
                "| GRPO + RePro, w=0 | 1 |", "| GRPO + RePro, k=3 |", "| GRPO + RePro, α=0.2 |",
                "| GRPO + RePro | GRPO |", "| PPO + RePro | PPO |", "| GRPO + RePro, w=0 | GRPO |"):
        assert row in text, row
    results = json.loads((out / "results.json").read_text())
    assert list(results["runs"]) == ["start", "grpo-seed0", "grpo-repro-seed0", "ppo-seed0", "ppo-repro-seed0",
                                     "grpo-repro-w-0-seed0", "grpo-repro-k-3-seed0", "grpo-repro-alpha-0.2-seed0"]
    accuracy = results["methods"]["GRPO + RePro"]["metrics"]["sampled_accuracy"]
    assert 0 <= accuracy["ci"][0] <= accuracy["mean"] <= accuracy["ci"][1] <= 1 and accuracy["episodes"] == 8
    run = results["runs"]["grpo-repro-seed0"]
    assert accuracy["mean"] == pytest.approx(run["metrics"]["sampled_accuracy"])
    assert [h["update"] for h in run["history"]] == [1, 2]
    episodes = [json.loads(line) for line in (out / "runs/grpo-repro-seed0/eval_episodes.jsonl").open()]
    assert [(e["mode"], e["problem"], e["sample"]) for e in episodes[:6]] == [
        ("greedy", 0, 0), ("greedy", 1, 0), ("greedy", 2, 0), ("greedy", 3, 0), ("sampled", 0, 0), ("sampled", 0, 1)]
    paired = {p["method"]: p for p in results["paired"]}
    assert set(paired) == {"GRPO + RePro", "PPO + RePro", "GRPO + RePro, w=0", "GRPO + RePro, k=3",
                           "GRPO + RePro, α=0.2"}
    assert set(paired["GRPO + RePro"]["removed_overthinking_share"]) == {"greedy", "sampled"}
    from repro_env.agents.judge import judge  # the targets table of the powered run, on this grid

    judged = judge(out)
    for row in ("| GRPO + RePro | GRPO | greedy | ", "| PPO + RePro | PPO | sampled | ",
                "## Of the removed tokens, the share that were overthinking segments"):
        assert row in judged, row
    assert "## Removed tokens that were overthinking" in text
    d = paired["GRPO + RePro"]["metrics"]["greedy_tokens_per_response"]
    assert d["difference"] == pytest.approx(results["runs"]["grpo-repro-seed0"]["metrics"]["greedy_tokens_per_response"]
                                            - results["runs"]["grpo-seed0"]["metrics"]["greedy_tokens_per_response"])
    assert "Output directory" in capsys.readouterr().out
    # a rerun finds every run done and writes the same tables
    before = (out / "results.json").read_text()
    assert main([str(SMOKE), "--ablation", "--no-progress", "--out", str(out), "--set", f"model={tiny_llama_dir}",
                 "--set", "ablation.stability_weight=[0.0]", "--set", "ablation.alpha=[0.2]"]) == 0
    assert untimed(json.loads(before)) == untimed(json.loads((out / "results.json").read_text()))
    # the directory holds this grid only (issue 28 #5): an old report goes, a stray run is refused
    (out / "ablation.md").write_text("an older version's table")
    (out / "runs" / "stray-seed9").mkdir()
    capsys.readouterr()
    assert main([str(SMOKE), "--ablation", "--no-progress", "--out", str(out), "--set", f"model={tiny_llama_dir}",
                 "--set", "ablation.stability_weight=[0.0]", "--set", "ablation.alpha=[0.2]"]) == 2
    assert "runs holds runs that are not in this grid (stray-seed9); move them away" in capsys.readouterr().err
    (out / "runs" / "stray-seed9").rmdir()
    assert main([str(SMOKE), "--ablation", "--no-progress", "--out", str(out), "--set", f"model={tiny_llama_dir}",
                 "--set", "ablation.stability_weight=[0.0]", "--set", "ablation.alpha=[0.2]"]) == 0
    assert not (out / "ablation.md").exists()
    # without --ablation it is another grid
    assert main([str(SMOKE), "--no-progress", "--out", str(out), "--set", f"model={tiny_llama_dir}"]) == 2
    assert "field 'methods.GRPO + RePro, w=0' was {" in capsys.readouterr().err


def untimed(value):
    """results.json without what differs between two executions of the same grid (times, the command)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items()
                if not k.endswith("seconds") and k not in ("command", "machine")}
    return [untimed(v) for v in value] if isinstance(value, list) else value


def test_a_registered_learner_joins_the_grid_end_to_end(tmp_path, tiny_llama_dir):
    """A third learner: one register line, its section under ``learners:``, the smoke budget (4)."""
    register_learner("toy", "tests.plugins.toy_learner:ToyGRPO")
    out = tmp_path / "cmp"
    toy = "{lr: 1.0e-3, micro_batch_size: 4, eval_batch_size: 8, prompts_per_update: 1, group_size: 4}"
    sets = [f"model={tiny_llama_dir}", "algorithms=[toy]", f"learners.toy={toy}"]
    argv = [str(SMOKE), "--no-progress", "--out", str(out)]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == [START, "Toy", "Toy + RePro"]
    assert [p["baseline"] for p in results["paired"]] == ["Toy"]
    toy_run = yaml.safe_load((out / "runs" / "toy-repro-seed0" / "config.yaml").read_text())
    assert toy_run["algorithm"] == "toy" and toy_run["learner"]["group_size"] == 4


def test_spawned_workers_get_the_learners_registered_in_this_process():
    from repro_env.agents.grpo import GRPO
    from tests.plugins.toy_learner import ToyGRPO

    register_learner("toy", "tests.plugins.toy_learner:ToyGRPO")
    config = CompareConfig(methods={"A": {"algorithm": "toy"},
                                    "B": {"algorithm": "tests.plugins.toy_learner:ToyGRPO"}}, workers=2)
    sent = pickle.loads(pickle.dumps(worker_learners(config)))  # what the spawn context sends
    assert sent == {"toy": ToyGRPO, "grpo": GRPO}  # paths import themselves; grpo is the ablation's


def test_a_bad_override_exits_2_with_the_field(capsys):
    assert main([str(SMOKE), "--set", "updates=0"]) == 2
    assert "field 'updates' must be an int >= 1, got 0" in capsys.readouterr().err


KILL_CONFIG = """\
task: RePro-Math-v0
task_overrides: {limits: {max_steps: 3, max_segment_tokens: 8}}
model: MODEL
seeds: [0, 1]
updates: 5
checkpoint_every: 1
eval_problems: 3
eval_samples: 2
bootstrap_samples: 300
learners:
  grpo: {lr: 1.0e-3, kl_coef: 0.01, micro_batch_size: 4, eval_batch_size: 8, prompts_per_update: 2, group_size: 2}
methods:
  GRPO: {algorithm: grpo}
  GRPO + RePro: {algorithm: grpo, process_reward: true}
  GRPO + RePro, w = 0: {algorithm: grpo, process_reward: true, task_overrides: {reward: {stability_weight: 0.0}},
                        seeds: [0]}
WORKERS
smooth: 1
"""


def cli(config: Path, out: Path) -> list[str]:
    """The command as a user types it: the installed console script."""
    return [str(Path(sys.executable).parent / "repro-env"), "compare", str(config), "--out", str(out), "--no-progress"]


def killed_mid_run(out: Path) -> bool:
    """Some run is done and another has checkpointed but not finished."""
    runs = [p for p in (out / "runs").glob("*-seed*")] if (out / "runs").is_dir() else []
    done = [p for p in runs if (p / "result.json").is_file()]
    halfway = [p for p in runs if not (p / "result.json").is_file() and (p / "checkpoints" / "latest").is_file()]
    return bool(done) and bool(halfway)


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2: ~60 s
def test_a_grid_killed_mid_run_resumes_to_the_results_of_an_uninterrupted_one(tmp_path, tiny_llama_dir, workers):
    """SIGKILL the CLI after one run finished and another checkpointed, rerun the same command: the
    finished run is skipped, the halfway run continues from its checkpoint (its checkpointed updates'
    metrics rows, wall times included, are kept byte for byte), and results.json equals an
    uninterrupted grid's, number for number; with 2 workers, the killed grid's workers die with it.
    Tried once against a restart (the halfway runs' checkpoints deleted before the rerun): failed with
    "was restarted, not resumed"."""
    config = tmp_path / "grid.yaml"
    config.write_text(KILL_CONFIG.replace("MODEL", str(tiny_llama_dir)).replace("WORKERS", f"workers: {workers}"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert subprocess.run(cli(config, straight), env=env, capture_output=True, timeout=600).returncode == 0
    process = subprocess.Popen(cli(config, resumed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not killed_mid_run(resumed) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert killed_mid_run(resumed), "the grid finished before it could be killed mid-run"
    assert not (resumed / "results.json").exists()
    halfway = {p.name: int((p / "checkpoints" / "latest").read_text().strip().rpartition("-")[2])
               for p in (resumed / "runs").glob("*-seed*") if not (p / "result.json").is_file()
               and (p / "checkpoints" / "latest").is_file()}
    done = {p.name: (p / "result.json").stat().st_mtime_ns for p in (resumed / "runs").glob("*")
            if (p / "result.json").is_file()}
    # the rows of the checkpointed updates, each with its own wall time: a restart would write new ones
    early_rows = {name: (resumed / "runs" / name / "metrics.jsonl").read_text().splitlines()[:update]
                  for name, update in halfway.items()}
    rerun = subprocess.run(cli(config, resumed), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    for name, mtime in done.items():  # finished runs were skipped, not redone
        assert (resumed / "runs" / name / "result.json").stat().st_mtime_ns == mtime, name
    for name, update in halfway.items():  # halfway runs continued: their early rows were not rewritten
        lines = (resumed / "runs" / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["update"] for line in lines] == [1, 2, 3, 4, 5] and update >= 1, name
        assert lines[:update] == early_rows[name], f"{name} was restarted, not resumed"
    a, b = (json.loads((d / "results.json").read_text()) for d in (straight, resumed))
    assert len(a["runs"]) == 1 + 2 + 2 + 1 and len(a["paired"]) == 2
    assert untimed(a) == untimed(b)
    assert a["methods"]["GRPO + RePro"]["metrics"]["sampled_accuracy"]["ci"] is not None




def test_set_reaches_a_method_whose_name_holds_a_dot_or_an_equals_sign(tmp_path):
    """A quoted key part keeps its "." and "=" (unquoted, ``methods.RePro, α=0.1.seeds`` split at them)."""
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"seeds": [0, 1], "learners": {"grpo": {"prompts_per_update": 2, "group_size": 2}},
                                    "methods": {"RePro, α=0.1": {"algorithm": "grpo", "process_reward": True}}},
                                   allow_unicode=True))
    config = load_compare_config(path, ['methods."RePro, α=0.1".seeds=[1]'])
    assert config.methods["RePro, α=0.1"].seeds == (1,)
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE with a dotted key.*goes in double quotes"):
        load_compare_config(path, ['methods."RePro, α=0.1.seeds=[1]'])
