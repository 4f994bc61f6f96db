"""``repro-env score`` / ``repro_env.score_traces``: RePro diagnostics of existing traces (issue 14)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import repro_env
from repro_env.cli import main
from repro_env.diagnostics import (
    TraceFields,
    TraceReader,
    TraceScorer,
    char_limit,
    format_summary,
    score_traces,
)
from repro_env.errors import ConfigError, TraceInputError
from repro_env.scoring import ScoreRequest, ScoreResult, make_scorer
from repro_env.tasks import resolve_task

TOL = 1e-5  # as tests/test_scoring_hf.py
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "traces.jsonl"
SCRIPT = Path(sys.executable).parent / "repro-env"
QUESTION = "Tom has 6 stamps. He collects until his stamps are 5 times as many as before. How many stamps?"


@pytest.fixture(scope="module")
def bundled():
    return make_scorer()


def write_jsonl(path: Path, records: list) -> Path:
    with open(path, "wb") as f:
        for record in records:
            f.write(record if isinstance(record, bytes) else (json.dumps(record) + "\n").encode())
    return path


class _Report(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections, self.images, self.links = 0, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and attrs.get("class") == "trace":
            self.sections += 1
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        self.links += [v for k, v in attrs.items() if k in ("src", "href") and v and not v.startswith("data:")]


def test_an_input_that_is_one_of_the_outputs_is_refused_before_anything_is_written(tmp_path):
    # issue 28: `score scores.jsonl --out .` used to empty its own input and exit 0
    traces = tmp_path / "scores.jsonl"
    traces.write_bytes(EXAMPLE.read_bytes())
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(SCRIPT), "score", "scores.jsonl", "--out", "."], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 2
    assert "traces file scores.jsonl is one of the outputs of --out ." in done.stderr
    assert traces.read_bytes() == EXAMPLE.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.jsonl"]


def test_console_script_writes_rows_csv_pngs_and_a_self_contained_report(tmp_path):
    out = tmp_path / "scores"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(SCRIPT), "score", str(EXAMPLE), "--out", str(out)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "scored 6 traces (0 skipped)" in done.stdout and "traces/s" in done.stdout
    assert "segments with negative r~" in done.stdout and "worst 6 by process return" in done.stdout
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5, 6]
    with open(out / "scores.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == sum(r["num_segments"] for r in rows)
    assert float(table[0]["J"]) == pytest.approx(rows[0]["segments"][0]["J"])
    pngs = sorted((out / "plots").glob("*.png"))
    assert len(pngs) == 6 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    report = _Report()
    report.feed(page)
    assert report.sections == 6 and len(report.images) == 6
    assert all(src.startswith("data:image/png;base64,") for src in report.images)
    assert report.links == [] and not re.search(r"https?://", page)
    # worst first by process return
    returns = [r["process_return"] for r in rows]
    first = page.index('id="trace-1"')
    assert rows[int(np.argmin(returns))]["id"] in page[first:first + 300]


def test_api_returns_plain_data_and_import_stays_light(bundled):
    result = repro_env.score_traces(EXAMPLE, scorer=bundled)
    assert json.loads(json.dumps(result)) == result  # only dicts, lists, str, numbers, bools, None
    assert result["summary"]["traces"] == 6 and len(result["traces"]) == 6
    row = result["traces"][2]
    assert row["id"] == "backtrack-tom" and row["backtracks"] == 3 and row["correct"] is True
    for segment in row["segments"]:
        assert set(segment) == {"t", "text", "scored", "J", "S_magn", "S_stab", "S", "r", "backtrack",
                                "overthinking", "after_answer", "tokens", "entropy"}
    # the last segment states the answer and is not scored (REPRO_SPEC §4); Σ r̃ telescopes to S at the
    # end of the reasoning, the segment before it
    *reasoning, final = row["segments"]
    assert all(s["scored"] for s in reasoning) and row["scored_segments"] == len(reasoning)
    assert final["scored"] is False and final["r"] == 0.0 and final["J"] is None and final["S"] is None
    assert row["process_return"] == pytest.approx(reasoning[-1]["S"])
    assert row["J_T"] == reasoning[-1]["J"]
    code = "import sys, repro_env; assert 'torch' not in sys.modules; repro_env.score_traces; " \
           "assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_rows_equal_the_env_online_values(bundled):
    import gymnasium as gym

    from repro_env.transcripts import run_episode, scripted_policy

    env = gym.make("RePro-JSONLExample-v0", scorer=bundled)
    source = env.unwrapped.source
    problems = [source.get("train", i) for i in range(3)]
    records = [{"id": p.id, "question": p.question, "solution": [s.rstrip("\n") for s in p.solution],
                "answer": p.answer} for p in problems]
    as_text = [{**r, "response": "\n\n".join(r.pop("solution"))} for r in [dict(x) for x in records]]
    result = score_traces(records + as_text, task="RePro-JSONLExample-v0", scorer=bundled)
    for i, problem in enumerate(problems):
        episode = run_episode(env, scripted_policy(problem.solution), options={"split": "train", "index": i})
        for row in (result["traces"][i], result["traces"][i + 3]):
            assert row["num_segments"] == len(episode.infos)
            assert row["J_0"] == pytest.approx(episode.infos[0]["J_baseline"], abs=TOL)
            assert row["correct"] == episode.correct
            assert [s["scored"] for s in row["segments"]] == [info["scored"] for info in episode.infos]
            assert not row["segments"][-1]["scored"]  # the final answer: scored by neither
            for segment, info in zip(row["segments"], episode.infos, strict=True):
                for ours, theirs in (("J", "J"), ("S_magn", "magnitude"), ("S_stab", "stability"),
                                     ("S", "process_score"), ("r", "process_reward"), ("entropy", "entropy")):
                    expected = None if math.isnan(info[theirs]) else pytest.approx(info[theirs], abs=TOL)
                    assert segment[ours] == expected, (i, segment["t"], ours)
                assert segment["backtrack"] == info["backtrack"]
                assert segment["tokens"] == info["segment_tokens"]
    env.close()


def test_think_block_is_split_on_its_think_part(bundled):
    task = resolve_task("RePro-Math-v0")
    assert not task.split_response("Q", "no think here").think
    split = task.split_response("Q", "<think>\nA.\n\nB.\n</think>\nFinal: \\boxed{2}")
    assert (split.prefix, split.segments, split.tail) == ("Q<think>\n", ("A.\n\n", "B.\n\n"),
                                                          "</think>\nFinal: \\boxed{2}")
    split = task.split_response("Q", "A.\n\nB.</think>done")  # tag in the prompt
    assert (split.prefix, split.segments, split.tail, split.think) == ("Q", ("A.\n\n", "B.\n\n"), "</think>done", True)
    response = "<think>\n6 * 5 = 31.\n\nThe answer is \\boxed{31}.\n</think>\n\nSo it is \\boxed{30}."
    row = score_traces([{"question": QUESTION, "response": response, "answer": "30"}], scorer=bundled)["traces"][0]
    assert row["think"] is True and row["correct"] is True  # the answer after </think> is the one checked
    assert [s["text"] for s in row["segments"]] == ["6 * 5 = 31.\n\n", "The answer is \\boxed{31}.\n\n"]
    prompt = resolve_task("RePro-Math-v0").prompt_template.format(question=QUESTION)
    direct = bundled.score([ScoreRequest(prompt + "<think>\n", tuple(s["text"] for s in row["segments"]),
                                         "\\boxed{30}")])[0]
    np.testing.assert_allclose([row["J_0"], *(s["J"] for s in row["segments"])], direct.J, rtol=0, atol=TOL)


def test_the_final_answer_segment_is_not_scored_without_a_think_block(tmp_path, bundled, monkeypatch):
    """REPRO_SPEC §4, as in the env: the reasoning ends before the segment that states the answer; that
    segment and those after it get no J (none is asked of the scorer) and are shown as not scored."""
    requests = []
    score = bundled.score
    monkeypatch.setattr(bundled, "score", lambda batch: requests.extend(batch) or score(batch))
    response = "6 * 5 = 30.\n\nSo 30 in all.\n\nThe answer is \\boxed{30}.\n\nDone."
    result = score_traces([{"question": QUESTION, "response": response, "answer": "30"}], scorer=bundled,
                          out=tmp_path / "out", report_limit=1)
    row = result["traces"][0]
    assert [r.points for r in requests] == [(1, 2)]
    assert [s["scored"] for s in row["segments"]] == [True, True, False, False]
    assert [s["r"] for s in row["segments"][2:]] == [0.0, 0.0] and row["scored_segments"] == 2
    prompt = resolve_task("RePro-Math-v0").prompt_template.format(question=QUESTION)
    direct = score([ScoreRequest(prompt, ("6 * 5 = 30.\n\n", "So 30 in all.\n\n"), "\\boxed{30}")])[0]
    np.testing.assert_allclose([row["J_0"], *(s["J"] for s in row["segments"][:2])], direct.J, rtol=0, atol=TOL)
    assert row["J_T"] == row["segments"][1]["J"] and row["process_return"] == pytest.approx(row["segments"][1]["S"])
    with open(tmp_path / "out" / "scores.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(t["scored"], t["J"], t["r"]) for t in table][2:] == [("False", "", "0.0")] * 2
    assert (tmp_path / "out" / "report.html").read_text().count("not scored (after the reasoning)") == 2
    # inside a think block every segment is reasoning, one that writes \boxed{} too (the answer is read after it)
    think = score_traces([{"question": QUESTION, "answer": "30",
                           "response": f"<think>\n{response}\n</think>\nSo \\boxed{{30}}."}], scorer=bundled)
    assert [s["scored"] for s in think["traces"][0]["segments"]] == [True] * 4


GOOD = {"id": "good", "question": QUESTION, "response": "6 * 5 = 30.\n\nThe answer is \\boxed{30}.", "answer": "30"}
BAD_CASES = [
    ({"question": QUESTION, "response": GOOD["response"]}, "field 'answer' is missing", "answer"),
    (b'{"question": "caf\xe9", "response": "x", "answer": "1"}\n', "not valid UTF-8 (byte 0xe9", ""),
    ({**GOOD, "response": "6 * 5 = 30.\n\n" * 200 + "The answer is \\boxed{30}."}, "the trace is too long",
     "response"),
    ({**GOOD, "response": "6 * 5 = 30.\n\nSo that is that."}, "states no final answer", "response"),
    (b'{"question": "q", "response": \n', "not valid JSON", ""),
    ({"question": QUESTION, "answer": "30"}, "field any of 'response', 'reasoning'", "response"),
]


@pytest.mark.parametrize(("record", "message", "field"), BAD_CASES)
def test_bad_line_names_the_line_and_field(tmp_path, bundled, record, message, field):
    path = write_jsonl(tmp_path / "t.jsonl", [GOOD, record])
    with pytest.raises(TraceInputError, match=re.escape(f"{path}:2: ") + ".*" + re.escape(message)) as info:
        score_traces(path, scorer=bundled)
    assert info.value.line == 2 and info.value.field == field and "--skip-bad" in str(info.value)


def test_skip_bad_counts_every_skipped_line_and_keeps_the_good_ones(tmp_path, bundled, capsys):
    path = write_jsonl(tmp_path / "t.jsonl", [GOOD] + [r for r, _, _ in BAD_CASES] + [GOOD])
    result = score_traces(path, scorer=bundled, skip_bad=True, out=tmp_path / "out", plots=False)
    assert result["summary"]["traces"] == 2 and result["summary"]["skipped"] == len(BAD_CASES)
    assert [s["line"] for s in result["skipped"]] == list(range(2, 2 + len(BAD_CASES)))
    assert [r["line"] for r in result["traces"]] == [1, 2 + len(BAD_CASES)]
    assert len((tmp_path / "out" / "skipped.jsonl").read_text().splitlines()) == len(BAD_CASES)
    # the command stops on the first bad line with exit code 2 and the message
    assert main(["score", str(path), "--out", str(tmp_path / "cli"), "--no-plots"]) == 2
    assert f"TraceInputError: {path}:2: field 'answer' is missing" in capsys.readouterr().err


class _StubScorer:
    """The bundled tokenizer with a constant J curve: for the streaming checks, no model needed."""

    def __init__(self, real) -> None:
        self.tokenizer, self.max_length = real.tokenizer, real.max_length
        self.calls = []

    def score(self, requests):
        self.calls.append(len(requests))
        return [ScoreResult(J=np.linspace(-3.0, -1.0, len(r.segments) + 1), points=r.resolved_points(),
                            entropies=np.ones(len(r.segments)), num_tokens=0) for r in requests]


def test_a_thousand_traces_are_streamed_not_loaded(tmp_path, bundled):
    stub = _StubScorer(bundled)
    pulled = []

    def records():
        for i in range(1000):
            pulled.append(i)
            yield {**GOOD, "id": f"t{i}"}

    spec = resolve_task("RePro-Math-v0")
    engine = TraceScorer(stub, spec, TraceReader(spec, TraceFields(), "traces"))
    for taken, _row in enumerate(engine.rows(enumerate(records(), 1), chunk=32), 1):
        assert len(pulled) - taken < 32  # never more than one chunk ahead of the consumer
    assert taken == 1000 and max(stub.calls) == 32
    path = write_jsonl(tmp_path / "big.jsonl", [{**GOOD, "id": f"t{i}"} for i in range(1000)])
    result = score_traces(path, scorer=stub, out=tmp_path / "out", keep_rows=False, report_limit=5, plots=False)
    assert result["summary"]["traces"] == 1000 and result["traces"] == [] and len(result["worst"]) == 5
    assert sum(1 for _ in open(tmp_path / "out" / "scores.jsonl")) == 1000


def test_overthinking_fields_per_trace_in_the_summary_and_the_csv(tmp_path, bundled):
    """Tokens after the first correct answer (bundled tokenizer: 23 for the re-check), None for a trace
    that never states the gold answer, and "n/a" (never 0) for a task that cannot locate it."""
    question = "Mia has 12 apples. She buys 5 more apples. How many apples does Mia have now?"
    records = [{"id": "clean", "question": question, "answer": "17",
                "response": "12 + 5 = 17.\n\nThe answer is \\boxed{17}."},
               {"id": "recheck", "question": question, "answer": "17",
                "response": "12 + 5 = 17.\n\nLet me double-check: 12 + 5 = 17. Yes.\n\nThe answer is \\boxed{17}."},
               {"id": "wrong", "question": question, "answer": "17",
                "response": "12 + 5 = 18.\n\nThe answer is \\boxed{18}."}]
    result = score_traces(records, scorer=bundled, out=tmp_path / "out", plots=True, report_limit=3)
    rows = result["traces"]
    assert [r["tokens_after_first_correct"] for r in rows] == [0, 23, None]
    assert [r["overthinking"] for r in rows] == [False, True, False]
    assert [(r["overthinking_segments"], r["overthinking_tokens"]) for r in rows] == [(0, 0), (1, 23), (0, 0)]
    assert [s["after_answer"] for s in rows[1]["segments"]] == [False, True, False]
    summary = result["summary"]
    assert summary["mean_tokens_after_first_correct"] == pytest.approx(11.5)  # over the 2 that state it
    assert summary["traces_with_answer_located"] == 2 and summary["overthinking_share"] == pytest.approx(1 / 3)
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    with open(tmp_path / "out" / "scores.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["overthinking_segment"] for t in table if t["id"] == "recheck"] == ["False", "True", "False"]
    assert {t["tokens_after_first_correct"] for t in table if t["id"] == "wrong"} == {""}
    page = (tmp_path / "out" / "report.html").read_text()
    assert "tokens after the first correct answer" in page and "11.5 (over the 2 traces" in page
    assert "tokens after first correct    11.5" in format_summary(summary, [])

    located_nowhere = score_traces(records, scorer=bundled, task=resolve_task("RePro-Math-v0",
                                                                              {"answer_location": "none"}))
    assert [r["tokens_after_first_correct"] for r in located_nowhere["traces"]] == [None, None, None]
    assert located_nowhere["summary"]["mean_tokens_after_first_correct"] is None
    assert "tokens after first correct    n/a (the task cannot locate the answer" in format_summary(
        located_nowhere["summary"], [])


def test_an_integer_of_more_than_4300_digits_is_a_bad_line_not_a_crash():
    reader = TraceReader(resolve_task("RePro-Math-v0"), TraceFields(), "t.jsonl")
    line = '{"question": "q", "answer": ' + "1" * 5000 + ', "response": "So \\\\boxed{1}."}'
    with pytest.raises(TraceInputError, match=r"t.jsonl:3: the line is not valid JSON \(Exceeds the limit \(4300"):
        reader.parse(3, line)


def test_a_rerun_replaces_its_own_output_directory_and_refuses_anything_else(tmp_path, bundled):
    """issue 28: a rerun with --no-plots, or one that scores nothing, left the old report, curves and
    skipped.jsonl beside the new scores."""
    out = tmp_path / "out"
    path = write_jsonl(tmp_path / "t.jsonl", [GOOD, BAD_CASES[0][0]])
    score_traces(path, scorer=bundled, out=out, skip_bad=True, plots=True, report_limit=1)
    assert {"report.html", "curves.png", "plots", "skipped.jsonl"} <= {p.name for p in out.iterdir()}
    score_traces(write_jsonl(tmp_path / "good.jsonl", [GOOD]), scorer=bundled, out=out, plots=False)
    assert sorted(p.name for p in out.iterdir()) == ["scores.csv", "scores.jsonl", "summary.json"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"--out .*out holds files that repro-env score did not write \(notes.txt\)"):
        score_traces(path, scorer=bundled, out=out)
    assert (out / "notes.txt").read_text() == "mine" and (out / "scores.jsonl").is_file()
    with pytest.raises(ConfigError, match=r"--out .*notes.txt is a file; give a directory"):
        score_traces(path, scorer=bundled, out=out / "notes.txt")


def test_hostile_ids_and_texts_stay_text_in_the_csv_the_plots_and_the_terminal(tmp_path, bundled):
    """issue 28: an id with $...$ crashed the report (matplotlib math markup) after the scores were
    written; cells starting with = + - @ went into scores.csv as formulas; ANSI escapes and newlines
    in ids were printed raw."""
    hostile = "=HYPERLINK(1) $x^2$ \x1b[31mred\nline"
    record = {**GOOD, "id": hostile, "response": "- 6 * 5 = 30.\n\nThe answer is \\boxed{30}."}
    result = score_traces([record], scorer=bundled, out=tmp_path / "out", plots=True, report_limit=1)
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "curves.png").is_file()
    with open(tmp_path / "out" / "scores.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["id"] for r in rows} == {"'" + hostile} and rows[0]["text"] == "'- 6 * 5 = 30.\n\n"
    assert rows[0]["J"] == str(result["traces"][0]["segments"][0]["J"])  # numbers stay numbers
    table = format_summary(result["summary"], result["worst"])
    assert "\x1b" not in table and "\\x1b[31mred\\nline" in table


def test_the_python_api_names_what_is_wrong_with_its_arguments(tmp_path, bundled):
    """issue 28: these were raw TypeErrors or misleading messages."""
    with pytest.raises(ConfigError, match=r"field 'traces' must be a JSONL path or an iterable of dicts, one per "
                                          r"trace \(one trace: wrap its dict in a list\)"):
        score_traces(GOOD, scorer=bundled)
    with pytest.raises(ConfigError, match=r"traces file .* is a directory; give the JSONL file in it"):
        score_traces(tmp_path, scorer=bundled)
    with pytest.raises(ConfigError, match=r"field 'task' must be a task id, a task YAML path or a TaskSpec, got None"):
        score_traces([GOOD], scorer=bundled, task=None)
    result = score_traces([None, GOOD], scorer=bundled, skip_bad=True)
    assert result["summary"]["traces"] == 1 and result["skipped"][0]["line"] == 1
    assert "a trace must be a dict (one per trace) or a JSON line, got None" in result["skipped"][0]["error"]


def test_lines_a_tokenizer_or_json_cannot_take_are_bad_lines(tmp_path, bundled):
    """issue 28: a lone-surrogate escape gave a tokenizers TypeError and deep nesting a RecursionError,
    neither skipped by --skip-bad; a CRLF file was one segment; an empty list item was scored as a
    delimiter-only segment; a 10 MB line was refused only after tokenising it."""
    limit = char_limit(bundled)
    assert limit == bundled.max_length * max(len(t) for t in bundled.tokenizer.get_vocab())
    lines = [json.dumps(GOOD),
             json.dumps({**GOOD, "response": "\ud800 6 * 5 = 30. The answer is \\boxed{30}."}),
             '{"question": "q", "answer": 1, "response": ' + "[" * 100_000 + "]" * 100_000 + "}",
             json.dumps({**GOOD, "response": ["6 * 5 = 30.", "  ", "The answer is \\boxed{30}."]}),
             json.dumps({**GOOD, "response": "a" * limit + " The answer is \\boxed{30}."}),
             json.dumps({**GOOD, "response": "6 * 5 = 30.\r\n\r\nThe answer is \\boxed{30}."})]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = score_traces(path, scorer=bundled, skip_bad=True)
    errors = {s["line"]: s["error"] for s in result["skipped"]}
    assert sorted(errors) == [2, 3, 4, 5]
    assert "field 'response' is not valid unicode text: a lone surrogate '\\ud800' at index 0" in errors[2]
    assert "the line nests JSON arrays or objects too deeply to read" in errors[3]
    assert "field 'response' item 1 is '  ': every segment needs some text" in errors[4]
    assert "the trace is too long:" in errors[5]
    assert f"more than the scorer's context can hold in any tokenisation (at most {limit})" in errors[5]
    crlf = result["traces"][1]  # the CRLF response splits like the LF one
    assert [s["text"] for s in crlf["segments"]] == [s["text"] for s in result["traces"][0]["segments"]]



# -- the command's options through the console script (issue 27) -----------------------------

HOSTILE_ID = "<script>alert('id')</script> & \"quoted\""
HOSTILE_SEGMENT = "Then, 3 + 20 = 23. <img src=x onerror=alert(1)></div>&amp;\n\n"
OWN_FIELDS = [{"name": HOSTILE_ID, "q": "Question: <marquee>what</marquee> is 3 + 4 times 5?\n\n", "a": "23",
               "r": "First, 4 * 5 = 20.\n\n" + HOSTILE_SEGMENT + "The answer is \\boxed{23}."},
              {"name": "plain", "q": "Question: what is 1 + 2?\n\n", "a": 3,
               "r": "So, 1 + 2 = 3.\n\nWait, 3.\n\nThe answer is \\boxed{4}."}]
FIELD_OPTIONS = ("--question-field", "q", "--response-field", "r", "--answer-field", "a", "--id-field", "name",
                 "--no-template")


def score_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(SCRIPT), "score", *args], capture_output=True, text=True, env=env, timeout=300)


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]


class _Page(HTMLParser):
    """The tags of a page and the text between them, entities decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags, self.text = set(), []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def own_fields_scored(tmp_path_factory, tiny_llama_dir):
    """``repro-env score`` of OWN_FIELDS with the fixture model, every field option and --batch-size 2."""
    root = tmp_path_factory.mktemp("own_fields")
    traces = write_jsonl(root / "t.jsonl", OWN_FIELDS)
    done = score_cli(str(traces), "--model", str(tiny_llama_dir), *FIELD_OPTIONS, "--batch-size", "2",
                     "--out", str(root / "out"))
    assert done.returncode == 0, done.stderr
    return root / "out", done.stdout


