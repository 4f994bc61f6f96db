"""The training harness driven by a small real learner: configs, runs, resume, faults, eval and plots.

``BanditLearner`` is a genuine Learner on a toy objective: a linear softmax policy over 4 answers,
trained by REINFORCE with Adam to pick answer 2 (the "correct" one). It saves weights, the Adam
state and its torch RNG in safetensors, so resumed runs must match uninterrupted ones bit for bit.
``fault`` injects one failure at update ``fault_at`` (a NaN loss, a scorer error, Ctrl-C ...).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import types
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Literal

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from repro_env.agents.checkpoint import latest_checkpoint, list_checkpoints
from repro_env.agents.metrics import MetricsLog, read_jsonl, summary_table
from repro_env.agents.run_config import LEARNERS, learner_spec, load_config, register_learner
from repro_env.agents.train import main, main_eval, main_plot, main_train, train
from repro_env.config import check
from repro_env.errors import CheckpointError, ConfigError, ScorerError, TrainingError
from repro_env.tasks import builtin_task_ids

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CORRECT = 2


@dataclass(frozen=True)
class BanditConfig:
    lr: float = 0.1
    """Adam step size."""
    batch: int = 16
    """Sampled answers per update."""
    fault: Literal["none", "nan", "scorer", "interrupt_collect", "interrupt_update", "sigint",
                   "stuck"] = "none"
    """Failure to inject at update ``fault_at``."""
    fault_at: int = 0
    """Update (1-based) whose collect/update fails."""

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", self.lr, "a number > 0")


class BanditLearner:
    config_class = BanditConfig

    def __init__(self, config: BanditConfig, task: str, *, seed: int):
        self.config, self.task, self.updates = config, task, 0
        self.generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # nn.Linear init; deterministic per seed
        self.policy = torch.nn.Linear(1, 4)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)

    def _fault(self, kind: str) -> bool:
        return self.config.fault == kind and self.updates + 1 == self.config.fault_at

    def _logits(self) -> torch.Tensor:
        return self.policy(torch.ones(1, 1))[0]  # (4,)

    def collect(self) -> torch.Tensor:
        if self._fault("scorer"):
            raise ScorerError("scorer engine died: worker exited with code -9")
        if self._fault("interrupt_collect"):
            raise KeyboardInterrupt
        with torch.no_grad():
            probs = torch.softmax(self._logits(), -1)  # (4,)
        return torch.multinomial(probs, self.config.batch, replacement=True, generator=self.generator)  # (B,)

    def update(self, actions: torch.Tensor) -> dict[str, float]:
        logp = torch.log_softmax(self._logits(), -1)  # (4,)
        reward = (actions == CORRECT).float()  # (B,)
        loss = -((reward - reward.mean()) * logp[actions]).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if self._fault("interrupt_update"):
            raise KeyboardInterrupt
        if self._fault("sigint"):
            os.kill(os.getpid(), signal.SIGINT)
        if self._fault("nan"):
            with torch.no_grad():
                self.policy.weight.fill_(float("nan"))
            loss = torch.tensor(float("nan"))
        if not self._fault("stuck"):
            self.updates += 1
        entropy = -(logp.exp() * logp).sum()
        return {"loss": loss.item(), "accuracy": float(reward.mean()), "outcome_reward": float(reward.mean()),
                "entropy": entropy.item(), "kl": 0.0, "tokens_per_response": 1.0}

    def evaluate(self, *, num_problems: int, greedy: bool = True, samples: int = 1) -> dict[str, float]:
        with torch.no_grad():  # exact expectations: evaluation never draws from the training RNG
            probs = torch.softmax(self._logits(), -1)  # (4,)
        accuracy = float(probs.argmax() == CORRECT) if greedy else float(probs[CORRECT])
        return {"accuracy": accuracy, "tokens_per_response": 1.0, "backtracks_per_response": 0.0}

    def save(self, directory: Path) -> None:
        tensors = {f"policy.{k}": v for k, v in self.policy.state_dict().items()}
        optim = self.optimizer.state_dict()
        for index, state in optim["state"].items():
            tensors |= {f"optim.{index}.{k}": v for k, v in state.items()}
        tensors["rng"] = self.generator.get_state()
        save_file(tensors, directory / "state.safetensors")
        (directory / "state.json").write_text(json.dumps({"updates": self.updates,
                                                          "param_groups": optim["param_groups"]}))

    def load(self, directory: Path) -> None:
        tensors = load_file(directory / "state.safetensors")
        meta = json.loads((directory / "state.json").read_text())
        self.policy.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("policy.")})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".")
                state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.generator.set_state(tensors["rng"])
        self.updates = meta["updates"]


def build_bandit(config: BanditConfig, run) -> BanditLearner:
    return BanditLearner(config, run.task, seed=run.seed)


@pytest.fixture(autouse=True, scope="module")
def bandit():
    """``algorithm: bandit`` (registering the same factory again is a no-op, so no teardown is needed)."""
    register_learner("bandit", BanditConfig, build_bandit)


def write_config(path: Path, **fields) -> Path:
    data = {"algorithm": "bandit", "task": "RePro-Math-v0", "updates": 6, "eval_every": 3, "eval_problems": 4,
            "eval_samples": 4, "checkpoint_every": 2, "keep_checkpoints": 2, "learner": {"lr": 0.1}}
    path.write_text(yaml.safe_dump(data | fields))
    return path


def run(tmp_path: Path, *sets: str, name: str = "run", plots: bool = False, **fields) -> tuple[int, Path]:
    config = write_config(tmp_path / f"{name}.yaml", out_dir=str(tmp_path / name), **fields)
    argv = [str(config), "--no-progress", *([] if plots else ["--no-plots"])]
    argv += [a for s in sets for a in ("--set", s)]
    return main_train(argv), tmp_path / name


def load_task_text(task_id: str) -> str:
    return builtin_task_ids()[task_id].read_text()


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "state.safetensors")


# -- configs ----------------------------------------------------------------------------------


def test_every_shipped_config_loads():
    """Every training config (the compare_*.yaml grids are ``repro-env compare``'s, tested there)."""
    files = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("compare_"))
    assert len(files) >= 5
    for path in files:
        config, learner_config = load_config(path)
        assert config.algorithm in ("grpo", "ppo"), path
        assert type(learner_config).__name__ == f"{config.algorithm.upper()}Config"


