"""HFScorer: shared-prefix tree scoring and cached sessions equal plain forward passes (REPRO_SPEC §2, §7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repro_env.errors import ConfigError, ContextLengthError, ScorerError
from repro_env.scoring import hf, hf_session
from repro_env.scoring.base import Scorer, ScorerConfig, ScoreRequest, ScoringSession, make_scorer
from repro_env.scoring.hf import (
    HFScorer,
    TokenizedRequest,
    tree_attention_mask,
    tree_position_ids,
)
from repro_env.scoring.hf_session import session_attention_mask
from repro_env.segments import tokenize_with_boundaries
from tests.conftest import ForwardCounter

TOL = 1e-5
QUESTION = "Question: what is 12 + 5 times 3?\n\n"
SEGMENTS = ("First, 5 * 3 = 15.\n\n", "Then 12 + 15 = 27.\n\n", "Wait, check: 27.\n\n", "The answer is 27.")
ANSWER = "\\boxed{27}"


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def scorer(request, tiny_llama_dir) -> HFScorer:
    return HFScorer(ScorerConfig(model=str(tiny_llama_dir), options={"attn_implementation": request.param},
                                 batch_size=3))


@pytest.fixture(scope="module")
def sdpa_scorer(tiny_llama_dir) -> HFScorer:
    return HFScorer(ScorerConfig(model=str(tiny_llama_dir)))


def plain_J(scorer: HFScorer, prefix_ids: list[int], answer: str) -> float:
    """J from one ordinary forward over ``prefix + a`` (the paper's per-point pass)."""
    answer_ids = scorer.answer_ids(answer)
    with torch.no_grad():
        logits = scorer.model(torch.tensor([prefix_ids + answer_ids])).logits[0]  # (n, V)
    log_probs = torch.log_softmax(logits.float(), -1)[len(prefix_ids) - 1:-1]  # (|a|, V)
    return float(log_probs.gather(1, torch.tensor(answer_ids)[:, None]).mean())


def plain_entropies(scorer: HFScorer, ids: list[int], boundaries: list[int]) -> list[float]:
    with torch.no_grad():
        logits = scorer.model(torch.tensor([ids])).logits[0]  # (n, V)
    probs = torch.softmax(logits.double(), -1)  # (n, V)
    entropy = -(probs * probs.log()).sum(-1)  # (n,)
    return [float(entropy[b - 1]) for b in boundaries[:-1]]


def test_implements_protocols(sdpa_scorer):
    assert isinstance(sdpa_scorer, Scorer)
    assert isinstance(sdpa_scorer.session(QUESTION, ANSWER), ScoringSession)
    assert sdpa_scorer.max_length == 512  # the fixture's max_position_embeddings


def test_make_scorer_builds_hf(tiny_llama_dir):
    assert isinstance(make_scorer(ScorerConfig(model=str(tiny_llama_dir))), HFScorer)


def test_from_model_and_score_tokens(sdpa_scorer):
    wrapped = HFScorer.from_model(sdpa_scorer.model, sdpa_scorer.tokenizer)
    expected = sdpa_scorer.score([ScoreRequest(QUESTION, SEGMENTS, ANSWER, points=(1, 3))])[0]
    ids, boundaries = tokenize_with_boundaries(sdpa_scorer.tokenizer, QUESTION, SEGMENTS)
    item = TokenizedRequest(ids, boundaries, sdpa_scorer.answer_ids(ANSWER), (1, 3))
    got = wrapped.score_tokens([item])[0]
    np.testing.assert_array_equal(got.J, expected.J)
    assert wrapped.max_length == 512 and wrapped.config.device == "cpu"


def test_tree_mask_and_positions_by_hand():
    # Prefix of 3 tokens; copies for boundaries 1 and 3, 2 tokens each; one padding token. L = 8.
    mask = tree_attention_mask(3, [1, 3], 2, 8)
    allowed = (mask == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0, 0, 0],  # prefix 0
        [1, 1, 0, 0, 0, 0, 0, 0],  # prefix 1
        [1, 1, 1, 0, 0, 0, 0, 0],  # prefix 2
        [1, 0, 0, 1, 0, 0, 0, 0],  # copy 0 (boundary 1), token 0: sees prefix[:1]
        [1, 0, 0, 1, 1, 0, 0, 0],  # copy 0, token 1
        [1, 1, 1, 0, 0, 1, 0, 0],  # copy 1 (boundary 3): sees prefix[:3], not copy 0
        [1, 1, 1, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],  # padding sees itself only
    ]
    assert mask.dtype == torch.float32 and mask.min() == torch.finfo(torch.float32).min
    assert tree_position_ids(3, [1, 3], 2, 8).tolist() == [0, 1, 2, 1, 2, 3, 4, 0]