def test_model_field_options_and_no_template_reach_the_scorer(own_fields_scored, tiny_llama_dir, bundled):
    """J of every point equals the fixture model's on the question field taken as the whole prompt
    (the bundled model or the task's template around it would give other numbers)."""
    from repro_env.scoring import ScorerConfig
    from repro_env.scoring.hf import HFScorer

    out, stdout = own_fields_scored
    rows = read_rows(out)
    assert [r["id"] for r in rows] == [HOSTILE_ID, "plain"] and [r["correct"] for r in rows] == [True, False]
    assert [r["answer"] for r in rows] == ["23", "3"] and "scored 2 traces (0 skipped)" in stdout
    fixture = HFScorer(ScorerConfig(model=str(tiny_llama_dir)))
    for record, row in zip(OWN_FIELDS, rows, strict=True):
        scored = [s["text"] for s in row["segments"] if s["scored"]]
        direct = fixture.score([ScoreRequest(record["q"], tuple(scored), f"\\boxed{{{record['a']}}}")])[0]
        J = [row["J_0"], *(s["J"] for s in row["segments"] if s["scored"])]
        np.testing.assert_allclose(J, direct.J, rtol=0, atol=TOL)
    other = bundled.score([ScoreRequest(OWN_FIELDS[1]["q"], ("So, 1 + 2 = 3.\n\n", "Wait, 3.\n\n"), "\\boxed{3}")])[0]
    assert abs(other.J[0] - rows[1]["J_0"]) > 0.1  # so the check above tells the two models apart