@pytest.mark.parametrize(("fields", "message"), [
    ({"updtes": 3}, r"unknown key 'updtes'. Did you mean 'updates'\?"),
    ({"learner": {"lrr": 0.1}}, r"unknown key 'learner.lrr'. Did you mean 'lr'\?"),
    ({"updates": "ten"}, r"field 'updates' must be an int, got 'ten' \(str\)"),
    ({"eval_samples": 0}, r"field 'eval_samples' must be an int >= 1, got 0 \(int\)"),
    ({"learner": {"lr": -1}}, r"field 'learner.lr' must be a number > 0, got -1.0 \(float\)"),
    ({"algorithm": "bandt"}, r"field 'algorithm' must be one of .* Did you mean 'bandit'\?"),
    # issue 28: passed the check, then a raw OverflowError once the model had loaded
    ({"seed": 2**64}, r"field 'seed' must be an int in \[0, 2\*\*32 - 1\] \(a seed numpy and torch accept\), got "
     r"18446744073709551616 \(int\)"),
])
def test_config_errors_name_the_file_and_field(tmp_path, fields, message):
    path = write_config(tmp_path / "bad.yaml", **fields)
    with pytest.raises(ConfigError, match=rf"bad.yaml: {message}"):
        load_config(path)


def test_task_and_overrides_are_validated_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'task' / 'task_overrides': .* Did you mean "
                                          r"'RePro-Math-v0'\?"):
        load_config(write_config(tmp_path / "bad.yaml", task="RePro-Mth-v0"))
    with pytest.raises(ConfigError, match=r"unknown key 'reward.alpah'. Did you mean 'alpha'\?"):
        load_config(write_config(tmp_path / "bad.yaml", task_overrides={"reward": {"alpah": 0.2}}))
    (tmp_path / "tasks").mkdir()
    spec = yaml.safe_load(load_task_text("RePro-Math-v0")) | {"id": "Local-Math-v0"}
    (tmp_path / "tasks" / "local.yaml").write_text(yaml.safe_dump(spec))
    config, _ = load_config(write_config(tmp_path / "c.yaml", task="tasks/local.yaml"))
    assert config.task == str(tmp_path / "tasks" / "local.yaml")  # relative to the config file


