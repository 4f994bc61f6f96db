"""LMPolicy: segment stops, the batched episode KV cache, traces, config errors (fixture model)."""

from __future__ import annotations

import pytest
import torch

from repro_env.agents.policy import LMPolicy, PolicyConfig, Trace, segment_done
from repro_env.errors import ConfigError
from tests.conftest import ForwardCounter

PROMPTS = ["Question: what is 2 + 3?\n\n", "Question: what is 12 + 31 times 4?\n\n", "Question: hi\n\n"]


@pytest.fixture(scope="module")
def policy(tiny_llama_dir):
    return LMPolicy(PolicyConfig(model=str(tiny_llama_dir), max_segment_tokens=12), seed=0)


COIN_PROMPTS = [f"Question: Ava has {i + 3} coins. She finds {2 * i + 1} more coins. How many coins does Ava "
                "have now?\n\n" for i in range(8)]


def run_episode(policy: LMPolicy, prompts: list[str], steps: int, greedy: bool, active_rows=None):
    """Act ``steps`` times, stepping the observations the way the env does (delimiter appended)."""
    observations = list(prompts)
    policy.reset(observations)
    outputs = []
    for step in range(steps):
        active = [True] * len(prompts) if active_rows is None else active_rows(step)
        segments = policy.act(observations, active=active, greedy=greedy)
        outputs.append(segments)
        for i, segment in enumerate(segments):
            if segment is not None:
                text = segment.text
                observations[i] += text if text.endswith("\n\n") else text + "\n\n"
    return observations, outputs


def test_segment_done_needs_content_before_the_delimiter():
    assert segment_done("First, 2 + 3 = 5.\n\n", "\n\n")
    assert segment_done("So.\n\nThen", "\n\n")  # a merged token that runs past the delimiter
    assert not segment_done("\n\n", "\n\n")  # leading blank lines never end a segment
    assert not segment_done("  \n\nabc", "\n\n")
    assert not segment_done("First, 2 + 3", "\n\n")


def assert_behaviour_log_probs_match(policy: LMPolicy) -> None:
    """Every trace's behaviour log-probs (from the batched, padded, incremental cache) equal one
    plain forward over its ids."""
    for trace in policy.traces:
        ids = torch.tensor([trace.ids])  # (1, L)
        with torch.no_grad():
            log_probs, _, _ = policy.forward(ids, torch.ones_like(ids))  # (1, L−1)
        generated = torch.tensor(trace.segment[1:]) >= 0  # (L−1,)
        assert int(generated.sum()) > 0
        assert torch.allclose(log_probs[0][generated], torch.tensor(trace.log_probs[1:])[generated], atol=1e-4)


def test_cached_generation_log_probs_equal_a_full_forward(policy):
    run_episode(policy, PROMPTS, steps=3, greedy=False, active_rows=lambda step: [True, step < 2, True])
    assert_behaviour_log_probs_match(policy)
    assert [trace.num_segments for trace in policy.traces] == [3, 2, 3]


def test_rows_that_finish_early_are_dropped_and_their_cache_comes_back(monkeypatch):
    """Once most rows have ended their segment the rest decode alone (a compacted cache); the full
    cache is rebuilt after the segment. Log-probs still equal a plain forward, later steps too.
    The bundled model, whose segments end at different lengths (the fixture model's rarely end)."""
    from repro_env.agents.hf_generator import HFGenerator

    policy = LMPolicy(PolicyConfig(model="bundled", max_segment_tokens=48), seed=0)

    compactions = []
    real = HFGenerator._compact
    monkeypatch.setattr(HFGenerator, "_compact", lambda self, rows: compactions.append(rows) or real(self, rows))
    prompts = COIN_PROMPTS
    run_episode(policy, prompts, steps=3, greedy=False)
    assert compactions  # the path under test ran
    assert_behaviour_log_probs_match(policy)
    _, batched = run_episode(policy, prompts[:4], steps=2, greedy=True)
    for i, prompt in enumerate(prompts[:4]):
        _, alone = run_episode(policy, [prompt], steps=2, greedy=True)
        assert [step[0].ids for step in alone] == [step[i].ids for step in batched]


