"""RePro diagnostics for reasoning traces that already exist (``repro-env score``, ``score_traces``).

A traces file holds one JSON object per line: a question, the reasoning or the full response, and
the gold answer (field names in :class:`TraceFields`; lines parsed by :mod:`repro_env.traces`). For
every trace the scorer computes J at the baseline and after every segment in one tree-masked
pass (REPRO_SPEC §2, §7), and :func:`repro_env.reward.reward_points` turns that into the
per-segment S_magn, S_stab, S and r̃ (§3–§4), exactly as the env computes them online with
``selection: all``::

    J_t = (1/|a|) · Σ_i log π(a_i | q, τ≤t, a_<i)             t = 0..T
    S_t = (1−w)·S_magn,t + w·S_stab,t,   r̃_t = S_t − S_{t−1}   (S_0 = 0)

Per trace: J_T − J_0 (the J gain), the process return Σ_t r̃_t = S_T, backtracks (task patterns,
§6), whether the final answer verifies (``verify.outcome_reward``), and the overthinking measures of
:mod:`repro_env.overthinking`: whether any segment overthinks (a backtrack or a repeated
computation), the overthinking segments and their tokens, and the tokens after the first correct
answer (``None`` where the trace never states the gold answer in its reasoning or the task's
``answer_location`` is ``none``; its mean is over the traces where it applies, "n/a" when none).

How a response becomes segments: ``TaskSpec.split_response`` (:func:`repro_env.segments.split_response`,
the one definition the env and the TRL trainer share):

- a string is split on the task's delimiter; a list of strings is taken as the segments. Every
  segment ends with the delimiter, as in ``env.step``, so J_T is what the env would pay;
- a response with a think block (R1 style: ``</think>``, ``<think>`` optional; the task's
  ``think_tags``) is split on its think part, as in the paper: the text up to and including
  ``<think>`` joins the prompt, the think part is τ, and the text after ``</think>`` is where the
  final answer is read. **(choice)** J appends ``a`` right after ``q + τ≤t`` (§2), without a
  ``</think>`` tag in between;
- without a think block, the reasoning ends before the segment that states the final answer
  (REPRO_SPEC §4), as in the env: that segment and any after it are shown, marked ``"scored":
  false``, with ``r`` 0 and ``None`` for J, S_magn, S_stab and S, and no J is computed for them.
  J_T, the J gain and S_T are those of the end of the reasoning.

Every point of the reasoning is scored, whatever the task's ``reward.selection``: a diagnostic wants
the whole curve.
Input is streamed: lines are read, scored and written in chunks, so memory does not grow with the
file (only the ``report_limit`` worst traces are kept for the report). A bad line (missing field,
invalid JSON or UTF-8, no final answer, longer than the scorer's context) is a
:class:`TraceInputError` naming the file, line and field, or, with ``skip_bad``, a skipped entry
that is counted and written to ``skipped.jsonl``.
"""

from __future__ import annotations

import csv
import dataclasses
import heapq
import json
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from repro_env import reward as rp
from repro_env.config import check
from repro_env.diagnostics_summary import CSV_COLUMNS, Summary, csv_rows, format_summary
from repro_env.errors import ConfigError, TraceInputError
from repro_env.overthinking import mark_segments, response_figures
from repro_env.segments import tokenize_with_boundaries
from repro_env.tasks import TaskSpec, resolve_task
from repro_env.traces import TraceFields, TraceLine, TraceReader, read_lines
from repro_env.verify import extract_answer, is_collection, outcome_reward

OUTPUT_FILES = ("scores.jsonl", "scores.csv", "skipped.jsonl", "summary.json", "report.html", "curves.png")
"""What ``repro-env score --out DIR`` writes into DIR (besides ``plots/``)."""
# ---------------------------------------------------------------------------------------------
# Scoring