def test_yaml_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*missing.yaml' does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "syntax.yaml").write_text("updates: [1,\n")
    with pytest.raises(ConfigError, match=r"syntax.yaml:\d+: invalid YAML"):
        load_config(tmp_path / "syntax.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match=r"list.yaml: top level must be a mapping of TrainConfig fields"):
        load_config(tmp_path / "list.yaml")


def test_set_overrides(tmp_path):
    path = write_config(tmp_path / "c.yaml")
    config, learner = load_config(path, ["updates=9", "learner.lr=1e-3", "task_overrides.reward.alpha=0.2"])
    # 1e-3 is a float (YAML 1.2), not the string PyYAML's YAML 1.1 rules would give
    assert (config.updates, learner.lr, config.task_overrides) == (9, 0.001, {"reward": {"alpha": 0.2}})
    (tmp_path / "exp.yaml").write_text(path.read_text().replace("lr: 0.1", "lr: 5e-2"))
    assert load_config(tmp_path / "exp.yaml")[1].lr == 0.05
    assert config.out_dir is not None and Path(config.out_dir).name.startswith("c-")


@pytest.mark.parametrize(("item", "message"), [
    ("updates", r"--set 'updates': expected KEY=VALUE"),
    ("learner..lr=1", r"--set 'learner..lr=1': expected KEY=VALUE"),
    ("updates=[1,", r"--set 'updates=\[1,': the value is not valid YAML"),
    ("updates.x=1", r"--set 'updates.x=1': 'updates' is 6 \(int\), not a mapping, so it has no key 'x'"),
    ("updates=many", r"field 'updates' must be an int, got 'many' \(str\)"),
])
def test_bad_set(tmp_path, item, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path / "c.yaml"), [item])


def test_module_class_algorithm(tmp_path, monkeypatch):
    module = types.ModuleType("toy_agents")
    module.Bandit = BanditLearner
    module.NoConfig = object
    monkeypatch.setitem(sys.modules, "toy_agents", module)
    config, learner = load_config(write_config(tmp_path / "c.yaml", algorithm="toy_agents:Bandit"))
    assert isinstance(learner, BanditConfig) and learner.lr == 0.1
    with pytest.raises(ConfigError, match=r"'toy_agents:NoConfig': the class needs a 'config_class'"):
        load_config(write_config(tmp_path / "c.yaml", algorithm="toy_agents:NoConfig"))
    with pytest.raises(ConfigError, match=r"'toy_agents:Nope': cannot import 'Nope' from 'toy_agents'"):
        load_config(write_config(tmp_path / "c.yaml", algorithm="toy_agents:Nope"))


def test_register_learner_takes_a_class_or_its_path():
    register_learner("bandit-class", BanditLearner)
    spec = learner_spec("bandit-class")
    assert spec.config_class is BanditConfig and spec.label == "bandit-class"  # no ``label``: the name
    register_learner("toy", "tests.plugins.toy_learner:ToyGRPO")
    assert learner_spec("toy").label == "Toy" and learner_spec("bandit").label == "bandit"
    assert [learner_spec(n).label for n in ("grpo", "ppo")] == ["GRPO", "PPO"]
    assert {"bandit", "bandit-class", "grpo", "ppo", "toy"} <= set(LEARNERS)
    with pytest.raises(ConfigError, match=r"learner 'bandit-class' is already registered .*; pass replace=True"):
        register_learner("bandit-class", "tests.plugins.toy_learner:ToyGRPO")


def test_an_installed_plugin_adds_a_learner_through_its_entry_point(tmp_path, monkeypatch):
    """``pip install my-plugin`` is enough: its ``repro_env.learners`` entry point is read on first lookup."""
    import repro_env.agents.run_config
    from repro_env import registry

    point = EntryPoint(name="toy-plugin", value="tests.plugins.toy_learner:ToyGRPO", group=LEARNERS.group)
    monkeypatch.setattr(registry, "entry_points", lambda group: [point] if group == LEARNERS.group else [])
    monkeypatch.setattr(repro_env.agents.run_config, "LEARNERS", registry.Registry("learner", LEARNERS.group))
    config, learner = load_config(write_config(tmp_path / "c.yaml", algorithm="toy-plugin"))
    assert type(learner).__name__ == "GRPOConfig" and learner.lr == 0.1
    assert learner_spec("toy-plugin").label == "Toy"


def test_train_needs_a_config():
    with pytest.raises(ConfigError, match="give a CONFIG file, or --resume RUN_DIR"):
        main_train([])