def test_tree_scoring_equals_separate_passes(scorer):
    result = scorer.score([ScoreRequest(QUESTION, SEGMENTS, ANSWER)])[0]
    ids, boundaries = tokenize_with_boundaries(scorer.tokenizer, QUESTION, SEGMENTS)
    expected = [plain_J(scorer, ids[:b], ANSWER) for b in boundaries]  # points 0..4
    assert result.points == (1, 2, 3, 4)
    assert result.J.dtype == np.float64 and result.J.shape == (5,)
    np.testing.assert_allclose(result.J, expected, rtol=0, atol=TOL)
    assert len(set(np.round(result.J, 4))) == 5  # the points really differ, so a wrong mask would show
    assert result.num_tokens == len(ids)


def test_entropies_equal_a_direct_softmax(scorer):
    result = scorer.score([ScoreRequest(QUESTION, SEGMENTS, ANSWER)])[0]
    ids, boundaries = tokenize_with_boundaries(scorer.tokenizer, QUESTION, SEGMENTS)
    assert result.entropies.shape == (4,) and result.entropies.dtype == np.float64
    np.testing.assert_allclose(result.entropies, plain_entropies(scorer, ids, boundaries), rtol=0, atol=TOL)
    assert np.all(result.entropies < math.log(len(scorer.tokenizer)))  # below uniform's log V


def test_subsets_of_points(sdpa_scorer):
    full = sdpa_scorer.score([ScoreRequest(QUESTION, SEGMENTS, ANSWER)])[0]
    for points in [(2,), (1, 4), (3, 4)]:
        part = sdpa_scorer.score([ScoreRequest(QUESTION, SEGMENTS, ANSWER, points=points)])[0]
        assert part.points == points
        np.testing.assert_allclose(part.J, full.J[[0, *points]], rtol=0, atol=TOL)
        np.testing.assert_allclose(part.entropies, full.entropies, rtol=0, atol=TOL)


def _requests() -> list[ScoreRequest]:
    return [
        ScoreRequest(QUESTION, SEGMENTS, ANSWER),
        ScoreRequest("Question: 2 + 2?\n\n", ("So 4.",), "\\boxed{4}"),
        ScoreRequest("Question: 7 * 8?\n\n", ("Now, 7 * 8 = 56.\n\n", "Hence 56."), "56", points=(2,)),
        ScoreRequest("Q: 9 + 1?\n\n", ("9 + 1 = 10.\n\n", "So 10.\n\n", "Check 10."), "\\boxed{10}"),
    ]


def test_batch_of_different_lengths_equals_one_by_one(scorer):
    requests = _requests()
    together = scorer.score(requests)  # batch_size=3: two forwards, the first padded
    for request, result in zip(requests, together, strict=True):
        alone = scorer.score([request])[0]
        assert result.points == alone.points and result.num_tokens == alone.num_tokens
        np.testing.assert_allclose(result.J, alone.J, rtol=0, atol=TOL)
        np.testing.assert_allclose(result.entropies, alone.entropies, rtol=0, atol=TOL)


LONG = ScoreRequest(QUESTION, tuple(f"Step {i}: {i} + {i} = {2 * i}.\n\n" for i in range(30)), ANSWER,
                    points=(3, 10, 11, 29, 30))


