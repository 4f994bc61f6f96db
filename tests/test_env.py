"""ReasoningEnv: spaces, rewards against the batch scorer, episode end, errors, rendering."""

from __future__ import annotations

import itertools
import math
import re

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import repro_env  # noqa: F401
from repro_env import reward as rp
from repro_env.env import ReasoningEnv, ReasoningText
from repro_env.errors import ActionError, ConfigError, ContextLengthError, ScorerError, TaskSpecError
from repro_env.scoring import ScoreRequest

INFO_KEYS = {"J", "J_baseline", "magnitude", "stability", "process_score", "process_reward",
             "outcome_reward", "scored", "entropy", "segment_tokens", "total_tokens", "backtrack"}


@pytest.fixture
def make_env(tiny_llama_dir):
    """``RePro-Math-v0`` scored by the random fixture model (weights do not matter here)."""

    def make(scorer=None, **overrides):
        return gym.make("RePro-Math-v0", scorer={"model": str(tiny_llama_dir), **(scorer or {})}, **overrides)

    return make


def whole(message: str) -> str:
    """A ``match`` pattern that accepts exactly ``message``, not a message that merely contains it."""
    return f"^{re.escape(message)}$"


def play(env, segments):
    steps = []
    for segment in segments:
        steps.append(env.step(segment))
        if steps[-1][2] or steps[-1][3]:
            break
    return steps


def test_gymnasium_check_env(make_env):
    check_env(make_env().unwrapped)


def test_documented_spaces_are_the_real_ones(make_env):
    env = make_env()
    task = env.unwrapped.spec_task
    assert isinstance(env.action_space, ReasoningText)
    assert (env.action_space.min_length, env.action_space.max_length) == (1, task.limits.max_segment_chars)
    assert "ReasoningText(min_length=1, max_length=limits.max_segment_chars, blank=False)" in ReasoningEnv.__doc__
    assert not env.action_space.blank and env.observation_space.blank
    assert env.observation_space.max_length == task.max_prompt_chars + task.limits.max_steps * (
        task.limits.max_segment_chars + len(task.delimiter))
    # Model output is arbitrary unicode, not Gymnasium's alphanumeric default.
    assert env.action_space.contains("Ünïcødé ✓ 3 × 4 = 12.\n\n")
    assert not env.action_space.contains("x" * (task.limits.max_segment_chars + 1))
    assert not env.action_space.contains(42)


def test_seeded_reset_is_reproducible_and_options_select_a_problem(make_env):
    env = make_env()
    obs_a, info_a = env.reset(seed=7)
    obs_b, info_b = env.reset(seed=7)
    assert obs_a == obs_b and info_a == info_b
    _, info_c = env.reset(seed=8)
    assert info_c["problem_id"] != info_a["problem_id"]
    _, info = env.reset(options={"split": "test", "index": 3})
    assert info["problem_id"] == env.unwrapped.source.get("test", 3).id
    assert math.isfinite(info["J_baseline"]) and info["J_baseline"] < 0


@pytest.mark.parametrize("options, message", [
    ({"idx": 1}, "reset options: unknown key(s) ['idx']; valid: 'split', 'index'"),
    ({"index": -1}, "reset options: 'index' must be an int in [0, 100000), got -1 (int)"),
    ({"split": "valid"}, "arithmetic: split must be one of 'train', 'test', got 'valid'."),
])
def test_bad_reset_options(make_env, options, message):
    with pytest.raises(TaskSpecError, match=whole(message)):
        make_env().reset(options=options)