def trace_row(trace: TraceLine, J: np.ndarray, entropies: np.ndarray, task: TaskSpec) -> dict[str, Any]:
    """The plain-data row of one scored trace. ``J``: (R+1,) = [J_0, J_1..J_R] over the R =
    ``trace.reasoning`` scored segments; ``entropies``: (T,), every segment."""
    R = trace.reasoning
    parts = rp.reward_points(task.reward, J, selection="all")  # (R,) each; empty when R = 0
    magnitude, stability, score, rewards = parts.magnitude, parts.stability, parts.score, parts.rewards
    backtracks = [task.is_backtrack(s) for s in trace.segments]
    marks = mark_segments(trace.segments, trace.gold, location=task.answer_location, is_backtrack=task.is_backtrack,
                          final_answer=None if trace.think else task.final_answer_regex)
    figures = response_figures(marks, trace.tokens)
    after = marks.after_answer or (None,) * len(trace.segments)
    pattern = task.final_answer_pattern if task.final_answer_regex.groups else None
    correct = outcome_reward(trace.response, trace.gold, verifier=task.verifier.kind, pattern=pattern,
                             timeout_s=task.verifier.timeout_s) >= 1.0
    def point(t: int) -> dict[str, Any]:
        if t > R:  # the segment that states the final answer, or after it: not scored (REPRO_SPEC §4)
            return {"scored": False, "J": None, "S_magn": None, "S_stab": None, "S": None, "r": 0.0}
        return {"scored": True, "J": float(J[t]), "S_magn": float(magnitude[t - 1]), "S_stab": float(stability[t - 1]),
                "S": float(score[t - 1]), "r": float(rewards[t - 1])}

    segments = [{"t": t, "text": text, **point(t),
                 "backtrack": bt, "overthinking": ot, "after_answer": aa, "tokens": int(n),
                 "entropy": float(entropies[t - 1])}
                for t, (text, bt, ot, aa, n) in enumerate(zip(trace.segments, backtracks, marks.overthinking, after,
                                                              trace.tokens, strict=True), 1)]
    return {
        "line": trace.line, "id": trace.id, "question": trace.question, "answer": trace.gold,
        "predicted": extract_answer(trace.response, pattern, all_boxes=is_collection(trace.gold)),
        "correct": bool(correct),
        "think": trace.think, "num_segments": len(segments), "scored_segments": R,
        "num_tokens": int(sum(trace.tokens)),
        "J_0": float(J[0]), "J_T": float(J[-1]), "J_gain": float(J[-1] - J[0]),
        "process_return": float(rewards.sum()), "backtracks": int(sum(backtracks)),
        "negative_rewards": int((rewards < 0).sum()),
        **{k: None if v is None else int(v) for k, v in figures.items() if k != "overthinking"},
        "overthinking": bool(figures["overthinking"]), "segments": segments,
    }


class TraceScorer:
    """Scores parsed traces in chunks: one ``scorer.score`` call (tree rows) per chunk."""

    def __init__(self, scorer: Any, task: TaskSpec, reader: TraceReader) -> None:
        self.scorer, self.task, self.reader = scorer, task, reader

    def tokenize(self, trace: TraceLine) -> TraceLine:
        """Token counts per segment, and the context check (an over-long trace is bad input)."""
        tokenizer = self.scorer.tokenizer
        ids, boundaries = tokenize_with_boundaries(tokenizer, trace.prefix, trace.segments)
        answer = len(tokenizer(trace.answer, add_special_tokens=False)["input_ids"])
        total = len(ids) + answer
        if total > self.scorer.max_length:
            raise self.reader.error(
                trace.line, trace.response_field,
                f"the trace is too long: prompt + reasoning + answer = {total} tokens, more than the "
                f"scorer's context of {self.scorer.max_length} tokens; shorten it or score with a model "
                "of a longer context")
        return dataclasses.replace(trace, tokens=tuple(int(n) for n in np.diff(boundaries)))

    def score(self, traces: list[TraceLine]) -> list[dict[str, Any]]:
        from repro_env.scoring import ScoreRequest

        requests = [ScoreRequest(t.prefix, t.segments, t.answer, points=tuple(range(1, t.reasoning + 1)))
                    for t in traces]
        results = self.scorer.score(requests)
        return [trace_row(t, r.J, r.entropies, self.task) for t, r in zip(traces, results, strict=True)]

    def rows(self, lines: Iterable[tuple[int, bytes | str | Mapping[str, Any]]], *, skip_bad: bool = False,
             chunk: int = 32) -> Iterator[dict[str, Any]]:
        """Rows in input order; a skipped line (``skip_bad``) is ``{"line", "field", "error", "skipped": True}``.

        At most ``chunk`` lines are held at once: the input is consumed as the rows are taken.
        """
        pending: list[TraceLine | dict[str, Any]] = []
        for line, raw in lines:
            try:
                trace = self.reader.from_record(line, raw) if isinstance(raw, Mapping) else self.reader.parse(line, raw)
                pending.append(self.tokenize(trace))
            except TraceInputError as e:
                if not skip_bad:
                    raise
                pending.append({"line": e.line, "field": e.field, "error": str(e), "skipped": True})
            if len(pending) >= chunk:
                yield from self._flush(pending)
                pending = []
        yield from self._flush(pending)

    def _flush(self, pending: list[TraceLine | dict[str, Any]]) -> Iterator[dict[str, Any]]:
        scored = iter(self.score([p for p in pending if isinstance(p, TraceLine)]))
        for p in pending:
            yield next(scored) if isinstance(p, TraceLine) else p