@pytest.mark.parametrize("chunk_tokens", [1, 5, 64, 1024])
def test_chunked_prefill_equals_separate_passes(scorer, monkeypatch, chunk_tokens):
    # Every response takes the long-trace path; pieces of 1 token, 5, 64, or one piece per boundary.
    monkeypatch.setattr(hf, "TREE_MAX_TOKENS", 0)
    chunked = HFScorer.from_model(scorer.model, scorer.tokenizer,
                                  ScorerConfig(model="<in-memory>", options={"chunk_tokens": chunk_tokens}))
    for request in [*_requests(), LONG] if chunk_tokens > 1 else _requests():
        result = chunked.score([request])[0]
        ids, boundaries = tokenize_with_boundaries(scorer.tokenizer, request.question, request.segments)
        expected = [plain_J(scorer, ids[:boundaries[t]], request.answer) for t in (0, *result.points)]
        np.testing.assert_allclose(result.J, expected, rtol=0, atol=TOL)
        np.testing.assert_allclose(result.entropies, plain_entropies(scorer, ids, boundaries), rtol=0, atol=TOL)


def test_tree_and_chunked_paths_mix_in_one_call(sdpa_scorer, monkeypatch):
    whole = sdpa_scorer.score(_requests())
    monkeypatch.setattr(hf, "TREE_MAX_TOKENS", 20)  # the shortest requests stay on tree rows
    mixed = sdpa_scorer.score(_requests())
    for a, b in zip(whole, mixed, strict=True):
        np.testing.assert_allclose(a.J, b.J, rtol=0, atol=TOL)
        np.testing.assert_allclose(a.entropies, b.entropies, rtol=0, atol=TOL)


def test_masks_so_small_that_each_tree_row_runs_alone(sdpa_scorer, monkeypatch):
    whole = sdpa_scorer.score(_requests())
    monkeypatch.setattr(hf, "MAX_MASK_ELEMENTS", 1)
    split = sdpa_scorer.score(_requests())
    for a, b in zip(whole, split, strict=True):
        np.testing.assert_allclose(a.J, b.J, rtol=0, atol=TOL)
        np.testing.assert_allclose(a.entropies, b.entropies, rtol=0, atol=TOL)


def test_single_token_answer_needs_no_copy(sdpa_scorer):
    answer = "7"
    assert len(sdpa_scorer.answer_ids(answer)) == 1
    result = sdpa_scorer.score([ScoreRequest(QUESTION, SEGMENTS, answer)])[0]
    ids, boundaries = tokenize_with_boundaries(sdpa_scorer.tokenizer, QUESTION, SEGMENTS)
    expected = [plain_J(sdpa_scorer, ids[:b], answer) for b in boundaries]
    np.testing.assert_allclose(result.J, expected, rtol=0, atol=TOL)


def test_answer_tokens_have_no_bos(sdpa_scorer):
    ids = sdpa_scorer.answer_ids(ANSWER)
    assert sdpa_scorer.tokenizer.bos_token_id not in ids
    assert sdpa_scorer.tokenizer.decode(ids) == ANSWER


def test_session_equals_batch_scoring(scorer):
    batch = scorer.score([ScoreRequest(QUESTION, SEGMENTS, ANSWER)])[0]
    session = scorer.session(QUESTION, ANSWER)
    assert abs(session.J_baseline - batch.J[0]) <= TOL
    ids, boundaries = tokenize_with_boundaries(scorer.tokenizer, QUESTION, SEGMENTS)
    for t, segment in enumerate(SEGMENTS, start=1):
        step = session.append(segment)
        assert abs(step.J - batch.J[t]) <= TOL
        assert abs(step.entropy - batch.entropies[t - 1]) <= TOL
        assert step.total_tokens == boundaries[t] == session.total_tokens
        assert step.segment_tokens == boundaries[t] - boundaries[t - 1]
    session.close()
    with pytest.raises(ScorerError, match="append on a closed session"):
        session.append("more")


def test_session_without_scoring_keeps_entropy_and_later_J(sdpa_scorer):
    batch = sdpa_scorer.score([ScoreRequest(QUESTION, SEGMENTS, ANSWER)])[0]
    session = sdpa_scorer.session(QUESTION, ANSWER)
    skipped = session.append(SEGMENTS[0], score=False)
    assert math.isnan(skipped.J)
    assert abs(skipped.entropy - batch.entropies[0]) <= TOL
    assert abs(session.append(SEGMENTS[1]).J - batch.J[2]) <= TOL


