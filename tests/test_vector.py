"""ReasoningVectorEnv: equal to independent envs, one scorer call per step, autoreset modes."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import repro_env  # noqa: F401
from repro_env.errors import ActionError, ContextLengthError, TaskSpecError

ACTIONS = [
    ["First I count the apples.", "Hmm, let me think.", "The answer is \\boxed{3}."],
    ["Then 3 + 4 = 7.", "Wait, actually it is 8.", "Another step."],
    ["The answer is \\boxed{12}.", "Next problem, first step.", "Still going."],
]


@pytest.fixture
def scorer_cfg(tiny_llama_dir):
    return {"model": str(tiny_llama_dir)}


def make_vec(scorer_cfg, n, **kwargs):
    return gym.make_vec("RePro-Math-v0", num_envs=n, vectorization_mode="vector_entry_point",
                        scorer=scorer_cfg, limits={"max_steps": 2}, **kwargs)


def test_vector_env_equals_independent_envs(scorer_cfg):
    n = 3
    envs = make_vec(scorer_cfg, n)
    singles = [gym.make("RePro-Math-v0", scorer=scorer_cfg, limits={"max_steps": 2}) for _ in range(n)]
    obs, infos = envs.reset(seed=11)
    for i, env in enumerate(singles):
        single_obs, single_info = env.reset(seed=11 + i)
        assert obs[i] == single_obs and infos["problem_id"][i] == single_info["problem_id"]
    single_done = [False] * n
    for t in range(3):
        actions = tuple(ACTIONS[i][t] for i in range(n))
        obs, rewards, terms, truncs, infos = envs.step(actions)
        for i, env in enumerate(singles):
            if single_done[i]:  # NEXT_STEP autoreset: this step reset sub-env i and ignored its action
                single_obs, _ = env.reset()
                assert obs[i] == single_obs and rewards[i] == 0.0 and not terms[i] and not truncs[i]
                single_done[i] = False
                continue
            single_obs, reward, term, trunc, info = env.step(actions[i])
            assert obs[i] == single_obs
            assert rewards[i] == pytest.approx(reward, abs=1e-6)
            assert (terms[i], truncs[i]) == (term, trunc)
            for key in ("J", "process_reward", "magnitude", "stability", "entropy", "segment_tokens"):
                np.testing.assert_allclose(infos[key][i], info[key], atol=1e-6, equal_nan=True)
            single_done[i] = term or trunc


def recorded_appends(envs, monkeypatch) -> list[tuple[int, list[bool] | None]]:
    """Every ``sessions_append`` call of the env's scorer, as (sessions, score flags)."""
    calls = []
    original = envs.scorer.sessions_append

    def recording(sessions, segments, score=None):
        calls.append((len(sessions), None if score is None else list(score)))
        return original(sessions, segments, score)

    monkeypatch.setattr(envs.scorer, "sessions_append", recording)
    return calls


def test_one_batched_scorer_call_per_step(scorer_cfg, monkeypatch):
    envs = make_vec(scorer_cfg, 3)
    envs.reset(seed=0)
    calls = recorded_appends(envs, monkeypatch)
    envs.step(("a step.", "another step.", "a third step."))
    assert [n for n, _ in calls] == [3]


def test_a_final_answer_segment_is_appended_without_a_J(scorer_cfg, monkeypatch):
    envs = make_vec(scorer_cfg, 3)
    envs.reset(seed=0)
    calls = recorded_appends(envs, monkeypatch)
    _, _, terms, _, infos = envs.step(("a step.", "The answer is \\boxed{3}.", "a third step."))
    assert calls == [(3, [True, False, True])]
    assert terms.tolist() == [False, True, False] and infos["scored"].tolist() == [True, False, True]
    assert np.isnan(infos["J"][1]) and infos["process_reward"][1] == 0.0