def test_rewards_equal_repro_math_on_batch_scored_J(make_env):
    env = make_env()
    env.reset(options={"split": "test", "index": 0})
    episode = env.unwrapped.episode
    solution = episode.problem.solution
    steps = play(env, solution)
    infos = [s[4] for s in steps]
    assert steps[-1][2] and not steps[-1][3]  # terminated by the boxed answer
    assert all(INFO_KEYS <= set(info) for info in infos) and infos[-1]["correct"] is True

    # The last segment states the answer: it is not scored (REPRO_SPEC §4); the reasoning is the rest.
    final = infos[-1]
    assert final["scored"] is False and final["process_reward"] == 0.0
    assert all(math.isnan(final[k]) for k in ("J", "magnitude", "stability", "process_score"))
    assert all(i["scored"] for i in infos[:-1])

    # J from the env's cached session equals one shared-prefix batch pass over the whole response.
    scorer = env.unwrapped.scorer
    reasoning = len(episode.segments) - 1
    batch = scorer.score([ScoreRequest(episode.prompt, tuple(episode.segments), episode.answer,
                                       points=tuple(range(1, reasoning + 1)))])[0]
    np.testing.assert_allclose([i["J"] for i in infos[:-1]], batch.J[1:], atol=1e-5)
    np.testing.assert_allclose([i["entropy"] for i in infos], batch.entropies, atol=1e-5)

    alpha = env.unwrapped.spec_task.reward.alpha
    expected = np.r_[rp.process_rewards(batch.J, stability_weight=0.1, ema=0.01), 0.0]
    np.testing.assert_allclose([i["process_reward"] for i in infos], expected, atol=1e-5)
    rewards = [s[1] for s in steps]
    np.testing.assert_allclose(rewards, alpha * expected + np.r_[np.zeros(len(steps) - 1), 1.0], atol=1e-5)
    # Telescoping: the process rewards sum to S at the end of the reasoning, here computed by hand from
    # the batch J (REPRO_SPEC §3), not from the env's own scores or the reward module.
    J = [float(j) for j in batch.J]  # J_0..J_{T−1}
    delta = (J[-1] - J[0]) / max(abs(J[0]), 1e-6)
    ema = [J[0]]
    for j in J[1:]:
        ema.append(0.01 * j + 0.99 * ema[-1])
    pairs = list(itertools.combinations(range(len(J)), 2))
    tau = sum(np.sign(ema[b] - ema[a]) for a, b in pairs) / len(pairs)
    S_T = 0.9 * (math.tanh(delta - 1) + 1) + 0.1 * (tau + 1) / 2
    assert sum(i["process_reward"] for i in infos) == pytest.approx(S_T, abs=1e-6)
    assert sum(rewards) == pytest.approx(alpha * S_T + 1.0, abs=1e-6)


def test_the_final_answer_segment_is_not_scored_and_costs_no_J(make_env, monkeypatch):
    """REPRO_SPEC §4: the reasoning ends before the segment that states the answer; the env asks the
    scorer for no J there (``score=False``: the segment is only appended to the prefix)."""
    env = make_env()
    env.reset(options={"split": "test", "index": 0})
    scorer = env.unwrapped.scorer
    flags = []
    original = scorer.sessions_append

    def counting(sessions, segments, score=None):
        flags.extend([True] * len(sessions) if score is None else score)
        return original(sessions, segments, score)

    monkeypatch.setattr(scorer, "sessions_append", counting)
    steps = play(env, ["First, 3 + 4 = 7.", "Then 7 * 2 = 14.", "The answer is \\boxed{14}."])
    assert flags == [True, True, False]
    assert [s[4]["scored"] for s in steps] == [True, True, False]
    *_, (_, reward, term, trunc, info) = steps
    assert (term, trunc) == (True, False) and info["process_reward"] == 0.0 and math.isnan(info["J"])
    assert math.isfinite(info["entropy"]) and info["segment_tokens"] > 0  # still appended and measured
    assert reward == info["outcome_reward"]  # the outcome only
    # the process rewards telescope to α·S at the end of the reasoning, the second segment
    assert sum(s[1] for s in steps[:2]) == pytest.approx(0.1 * steps[1][4]["process_score"], abs=1e-9)


def test_delimiter_is_appended_and_backtracks_flagged(make_env):
    env = make_env()
    env.reset(seed=0)
    env.step("Wait, let me re-check that")
    assert env.unwrapped.episode.segments[-1] == "Wait, let me re-check that\n\n"
    _, _, _, _, info = env.step("Hmm, actually 3 + 4 = 7.\n\n")
    assert info["backtrack"] is True
    _, _, _, _, info = env.step("So 7 apples remain.")
    assert info["backtrack"] is False