def test_session_retokenises_across_a_merged_boundary(sdpa_scorer):
    # "?" then ".\n\n..." : the question's last token "?" merges with the segment's leading
    # "\n\n" into one token, so the cache must be cropped back before the merge.
    question, segments = "Question: 3 + 4?", ("\n\nSo 7.\n\n", "The answer is 7.")
    session = sdpa_scorer.session(question, ANSWER)
    for t, segment in enumerate(segments, start=1):
        step = session.append(segment)
        ids, _ = tokenize_with_boundaries(sdpa_scorer.tokenizer, question, segments[:t])
        assert abs(step.J - plain_J(sdpa_scorer, ids, ANSWER)) <= TOL


# Four episodes of different prompt and segment lengths, one step per row; None = sub-env is done.
# Episode 2's question ends in "?" and its first segment starts with "\n\n": the two merge into one
# token "?\n\n", so that session's cache is cropped back before the merge (a boundary merge).
EPISODES = [
    (QUESTION, SEGMENTS),
    ("Question: 7 * 8?\n\n", ("Now, 7 * 8 = 56.\n\n", "Hence 56.\n\n", "So 56.\n\n", "56")),
    ("Question: 3 + 4?", ("\n\nSo 7.\n\n", "Then, 3 + 4 = 7.\n\n", "The answer is 7.", ".\n\nCheck.")),
    ("Q: 9 + 1?\n\n", ("9 + 1 = 10 and not 11 and not 12, as 9 + 1 = 10.\n\n", "So 10.", "\n\n", "Ok.")),
]
FLAGS = [(True, True, True, True), (True, False, True, False), (True, True, False, True),
         (False, True, True, True)]


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def wide_scorer(request, tiny_llama_dir) -> HFScorer:
    return HFScorer(ScorerConfig(model=str(tiny_llama_dir), options={"attn_implementation": request.param},
                                 batch_size=8))


def assert_same_step(got, expected, flag: bool) -> None:
    assert (abs(got.J - expected.J) <= TOL) if flag else (math.isnan(got.J) and math.isnan(expected.J))
    assert abs(got.entropy - expected.entropy) <= TOL
    assert (got.segment_tokens, got.total_tokens) == (expected.segment_tokens, expected.total_tokens)


def test_the_merge_episode_really_crops(sdpa_scorer):
    question, segments = EPISODES[2][0], EPISODES[2][1][:1]
    ids, boundaries = tokenize_with_boundaries(sdpa_scorer.tokenizer, question, segments)
    alone, _ = tokenize_with_boundaries(sdpa_scorer.tokenizer, question, ())
    # The last question token differs once the segment follows: the cached prefix must be cut back.
    assert ids[:len(alone)] != alone
    assert boundaries[1] == len(ids)


def test_sessions_append_equals_single_appends(wide_scorer):
    single = [wide_scorer.session(q, ANSWER) for q, _ in EPISODES]
    counter = ForwardCounter(wide_scorer)
    try:
        batched = wide_scorer.sessions([(q, ANSWER) for q, _ in EPISODES])
        assert counter.calls == 1  # the four questions' J_0 in one forward
        for b, s in zip(batched, single, strict=True):
            assert abs(b.J_baseline - s.J_baseline) <= 1e-5 and b.total_tokens == s.total_tokens
        for step in range(4):
            flags = [f[step] for f in FLAGS]
            segments = [segs[step] for _, segs in EPISODES]
            expected = [s.append(seg, flag) for s, seg, flag in zip(single, segments, flags, strict=True)]
            counter.calls = 0
            got = wide_scorer.sessions_append(batched, segments, score=flags)
            assert counter.calls == 1  # all four sessions in one forward
            for g, e, flag in zip(got, expected, flags, strict=True):
                assert_same_step(g, e, flag)
    finally:
        counter.handle.remove()
    assert len({s.total_tokens for s in batched}) == 4  # the caches really had different lengths
    # Only q + τ≤t is committed, never the answer copy or padding; the batched sessions stayed in
    # the one pool their start made (no step copied their prefixes), each single one in its own.
    assert [s._valid for s in batched + single] == [s.total_tokens for s in batched + single]
    assert len({id(s._pool) for s in batched}) == 1 and [s._row for s in batched] == [0, 1, 2, 3]
    assert len({id(s._pool) for s in single}) == 4


