"""``repro-env train`` / ``eval`` / ``plot``: drive any :class:`repro_env.agents.base.Learner` from a YAML config
(the config, the learner registry and resume rules: :mod:`repro_env.agents.run_config`).

A run is ``collect → update`` repeated ``updates`` times, with held-out evaluation every
``eval_every`` updates (and before the first and after the last), a checkpoint every
``checkpoint_every`` updates (and after the last), metrics after every update, and at the end a
summary table and PNG curves. The run directory::

    config.yaml                     the resolved config (learner section filled with its defaults)
    metrics.jsonl / metrics.csv     one row per update: learner metrics + timings
    eval.jsonl / eval.csv           one row per evaluation: greedy_* and sampled_* (avg@n) metrics
    examples.jsonl / examples.csv   per evaluation, the greedy episode of test problem 0 (its text)
    checkpoints/update-000010/      atomic, verified (agents/checkpoint.py); ``latest`` names the newest
    plots/*.png  summary.md
    .lock                           held by the one run using the directory (its PID inside)

A second run on the same directory fails before writing anything, naming the PID that holds it. Everything that
can reject the config (model path, device, seed) is checked before the directory is created.

Faults: a NaN/inf metric stops the run without checkpointing the bad state (the last good
checkpoint stays); Ctrl-C finishes the current update, checkpoints it and exits 130 (a second
Ctrl-C stops at once, checkpointing only if no update was half-applied); a ``ScorerError``
checkpoints the last completed update and exits 1. ``--resume RUN_DIR`` continues from the latest
checkpoint and reproduces an uninterrupted run exactly when the learner saves its RNG states and
its ``evaluate`` does not draw from its training RNG.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from repro_env.agents.checkpoint import (
    CHECKPOINTS,
    CONFIG,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    load_latest_good,
    locked_run_dir,
    prune_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from repro_env.agents.metrics import MetricsLog, summary_table
from repro_env.agents.run_config import (
    TrainConfig,
    build_learner,
    dump_config,
    load_config,
    parse_config,
    read_config_yaml,
    resume_config,
    task_for,
)
from repro_env.config import check
from repro_env.errors import ConfigError, ReproEnvError, ScorerError, TrainingError

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT


# -- the run ----------------------------------------------------------------------------------


@contextlib.contextmanager
def deferred_interrupt(state: dict[str, Any]) -> Iterator[None]:
    """First Ctrl-C sets ``state['stop']`` (the loop stops after the current update); the second raises."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if state.get("stop"):
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        state["stop"] = True
        print("\nCtrl-C: stopping after this update and saving a checkpoint (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _non_finite(metrics: Mapping[str, Any]) -> list[str]:
    return [k for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and not math.isfinite(v)]


def _postfix(row: Mapping[str, Any]) -> dict[str, str]:
    short = {"accuracy": "acc", "outcome_reward": "R", "process_reward": "proc", "loss": "loss", "kl": "kl",
             "tokens_per_response": "tok"}
    return {name: f"{row[key]:.3g}" for key, name in short.items() if isinstance(row.get(key), int | float)}


class Trainer:
    """One run of ``config``: owns the learner, the metric logs and the checkpoint directory."""

    def __init__(self, config: TrainConfig, learner_config: Any, *, progress: bool = True,
                 plots: bool = True):
        self.config = config
        self.plots = plots
        self.learner_config = learner_config
        self.progress = progress
        self.run_dir = Path(config.out_dir or "runs/unnamed")
        self.ckpt_root = self.run_dir / CHECKPOINTS
        self.phase = "setup"
        self.interrupt: dict[str, Any] = {"stop": False}
        self.last_checkpoint: Path | None = None
        self.learner: Any = None

    def _evaluate(self) -> dict[str, Any]:
        cfg, start = self.config, time.perf_counter()
        row: dict[str, Any] = {"update": int(self.learner.updates)}
        greedy = self.learner.evaluate(num_problems=cfg.eval_problems, greedy=True)
        row |= {f"greedy_{k}": v for k, v in greedy.items()}
        if cfg.eval_samples > 1:
            sampled = self.learner.evaluate(num_problems=cfg.eval_problems, greedy=False,
                                            samples=cfg.eval_samples)
            row |= {f"sampled_{k}": v for k, v in sampled.items()} | {"samples": cfg.eval_samples}
        self._log_example()
        return row | {"eval_seconds": time.perf_counter() - start}

    def _log_example(self) -> None:
        """The greedy response to test problem 0, for the summary's before/after (learners with
        ``evaluate_episodes``: one more greedy episode, about 0.1 s on the bundled model)."""
        episodes = getattr(self.learner, "evaluate_episodes", None)
        if episodes is None:
            return
        episode = episodes(num_problems=1, greedy=True)[0]
        self.examples.append({"update": int(self.learner.updates), "problem": episode.problem_id,
                              "correct": bool(episode.correct), "tokens": episode.response_tokens,
                              "text": episode.trace.text})

    def _checkpoint(self) -> Path:
        self.last_checkpoint = save_checkpoint(self.learner, self.ckpt_root,
                                               config_yaml=dump_config(self.config, self.learner_config))
        prune_checkpoints(self.ckpt_root, self.config.keep_checkpoints)
        return self.last_checkpoint

    def _where(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint is {self.last_checkpoint} (resume with --resume {self.run_dir})"

    def _save_if_consistent(self, what: str) -> str:
        """After a fault: checkpoint unless an update was half-applied; say what happened."""
        if self.learner is None or self.phase in ("setup", "update"):
            return f"{what} during {self.phase}; not saving a possibly half-applied state; {self._where()}"
        if self.last_checkpoint is None or self.last_checkpoint.name != checkpoint_name(self.learner.updates):
            self._checkpoint()
        return f"{what} after update {self.learner.updates}; saved {self.last_checkpoint}; " \
               f"resume with --resume {self.run_dir}"

    def _check_fresh(self, resume: bool) -> None:
        if not resume and latest_checkpoint(self.ckpt_root) is not None:
            raise ConfigError(f"field 'out_dir' {str(self.run_dir)!r} already holds a run with checkpoints; "
                              f"pass --resume {self.run_dir} to continue it, or choose another out_dir")

    def start(self, resume: bool) -> int:
        """With the run directory locked and the learner built: restore the latest checkpoint when
        resuming, else start the logs afresh; write the config; return the first update."""
        self._check_fresh(resume)  # again under the lock: another run may have started here meanwhile
        self.metrics = MetricsLog(self.run_dir, "metrics")
        self.evals = MetricsLog(self.run_dir, "eval")
        self.examples = MetricsLog(self.run_dir, "examples")
        if resume:
            self.last_checkpoint = load_latest_good(self.learner, self.ckpt_root)
            if self.learner.updates > self.config.updates:  # the run's files would contradict its config
                raise ConfigError(f"field 'updates' is {self.config.updates}, but {self.run_dir} has done "
                                  f"{self.learner.updates} updates; resume with updates >= {self.learner.updates}")
            self.metrics.truncate_after(self.learner.updates)
            self.evals.truncate_after(self.learner.updates)
            self.examples.truncate_after(self.learner.updates)
        else:
            self.metrics.truncate_after(0)
            self.evals.truncate_after(-1)
            self.examples.truncate_after(-1)
        (self.run_dir / CONFIG).write_text(dump_config(self.config, self.learner_config), encoding="utf-8")
        return int(self.learner.updates)

    def step(self) -> dict[str, Any]:
        """One collect + update; raises ``TrainingError`` on a non-finite metric (nothing saved)."""
        before, t0 = int(self.learner.updates), time.perf_counter()
        self.phase = "collect"
        batch = self.learner.collect()
        t1 = time.perf_counter()
        self.phase = "update"
        metrics = dict(self.learner.update(batch))
        t2 = time.perf_counter()
        bad = _non_finite(metrics)
        if bad:
            self.phase = "failed"
            raise TrainingError(f"update {before + 1}: metric {bad[0]!r} is {metrics[bad[0]]} "
                                f"(non-finite: {', '.join(bad)})")
        if int(self.learner.updates) != before + 1:
            raise TrainingError(f"learner.update must add 1 to learner.updates: it went {before} -> "
                                f"{self.learner.updates}")
        self.phase = "idle"
        return {"update": before + 1, **metrics, "collect_seconds": t1 - t0, "update_seconds": t2 - t1}

    def run(self, resume: bool = False) -> Path:
        """Train to ``config.updates``; raises TrainingError / ScorerError / TrainingInterrupted."""
        from tqdm import tqdm

        cfg = self.config
        with deferred_interrupt(self.interrupt):
            # Everything that can reject the config (the model, the device) comes before the run
            # directory is created: a failed start leaves nothing behind.
            self._check_fresh(resume)
            self.learner = build_learner(self.config, self.learner_config)
            with locked_run_dir(self.run_dir):
                first = self.start(resume)
                bar = tqdm(total=cfg.updates, initial=first, unit="update", dynamic_ncols=True,
                           disable=not self.progress, desc=self.run_dir.name)
                try:
                    self._loop(first, bar)
                except KeyboardInterrupt as e:
                    raise TrainingInterrupted(self._save_if_consistent("interrupted")) from e
                except ScorerError as e:
                    raise ScorerError(f"{e}\n  {self._save_if_consistent('scorer failed')}") from e
                except TrainingError as e:  # NaN/inf (ours or the learner's): never checkpoint that state
                    where = self._where()
                    raise TrainingError(f"{e}\n  stopped without checkpointing this state; {where}") from e
                finally:
                    bar.close()
                    self.finish()
        return self.run_dir

    def _loop(self, first: int, bar: Any) -> None:
        cfg, start = self.config, time.perf_counter()
        if first == 0 and cfg.eval_every:
            self.phase = "eval"
            self.evals.append(self._evaluate())
        for _ in range(first, cfg.updates):
            row = self.step()
            row["elapsed_seconds"] = time.perf_counter() - start
            self.metrics.append(row)
            bar.update(1)
            bar.set_postfix(_postfix(row), refresh=False)
            update, last = row["update"], row["update"] == cfg.updates
            if cfg.eval_every and (update % cfg.eval_every == 0 or last):
                self.phase = "eval"
                self.evals.append(self._evaluate())
                self.phase = "idle"
            if update % cfg.checkpoint_every == 0 or last:
                self._checkpoint()
            if self.interrupt["stop"]:
                raise KeyboardInterrupt

    def finish(self) -> None:
        """Write ``summary.md`` and the plots from whatever the run logged."""
        if not (self.run_dir / "metrics.jsonl").is_file():
            return
        from repro_env.agents.plots import plot_run

        (self.run_dir / "summary.md").write_text(summary_table(self.run_dir), encoding="utf-8")
        if self.plots:
            plot_run(self.run_dir)


class TrainingInterrupted(TrainingError):
    """Ctrl-C stopped the run (the message says which checkpoint holds the last completed update)."""


def train(config: TrainConfig, learner_config: Any, *, resume: bool = False, progress: bool = True,
          plots: bool = True) -> Path:
    """Run (or resume) training; return the run directory."""
    return Trainer(config, learner_config, progress=progress, plots=plots).run(resume)


# -- command line -----------------------------------------------------------------------------


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repro-env train", description="Train a learner from a config.")
    parser.add_argument("config", nargs="?", help="train config YAML (optional with --resume)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, dotted for nesting: --set learner.lr=1e-5")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true",
                        help="skip the PNGs (repro-env plot draws them)")
    return parser


def main_train(argv: Sequence[str] | None = None) -> int:
    """``repro-env train CONFIG [--set k=v ...] [--resume RUN_DIR]``; exit 0, 1 (failed) or 130 (Ctrl-C).

    Config and checkpoint errors propagate as ``ReproEnvError`` (the CLI prints them, exit 2).
    """
    args = _train_parser().parse_args(argv)
    if args.resume:
        config, learner_config = resume_config(Path(args.resume), args.config, args.sets)
    elif args.config:
        config, learner_config = load_config(args.config, args.sets)
    else:
        raise ConfigError("repro-env train: give a CONFIG file, or --resume RUN_DIR")
    try:
        run_dir = train(config, learner_config, resume=bool(args.resume), progress=not args.no_progress,
                        plots=not args.no_plots)
    except TrainingInterrupted as e:
        print(f"Interrupted: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (TrainingError, ScorerError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    print((run_dir / "summary.md").read_text(encoding="utf-8"))
    print(f"Run directory: {run_dir}")
    return 0


def evaluate_checkpoint(checkpoint: str | Path, *, task: str | None = None, problems: int | None = None,
                        samples: int | None = None) -> dict[str, dict[str, float]]:
    """Greedy and (with ``samples`` > 1) avg@samples metrics of a checkpoint on ``task``'s test split."""
    directory = resolve_checkpoint(checkpoint)
    config, learner_config = parse_config(read_config_yaml(directory / CONFIG), source=str(directory / CONFIG))
    if task is not None:  # a new task keeps the overrides about the model and budget, not the problems
        kept = {k: v for k, v in config.task_overrides.items() if k in ("scorer", "limits", "reward")}
        config = dataclasses.replace(config, task=task, task_overrides=kept)
        task_for(config, validate=True)
    learner = build_learner(config, learner_config)
    load_checkpoint(learner, directory)
    problems = problems or config.eval_problems
    samples = samples or config.eval_samples
    results = {"greedy": dict(learner.evaluate(num_problems=problems, greedy=True))}
    if samples > 1:
        sampled = learner.evaluate(num_problems=problems, greedy=False, samples=samples)
        results[f"avg@{samples}"] = dict(sampled)
    return results


def format_results(results: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table: one row per metric, one column per decoding mode."""
    modes = list(results)
    keys = list(dict.fromkeys(k for m in modes for k in results[m]))
    lines = ["| metric | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
    for k in keys:
        cells = [f"{results[m][k]:.4g}" if isinstance(results[m].get(k), int | float) else "-" for m in modes]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main_eval(argv: Sequence[str] | None = None) -> int:
    """``repro-env eval CHECKPOINT [--task ID] [--problems N] [--samples n]``: print a metrics table."""
    parser = argparse.ArgumentParser(prog="repro-env eval", description="Evaluate a checkpoint.")
    parser.add_argument("checkpoint", help="checkpoint dir, or a run dir (its latest checkpoint)")
    parser.add_argument("--task", help="task id or YAML (default: the run's training task)")
    parser.add_argument("--problems", type=int, help="held-out problems (default: the run's eval_problems)")
    parser.add_argument("--samples", type=int, help="n of avg@n at temperature 1 (default: the run's)")
    args = parser.parse_args(argv)
    for name in ("problems", "samples"):
        value = getattr(args, name)
        check(value is None or value >= 1, name, value, "an int >= 1")
    results = evaluate_checkpoint(args.checkpoint, task=args.task, problems=args.problems,
                                  samples=args.samples)
    print(format_results(results))
    return 0


def main_plot(argv: Sequence[str] | None = None) -> int:
    """``repro-env plot RUN_DIR``: redraw ``RUN_DIR/plots/*.png`` and ``summary.md`` from the metrics;
    ``repro-env plot RUN_DIR RUN_DIR ... --out DIR``: the runs' held-out curves side by side."""
    from repro_env.agents.plots import plot_run, plot_runs

    parser = argparse.ArgumentParser(prog="repro-env plot", description=main_plot.__doc__)
    parser.add_argument("run_dirs", nargs="+", metavar="run_dir")
    parser.add_argument("--out", help="with several runs: where held_out.png and held_out.md go")
    args = parser.parse_args(argv)
    run_dirs = [Path(d) for d in args.run_dirs]
    for run_dir in run_dirs:
        if not (run_dir / "metrics.jsonl").is_file():
            raise TrainingError(f"{run_dir}: no metrics.jsonl; expected a run directory written by "
                                f"repro-env train")
    if len(run_dirs) > 1:
        if args.out is None:
            raise ConfigError(f"--out is needed with several run directories ({len(run_dirs)} given): "
                              "the directory for held_out.png and held_out.md")
        paths = plot_runs(run_dirs, Path(args.out))
    else:
        (run_dirs[0] / "summary.md").write_text(summary_table(run_dirs[0]), encoding="utf-8")
        paths = plot_run(run_dirs[0])
    for path in paths:
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.train {train,eval,plot} ...`` (what ``repro-env`` forwards to)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": main_train, "eval": main_eval, "plot": main_plot}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m agents.train {{{','.join(commands)}}} ...", file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](argv[1:])
    except ReproEnvError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