# -- a full run -------------------------------------------------------------------------------


def test_run_writes_metrics_checkpoints_plots_and_learns(tmp_path, capsys):
    code, run_dir = run(tmp_path, "updates=8", "eval_every=4", plots=True)
    assert code == 0
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["update"] for r in rows] == [1, 2, 3, 4, 5, 6, 7, 8]
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["update", "loss", "accuracy"] and "update_seconds" in header
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 8
    evals = read_jsonl(run_dir / "eval.jsonl")
    assert [e["update"] for e in evals] == [0, 4, 8]  # before training, every 4, after the last
    assert {"greedy_accuracy", "sampled_accuracy", "samples"} <= set(evals[0])
    # learning signal: P(correct answer) grows from about 1/4 under REINFORCE
    assert evals[-1]["sampled_accuracy"] > evals[0]["sampled_accuracy"] + 0.2
    # checkpoints every 2, keep the newest 2
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["update-000006", "update-000008"]
    for name in ("accuracy", "reward", "losses", "kl", "entropy", "tokens", "backtracks", "time"):
        png = (run_dir / "plots" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
    assert not (run_dir / "plots" / "throughput.png").exists()  # the bandit logs no throughput
    summary = (run_dir / "summary.md").read_text()
    assert "| greedy_accuracy |" in summary and "(update 0 → 8)" in summary
    assert "Run directory:" in capsys.readouterr().out
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["learner"] == {"lr": 0.1, "batch": 16, "fault": "none", "fault_at": 0}


def test_summary_compares_the_means_of_the_first_and_last_updates(tmp_path):
    """Single batches fluctuate: the training table compares means of 5 updates (half a short run)."""
    log = MetricsLog(tmp_path, "metrics")
    accuracy = [0.2, 0.4, 0.2, 0.4, 0.3, 0.5, 0.5, 0.9, 0.9, 0.9, 0.9, 0.1]  # last batch alone: 0.1
    for update, acc in enumerate(accuracy, 1):
        log.append({"update": update, "accuracy": acc, "kl": float("nan") if update == 12 else 0.01})
    summary = summary_table(tmp_path)
    assert "## Training (mean of updates 1-5 → mean of updates 8-12)" in summary
    assert "| accuracy | 0.3 | 0.74 | +0.44 |" in summary
    assert "| kl | 0.01 | 0.01 | +0 |" in summary  # the NaN row is left out of the mean
    (tmp_path / "short").mkdir()
    short = MetricsLog(tmp_path / "short", "metrics")
    for update, acc in enumerate([0.0, 1.0, 0.5], 1):
        short.append({"update": update, "accuracy": acc})
    assert "| accuracy | 0 | 0.5 | +0.5 |" in summary_table(tmp_path / "short")  # 1 update each side


def test_existing_run_dir_needs_resume(tmp_path):
    assert run(tmp_path, "updates=2")[0] == 0
    with pytest.raises(ConfigError, match=r"field 'out_dir' '.*run' already holds a run with checkpoints; "
                                          r"pass --resume"):
        run(tmp_path, "updates=2")


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    assert run(tmp_path, name="straight")[0] == 0
    code, half = run(tmp_path, "updates=3", name="halves")
    assert code == 0
    assert main_train(["--resume", str(half), "--set", "updates=6", "--no-progress"]) == 0
    a = weights(latest_checkpoint(tmp_path / "straight" / "checkpoints"))
    b = weights(latest_checkpoint(half / "checkpoints"))
    assert sorted(a) == sorted(b) and len(a) == 2 + 2 * 3 + 1  # weight, bias; Adam (step, m, v) each; rng
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["update"] for r in read_jsonl(half / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    straight_loss = [r["loss"] for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl")]
    assert [r["loss"] for r in read_jsonl(half / "metrics.jsonl")] == straight_loss


def test_resume_rejects_changing_the_experiment(tmp_path):
    _, run_dir = run(tmp_path, "updates=2")
    with pytest.raises(ConfigError, match=r"field 'learner' cannot change on resume \(saved .*'lr': 0.1.*"
                                          r"only updates, eval_every"):
        main_train(["--resume", str(run_dir), "--set", "learner.lr=0.5"])
    with pytest.raises(ConfigError, match="--resume '.*nowhere': no config.yaml there"):
        main_train(["--resume", str(tmp_path / "nowhere")])


def test_resume_refuses_fewer_updates_than_done_and_another_out_dir(tmp_path):
    """issue 28: updates=1 after 3 rewrote config.yaml to 1 beside 3 updates of metrics; out_dir was ignored."""
    _, run_dir = run(tmp_path, "updates=3")
    saved = (run_dir / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"field 'updates' is 1, but .*run has done 3 updates; resume with "
                                          r"updates >= 3"):
        main_train(["--resume", str(run_dir), "--set", "updates=1", "--no-progress"])
    assert (run_dir / "config.yaml").read_text() == saved
    assert [r["update"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]
    with pytest.raises(ConfigError, match=r"--set 'out_dir=elsewhere': a resumed run continues in its own directory"):
        main_train(["--resume", str(run_dir), "--set", "out_dir=elsewhere"])


# -- faults -----------------------------------------------------------------------------------


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    code, run_dir = run(tmp_path, "learner.fault=nan", "learner.fault_at=5")
    assert code == 1
    err = capsys.readouterr().err
    assert "TrainingError: update 5: metric 'loss' is nan" in err
    assert "stopped without checkpointing this state; the last good checkpoint is " \
           f"{run_dir}/checkpoints/update-000004 (resume with --resume {run_dir})" in err
    last = latest_checkpoint(run_dir / "checkpoints")
    assert last.name == "update-000004"
    assert all(torch.isfinite(t).all() for k, t in weights(last).items() if k != "rng")
    assert [r["update"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]


def test_ctrl_c_in_collect_saves_last_completed_update(tmp_path, capsys):
    code, run_dir = run(tmp_path, "checkpoint_every=10", "learner.fault=interrupt_collect",
                        "learner.fault_at=4")
    assert code == 130
    assert f"Interrupted: interrupted after update 3; saved {run_dir}/checkpoints/update-000003" \
        in capsys.readouterr().err
    assert latest_checkpoint(run_dir / "checkpoints").name == "update-000003"


def test_first_ctrl_c_finishes_the_update_then_saves(tmp_path, capsys):
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in a background job
    code, run_dir = run(tmp_path, "checkpoint_every=10", "learner.fault=sigint", "learner.fault_at=2")
    assert code == 130
    assert "stopping after this update" in capsys.readouterr().err
    assert latest_checkpoint(run_dir / "checkpoints").name == "update-000002"
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_ctrl_c_inside_update_does_not_save_a_half_state(tmp_path, capsys):
    code, run_dir = run(tmp_path, "learner.fault=interrupt_update", "learner.fault_at=3")
    assert code == 130
    assert "interrupted during update; not saving a possibly half-applied state; the last good " \
           "checkpoint is" in capsys.readouterr().err
    assert latest_checkpoint(run_dir / "checkpoints").name == "update-000002"


def test_scorer_error_mid_run(tmp_path, capsys):
    code, run_dir = run(tmp_path, "checkpoint_every=10", "learner.fault=scorer", "learner.fault_at=3")
    assert code == 1
    err = capsys.readouterr().err
    assert "ScorerError: scorer engine died: worker exited with code -9" in err
    assert "scorer failed after update 2; saved" in err and "update-000002" in err
    assert latest_checkpoint(run_dir / "checkpoints").name == "update-000002"


def test_learner_must_count_its_updates(tmp_path):
    config, learner = load_config(write_config(tmp_path / "c.yaml", out_dir=str(tmp_path / "r"),
                                               learner={"fault": "stuck", "fault_at": 1}))
    with pytest.raises(TrainingError, match="learner.update must add 1 to learner.updates: it went 0 -> 0"):
        train(config, learner, progress=False, plots=False)


def test_corrupt_metrics_row(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"update": 1}\n{"upd\n{"update": 3}\n')
    with pytest.raises(TrainingError, match=r"metrics.jsonl:2: corrupt metrics row"):
        read_jsonl(path)
    path.write_text('{"update": 1}\n{"upd')  # a torn last line (killed mid-write) is dropped
    assert read_jsonl(path) == [{"update": 1}]


# -- eval and plot ----------------------------------------------------------------------------


def test_eval_command(tmp_path, capsys):
    _, run_dir = run(tmp_path, "updates=8")
    capsys.readouterr()
    checkpoint = run_dir / "checkpoints" / "update-000008"
    assert main_eval([str(checkpoint), "--task", "RePro-MathEasy-v0", "--samples", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| metric | greedy | avg@5 |"
    assert lines[2].startswith("| accuracy | 1 | 0.")  # trained: greedy picks the correct answer
    assert main_eval([str(run_dir)]) == 0  # a run dir means its latest checkpoint


def test_eval_errors(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint '.*missing' does not exist"):
        main_eval([str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match=r"field 'problems' must be an int >= 1, got 0 \(int\)"):
        main_eval([str(tmp_path), "--problems", "0"])


def test_plot_redraws(tmp_path, capsys):
    _, run_dir = run(tmp_path, "updates=2")
    for png in (run_dir / "plots").glob("*.png"):
        png.unlink()
    capsys.readouterr()
    assert main_plot([str(run_dir)]) == 0
    assert f"{run_dir}/plots/accuracy.png" in capsys.readouterr().out
    assert (run_dir / "plots" / "losses.png").stat().st_size > 5000
    with pytest.raises(TrainingError, match="no metrics.jsonl; expected a run directory"):
        main_plot([str(tmp_path)])


def test_plot_several_runs_side_by_side(tmp_path, capsys):
    _, first = run(tmp_path, "updates=2", name="first")
    _, second = run(tmp_path, "updates=2", "seed=1", name="second")
    with pytest.raises(ConfigError, match=r"--out is needed with several run directories \(2 given\)"):
        main_plot([str(first), str(second)])
    capsys.readouterr()
    assert main_plot([str(first), str(second), "--out", str(tmp_path / "both")]) == 0
    assert f"{tmp_path}/both/held_out.png" in capsys.readouterr().out
    assert (tmp_path / "both" / "held_out.png").stat().st_size > 5000
    table = (tmp_path / "both" / "held_out.md").read_text()
    evals = {d: len((d / "eval.jsonl").read_text().splitlines()) for d in (first, second)}
    assert sum(line.startswith(f"| {first.name} | ") for line in table.splitlines()) == evals[first] + 1
    assert f"| {second.name} | 2 | " in table  # its seconds per update


def test_module_entry_point(tmp_path, capsys):
    assert main(["bogus"]) == 2
    assert main(["plot", str(tmp_path)]) == 2
    assert "TrainingError: " in capsys.readouterr().err


# -- the real GRPO learner through the harness ------------------------------------------------


def straight_and_resumed(tmp_path, fields) -> Path:
    """Run ``fields`` for 2 updates straight (``tmp_path/straight``) and as 1 + resume + 1; the latter's dir."""
    assert run(tmp_path, name="straight", **fields)[0] == 0
    code, half = run(tmp_path, "updates=1", name="halves", **fields)
    assert code == 0
    assert main_train(["--resume", str(half), "--set", "updates=2", "--no-progress", "--no-plots"]) == 0
    return half


def test_grpo_resume_reproduces_an_uninterrupted_run(tmp_path, tiny_llama_dir):
    """2 updates straight vs 1 + resume + 1 with the real GRPO on the fixture Llama: same weights,
    and the same example responses in the summary."""
    fields = {"algorithm": "grpo", "updates": 2, "eval_every": 1, "eval_problems": 1, "eval_samples": 1,
              "checkpoint_every": 1,
              "learner": {"model": str(tiny_llama_dir), "lr": 1e-3, "prompts_per_update": 1, "group_size": 2,
                          "kl_coef": 0.0},
              "task_overrides": {"scorer": {"model": str(tiny_llama_dir)},
                                 "limits": {"max_steps": 2, "max_segment_tokens": 6, "max_total_tokens": 96}}}
    half = straight_and_resumed(tmp_path, fields)
    a = load_file(tmp_path / "straight" / "checkpoints" / "update-000002" / "policy.safetensors")
    b = load_file(half / "checkpoints" / "update-000002" / "policy.safetensors")
    initial = load_file(tiny_llama_dir / "model.safetensors")
    assert not torch.equal(a["policy.lm_head.weight"], initial["lm_head.weight"])  # it did train
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = read_jsonl(half / "metrics.jsonl")
    assert [r["update"] for r in rows] == [1, 2] and {"loss", "accuracy", "tokens_per_response"} <= set(rows[0])
    examples = read_jsonl(half / "examples.jsonl")
    assert examples == read_jsonl(tmp_path / "straight" / "examples.jsonl")
    assert [e["update"] for e in examples] == [0, 1, 2] and examples[0]["problem"]
    assert all(e["text"] and e["tokens"] > 0 for e in examples)
    summary = (half / "summary.md").read_text()
    assert f"Update 0 ({'correct' if examples[0]['correct'] else 'wrong'}, {examples[0]['tokens']} tokens)" in summary
    assert "Update 2 (" in summary and "Update 1 (" not in summary and examples[-1]["text"].strip() in summary


def test_ppo_resume_with_its_value_head_and_a_kl_term_reproduces_an_uninterrupted_run(tmp_path, tiny_llama_dir):
    """PPO has a second parameter group (the value head, its own lr) and kl_coef > 0 a frozen
    reference copy: 2 updates straight vs 1 + resume + 1 give the same policy, value head and
    optimiser state. The KL term only pulls once the policy has moved (update 2), so a reference
    rebuilt from the resumed weights instead of the starting model would change update 2."""
    fields = {"algorithm": "ppo", "updates": 2, "eval_every": 0, "checkpoint_every": 1,
              "learner": {"model": str(tiny_llama_dir), "lr": 1e-3, "value_lr": 1e-2, "episodes_per_update": 2,
                          "kl_coef": 0.5, "micro_batch_size": 2},
              "task_overrides": {"scorer": {"model": str(tiny_llama_dir)},
                                 "limits": {"max_steps": 2, "max_segment_tokens": 6, "max_total_tokens": 96}}}
    half = straight_and_resumed(tmp_path, fields)
    straight, resumed = (root / "checkpoints" / "update-000002" for root in (tmp_path / "straight", half))
    files = sorted(p.name for p in straight.glob("*.safetensors"))
    assert files == sorted(p.name for p in resumed.glob("*.safetensors")) and files
    tensors = {name: (load_file(straight / name), load_file(resumed / name)) for name in files}
    keys = [k for a, _ in tensors.values() for k in a]
    assert any("value_head" in k for k in keys)  # the critic is in the checkpoint
    for a, b in tensors.values():
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    rows = read_jsonl(half / "metrics.jsonl")
    assert [r["update"] for r in rows] == [1, 2] and rows[1]["kl"] > 0 and "value_loss" in rows[1]


def test_resume_skips_a_corrupt_latest_checkpoint_with_a_warning_and_redoes_its_updates(tmp_path):
    """A flipped byte in the newest checkpoint: resume warns, continues from the previous good one
    (update 2), drops the metrics rows past it, and ends where an uninterrupted run ends."""
    assert run(tmp_path, name="straight")[0] == 0
    code, half = run(tmp_path, "updates=4", name="halves")  # checkpoints at updates 2 and 4
    assert code == 0
    state = half / "checkpoints" / "update-000004" / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[-1] ^= 0xFF  # same size, different float
    state.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"skipped 1 newer checkpoint\(s\) that could not be loaded, resuming "
                                         r"from .*update-000002: .*update-000004/state.safetensors: corrupt: "
                                         r"its sha256 differs"):
        assert main_train(["--resume", str(half), "--set", "updates=6", "--no-progress", "--no-plots"]) == 0
    a = weights(latest_checkpoint(tmp_path / "straight" / "checkpoints"))
    b = weights(latest_checkpoint(half / "checkpoints"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = read_jsonl(half / "metrics.jsonl")
    assert [r["update"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows] == [r["loss"] for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl")]


def test_resume_after_a_hard_kill_drops_the_metrics_rows_past_the_checkpoint(tmp_path):
    """SIGKILL after updates 5 and 6 were logged but before checkpoint 6 was renamed into place:
    rows 5 and 6 are written again once, from the state of checkpoint 4, not appended twice."""
    assert run(tmp_path, name="straight")[0] == 0
    code, killed = run(tmp_path, name="killed")
    assert code == 0
    shutil.rmtree(killed / "checkpoints" / "update-000006")
    (killed / "checkpoints" / "latest").write_text("update-000006\n")  # the pointer may be stale too
    assert [r["update"] for r in read_jsonl(killed / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert main_train(["--resume", str(killed), "--no-progress", "--no-plots"]) == 0
    rows = read_jsonl(killed / "metrics.jsonl")
    assert [r["update"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows] == [r["loss"] for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl")]
    assert [r["update"] for r in read_jsonl(killed / "eval.jsonl")] == [
        r["update"] for r in read_jsonl(tmp_path / "straight" / "eval.jsonl")]