def test_pool_gathers_the_stepped_and_merges_pools(wide_scorer):
    # Four sessions share one pool. A step over fewer of them moves those into a pool of their own
    # (one copy), where later steps are in place again, and the rest into another; a step over
    # sessions of several pools gathers them into one. Every step equals separate sessions' appends.
    reference = [wide_scorer.session(q, ANSWER) for q, _ in EPISODES]
    pooled = wide_scorer.sessions([(q, ANSWER) for q, _ in EPISODES])
    first = pooled[0]._pool

    def step(indices, t):
        got = wide_scorer.sessions_append([pooled[i] for i in indices], [EPISODES[i][1][t] for i in indices])
        for i, g in zip(indices, got, strict=True):
            assert_same_step(g, reference[i].append(EPISODES[i][1][t]), True)
        return pooled[indices[0]]._pool

    assert step([0, 1, 2, 3], 0) is first
    three = step([0, 1, 2], 1)
    one = pooled[3]._pool  # left behind: moved too, so that the first pool is freed
    assert first.members == [None] * 4 and one not in (first, three) and one.members == [pooled[3]]
    assert three.members == pooled[:3] and step([0, 1, 2], 2) is three  # in place
    assert step([3], 1) is one and step([3], 2) is one
    merged = step([0, 1, 2, 3], 3)
    assert merged not in (first, three, one) and merged.members == pooled


def test_new_sessions_take_the_rows_of_closed_ones(wide_scorer):
    # An autoreset closes a session and starts another: the next step copies the new session's
    # prompt into the closed row and steps the pool in place, with no gather of the others.
    reference = [wide_scorer.session(q, ANSWER) for q, _ in EPISODES]
    pooled = wide_scorer.sessions([(q, ANSWER) for q, _ in EPISODES])
    pool = pooled[0]._pool
    for s, (_, segments) in zip(reference, EPISODES, strict=True):
        s.append(segments[0])
    wide_scorer.sessions_append(pooled, [segments[0] for _, segments in EPISODES])
    pooled[2].close()
    reference[2] = wide_scorer.session(QUESTION, ANSWER)
    pooled[2] = wide_scorer.session(QUESTION, ANSWER)
    got = wide_scorer.sessions_append(pooled, [SEGMENTS[1]] * 4)
    assert [s._pool for s in pooled] == [pool] * 4 and pooled[2]._row == 2
    for g, s in zip(got, reference, strict=True):
        assert_same_step(g, s.append(SEGMENTS[1]), True)


def test_closed_rows_idle_until_a_quarter_of_the_pool(wide_scorer):
    # Rows of closed sessions are fed padding while they are few (here at most one of four);
    # beyond that the open sessions are gathered into a pool of their own.
    reference = [wide_scorer.session(q, ANSWER) for q, _ in EPISODES]
    pooled = wide_scorer.sessions([(q, ANSWER) for q, _ in EPISODES])
    pool = pooled[0]._pool
    for t, (closing, pool_after) in enumerate([(0, "same"), (3, "new")]):
        pooled[closing].close()
        live = [i for i in range(4) if pooled[i]._pool is not None]
        got = wide_scorer.sessions_append([pooled[i] for i in live], [SEGMENTS[t]] * len(live))
        for i, g in zip(live, got, strict=True):
            assert_same_step(g, reference[i].append(SEGMENTS[t]), True)
        assert (pooled[live[0]]._pool is pool) == (pool_after == "same")