def test_disabled_autoreset_leaves_finished_envs_alone(scorer_cfg):
    envs = make_vec(scorer_cfg, 2, autoreset_mode="disabled")
    assert envs.metadata["autoreset_mode"] == AutoresetMode.DISABLED
    envs.reset(seed=0, options={"split": "test", "index": [4, 4]})
    _, _, terms, _, _ = envs.step(("The answer is \\boxed{1}.", "One step."))
    assert terms.tolist() == [True, False]
    finished_text = envs.envs[0].episode.text
    obs, rewards, terms, truncs, infos = envs.step(("ignored", "Two steps."))
    assert obs[0] == finished_text and rewards[0] == 0.0 and not infos["_J"][0]
    assert truncs[1]  # max_steps = 2
    obs, rewards, terms, truncs, infos = envs.step(("ignored", "ignored"))  # every sub-env has ended
    assert rewards.tolist() == [0.0, 0.0] and not terms.any() and not truncs.any() and "_J" not in infos
    obs, infos = envs.reset(options={"reset_mask": np.array([True, False]), "index": [5, 5], "split": "test"})
    assert infos["_problem_id"].tolist() == [True, False]
    assert infos["problem_id"][0] == envs.envs[0].source.get("test", 5).id


def test_live_sessions_stay_in_one_pool_and_finished_ones_leave_it(scorer_cfg):
    # The scorer's cache layout (scoring/hf.py): the sub-envs' sessions are the rows of one pool,
    # stepped in place; a finished episode closes its session at once, its row idles, and when the
    # last ones end no session is left in the pool, so that its buffers go.
    envs = gym.make_vec("RePro-Math-v0", num_envs=3, vectorization_mode="vector_entry_point", scorer=scorer_cfg,
                        limits={"max_steps": 3}, autoreset_mode="disabled")
    envs.reset(seed=0, options={"split": "test", "index": [4, 4, 4]})
    sessions = [env.episode.session for env in envs.envs]
    pool = sessions[0]._pool
    assert [s._pool for s in sessions] == [pool] * 3 and [s._row for s in sessions] == [0, 1, 2]
    envs.step(("One step.", "One step.", "One step."))
    _, _, terms, _, _ = envs.step(("More.", "The answer is \\boxed{1}.", "More."))
    assert terms.tolist() == [False, True, False] and sessions[1]._pool is None  # closed at once
    assert pool.members == [sessions[0], None, sessions[2]]
    envs.step(("Last.", "ignored", "Last."))  # in place, row 1 idle; then max_steps ends them
    assert pool.members == [None, None, None] and sessions[0]._pool is sessions[2]._pool is None


def test_group_of_envs_shares_one_problem(scorer_cfg):
    envs = make_vec(scorer_cfg, 4, autoreset_mode="disabled")
    _, infos = envs.reset(seed=3, options={"index": [7, 7, 9, 9]})
    ids = infos["problem_id"]
    assert ids[0] == ids[1] != ids[2] == ids[3]
    assert np.allclose(infos["J_baseline"][0], infos["J_baseline"][1])


@pytest.mark.parametrize("kwargs, options, message", [
    ({"autoreset_mode": "same-step"}, None, r"^autoreset_mode must be 'next_step' or 'disabled' "
                                            r"\(AutoresetMode.NEXT_STEP or DISABLED\), got 'same-step'$"),
    ({}, {"index": [1, 2]}, r"'index' needs one entry per sub-env \(3\), got \[1, 2\]"),
    ({}, {"index": 0.5}, r"sub-env 0: reset options: 'index' must be an int in \[0, 100000\), got 0.5 \(float\)"),
    ({}, {"reset_mask": [1, 0, 1]}, r"'reset_mask' must be a bool array of shape \(3,\)"),
    ({}, "test", r"reset options must be a dict"),
    ({"num_envs": True}, None, r"num_envs must be an int >= 1, got True \(bool\)"),
])
def test_vector_errors(scorer_cfg, kwargs, options, message):
    with pytest.raises(TaskSpecError, match=message):
        envs = make_vec(scorer_cfg, kwargs.pop("num_envs", 3), **kwargs)
        envs.reset(options=options)


