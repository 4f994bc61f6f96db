"""Wrappers: CandidateSegments (both env checkers, features, seeding, errors), the LM proposer's
segment cutting, TokenIds and EpisodeStatistics on scripted episodes."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from repro_env.env import ReasoningEnv
from repro_env.errors import ActionError, ConfigError
from repro_env.proposer import Candidate, LMProposer, ProposerConfig, find_cut
from repro_env.wrappers import CANDIDATE_FEATURES, CandidateSegments, EpisodeStatistics, TokenIds

FINAL = re.compile(r"\\boxed\{")
CAP = 8
"""Proposer token cap in these tests: short candidates keep generation fast."""
NF = len(CANDIDATE_FEATURES)


@pytest.fixture
def make_env(tiny_llama_dir):
    def make(**overrides) -> ReasoningEnv:
        limits = {"max_steps": 4, **overrides.pop("limits", {})}
        return ReasoningEnv("RePro-Math-v0", scorer={"model": str(tiny_llama_dir)}, limits=limits, **overrides)
    return make


@pytest.fixture
def candidates_env(make_env):
    return CandidateSegments(make_env(), k=2, proposer_config=ProposerConfig(max_new_tokens=CAP))


def scripted(texts):
    """A propose callable that always returns ``texts`` (and checks it gets a Generator)."""
    def propose(text, k, rng):
        assert isinstance(rng, np.random.Generator) and k == len(texts)
        return list(texts)
    return propose


# -- CandidateSegments ----------------------------------------------------------------------------

def test_candidate_segments_passes_gymnasium_check_env(candidates_env):
    gym_check_env(candidates_env, skip_render_check=True)


def test_candidate_segments_passes_sb3_check_env(candidates_env):
    sb3_check_env(candidates_env, warn=True)


def test_spaces_and_a_step_append_the_chosen_candidate(candidates_env):
    env = candidates_env
    assert env.action_space == gym.spaces.Discrete(2)
    assert env.observation_space.shape == (2 * NF + 3,) and env.observation_space.dtype == np.float32
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    chosen = info["candidates"][1]
    assert len(info["candidates"]) == 2
    obs, reward, terminated, truncated, step_info = env.step(1)
    assert env.observation_space.contains(obs)
    segment = env.unwrapped.episode.segments[-1]
    assert segment in (chosen, chosen + "\n\n")
    assert {"J", "process_reward", "total_tokens"} <= set(step_info)
    assert obs[-3] == pytest.approx(1 / 4)  # step 1 of max_steps 4


def test_wraps_a_registered_id_made_with_gym_make(tiny_llama_dir):
    import repro_env  # noqa: F401  (registers the ids)

    made = gym.make("RePro-Math-v0", scorer={"model": str(tiny_llama_dir)}, limits={"max_steps": 2})
    env = EpisodeStatistics(CandidateSegments(made, k=2, proposer_config=ProposerConfig(max_new_tokens=CAP)))
    env.reset(seed=0)
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step(0)
        done = terminated or truncated
    assert 1 <= info["episode"]["l"] <= 2


def test_proposer_shares_the_scorers_model_and_is_seeded(make_env, tiny_llama_dir):
    env = CandidateSegments(make_env(), k=3, proposer_config=ProposerConfig(max_new_tokens=CAP))
    scorer = env.unwrapped.scorer
    assert env.propose.model is scorer.model and env.propose.tokenizer is scorer.tokenizer
    by_path = CandidateSegments(make_env(), k=2, proposer=tiny_llama_dir,
                                proposer_config=ProposerConfig(max_new_tokens=CAP))
    assert by_path.propose.model is scorer.model
    first = env.reset(seed=11)[1]["candidates"]
    assert env.reset(seed=11)[1]["candidates"] == first
    assert env.reset(seed=12)[1]["candidates"] != first


def test_features_of_scripted_candidates(make_env):
    texts = ["So 6 - 2 = 4.\n\n", "Wait, let me re-check.\n\n", "The answer is \\boxed{4}.", "So 6 - 2 = 4.\n\n"]
    env = CandidateSegments(make_env(), k=4, proposer=scripted(texts))
    obs, _ = env.reset(seed=0)
    tokenizer = env.unwrapped.scorer.tokenizer
    blocks = obs[:4 * NF].reshape(4, NF)
    F = {name: i for i, name in enumerate(CANDIDATE_FEATURES)}
    cap = env.unwrapped.spec_task.limits.max_segment_tokens  # 64 in RePro-Math-v0
    for i, text in enumerate(texts):
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert blocks[i, F["tokens"]] == pytest.approx(n / cap)
    for name in ("mean_prob", "min_prob", "mean_prob_rel", "min_prob_rel"):  # a callable reports no log-probs
        assert blocks[:, F[name]].tolist() == [0, 0, 0, 0]
    assert blocks[:, F["final"]].tolist() == [0, 0, 1, 0]
    assert blocks[:, F["backtrack"]].tolist() == [0, 1, 0, 0]
    assert blocks[:, F["repeat"]].tolist() == [0, 0, 0, 0]
    # candidates 0 and 3 agree with one of the 3 others; 1 and 2 with none.
    assert blocks[:, F["agreement"]] == pytest.approx([1 / 3, 0, 0, 1 / 3])
    assert blocks[:, F["cut_off"]].tolist() == [0, 0, 0, 0]  # a callable's segments are never cut off
    assert obs[-3:].tolist() == [0, pytest.approx(env._total_tokens / 512), 0]
    obs, *_ = env.step(0)
    assert obs[:4 * NF].reshape(4, NF)[:, F["repeat"]].tolist() == [1, 0, 0, 1]


def test_probability_features_of_sampled_candidates(candidates_env):
    obs, _ = candidates_env.reset(seed=4)
    blocks = obs[:2 * NF].reshape(2, NF)
    F = {name: i for i, name in enumerate(CANDIDATE_FEATURES)}
    first, second = candidates_env.candidates
    assert blocks[:, F["mean_prob"]] == pytest.approx([np.exp(first.mean_logprob), np.exp(second.mean_logprob)])
    assert blocks[:, F["min_prob"]] == pytest.approx([np.exp(first.min_logprob), np.exp(second.min_logprob)])
    best = max(first.min_logprob, second.min_logprob)
    assert blocks[:, F["min_prob_rel"]] == pytest.approx([np.exp(first.min_logprob - best),
                                                         np.exp(second.min_logprob - best)])
    assert blocks[:, F["mean_prob_rel"]].max() == 1.0


def test_final_answer_agreement_compares_answers(make_env):
    texts = ["So \\boxed{7}", "Thus \\boxed{ 7 }", "\\boxed{8}"]
    env = CandidateSegments(make_env(), k=3, proposer=scripted(texts))
    obs, _ = env.reset(seed=0)
    agreement = obs[:3 * NF].reshape(3, NF)[:, CANDIDATE_FEATURES.index("agreement")]
    assert agreement == pytest.approx([1 / 2, 1 / 2, 0])


def test_episode_ends_on_a_final_candidate_and_zeroes_the_candidate_block(make_env):
    env = CandidateSegments(make_env(), k=2, proposer=scripted(["Hmm.", "The answer is \\boxed{1}."]))
    env.reset(seed=0)
    obs, _, terminated, truncated, info = env.step(1)
    assert terminated and not truncated and info["candidates"] == ()
    assert not obs[:2 * NF].any()
    with pytest.raises(gym.error.ResetNeeded, match="call reset"):
        env.step(0)


def test_long_candidates_are_cut_to_max_segment_chars(make_env):
    env = CandidateSegments(make_env(limits={"max_segment_chars": 20}), k=2, proposer=scripted(["x" * 50, "ok"]))
    _, info = env.reset(seed=0)
    assert info["candidates"] == ("x" * 20, "ok")
    assert env.candidates[0].stop == "length" and env.candidates[1].stop == "external"
    obs, _, terminated, _, info = env.step(0)
    assert env.unwrapped.episode.segments == ["x" * 20 + "\n\n"]  # the cut text (+ delimiter), not 50 chars
    assert not terminated and info["candidates"] == ("x" * 20, "ok")


@pytest.mark.parametrize("action", [2, -1, 0.5, np.array([0, 1])])
def test_bad_actions_raise(candidates_env, action):
    candidates_env.reset(seed=0)
    with pytest.raises(ActionError, match=r"action must be an int in \[0, 2\)"):
        candidates_env.step(action)


def test_step_before_reset_raises(candidates_env):
    with pytest.raises(gym.error.ResetNeeded, match="call reset"):
        candidates_env.step(0)


@pytest.mark.parametrize("output, message", [
    (["only one"], r"must return a list of k=2 strings, got \['only one'\]"),
    ("ab", r"must return a list of k=2 strings, got 'ab'"),
    (["fine", "  \n"], r"returned candidate 1 = '  \\n'; expected a non-blank string"),
    (["fine", 3], r"returned candidate 1 = 3; expected a non-blank string"),
])
def test_bad_propose_output_raises(make_env, output, message):
    env = CandidateSegments(make_env(), k=2, proposer=lambda text, k, rng: output)
    with pytest.raises(ActionError, match=message):
        env.reset(seed=0)


@pytest.mark.parametrize("k", [1, 2.0, True])
def test_bad_k_raises(make_env, k):
    with pytest.raises(ConfigError, match=r"field 'k' must be an int >= 2 \(candidates to choose from\)"):
        CandidateSegments(make_env(), k=k)


def test_bad_proposer_raises(make_env, tmp_path):
    with pytest.raises(ConfigError, match="field 'proposer' must be None, a model directory, an LMProposer"):
        CandidateSegments(make_env(), proposer=42)
    with pytest.raises(ConfigError, match=f"field 'proposer' = '{tmp_path}': could not load a model"):
        CandidateSegments(make_env(), proposer=str(tmp_path))


def test_proposer_none_needs_a_transformers_scorer(make_env):
    inner = make_env().scorer

    class ServerLikeScorer:  # the Scorer protocol, without a transformers .model in this process
        config, max_length, tokenizer, eos_token = inner.config, inner.max_length, inner.tokenizer, inner.eos_token
        session, sessions_append, score, reload_weights = (inner.session, inner.sessions_append, inner.score,
                                                           inner.reload_weights)

    env = ReasoningEnv("RePro-Math-v0", scorer=ServerLikeScorer(), limits={"max_steps": 4})
    with pytest.raises(ConfigError, match="proposer=None samples from the scorer's model, but the "
                                          "ServerLikeScorer has no transformers .model/.tokenizer"):
        CandidateSegments(env)
    wrapped = CandidateSegments(env, k=2, proposer=scripted(["a", "b"]))
    assert wrapped.reset(seed=0)[1]["candidates"] == ("a", "b")


# -- the proposer -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, cut", [
    ("So 3 + 4 = 7.\n\nThen", (len("So 3 + 4 = 7.\n\n"), "delimiter")),
    ("\n\nSo 7.\n\nx", (len("\n\nSo 7.\n\n"), "delimiter")),  # leading blank lines stay
    ("The answer is \\boxed{\\frac{1}{2}}. Then\n\n", (len("The answer is \\boxed{\\frac{1}{2}}"), "final")),
    ("\\boxed{12", None),  # the answer is not closed yet
    ("no break yet", None),
    ("\n\n", None),
])
def test_find_cut(text, cut):
    assert find_cut(text, "\n\n", FINAL) == cut


def test_candidate_cut_inside_a_merged_token(tiny_llama_dir, tiny_tokenizer):
    """The fixture BPE merges '.\\n\\n' into one token: the cut is found on characters."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    proposer = LMProposer(model, tiny_tokenizer, config=ProposerConfig(max_new_tokens=CAP))
    ids = tiny_tokenizer("So, 3 + 4 = 7.\n\nThen, 7", add_special_tokens=False)["input_ids"]
    pieces = [tiny_tokenizer.decode([i]) for i in ids]
    assert ".\n\n" in pieces  # the premise of this test
    n = pieces.index(".\n\n") + 1
    log_probs = [-float(i + 1) for i in range(len(ids))]
    c = proposer._candidate(ids, log_probs)
    assert c == Candidate("So, 3 + 4 = 7.\n\n", n, -(n + 1) / 2, -float(n), "delimiter")  # mean of -1..-n

    eos = tiny_tokenizer.eos_token_id
    ended = proposer._candidate(ids[:2] + [eos, 5], [-1.0, -3.0, -2.0, -9.0])
    assert ended == Candidate(tiny_tokenizer.decode(ids[:2]) + "</s>", 3, -2.0, -3.0, "eos")
    blank = tiny_tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    assert proposer._candidate(blank, [-1.0] * len(blank)).text == "</s>"