def test_a_failed_gather_or_growth_leaves_the_sessions_usable(wide_scorer, monkeypatch):
    # Gathering sessions into a new pool, or growing a pool's buffers, allocates while the old
    # buffers are alive: the likeliest place to run out of memory. A failure there must leave every
    # session where it was, so that a retry scores right (it scored against zeros before the fix).
    reference = [wide_scorer.session(q, ANSWER) for q, _ in EPISODES]
    pooled = wide_scorer.sessions([(q, ANSWER) for q, _ in EPISODES])
    for s in reference:
        s.append(SEGMENTS[0])
    wide_scorer.sessions_append(pooled, [SEGMENTS[0]] * 4)
    pool = pooled[0]._pool

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("out of memory (simulated)")

    with monkeypatch.context() as patch:  # the gather of three of the four fails
        patch.setattr(hf_session.SlotLayer, "lazy_initialization", out_of_memory)
        with pytest.raises(torch.OutOfMemoryError):
            wide_scorer.sessions_append(pooled[:3], [SEGMENTS[1]] * 3)
    assert pool.members == pooled
    with monkeypatch.context() as patch:  # growing the buffers for a long step fails: a real allocation
        patch.setattr(hf_session, "room", lambda tokens: 1 << 40)
        with pytest.raises(RuntimeError, match="allocat"):
            wide_scorer.sessions_append(pooled, ["".join(SEGMENTS) * 8] * 4)
    got = wide_scorer.sessions_append(pooled[:3], [SEGMENTS[1]] * 3)
    for g, s in zip(got, reference[:3], strict=True):
        assert_same_step(g, s.append(SEGMENTS[1]), True)
    got = wide_scorer.sessions_append([pooled[3]], ["".join(SEGMENTS) * 8])
    assert_same_step(got[0], reference[3].append("".join(SEGMENTS) * 8), True)


def test_a_pool_goes_with_its_sessions_without_the_cycle_collector(sdpa_scorer):
    import gc
    import weakref

    sessions = sdpa_scorer.sessions([(q, ANSWER) for q, _ in EPISODES[:2]])
    pool = weakref.ref(sessions[0]._pool)
    gc.disable()
    try:
        del sessions  # dropped without close()
        assert pool() is None
    finally:
        gc.enable()


def test_a_failed_batched_step_leaves_every_session_usable(wide_scorer):
    # A batched forward that turns NaN writes NaN keys/values into the pool's rows past each row's
    # prefix. Positions a later step never rewrites are blocked by the mask but would still poison
    # attention (0 · NaN): the failed rows must be cleared. Run without the clearing, this fails.
    reference = [wide_scorer.session(q, ANSWER) for q, _ in EPISODES]
    pooled = wide_scorer.sessions([(q, ANSWER) for q, _ in EPISODES])
    for s in reference:
        s.append(EPISODES[0][1][0])
    wide_scorer.sessions_append(pooled, [EPISODES[0][1][0]] * 4)
    poison = wide_scorer.model.base_model.layers[0].register_forward_hook(
        lambda module, args, output: output * float("nan"))
    try:
        with pytest.raises(ScorerError, match="non-finite"):
            wide_scorer.sessions_append(pooled, ["".join(SEGMENTS)] + ["Ok.\n\n"] * 3)
    finally:
        poison.remove()
    got = wide_scorer.sessions_append(pooled, ["Ok."] * 4)
    for g, s in zip(got, reference, strict=True):
        assert_same_step(g, s.append("Ok."), True)


def test_sessions_append_equals_plain_passes(sdpa_scorer):
    sessions = [sdpa_scorer.session(q, ANSWER) for q, _ in EPISODES]
    for step in range(3):
        got = sdpa_scorer.sessions_append(sessions, [segs[step] for _, segs in EPISODES])
        for (question, segments), g in zip(EPISODES, got, strict=True):
            ids, _ = tokenize_with_boundaries(sdpa_scorer.tokenizer, question, segments[:step + 1])
            assert abs(g.J - plain_J(sdpa_scorer, ids, ANSWER)) <= TOL


def test_sessions_append_splits_by_batch_size(tiny_llama_dir):
    scorer = HFScorer(ScorerConfig(model=str(tiny_llama_dir), batch_size=3))
    reference = [scorer.session(q, ANSWER) for q, _ in EPISODES]
    sessions = [scorer.session(q, ANSWER) for q, _ in EPISODES]
    counter = ForwardCounter(scorer)
    try:
        for step in range(2):
            segments = [segs[step] for _, segs in EPISODES]
            expected = [s.append(seg) for s, seg in zip(reference, segments, strict=True)]
            counter.calls = 0
            got = scorer.sessions_append(sessions, segments)
            assert counter.calls == 2  # 4 sessions, 3 per forward: ceil(4 / 3) = 2
            for g, e in zip(got, expected, strict=True):
                assert_same_step(g, e, True)
    finally:
        counter.handle.remove()