@pytest.mark.parametrize("seed", [[1, 2], [1, 2, 3, 4], -1, "7", [0, 1, 2.5]])
def test_vector_seeds_need_one_int_per_sub_env(scorer_cfg, seed):
    with pytest.raises(TaskSpecError, match=r"reset seed must be None, an int >= 0 \(sub-env i gets seed \+ i\) "
                                            r"or a list of 3 ints >= 0 or None \(one per sub-env\), got "):
        make_vec(scorer_cfg, 3).reset(seed=seed)


@pytest.mark.parametrize("actions, got", [
    ([], "list of length 0"), (None, "None (NoneType)"), (["a."] * 2, "list of length 2"),
    (["a."] * 4, "list of length 4"), ("abc", "str of length 3"),
])
def test_vector_step_needs_one_action_per_sub_env(scorer_cfg, actions, got):
    envs = make_vec(scorer_cfg, 3)
    envs.reset(seed=0)
    with pytest.raises(ActionError, match=rf"actions must be a list or tuple of 3 segments \(one str per sub-env\), "
                                          rf"got {re.escape(got)}"):
        envs.step(actions)


def test_a_bad_index_at_one_sub_env_resets_none(scorer_cfg):
    envs = make_vec(scorer_cfg, 3)
    obs, infos = envs.reset(seed=0)
    with pytest.raises(TaskSpecError, match=r"sub-env 2: reset options: 'index' must be an int in \[0, 100000\)"):
        envs.reset(seed=1, options={"index": [1, 2, 10**9]})
    assert envs._observations() == obs
    assert [env.episode.problem.id for env in envs.envs] == list(infos["problem_id"])
    with pytest.raises(ActionError, match=r"actions\[1\]: action must be a str, got int: 3"):
        envs.step(("a step.", 3, "a step."))
    assert envs._observations() == obs


STEP_KEYS = ("J", "J_baseline", "magnitude", "stability", "process_score", "process_reward", "outcome_reward",
             "scored", "entropy", "segment_tokens", "total_tokens", "backtrack", "context_overflow")


def assert_same_step(vector_step, i, single_step):
    """Sub-env ``i`` of a vector step equals a single env's step: observation, reward, flags, info."""
    obs, rewards, terms, truncs, infos = vector_step
    single_obs, reward, term, trunc, info = single_step
    assert obs[i] == single_obs and (bool(terms[i]), bool(truncs[i])) == (term, trunc)
    assert rewards[i] == pytest.approx(reward, abs=1e-6)
    for key in STEP_KEYS:
        assert infos[f"_{key}"][i], key
        np.testing.assert_allclose(infos[key][i], info[key], atol=1e-6, equal_nan=True, err_msg=key)


def test_context_overflow_at_one_sub_env_falls_back_to_appending_one_at_a_time(scorer_cfg, monkeypatch):
    """With a 220-token context, long segments overflow sub-env 0 while short ones fit sub-env 1: the
    batched append raises ContextLengthError, each session is then appended alone, sub-env 0 ends
    truncated with ``context_overflow`` and sub-env 1 goes on as an independent env."""
    scorer_cfg = {**scorer_cfg, "max_length": 220}
    limits = {"max_steps": 20, "max_total_tokens": 1000}
    envs = gym.make_vec("RePro-Math-v0", num_envs=2, vectorization_mode="vector_entry_point", scorer=scorer_cfg,
                        limits=limits, autoreset_mode="disabled")
    singles = [gym.make("RePro-Math-v0", scorer=scorer_cfg, limits=limits) for _ in range(2)]
    envs.reset(options={"split": "test", "index": [0, 0]})
    for env in singles:
        env.reset(options={"split": "test", "index": 0})
    calls = []
    original = envs.scorer.sessions_append

    def recording(sessions, segments, score=None):
        try:
            result = original(sessions, segments, score)
        except ContextLengthError:
            calls.append((len(sessions), "overflow"))
            raise
        calls.append((len(sessions), "ok"))
        return result

    monkeypatch.setattr(envs.scorer, "sessions_append", recording)
    actions = ("A sentence that keeps the reasoning going for a while longer.", "Go on.")
    for _ in range(6):
        calls.clear()
        step = envs.step(actions)
        batched_calls = list(calls)
        for i, env in enumerate(singles):
            assert_same_step(step, i, env.step(actions[i]))
        if step[3][0]:
            break
        assert batched_calls == [(2, "ok")]
    _, _, terms, truncs, infos = step
    assert batched_calls == [(2, "overflow"), (1, "overflow"), (1, "ok")]
    assert truncs.tolist() == [True, False] and terms.tolist() == [False, False]
    assert infos["context_overflow"].tolist() == [True, False] and infos["scored"].tolist() == [False, True]
    assert envs.envs[0].episode.text == singles[0].unwrapped.episode.text  # the overflowing segment is not kept
    assert_same_step(envs.step(("ignored.", "Go on.")), 1, singles[1].step("Go on."))