def test_truncation_at_max_steps_scores_last_point_with_outcome_zero(make_env):
    env = make_env(limits={"max_steps": 2})
    env.reset(seed=0)
    _, _, term, trunc, _ = env.step("First step.")
    assert not term and not trunc
    _, reward, term, trunc, info = env.step("Second step.")
    assert (term, trunc) == (False, True)
    assert info["scored"] and info["outcome_reward"] == 0.0 and info["correct"] is False
    assert reward == pytest.approx(0.1 * info["process_reward"])


def test_wrong_final_answer_terminates_with_outcome_zero(make_env):
    env = make_env()
    env.reset(options={"split": "test", "index": 0})
    wrong = int(env.unwrapped.episode.problem.answer) + 1
    _, reward, term, trunc, info = env.step(f"The answer is \\boxed{{{wrong}}}.")
    assert (term, trunc) == (True, False)
    assert info["correct"] is False and info["outcome_reward"] == 0.0


def test_end_of_text_token_terminates(make_env):
    env = make_env()
    env.reset(seed=0)
    _, _, term, _, info = env.step("I give up.</s>")
    assert term and info["scored"]  # no answer stated: this segment ends the reasoning and is scored


def test_truncation_at_max_total_tokens(make_env):
    env = make_env(limits={"max_total_tokens": 60})
    _, info = env.reset(options={"split": "test", "index": 0})
    trunc = False
    for _ in range(10):
        _, _, term, trunc, info = env.step("One more long sentence about counting apples and stickers.")
        if term or trunc:
            break
    assert trunc and info["total_tokens"] >= 60


def test_context_overflow_truncates_without_appending(make_env):
    env = make_env(scorer={"max_length": 200}, limits={"max_total_tokens": 1000})
    env.reset(options={"split": "test", "index": 0})
    steps = play(env, ["A sentence that keeps the reasoning going for a while longer."] * 12)
    *_, trunc, info = steps[-1]
    assert trunc and info["context_overflow"] is True and info["scored"] is False
    assert len(env.unwrapped.episode.segments) == len(steps) - 1


@pytest.mark.parametrize("action, error, message", [
    (3, ActionError, r"action must be a str, got int: 3"),
    ("   \n\n", ActionError, r"action must contain a non-whitespace character"),
    ("x" * 201, ActionError, r"action must have 1 to 200 characters, got 201; .* \(limits.max_segment_chars\)"),
])
def test_bad_actions(make_env, action, error, message):
    env = make_env()
    env.reset(seed=0)
    with pytest.raises(error, match=message):
        env.step(action)


def test_step_after_end_or_before_reset_needs_reset(make_env):
    env = make_env().unwrapped
    with pytest.raises(gym.error.ResetNeeded):
        env.step("hello")
    env.reset(seed=0)
    env.step("The answer is \\boxed{1}.")
    with pytest.raises(gym.error.ResetNeeded):
        env.step("more")


def test_entropy_threshold_selection_carries_the_difference_to_the_next_scored_point(make_env):
    reasoning = 3  # the test problem's solution: 3 steps, then the answer
    env = make_env(reward={"selection": "entropy_threshold", "entropy_threshold": 1e9},
                   limits={"max_steps": reasoning})
    env.reset(options={"split": "test", "index": 0})
    solution = env.unwrapped.episode.problem.solution
    assert len(solution) == reasoning + 1
    steps = play(env, solution)
    infos = [s[4] for s in steps]
    assert steps[-1][3]  # truncated before the answer: the last segment ends the reasoning
    assert [i["scored"] for i in infos] == [False] * (len(infos) - 1) + [True]
    assert all(i["process_reward"] == 0.0 and math.isnan(i["J"]) for i in infos[:-1])
    # Only J_0 and J_T count: the last step earns S computed from those two points alone.
    J_T = infos[-1]["J"]
    expected = rp.process_scores(np.array([infos[0]["J_baseline"], J_T]), 0.1, 0.01)[-1]
    assert infos[-1]["process_reward"] == pytest.approx(expected, abs=1e-9)