def test_sessions_append_context_length_error_changes_no_session(tiny_llama_dir):
    scorer = HFScorer(ScorerConfig(model=str(tiny_llama_dir), max_length=40))
    reference = [scorer.session(q, "7") for q in ("Q: 1?\n\n", "Q: 22?\n\n", "Q: 333?\n\n")]
    sessions = [scorer.session(q, "7") for q in ("Q: 1?\n\n", "Q: 22?\n\n", "Q: 333?\n\n")]
    first = ["So 1.\n\n", "So 22.\n\n", "So 333.\n\n"]
    for group in (reference, sessions):
        scorer.sessions_append(group, first)
    before = [(s.total_tokens, s._text) for s in sessions]
    with pytest.raises(ContextLengthError, match="exceeds max_length=40"):
        scorer.sessions_append(sessions, ["Ok.", "".join(SEGMENTS), "Ok."])  # only the second overflows
    assert [(s.total_tokens, s._text) for s in sessions] == before
    # The caches are intact too: the next step equals sessions that never saw the failed call.
    got = scorer.sessions_append(sessions, ["Ok.", "Ok.", "Ok."])
    for g, e in zip(got, scorer.sessions_append(reference, ["Ok.", "Ok.", "Ok."]), strict=True):
        assert_same_step(g, e, True)


def test_no_sessions_to_start_or_step(sdpa_scorer):
    assert sdpa_scorer.sessions([]) == [] and sdpa_scorer.sessions_append([], []) == []


def test_sessions_append_argument_errors(sdpa_scorer, tiny_llama_dir):
    sessions = [sdpa_scorer.session(q, ANSWER) for q, _ in EPISODES[:2]]
    with pytest.raises(ScorerError, match="got 2 sessions, 1 segments, 2 flags"):
        sdpa_scorer.sessions_append(sessions, ["x"])
    with pytest.raises(ScorerError, match="got the same session twice"):
        sdpa_scorer.sessions_append([sessions[0], sessions[0]], ["x", "y"])
    other = HFScorer.from_model(sdpa_scorer.model, sdpa_scorer.tokenizer)
    with pytest.raises(ScorerError, match="a session started by another scorer"):
        other.sessions_append(sessions, ["x", "y"])
    sessions[1].close()
    with pytest.raises(ScorerError, match="append on a closed session"):
        sdpa_scorer.sessions_append(sessions, ["x", "y"])
    assert sessions[0].total_tokens == len(tokenize_with_boundaries(sdpa_scorer.tokenizer, QUESTION, ())[0])


def test_session_attention_mask_by_hand():
    # Row 0: 2 cached tokens, row 1: 1 cached; Q = 3 inputs each (padded); keys = max(keep) + Q = 5.
    mask = session_attention_mask(torch.tensor([2, 1]), Q=3)
    assert mask.shape == (2, 1, 3, 5) and mask.dtype == torch.float32
    allowed = (mask[:, 0] == 0).int().tolist()
    assert allowed[0] == [
        [1, 1, 1, 0, 0],  # input 0 sees both cached keys and itself
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
    ]
    assert allowed[1] == [
        [1, 1, 0, 0, 0],  # row 1's inputs start at key 1; key 4 is beyond its row
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
    ]


def test_context_length_error(tiny_llama_dir):
    scorer = HFScorer(ScorerConfig(model=str(tiny_llama_dir), max_length=24))
    long_segments = SEGMENTS * 3
    message = r"= \d+ tokens exceeds max_length=24 \(question starting 'Question: what"
    with pytest.raises(ContextLengthError, match=message):
        scorer.score([ScoreRequest(QUESTION, long_segments, ANSWER)])
    session = scorer.session("Q: 1?\n\n", "1")
    with pytest.raises(ContextLengthError, match="exceeds max_length=24"):
        session.append("".join(long_segments))
    assert session.append("So 1.").total_tokens < 24  # the failed append left the session usable