def test_next_step_autoreset_step_resets_the_finished_sub_env_only(scorer_cfg):
    envs = make_vec(scorer_cfg, 2)
    singles = [gym.make("RePro-Math-v0", scorer=scorer_cfg, limits={"max_steps": 2}) for _ in range(2)]
    envs.reset(seed=5)
    for i, env in enumerate(singles):
        env.reset(seed=5 + i)
    actions = ("The answer is \\boxed{1}.", "One step.")
    step = envs.step(actions)
    for i, env in enumerate(singles):
        assert_same_step(step, i, env.step(actions[i]))
    assert step[2].tolist() == [True, False]

    obs, rewards, terms, truncs, infos = envs.step(("An action the reset ignores.", "Two steps."))
    prompt, reset_info = singles[0].reset()  # unseeded: the sub-env's own generator goes on
    assert obs[0] == prompt and rewards[0] == 0.0 and not terms[0] and not truncs[0]
    assert {key for key in infos if not key.startswith("_") and infos[f"_{key}"][0]} == {"problem_id", "J_baseline"}
    assert infos["_problem_id"].tolist() == [True, False] and infos["problem_id"][0] == reset_info["problem_id"]
    assert infos["J_baseline"][0] == pytest.approx(reset_info["J_baseline"], abs=1e-5)
    assert_same_step((obs, rewards, terms, truncs, infos), 1, singles[1].step("Two steps."))
    assert truncs[1]  # max_steps = 2
    step = envs.step(("A first step of the new episode.", "ignored."))
    assert_same_step(step, 0, singles[0].step("A first step of the new episode."))


def test_reset_with_a_list_of_seeds_equals_single_envs_with_those_seeds(scorer_cfg):
    envs = make_vec(scorer_cfg, 2)
    singles = [gym.make("RePro-Math-v0", scorer=scorer_cfg, limits={"max_steps": 2}) for _ in range(2)]
    seeds = [21, 4]  # not seed + i
    for _ in range(2):  # seeded, then unseeded: each sub-env's generator goes on as the single env's
        obs, infos = envs.reset(seed=seeds)
        for i, env in enumerate(singles):
            single_obs, info = env.reset(seed=seeds[i])
            assert obs[i] == single_obs and infos["problem_id"][i] == info["problem_id"]
            # float32: a batched session start differs from one alone in the last bits
            assert infos["J_baseline"][i] == pytest.approx(info["J_baseline"], abs=1e-5)
        seeds = [None, None]
    assert len(set(infos["problem_id"])) == 2