def test_summary_json_is_the_aggregate_of_the_rows(own_fields_scored):
    out, _ = own_fields_scored
    rows, summary = read_rows(out), json.loads((out / "summary.json").read_text())
    n = len(rows)
    assert set(summary) == {"traces", "skipped", "seconds", "traces_per_s", "mean_J_gain", "mean_process_return",
                            "backtracks_per_trace", "accuracy", "segments_per_trace", "negative_reward_share",
                            "overthinking_share", "overthinking_tokens_per_trace", "mean_tokens_after_first_correct",
                            "traces_with_answer_located", "answer_location"}
    assert (summary["traces"], summary["skipped"], summary["answer_location"]) == (2, 0, "step_result")
    rate = summary["traces_per_s"]
    assert abs(rate * summary["seconds"] - n) <= rate * 5e-4  # seconds is rounded to 3 decimals
    expected = {"mean_J_gain": np.mean([r["J_gain"] for r in rows]),
                "mean_process_return": np.mean([r["process_return"] for r in rows]),
                "backtracks_per_trace": np.mean([r["backtracks"] for r in rows]),
                "accuracy": 0.5, "segments_per_trace": 3.0,
                "negative_reward_share": sum(r["negative_rewards"] for r in rows) / sum(r["scored_segments"]
                                                                                       for r in rows),
                "overthinking_share": np.mean([r["overthinking"] for r in rows]),
                "overthinking_tokens_per_trace": np.mean([r["overthinking_tokens"] for r in rows])}
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, abs=1e-12), key
    located = [r["tokens_after_first_correct"] for r in rows if r["tokens_after_first_correct"] is not None]
    assert summary["traces_with_answer_located"] == len(located) >= 1  # "3 + 20 = 23." states 23
    assert summary["mean_tokens_after_first_correct"] == pytest.approx(np.mean(located))
    assert rows[1]["backtracks"] == 1  # "Wait, ..."