def test_lm_proposer_samples_k_segments_reproducibly(tiny_llama_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    proposer = LMProposer(model, tiny_tokenizer, config=ProposerConfig(max_new_tokens=CAP))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = proposer.sample("Question: 3 + 4?\n\n", 3, np.random.default_rng(0))
    assert torch.rand(1) == before  # the global torch RNG is untouched
    assert proposer("Question: 3 + 4?\n\n", 3, np.random.default_rng(0)) == [c.text for c in first]
    for c in first:
        assert 1 <= c.num_tokens <= CAP and c.min_logprob <= c.mean_logprob < 0
        if c.stop == "delimiter":
            assert c.text.endswith("\n\n") and "\n\n" not in c.text.strip()


def test_proposer_config_and_arguments_are_checked(tiny_llama_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with pytest.raises(ConfigError, match=r"field 'max_new_tokens' must be an int >= 1, got 0 \(int\)"):
        ProposerConfig(max_new_tokens=0)
    with pytest.raises(ConfigError, match=r"field 'temperature' must be a number > 0, got -1.0 \(float\)"):
        ProposerConfig(temperature=-1.0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with pytest.raises(ConfigError, match=r"field 'max_new_tokens' must be < the model's context \(512 tokens\)"):
        LMProposer(model, tiny_tokenizer, config=ProposerConfig(max_new_tokens=512))
    with pytest.raises(ConfigError, match="field 'delimiter' must be a non-empty string, got ''"):
        LMProposer(model, tiny_tokenizer, delimiter="")
    no_eos = AutoTokenizer.from_pretrained(tiny_llama_dir)
    no_eos.eos_token = None
    with pytest.raises(ConfigError, match="the proposer's tokenizer has no eos_token"):
        LMProposer(model, no_eos)
    with pytest.raises(ConfigError, match=r"field 'k' must be an int >= 1, got 0 \(int\)"):
        LMProposer(model, tiny_tokenizer).sample("x", 0, np.random.default_rng(0))


# -- TokenIds -----------------------------------------------------------------------------------

def test_token_ids_pads_and_left_truncates(make_env, tiny_tokenizer):
    env = TokenIds(make_env(), max_tokens=300)
    assert env.observation_space == gym.spaces.Box(0, len(tiny_tokenizer) - 1, shape=(300,), dtype=np.int64)
    obs, _ = env.reset(seed=0)
    prompt = env.unwrapped.episode.prompt
    ids = tiny_tokenizer(prompt)["input_ids"]
    assert len(ids) < 300 and env.observation_space.contains(obs)
    assert obs[:len(ids)].tolist() == ids
    assert (obs[len(ids):] == tiny_tokenizer.pad_token_id).all()

    short = TokenIds(make_env(), max_tokens=5)
    obs, _ = short.reset(seed=0)
    assert obs.tolist() == ids[-5:]  # the latest tokens survive
    obs, *_ = short.step("So, 6 - 2 = 4.")
    text_ids = tiny_tokenizer(prompt + "So, 6 - 2 = 4.\n\n")["input_ids"]
    assert obs.tolist() == text_ids[-5:]


def test_token_ids_errors(make_env):
    with pytest.raises(ConfigError, match=r"field 'max_tokens' must be an int >= 1, got 0"):
        TokenIds(make_env(), max_tokens=0)
    env = make_env()
    env.scorer = object()  # a scorer without a tokenizer (e.g. an API server)
    with pytest.raises(ConfigError, match="TokenIds needs a tokenizer: the env's scorer has none"):
        TokenIds(env)


# -- EpisodeStatistics --------------------------------------------------------------------------

def test_episode_statistics_of_a_scripted_episode(make_env):
    env = EpisodeStatistics(make_env())
    _, _ = env.reset(seed=0, options={"index": 0})
    answer = env.unwrapped.episode.problem.answer
    segments = ["So, 6 - 2 = 4.", "Wait, let me re-check that.", f"The answer is \\boxed{{{answer}}}."]
    rewards, infos = [], []
    for segment in segments:
        _, reward, terminated, truncated, info = env.step(segment)
        rewards.append(reward)
        infos.append(info)
        assert ("episode" in info) == (terminated or truncated)
    stats = infos[-1]["episode"]
    alpha = 0.1  # RePro-Math-v0's reward.alpha
    # selection "all": every point of the reasoning is scored, so the process rewards telescope to S_2,
    # the end of the reasoning; the segment that states the answer is not scored (§4).
    # Totals checked against quantities the wrapper never adds up: S_2 from its info, outcome 1.
    assert not infos[-1]["scored"] and infos[-2]["scored"]
    assert stats["process_r"] == pytest.approx(alpha * infos[-2]["process_score"])
    assert stats["r"] == pytest.approx(alpha * infos[-2]["process_score"] + 1.0)  # the answer verifies
    assert rewards[-1] != pytest.approx(stats["r"])  # earlier segments' rewards are in the total too
    assert stats["outcome"] == 1.0 and stats["correct"] is True
    assert stats["backtracks"] == 1 and stats["l"] == 3
    assert stats["tokens"] == infos[-1]["total_tokens"] and stats["t"] >= 0

    env.reset(seed=0, options={"index": 0})  # totals restart
    for segment in ["a", "b", "c", "d"]:
        _, _, terminated, truncated, info = env.step(segment)
    assert truncated and not terminated
    assert info["episode"]["l"] == 4 and info["episode"]["backtracks"] == 0
    assert info["episode"]["correct"] is False and info["episode"]["outcome"] == 0.0