def rollout(envs, solutions, seed):
    """Reset with ``seed`` and step each sub-env through its reference solution (filler once it ends)."""
    obs, _ = envs.reset(seed=seed)
    steps = [(tuple(obs),)]
    for t in range(max(map(len, solutions))):
        actions = tuple(s[t] if t < len(s) else "A filler step." for s in solutions)
        obs, rewards, terms, truncs, _ = envs.step(actions)
        steps.append((tuple(obs), rewards.tolist(), terms.tolist(), truncs.tolist()))
    return steps


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_make_vec_sync_and_async_equal_the_vector_entry_point(scorer_cfg, mode):
    """Async runs each sub-env in a daemonic worker process with its own scorer and math-verify child.

    Each reference solution ends on its answer written as a square root, which only math-verify (not
    the plain-number check) accepts, so the outcome rewards come from that child process."""
    reference = gym.make_vec("RePro-Math-v0", num_envs=2, vectorization_mode="vector_entry_point",
                             scorer=scorer_cfg)
    reference.reset(seed=1)
    solutions = []
    for env in reference.envs:
        answer = int(env.episode.problem.answer)
        root = f"{'-' if answer < 0 else ''}\\sqrt{{{answer * answer}}}"
        solutions.append([*env.episode.problem.solution[:-1], f"So the answer is \\boxed{{{root}}}."])
    expected = rollout(reference, solutions, seed=1)
    envs = gym.make_vec("RePro-Math-v0", num_envs=2, vectorization_mode=mode, scorer=scorer_cfg)
    try:
        assert type(envs).__name__ == {"sync": "SyncVectorEnv", "async": "AsyncVectorEnv"}[mode]
        got = rollout(envs, solutions, seed=1)
    finally:
        envs.close()
    assert [s[0] for s in got] == [s[0] for s in expected]
    for got_step, expected_step in zip(got[1:], expected[1:], strict=True):
        assert got_step[2:] == expected_step[2:]
        np.testing.assert_allclose(got_step[1], expected_step[1], atol=1e-6)
    for i, solution in enumerate(solutions):  # each reference episode ends verified at its last segment
        _, rewards, terms, _ = expected[len(solution)]
        assert terms[i] and rewards[i] > 0.5  # outcome 1 (verified) + α·r̃ with |α·r̃| <= 0.1


@pytest.fixture(scope="module")
def shared_vec(tiny_llama_dir):
    envs = make_vec({"model": str(tiny_llama_dir)}, 3, autoreset_mode="disabled")
    envs.reset(seed=0)
    return envs


ITEMS = st.one_of(st.none(), st.integers(-2, 5), st.floats(allow_nan=False, width=16), st.booleans(),
                  st.text(max_size=3), st.sampled_from(["a step.", "  ", "x\ud800"]))


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(actions=st.one_of(ITEMS, st.lists(ITEMS, max_size=5), st.tuples(ITEMS, ITEMS, ITEMS)))
def test_property_step_arguments(shared_vec, actions):
    """``step`` raises ActionError exactly when ``actions`` is not 3 members of the action space, and
    then changes nothing."""
    envs, space = shared_vec, shared_vec.single_action_space
    before = envs._observations()
    valid = isinstance(actions, list | tuple) and len(actions) == 3 and all(map(space.contains, actions))
    if not valid:
        with pytest.raises(ActionError):
            envs.step(actions)
        assert envs._observations() == before
        return
    envs.step(actions)
    envs.reset(seed=0)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(seed=st.one_of(ITEMS, st.lists(ITEMS, max_size=4)), index=st.one_of(ITEMS, st.lists(ITEMS, max_size=4)))
def test_property_reset_arguments(shared_vec, seed, index):
    """``reset`` raises TaskSpecError exactly when the seed or the index is malformed, and then
    changes nothing."""
    envs = shared_vec
    before = envs._observations()

    def natural(x, limit=None):
        return x is None or (type(x) is int and x >= 0 and (limit is None or x < limit))

    seeds_ok = natural(seed) or (isinstance(seed, list) and len(seed) == 3 and all(map(natural, seed)))
    size = envs.envs[0].source.size("train")
    index_ok = natural(index, size) or (isinstance(index, list) and len(index) == 3
                                        and all(natural(i, size) for i in index))
    if not (seeds_ok and index_ok):
        with pytest.raises(TaskSpecError):
            envs.reset(seed=seed, options={"index": index})
        assert envs._observations() == before
        return
    envs.reset(seed=seed, options={"index": index})