def spy_on_resumes(policy: LMPolicy) -> list[str]:
    """Record, per row resumed with a look-ahead, whether it was 'reused' or 'dropped'."""
    generator, seen = policy.generator, []
    real = type(generator)._resume

    def resume(b, trace, greedy, limit, out):
        had = generator.ahead[b] is not None
        chunk = real(generator, b, trace, greedy, limit, out)
        if had:
            seen.append("reused" if out[b].ids else "dropped")
        return chunk

    generator._resume = resume
    return seen


def test_look_ahead_changes_no_segment_and_saves_forwards():
    """Rows that end their segment early sample their next one meanwhile: greedy segments are those
    of a policy that waits; sampled rounds take fewer forward passes (a round lasts as long as its
    slowest row, which a head start shortens). The bundled model: its segments end at different
    lengths."""
    results = {}
    for look_ahead in (True, False):
        policy = LMPolicy(PolicyConfig(model="bundled", max_segment_tokens=48, look_ahead=look_ahead), seed=0)
        seen = spy_on_resumes(policy)
        _, outputs = run_episode(policy, COIN_PROMPTS, steps=4, greedy=True)
        counter = ForwardCounter(policy)
        run_episode(policy, COIN_PROMPTS * 2, steps=6, greedy=False)
        results[look_ahead] = [[s.ids for s in step] for step in outputs], seen, counter.calls
    (with_ids, seen, with_calls), (without_ids, none, without_calls) = results[True], results[False]
    assert with_ids == without_ids
    assert "reused" in seen and "dropped" not in seen and none == []
    assert with_calls < 0.95 * without_calls


def test_a_look_ahead_the_env_did_not_follow_is_dropped():
    """The env appended text after the segment, or the sampling mode changed: the tokens sampled
    ahead are masked out of the cache and the row starts afresh. Its greedy segment is that of a
    policy without look-ahead, and every behaviour log-prob still equals a plain forward."""
    runs = {}
    for look_ahead in (True, False):
        policy = LMPolicy(PolicyConfig(model="bundled", max_segment_tokens=48, look_ahead=look_ahead), seed=0)
        seen = spy_on_resumes(policy)
        observations = list(COIN_PROMPTS[:4])
        policy.reset(observations)
        steps = []
        for step in range(4):
            segments = policy.act(observations, greedy=step != 2)  # a sampled step between greedy ones
            steps.append([s.ids for s in segments])
            observations = [o + s.text + (" Check.\n\n" if step == 0 and i % 2 else "")  # rows 1, 3: env text
                            for i, (o, s) in enumerate(zip(observations, segments, strict=True))]
        runs[look_ahead] = steps[:2], seen, policy
    assert runs[True][0] == runs[False][0]
    assert "dropped" in runs[True][1] and "reused" in runs[True][1]
    policy = runs[True][2]
    assert_behaviour_log_probs_match(policy)


def test_batched_greedy_equals_one_env_at_a_time(policy):
    _, batched = run_episode(policy, PROMPTS, steps=2, greedy=True)
    for i, prompt in enumerate(PROMPTS):
        _, alone = run_episode(policy, [prompt], steps=2, greedy=True)
        assert [step[0].ids for step in alone] == [step[i].ids for step in batched]


def test_actions_are_what_the_env_accepts(policy):
    _, outputs = run_episode(policy, PROMPTS, steps=3, greedy=False)
    for segment in (s for step in outputs for s in step):
        assert segment.text.strip() and len(segment.text) <= policy.config.max_segment_chars
        assert segment.stop in ("delimiter", "eos", "length", "context")
        assert len(segment.ids) == len(segment.log_probs) <= 12
        if segment.stop == "delimiter":
            assert segment_done(segment.text, "\n\n")
        if segment.stop == "eos":
            assert segment.text.endswith(policy.tokenizer.eos_token)


def test_trace_appends_the_delimiter_the_env_added_and_restarts_on_a_new_episode(policy):
    policy.reset([PROMPTS[0]])
    (segment,) = policy.act([PROMPTS[0]], greedy=True)
    trace = policy.traces[0]
    observation = PROMPTS[0] + segment.text + "|added by env|"
    before = len(trace.ids)
    policy.act([observation], greedy=True)
    assert trace.text.startswith(observation)
    added = policy.tokenizer("|added by env|", add_special_tokens=False)["input_ids"]
    assert trace.ids[before:before + len(added)] == added
    assert trace.segment[before:before + len(added)] == [-1] * len(added)
    policy.act([PROMPTS[1]], greedy=True)  # not an extension: a new episode
    assert policy.traces[0] is not trace and policy.traces[0].text.startswith(PROMPTS[1])