def test_max_length_above_the_model_limit(tiny_llama_dir):
    message = r"field 'max_length' must be <= the model's max_position_embeddings \(512\), got 1024"
    with pytest.raises(ConfigError, match=message):
        HFScorer(ScorerConfig(model=str(tiny_llama_dir), max_length=1024))


def test_bad_requests(sdpa_scorer):
    with pytest.raises(ScorerError, match=r"points must be sorted unique segment indices in 1..4, got \(5,"):
        sdpa_scorer.score([ScoreRequest(QUESTION, SEGMENTS, ANSWER, points=(5,))])
    with pytest.raises(ScorerError, match="got \\(2, 1\\)"):
        sdpa_scorer.score([ScoreRequest(QUESTION, SEGMENTS, ANSWER, points=(2, 1))])
    with pytest.raises(ScorerError, match="the answer '' tokenises to no tokens"):
        sdpa_scorer.score([ScoreRequest(QUESTION, SEGMENTS, "")])


def test_missing_model_directory(tmp_path):
    with pytest.raises(ConfigError, match="field 'model' must be a model directory .*: there is no directory"):
        HFScorer(ScorerConfig(model=str(tmp_path / "nowhere")))


def test_nan_guard_and_reload_weights(tiny_llama_dir):
    scorer = HFScorer(ScorerConfig(model=str(tiny_llama_dir)))
    request = ScoreRequest(QUESTION, SEGMENTS, ANSWER)
    before = scorer.score([request])[0].J
    original = {k: v.clone() for k, v in scorer.model.state_dict().items()}
    session = scorer.session(QUESTION, ANSWER)
    broken = dict(original, **{"lm_head.weight": torch.full_like(original["lm_head.weight"], float("nan"))})
    scorer.reload_weights(broken)
    with pytest.raises(ScorerError, match="non-finite answer log-probs"):
        scorer.score([request])
    with pytest.raises(ScorerError, match="non-finite"):
        scorer.session(QUESTION, ANSWER)
    with pytest.raises(ScorerError, match="weights were reloaded after this session started"):
        session.append(SEGMENTS[0])
    with pytest.raises(ScorerError, match="the state dict does not fit the scorer model"):
        scorer.reload_weights({"not.a.weight": torch.zeros(1)})
    scorer.reload_weights(original)
    np.testing.assert_array_equal(scorer.score([request])[0].J, before)


def test_a_failed_in_place_step_leaves_the_session_usable(sdpa_scorer):
    # A step alone writes its keys/values into the session's buffers during the forward. Here the
    # forward turns NaN after layer 0, so layer 1's cache entries of the failed step are NaN: the
    # retry (another segment) must recompute every position the failed step wrote.
    question, segments = "Question: 3 + 4?", ("\n\nSo 7.\n\n", "The answer is 7.")
    session = sdpa_scorer.session(question, ANSWER)
    session.append(segments[0])
    poison = sdpa_scorer.model.base_model.layers[0].register_forward_hook(
        lambda module, args, output: output * float("nan"))
    try:
        with pytest.raises(ScorerError, match="non-finite"):
            session.append("Wait, 3 + 4 = 7.\n\n")
    finally:
        poison.remove()
    step = session.append(segments[1])
    ids, _ = tokenize_with_boundaries(sdpa_scorer.tokenizer, question, segments)
    assert abs(step.J - plain_J(sdpa_scorer, ids, ANSWER)) <= TOL
    assert step.total_tokens == len(ids)


def test_session_cache_grows_past_its_first_buffer(sdpa_scorer):
    # The per-layer buffers start with room for the question plus 64 tokens and grow; a ~400-token
    # episode grows them several times.
    segments = tuple(f"Step {i}: {i} + {i} = {2 * i}.\n\n" for i in range(30))
    session = sdpa_scorer.session(QUESTION, ANSWER)
    for t, segment in enumerate(segments, start=1):
        step = session.append(segment, score=t % 10 == 0)
        if t % 10 == 0:
            ids, _ = tokenize_with_boundaries(sdpa_scorer.tokenizer, QUESTION, segments[:t])
            assert abs(step.J - plain_J(sdpa_scorer, ids, ANSWER)) <= TOL
    assert session.total_tokens > 256 and session._pool.layers[0].capacity >= session.total_tokens