def test_entropy_threshold_cannot_score_an_end_of_reasoning_it_only_learns_about_later(make_env):
    """Online, a segment is known to end the reasoning only when the next one states the answer; the
    answer segment itself is never scored (REPRO_SPEC §4), so below the threshold nothing is (env docs)."""
    env = make_env(reward={"selection": "entropy_threshold", "entropy_threshold": 1e9})
    env.reset(options={"split": "test", "index": 0})
    steps = play(env, env.unwrapped.episode.problem.solution)
    assert steps[-1][2] and not any(s[4]["scored"] for s in steps)
    assert [s[1] for s in steps] == [0.0] * (len(steps) - 1) + [1.0]


def test_topk_selection_is_refused_online(make_env):
    with pytest.raises(TaskSpecError, match="'topk_entropy' needs the whole trajectory"):
        make_env(reward={"selection": "topk_entropy"})


@pytest.mark.parametrize("overrides, message", [
    ({"rewrd": {"alpha": 1}}, "RePro-Math-v0 overrides: unknown key 'rewrd'. Did you mean 'reward'? Valid keys: "
     "answer_location, answer_template, backtrack_patterns, delimiter, description, final_answer_pattern, id, limits, "
     "prompt_template, reward, scorer, source, splits, think_tags, verifier"),
    ({"reward": {"alpah": 1}}, "RePro-Math-v0 overrides: unknown key 'reward.alpah'. Did you mean 'alpha'? "
     "Valid keys: alpha, ema, entropy_threshold, eps, k, selection, stability_weight"),
    ({"limits": {"max_steps": 0}}, "RePro-Math-v0 overrides: field 'limits.max_steps' must be an int >= 1, "
     "got 0 (int)"),
    ({"scorer": {"backend": "tgi"}}, "scorer: field 'backend' must be one of 'hf', 'vllm', 'vllm-server' or "
     "'package.module:Name', got 'tgi' (str)."),
])
def test_overrides_are_validated(make_env, overrides, message):
    with pytest.raises(TaskSpecError, match=whole(message)):
        make_env(**overrides)


def test_render_ansi_and_human(make_env, capsys):
    env = make_env(render_mode="ansi")
    env.reset(seed=0)
    _, reward, *_ = env.step("Three plus four is seven.")
    prompt = env.unwrapped.episode.prompt
    assert prompt.startswith("Question:")
    assert env.render() == f"{prompt.rstrip()}\n[{reward:+.4f}] Three plus four is seven.\n"
    human = make_env(render_mode="human")
    human.reset(seed=0)
    human.step("Three plus four is seven.")
    assert "\x1b[" in capsys.readouterr().out
    with pytest.raises(TaskSpecError, match=whole("render_mode must be one of ['ansi', 'human'] or None, "
                                                  "got 'rgb_array'")):
        make_env(render_mode="rgb_array")


def test_prompt_longer_than_the_context_is_a_clear_error(make_env):
    env = make_env(scorer={"max_length": 16})
    with pytest.raises(ContextLengthError, match=r"exceeds max_length=16"):
        env.reset(seed=0)


def test_prompt_longer_than_max_prompt_chars_is_a_clear_error(make_env):
    env = make_env(limits={"max_prompt_chars": 20})
    with pytest.raises(TaskSpecError, match=r"more than limits.max_prompt_chars = 20"):
        env.reset(seed=0)


# -- hardening (issue 12) ---------------------------------------------------------------------


def test_lone_surrogates_are_not_actions(make_env):
    env = make_env()
    env.reset(seed=0)
    assert not env.action_space.contains("x\ud800y")
    with pytest.raises(ActionError, match=r"action must be valid unicode text, got a lone surrogate '\\ud800' "
                                          r"at index 1 \(it has no UTF-8 encoding\)"):
        env.step("x\ud800y")
    env.step("a valid step.")  # the episode goes on


