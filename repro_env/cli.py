"""``repro-env``: list, show, check and roll out tasks; pretrain the tiny model; train, eval, plot, compare.

Each subcommand imports what it needs when it runs, so ``repro-env list`` starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from repro_env.errors import ReproEnvError


def cmd_list(args: argparse.Namespace) -> int:
    import repro_env
    from repro_env.tasks import load_task

    rows = [(task_id, load_task(task_id).description.strip().splitlines()[0])
            for task_id in repro_env.registered_ids()]
    width = max(len(r[0]) for r in rows)
    for task_id, description in rows:
        print(f"{task_id:<{width}}  {description}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from repro_env.tasks import check_task_file

    print(check_task_file(args.task, samples=0))
    return 0


def cmd_tasks_check(args: argparse.Namespace) -> int:
    from repro_env.tasks import check_task_file

    print(check_task_file(args.file))
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from repro_env.transcripts import rollout_main

    return rollout_main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from repro_env.transcripts import demo_main

    return demo_main(args)


def cmd_vllm_serve(args: argparse.Namespace) -> int:
    import os
    import shlex

    from repro_env.scoring.server import server_command, server_environment

    extra = args.vllm_args[1:] if args.vllm_args[:1] == ["--"] else args.vllm_args
    command = server_command(args.model, args.port, args.host, args.max_model_len, args.max_logprobs, extra)
    print(" ".join(shlex.quote(part) for part in command), flush=True)
    os.execve(command[0], command, server_environment())


def cmd_score(args: argparse.Namespace) -> int:
    from repro_env.diagnostics import score_main

    return score_main(args)


def _forward(module: str, function: str, argv: Sequence[str]) -> int:
    """A subcommand whose arguments are parsed by another module's ``main(argv)``."""
    import importlib

    return int(getattr(importlib.import_module(module), function)(list(argv)) or 0)


FORWARDED = {
    "pretrain-tiny": ("repro_env.pretrain", "main", "train the bundled tiny math model from scratch"),
    "train": ("repro_env.agents.train", "main_train", "train a policy with GRPO or PPO (+ RePro) from a config"),
    "eval": ("repro_env.agents.train", "main_eval", "evaluate a checkpoint on a task's held-out split"),
    "plot": ("repro_env.agents.train", "main_plot", "redraw a run's PNG plots from its metrics"),
    "compare": ("repro_env.agents.compare", "main", "RePro vs outcome-only, GRPO and PPO, several seeds"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repro-env", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("list", help="registered task ids with one-line descriptions").set_defaults(run=cmd_list)
    show = sub.add_parser("show", help="the resolved spec of a task id or YAML file")
    show.add_argument("task")
    show.set_defaults(run=cmd_show)

    tasks = sub.add_parser("tasks", help="task files").add_subparsers(dest="tasks_command", required=True)
    check = tasks.add_parser("check", help="validate a task YAML, print its spec and three problems")
    check.add_argument("file")
    check.set_defaults(run=cmd_tasks_check)

    rollout = sub.add_parser("rollout", help="run episodes and print each segment's J, scores and rewards")
    rollout.add_argument("task")
    rollout.add_argument("--policy", default="reference",
                         help="'reference' (the task's reference solutions), 'bundled', 'bundled-overthinker' "
                              "or a model dir")
    rollout.add_argument("--episodes", type=int, default=3)
    rollout.add_argument("--seed", type=int, default=0)
    rollout.add_argument("--split", default="test")
    rollout.add_argument("--scorer", default=None, help="scorer model (default: the task's, usually 'bundled')")
    rollout.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (model policies)")
    rollout.set_defaults(run=cmd_rollout)

    serve = sub.add_parser("vllm-serve", help="serve a model for the vllm-server backend (prints the command)")
    serve.add_argument("--model", default="bundled", help="model directory, hub id, 'bundled' or 'bundled-overthinker'")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--max-model-len", type=int, default=None)
    serve.add_argument("--max-logprobs", type=int, default=600, help="top log-probs per request (exact entropy)")
    serve.add_argument("vllm_args", nargs=argparse.REMAINDER,
                       help="after --: further arguments of vLLM's server, e.g. -- --block-size 32")
    serve.set_defaults(run=cmd_vllm_serve)
    demo = sub.add_parser("demo", help="scoring demo: J and rewards of reference solutions vs overthinking")
    demo.add_argument("--quick", action="store_true", help="a smaller run, for smoke tests")
    demo.set_defaults(run=cmd_demo)

    score = sub.add_parser("score", help="RePro diagnostics of existing reasoning traces: J curves, r~, backtracks")
    score.add_argument("traces", help="JSONL file: one {question, response, answer} object per line")
    score.add_argument("--model", help="scorer model: a directory, hub id, 'bundled' or 'bundled-overthinker' "
                            "(default: the task's)")
    score.add_argument("--backend", help="scorer backend: hf, vllm or vllm-server (default: the task's)")
    score.add_argument("--base-url", default=None, help="vllm-server: the server's address")
    score.add_argument("--task", default="RePro-Math-v0", help="task id or YAML: prompt/answer templates, delimiter")
    score.add_argument("--out", default=None, help="output directory (default: TRACES_STEM_scores)")
    score.add_argument("--question-field", default="question")
    score.add_argument("--response-field", default=None,
                       help="default: the first of response, reasoning, solution, completion, output")
    score.add_argument("--answer-field", default="answer")
    score.add_argument("--id-field", default="id")
    score.add_argument("--no-template", action="store_true", help="the question field is the whole prompt")
    score.add_argument("--skip-bad", action="store_true", help="skip and count bad lines instead of stopping")
    score.add_argument("--batch-size", type=int, default=8, help="traces per forward pass")
    score.add_argument("--report-limit", type=int, default=50, help="traces in the report (lowest return first)")
    score.add_argument("--no-plots", action="store_true", help="no PNGs and no HTML report")
    score.set_defaults(run=cmd_score)

    for name, (_, _, help_text) in FORWARDED.items():  # listed in --help; main() hands them their argv
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # A forwarded command gets every argument after its name, options first included
        # (``train --resume DIR``, ``eval --help``): argparse's REMAINDER would refuse those.
        if argv and argv[0] in FORWARDED:
            module, function, _ = FORWARDED[argv[0]]
            return _forward(module, function, argv[1:])
        args = build_parser().parse_args(argv)
        return args.run(args)
    except ReproEnvError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