def score_traces(traces: str | Path | Iterable[Mapping[str, Any]], *, model: str | None = None,
                 backend: str | None = None,
                 task: str | TaskSpec = "RePro-Math-v0", scorer: Any = None, fields: TraceFields | None = None,
                 out: str | Path | None = None, skip_bad: bool = False, plots: bool = True,
                 report_limit: int = 50, keep_rows: bool = True, progress: bool = False,
                 scorer_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """RePro diagnostics of existing traces (module docstring); returns plain data.

    ``traces``: a JSONL path, or an iterable of dicts (one per trace). ``scorer``: a built
    :class:`~repro_env.scoring.Scorer`, else one is made from the task's scorer config with
    ``model``, ``backend`` (when given) and ``scorer_overrides`` over it. With ``out``, writes ``scores.jsonl``,
    ``scores.csv`` (one row per segment), ``summary.json``, ``skipped.jsonl`` (``skip_bad``) and,
    with ``plots``, ``curves.png``, ``plots/*.png`` and ``report.html`` for the ``report_limit``
    traces of lowest process return.

    Returns ``{"summary": {...}, "traces": [row, ...] (if keep_rows), "worst": [row, ...],
    "skipped": [{"line", "field", "error"}, ...], "files": {name: path}}``; a row is
    :func:`trace_row`'s dict (per-segment J, S_magn, S_stab, S, r, backtrack, tokens, entropy).
    """
    if not isinstance(report_limit, int) or report_limit < 0:
        raise ConfigError(f"field 'report_limit' must be an int >= 0, got {report_limit!r}")
    check(isinstance(task, str | Path | TaskSpec), "task", task, "a task id, a task YAML path or a TaskSpec")
    check(not isinstance(traces, Mapping | bytes), "traces", traces,
          "a JSONL path or an iterable of dicts, one per trace (one trace: wrap its dict in a list)")
    spec = resolve_task(task)
    fields = fields or TraceFields()
    out_dir = Path(out) if out is not None else None
    if isinstance(traces, str | Path):
        path = Path(traces)
        if path.is_dir():
            raise ConfigError(f"traces file {path} is a directory; give the JSONL file in it")
        if not path.is_file():
            raise ConfigError(f"traces file {path} does not exist (cwd: {Path.cwd()})")
        if out_dir is not None and any(path.resolve() == (out_dir / name).resolve() for name in OUTPUT_FILES):
            raise ConfigError(f"traces file {path} is one of the outputs of --out {out_dir} "
                              f"({', '.join(OUTPUT_FILES)}); scoring it there would overwrite it: choose another --out")
        total = sum(1 for _ in read_lines(path)) if progress else None  # the bar's ETA; a second read
        where, lines = str(path), read_lines(path)
    else:
        where, lines, total = "traces", enumerate(traces, 1), None
    if scorer is None:
        scorer = _make_scorer(spec, model, backend, scorer_overrides)
    reader = TraceReader(spec, fields, where, max_chars=char_limit(scorer))
    if out_dir is not None:
        own_out_dir(out_dir)
    engine = TraceScorer(scorer, spec, reader)
    result: dict[str, Any] = {"traces": [], "worst": [], "skipped": [], "files": {}}
    summary, worst, start = Summary(answer_location=spec.answer_location), [], time.perf_counter()
    with _Writers(out_dir) as writers, _progress(progress, total) as bar:
        for row in engine.rows(lines, skip_bad=skip_bad):
            bar.update(1)
            if row.get("skipped"):
                summary.skipped += 1
                result["skipped"].append({k: row[k] for k in ("line", "field", "error")})
                writers.skipped(row)
                continue
            summary.add(row)
            writers.row(row)
            if keep_rows:
                result["traces"].append(row)
            if report_limit:  # a max-heap on −return keeps the report_limit lowest returns
                heapq.heappush(worst, (-row["process_return"], -row["line"], row))
                if len(worst) > report_limit:
                    heapq.heappop(worst)
        result["files"].update(writers.files)
    summary.seconds = time.perf_counter() - start
    result["summary"] = summary.as_dict()
    result["worst"] = [row for *_, row in sorted(worst, key=lambda item: (-item[0], -item[1]))]
    if out_dir is not None:
        (out_dir / "summary.json").write_text(json.dumps(result["summary"], indent=2) + "\n")
        result["files"]["summary"] = str(out_dir / "summary.json")
        if plots and result["worst"]:
            from repro_env.diagnostics_report import write_report

            result["files"].update(write_report(out_dir, result["worst"], result["summary"], spec.id))
    return result


def char_limit(scorer: Any) -> int | None:
    """The most characters a prompt and response can have and still fit the scorer's context in some
    tokenisation: ``max_length`` tokens, each at most as long as the vocabulary's longest token
    (a token decodes to no more characters than its own string has). ``None`` when the scorer has
    no tokenizer to ask."""
    tokenizer, max_length = getattr(scorer, "tokenizer", None), getattr(scorer, "max_length", None)
    if tokenizer is None or not isinstance(max_length, int):
        return None
    return max_length * max((len(token) for token in tokenizer.get_vocab()), default=1)


def own_out_dir(out_dir: Path) -> None:
    """Make ``--out`` this run's own, so that old and new results never sit side by side: a file
    there is an error; a directory holding only a previous run's outputs (``OUTPUT_FILES``,
    ``plots/``) is emptied; any other content is refused (it is not ours to delete)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a directory (it is created when missing)")
    if not out_dir.is_dir():
        return
    entries = sorted(out_dir.iterdir())
    foreign = [p.name for p in entries if p.name not in (*OUTPUT_FILES, "plots")]
    if foreign:
        raise ConfigError(f"--out {out_dir} holds files that repro-env score did not write ({', '.join(foreign[:5])}"
                          f"{', ...' if len(foreign) > 5 else ''}); give a new or empty directory, or the directory "
                          "of an earlier score run, whose results are replaced")
    for path in entries:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _make_scorer(spec: TaskSpec, model: str | None, backend: str | None, overrides: Mapping[str, Any] | None) -> Any:
    from repro_env.config import replace
    from repro_env.scoring import make_scorer

    chosen = {k: v for k, v in (("model", model), ("backend", backend)) if v is not None}
    config = replace(spec.scorer, {**chosen, **(overrides or {})}, source="scorer")
    return make_scorer(config)


def _json_line(row: Mapping[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False)


class _Writers:
    """scores.jsonl, scores.csv and skipped.jsonl, written as rows arrive (nothing when ``out`` is None)."""

    def __init__(self, out: Path | None) -> None:
        self.out, self.files = out, {}
        self._handles: list[Any] = []
        self._skipped = None

    def __enter__(self) -> _Writers:
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            self._jsonl = self._open("scores.jsonl", "jsonl")
            self._csv_file = self._open("scores.csv", "csv", newline="")
            self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_COLUMNS)
            self._csv.writeheader()
        return self

    def _open(self, name: str, key: str, **kwargs: Any):
        handle = open(self.out / name, "w", encoding="utf-8", **kwargs)  # noqa: SIM115 (closed in __exit__)
        self._handles.append(handle)
        self.files[key] = str(self.out / name)
        return handle

    def row(self, row: Mapping[str, Any]) -> None:
        if self.out is not None:
            self._jsonl.write(_json_line(row) + "\n")
            self._csv.writerows(csv_rows(row))

    def skipped(self, row: Mapping[str, Any]) -> None:
        if self.out is not None:
            if self._skipped is None:
                self._skipped = self._open("skipped.jsonl", "skipped")
            self._skipped.write(_json_line({k: row[k] for k in ("line", "field", "error")}) + "\n")

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.close()


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def _progress(enabled: bool, total: int | None):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="trace", desc="scoring", dynamic_ncols=True)


def score_main(args: Any) -> int:
    """``repro-env score``: the argparse namespace of ``cli.py`` → files and the summary table."""
    fields = TraceFields(question=args.question_field, response=args.response_field, answer=args.answer_field,
                         id=args.id_field, template=not args.no_template)
    overrides: dict[str, Any] = {"batch_size": args.batch_size}
    if args.base_url:
        backend = args.backend or resolve_task(args.task).scorer.backend
        if backend != "vllm-server":
            raise ConfigError(f"--base-url is a setting of the vllm-server backend, and the scorer backend here is "
                              f"{backend!r}: add --backend vllm-server")
        overrides["options"] = {"base_url": args.base_url}
    out = Path(args.out) if args.out else Path(f"{Path(args.traces).stem}_scores")
    result = score_traces(args.traces, model=args.model, backend=args.backend, task=args.task, fields=fields,
                          out=out, skip_bad=args.skip_bad, plots=not args.no_plots,
                          report_limit=args.report_limit, keep_rows=False, progress=True,
                          scorer_overrides=overrides)
    print(format_summary(result["summary"], result["worst"]))
    print()
    for name, path in result["files"].items():
        print(f"  {name:<8} {path}")
    return 0