def random_action(rng: np.random.Generator, max_length: int):
    """Strings of every kind (surrogates, blanks, emoji, too long) and non-strings."""
    kind = rng.integers(8)
    if kind == 0:
        return [None, 3, 2.5, True, b"bytes", ["a step."], {"a": 1}, np.str_("numpy str."), ("t",)][rng.integers(9)]
    pools = ["abc xyz.,\n", " \t\n\r", "Ünïcødé ✓ × 😀", "\ud800\udbff\udc00\udfff", "\x00\x1f"]
    pool = "".join(pools[i] for i in rng.choice(len(pools), size=rng.integers(1, 4), replace=False))
    length = int(rng.choice([0, 1, 2, int(rng.integers(3, 60)), max_length, max_length + 1]))
    return "".join(pool[i] for i in rng.integers(len(pool), size=length))


def test_fuzzed_actions_step_exactly_when_the_space_contains_them(make_env):
    """Seeded fuzz over the action space: ``step`` raises ActionError iff ``contains`` is False, and a
    rejected action changes nothing."""
    env = make_env(limits={"max_segment_chars": 80, "max_steps": 50})
    space = env.action_space
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    stepped = rejected = 0
    for _ in range(400):
        action = random_action(rng, space.max_length)
        text = env.unwrapped.episode.text
        if space.contains(action):
            _, _, terminated, truncated, _ = env.step(action)
            stepped += 1
            if terminated or truncated:
                env.reset()
        else:
            with pytest.raises(ActionError):
                env.step(action)
            assert env.unwrapped.episode.text == text
            rejected += 1
    assert stepped > 50 and rejected > 100
    space.seed(0)
    assert all(space.contains(space.sample()) for _ in range(200))


def test_a_failed_reset_changes_nothing_or_needs_a_new_reset(make_env, monkeypatch):
    env = make_env()
    env.reset(seed=0)
    env.step("First step.")
    text = env.unwrapped.episode.text
    with pytest.raises(TaskSpecError, match=r"'index' must be an int"):  # bad options: nothing changed
        env.reset(options={"index": -1})
    assert env.unwrapped.episode.text == text
    env.step("Second step.")
    old = env.unwrapped.episode.session
    scorer = env.unwrapped.scorer

    def overflow(question, answer):
        raise ContextLengthError("prefix of 900 tokens exceeds max_length=512")

    monkeypatch.setattr(scorer, "session", overflow)
    with pytest.raises(ContextLengthError):
        env.reset(seed=1)
    with pytest.raises(gym.error.ResetNeeded, match=r"call reset\(\) before step\(\)"):
        env.step("Third step.")
    with pytest.raises(ScorerError, match="append on a closed session"):  # the reset call ended the old one
        old.append("late.\n\n")
    monkeypatch.undo()
    env.reset(seed=1)
    env.step("A fresh episode.")


@pytest.mark.parametrize(("kwargs", "options", "message"), [
    ({}, "test", r"reset options must be a dict such as \{'split': 'test', 'index': 3\} or None, got 'test' \(str\)"),
    ({}, {"index": True}, r"'index' must be an int in \[0, 100000\), got True \(bool\)"),
    ({}, {"index": 0.5}, r"'index' must be an int in \[0, 100000\), got 0.5 \(float\)"),
    ({}, {"split": ["test"]}, r"split must be one of 'train', 'test', got \['test'\]"),
    ({"split": "validation"}, None, r"split must be one of 'train', 'test', got 'validation'"),
])
def test_bad_reset_arguments(make_env, kwargs, options, message):
    with pytest.raises(TaskSpecError, match=message):
        make_env(**kwargs).reset(options=options)


@pytest.mark.parametrize(("device", "message"), [
    pytest.param("cuda", r"field 'scorer.device' must be a device this machine has \(torch .* sees 0 cuda device",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs no CUDA")),
    ("banana", r"scorer: field 'device' must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got 'banana'"),
])
def test_scorer_devices_are_checked_before_loading(make_env, device, message):
    with pytest.raises(ConfigError, match=message):
        make_env(scorer={"device": device})