def test_untrusted_trace_text_is_escaped_in_the_report(own_fields_scored):
    """The id, question and segment text of a trace are data: the page gets no tag from them, and
    its text shows them as written."""
    page = (own_fields_scored[0] / "report.html").read_text()
    parsed = _Page()
    parsed.feed(page)
    assert "script" not in parsed.tags and "marquee" not in parsed.tags
    assert page.count("<img") == 2  # the two embedded curves, not the segment's <img src=x ...>
    assert "<script>" not in page and "onerror=alert(1)>" not in page and "<marquee>" not in page
    text = "".join(parsed.text)
    assert HOSTILE_ID in text and HOSTILE_SEGMENT.strip() in text and "<marquee>what</marquee>" in text


def test_batch_size_is_the_scorer_config_field(tmp_path):
    done = score_cli(str(EXAMPLE), "--batch-size", "0", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "field 'batch_size' must be an int >= 1, got 0" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.vllm
def test_the_vllm_server_backend_scores_as_the_hf_one(own_fields_scored, server, tiny_llama_dir, tmp_path):
    """``--backend vllm-server --base-url`` against the suite's real server (``conftest.server``):
    the same rows as the hf backend, J within the server tests' 1e-4."""
    traces = write_jsonl(tmp_path / "t.jsonl", OWN_FIELDS)
    done = score_cli(str(traces), "--backend", "vllm-server", "--base-url", server.url,
                     "--model", str(tiny_llama_dir), *FIELD_OPTIONS, "--out", str(tmp_path / "out"), "--no-plots")
    assert done.returncode == 0, done.stderr
    served, local = read_rows(tmp_path / "out"), read_rows(own_fields_scored[0])
    assert [r["id"] for r in served] == [r["id"] for r in local]
    for ours, theirs in zip(served, local, strict=True):
        assert [s["text"] for s in ours["segments"]] == [s["text"] for s in theirs["segments"]]
        for key in ("J_0", "J_T", "process_return"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-4), key
        for a, b in zip(ours["segments"], theirs["segments"], strict=True):
            assert (a["J"] is None) == (b["J"] is None) and (a["J"] is None or abs(a["J"] - b["J"]) <= 1e-4)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scores.csv", "scores.jsonl", "summary.json"]