def test_trace_start_marks_prompt_tokens_as_not_generated(tiny_tokenizer):
    trace = Trace.start(tiny_tokenizer, "Question: hi\n\n")
    assert trace.ids[0] == tiny_tokenizer.bos_token_id
    assert set(trace.segment) == {-1} and trace.num_segments == 0


def test_no_room_in_the_context_ends_the_episode_with_the_eos_text(policy):
    long_prompt = "Question: " + "1 + 1 = 2. " * 200
    (segment,) = run_episode(policy, [long_prompt], steps=1, greedy=True)[1][0]
    assert segment.stop == "context" and segment.text == policy.tokenizer.eos_token and segment.ids == []


@pytest.mark.parametrize(("fields", "message"), [
    ({"temperature": 0.0}, "field 'temperature' must be a number > 0, got 0.0 (float)"),
    ({"max_segment_tokens": 0}, "field 'max_segment_tokens' must be an int >= 1, got 0 (int)"),
    ({"delimiter": ""}, "field 'delimiter' must be a non-empty string, got '' (str)"),
    ({"backend": "tgi"}, "field 'backend' must be one of 'hf', 'vllm', 'vllm-server' or 'package.module:Name', "
                         "got 'tgi' (str)"),
    ({"max_segment_chars": 0}, "field 'max_segment_chars' must be an int >= 1, got 0 (int)"),
    ({"dtype": "int8"}, "field 'dtype' must be one of 'float32', 'bfloat16', 'float16', got 'int8' (str)"),
    ({"model": ""}, "field 'model' must be a model directory or 'bundled', got '' (str)"),
])
def test_policy_config_errors(fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PolicyConfig(**fields)


def test_model_that_is_not_a_local_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"field 'model' must be a model directory .*: there is no directory"):
        LMPolicy(PolicyConfig(model=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match=rf"{tmp_path} has no config.json"):
        LMPolicy(PolicyConfig(model=str(tmp_path)))


@pytest.mark.vllm
def test_vllm_backend_generates_like_hf_and_follows_weight_syncs(tiny_llama_dir):
    """Greedy segments of the vLLM CPU engine equal the hf backend's, before and after a weight push."""
    config = PolicyConfig(model=str(tiny_llama_dir), max_segment_tokens=8)
    vllm_policy = LMPolicy(PolicyConfig(**{**config.__dict__, "backend": "vllm"}), seed=0)
    hf_policy = LMPolicy(config, seed=0)
    prompts = PROMPTS[:2]

    def greedy_ids(policy: LMPolicy) -> list[list[int]]:
        return [[s.ids for s in step] for step in run_episode(policy, prompts, steps=2, greedy=True)[1]]

    assert greedy_ids(vllm_policy) == greedy_ids(hf_policy)
    segment = run_episode(vllm_policy, prompts, steps=1, greedy=False)[1][0][0]
    assert segment.text.strip() and len(segment.ids) == len(segment.log_probs) <= 8
    assert all(lp <= 0 for lp in segment.log_probs)
    before = greedy_ids(vllm_policy)
    for policy in (vllm_policy, hf_policy):
        with torch.no_grad():
            for p in policy.model.parameters():
                p.mul_(0.5)
        policy.sync_generator()
    after = greedy_ids(vllm_policy)
    assert after == greedy_ids(hf_policy) and after != before


def test_a_generation_backend_can_be_named_by_its_class_path(tiny_llama_dir):
    """The registry's ``package.module:Class`` form: the hf generator by path equals ``backend: hf``."""
    config = PolicyConfig(model=str(tiny_llama_dir), max_segment_tokens=8)
    by_path = LMPolicy(PolicyConfig(**{**config.__dict__, "backend": "repro_env.agents.hf_generator:HFGenerator"}),
                       seed=0)
    assert type(by_path.generator).__name__ == "HFGenerator"
    ids = [[s.ids for s in step] for step in run_episode(by_path, PROMPTS, steps=2, greedy=True)[1]]
    assert ids == [[s.ids for s in step] for step in run_episode(LMPolicy(config), PROMPTS, steps=2, greedy=True)[1]]
