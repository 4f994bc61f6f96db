"""The vllm-server backend against a real vLLM OpenAI server (CPU build) on loopback.

One server for the suite (``conftest.vllm_server``), started through the console script as a user
types it (``repro-env vllm-serve``); the fault tests stop it and start it again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from repro_env.env import ReasoningEnv
from repro_env.errors import ScorerError
from repro_env.scoring import ScorerConfig, ScoreRequest, make_scorer
from repro_env.scoring.hf import HFScorer
from repro_env.scoring.server import BLOCK_SIZE, VLLMServerScorer
from tests.conftest import free_port

pytestmark = pytest.mark.vllm

QUESTION = "Question: what is 3 + 4 times 5?\n\n"
SEGMENTS = ("First, 4 * 5 = 20.\n\n", "Then, 3 + 20 = 23.\n\n", "Check, 23.\n\n", "The answer is \\boxed{23}.")
REQUESTS = [ScoreRequest(QUESTION, SEGMENTS, "\\boxed{23}"),
            ScoreRequest("Question: what is 1 + 2?\n\n", ("So, 1 + 2 = 3.\n\n", "Wait, 3.\n\n"), "3", points=(2,))]


def server_config(model: Path, url: str, **options) -> ScorerConfig:
    return ScorerConfig(backend="vllm-server", model=str(model), max_length=192,
                        options={"base_url": url, "max_logprobs": 500, "retries": 1, **options})


@pytest.fixture(scope="module")
def scorer(vllm_server, tiny_llama_dir) -> VLLMServerScorer:
    return make_scorer(server_config(tiny_llama_dir, vllm_server.url))


@pytest.fixture(scope="module")
def hf(tiny_llama_dir) -> HFScorer:
    return HFScorer(ScorerConfig(model=str(tiny_llama_dir), max_length=192))


def test_J_and_entropies_equal_the_hf_scorer(scorer, hf):
    assert scorer.exact_entropy  # vocabulary 500 <= max_logprobs: exact entropies
    for ours, reference in zip(scorer.score(REQUESTS), hf.score(REQUESTS), strict=True):
        assert ours.points == reference.points
        np.testing.assert_allclose(ours.J, reference.J, atol=1e-4, rtol=0)
        np.testing.assert_allclose(ours.entropies, reference.entropies, atol=1e-4, rtol=0)
    batch = hf.score(REQUESTS[:1])[0]
    session = scorer.session(QUESTION, "\\boxed{23}")
    assert abs(session.J_baseline - batch.J[0]) <= 1e-4
    for t, segment in enumerate(SEGMENTS, start=1):
        step = session.append(segment)
        assert abs(step.J - batch.J[t]) <= 1e-4 and abs(step.entropy - batch.entropies[t - 1]) <= 1e-4


def test_cached_J_probes_equal_the_hf_scorer_and_see_a_weight_push(vllm_server, tiny_llama_dir, hf):
    """issue 29: ``j_probes: cached`` reads J through one-token reads that use the prefix cache. Equal
    to the hf scorer in batch and in a session, for a one-token answer and for an answer whose reads
    cross the ends of cache blocks (``BLOCK_SIZE`` tokens on the suite's server); after a weight push (with
    /reset_prefix_cache) no stale block is read.
    Small requests, 4 at once: the entropies stay exact although one-token reads (``logprob_token_ids``)
    run beside them (vLLM's sampler blanks the top-N of entropy probes batched with such reads: before
    the reads and the entropy probes ran in separate phases, this test failed with "the top log-probs of
    an entropy probe: log-prob 1 is -9999.0")."""
    cached = make_scorer(server_config(tiny_llama_dir, vllm_server.url, j_probes="cached",
                                       batch_prompts=3, concurrency=4))
    one = next(a for a in ("7", "x", "a", "=") if len(hf.answer_ids(a)) == 1)
    long_answer = "\\boxed{" + "1234567890" * 17 + "}"
    requests = [*REQUESTS, ScoreRequest(QUESTION, SEGMENTS, one), ScoreRequest(QUESTION, SEGMENTS[:2], long_answer)]
    crossing = hf.prepare(requests[-1])
    end = crossing.boundaries[-1]
    assert end // BLOCK_SIZE < (end + len(crossing.answer_ids)) // BLOCK_SIZE and end + len(crossing.answer_ids) <= 192
    for ours, reference in zip(cached.score(requests), hf.score(requests), strict=True):
        np.testing.assert_allclose(ours.J, reference.J, atol=1e-4, rtol=0)
        np.testing.assert_allclose(ours.entropies, reference.entropies, atol=1e-4, rtol=0)
    batch = hf.score(requests[-1:])[0]
    session = cached.session(QUESTION, long_answer)
    assert abs(session.J_baseline - batch.J[0]) <= 1e-4
    for t, segment in enumerate(SEGMENTS[:2], start=1):
        assert abs(session.append(segment).J - batch.J[t]) <= 1e-4
    original = {k: v.clone() for k, v in hf.model.state_dict().items()}
    generator = torch.Generator().manual_seed(2)
    nudged = {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in original.items()}
    try:
        hf.reload_weights(nudged)
        cached.reload_weights(nudged)  # the cache holds blocks of the old weights until the reset
        np.testing.assert_allclose(cached.score(requests)[0].J, hf.score(requests)[0].J, atol=1e-4, rtol=0)
    finally:
        hf.reload_weights(original)
        cached.reload_weights(original)


def test_auto_J_probes_read_long_prefixes_through_the_cache_and_short_ones_with_prompt_logprobs(
        vllm_server, tiny_llama_dir, hf, monkeypatch):
    """``j_probes: auto`` (the default) splits one call's probes by prefix length (the threshold is
    lowered here to fall inside these short requests); J equals the hf scorer's either way."""
    import repro_env.scoring.server as server

    monkeypatch.setattr(server, "AUTO_CACHED_MIN_PREFIX", 24)
    scorer = make_scorer(server_config(tiny_llama_dir, vllm_server.url))
    assert scorer.options.j_probes == "auto"
    used = {"cached": [], "prompt_logprobs": []}
    cached_J, plain_J = scorer._cached_J, scorer._J
    monkeypatch.setattr(scorer, "_cached_J", lambda probes, run: used["cached"].extend(probes) or cached_J(probes, run))
    monkeypatch.setattr(scorer, "_J", lambda probes, d: used["prompt_logprobs"].extend(probes) or plain_J(probes, d))
    for ours, reference in zip(scorer.score(REQUESTS), hf.score(REQUESTS), strict=True):
        np.testing.assert_allclose(ours.J, reference.J, atol=1e-4, rtol=0)
    assert all(len(p.prefix) >= 24 for p in used["cached"]) and len(used["cached"]) >= 3
    assert all(len(p.prefix) < 24 for p in used["prompt_logprobs"]) and len(used["prompt_logprobs"]) >= 1


def test_gymnasium_check_env_with_the_server_scorer(scorer):
    from gymnasium.utils.env_checker import check_env

    env = ReasoningEnv("RePro-Math-v0", scorer=scorer, limits={"max_steps": 4, "max_total_tokens": 180})
    # Seeded first: check_env also resets without a seed, and an unseeded draw could be a question that
    # alone is longer than this scorer's 192-token context (a ContextLengthError; seen once in 3 runs).
    env.reset(seed=0)
    check_env(env)


def test_weight_sync_follows_the_trained_model(scorer, hf):
    original = {k: v.clone() for k, v in hf.model.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    nudged = {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in original.items()}
    before = scorer.score(REQUESTS[:1])[0].J
    try:
        hf.reload_weights(nudged)
        scorer.reload_weights(nudged)
        after = scorer.score(REQUESTS[:1])[0].J
        assert np.abs(after - before).max() > 1e-3  # the push really changed the served model
        np.testing.assert_allclose(after, hf.score(REQUESTS[:1])[0].J, atol=1e-4, rtol=0)
    finally:
        hf.reload_weights(original)
        scorer.reload_weights(original)
    np.testing.assert_allclose(scorer.score(REQUESTS[:1])[0].J, before, atol=1e-5)


def test_start_up_checks_name_the_server_and_the_model(server, tiny_llama_dir):
    with pytest.raises(ScorerError, match=rf"the server at {server.url} serves .* not 'other'"):
        make_scorer(server_config(tiny_llama_dir, server.url, served_model_name="other"))
    with pytest.raises(ScorerError, match=r"tokenises differently from the local model 'bundled'"):
        make_scorer(ScorerConfig(backend="vllm-server", model="bundled",
                                 options={"base_url": server.url, "max_logprobs": 20}))
    port = free_port()  # nothing listens there
    with pytest.raises(ScorerError, match=rf"GET http://127.0.0.1:{port}/v1/models failed after 2 attempts"):
        make_scorer(server_config(tiny_llama_dir, f"http://127.0.0.1:{port}", request_timeout_s=2))


def test_a_4xx_shows_the_server_message(scorer):
    with pytest.raises(ScorerError, match=r"POST .*/v1/completions: HTTP 4\d\d: .*"):
        scorer.client.request("POST", "/v1/completions",
                              {"model": "no-such-model", "prompt": [[1, 2]], "max_tokens": 1})


def test_malformed_replies_are_errors_not_nans(scorer, monkeypatch):
    # A fake reply isolates the parsing; the real server's replies are tested above.
    real = scorer.client.request
    monkeypatch.setattr(scorer.client, "request", lambda *a, **k: {"choices": [{"index": 0, "prompt_logprobs": None}]})
    with pytest.raises(ScorerError, match=r"/v1/completions: expected 5 choices, got 1"):  # 5 J probes
        scorer.score(REQUESTS[:1])
    session_probe = {"choices": [{"index": 0, "prompt_logprobs": [None, None]}]}
    monkeypatch.setattr(scorer.client, "request", lambda *a, **k: session_probe)
    with pytest.raises(ScorerError, match=r"prompt_logprobs lack the answer tokens"):
        scorer.session(QUESTION, "\\boxed{23}")
    monkeypatch.setattr(scorer.client, "request", real)
    assert np.isfinite(scorer.score(REQUESTS[:1])[0].J).all()


@pytest.mark.parametrize("value, message", [
    (3.0, r"log-prob 0 is 3.0, not a finite log-prob in \(-9999, 0\]"),
    (True, r"log-prob 0 is not a number: True"),
    (-9999.0, r"log-prob 0 is -9999.0, not a finite log-prob"),
])
def test_impossible_log_probs_from_the_server_are_errors(scorer, monkeypatch, value, message):
    # issue 28 #4: a log-prob of 3.0 gave J = 3.0, a JSON true gave J = 1.0; the real reply, tampered
    real = scorer.client.request

    def tampered(*args, **kwargs):
        reply = real(*args, **kwargs)
        for choice in reply.get("choices", []):
            for row in choice.get("prompt_logprobs") or []:
                for entry in (row or {}).values():
                    entry["logprob"] = value
        return reply

    monkeypatch.setattr(scorer.client, "request", tampered)
    with pytest.raises(ScorerError, match=r"the answer log-probs of a J probe \(\d+ prefix tokens\): " + message):
        scorer.session(QUESTION, "\\boxed{23}")


def test_checked_log_probs_keeps_float_error_and_missing_entries():
    from repro_env.scoring.base import checked_log_probs

    assert checked_log_probs([-1.5, 0, 5e-5], "x") == [-1.5, 0.0, 0.0]  # rounding above 0 is clipped
    assert np.isnan(checked_log_probs([None, -0.5], "x", allow_missing=True)[0])
    with pytest.raises(ScorerError, match=r"x: log-prob 0 is not a number: None"):
        checked_log_probs([None], "x")
    with pytest.raises(ScorerError, match=r"x: log-prob 1 is nan"):
        checked_log_probs([-1.0, float("nan")], "x")


def test_the_server_dies_mid_episode_and_comes_back(server, scorer, hf):
    session = scorer.session(QUESTION, "\\boxed{23}")
    session.append(SEGMENTS[0])
    server.stop()
    with pytest.raises(ScorerError, match=rf"POST {server.url}/v1/completions failed after 2 attempts"):
        session.append(SEGMENTS[1])
    assert session.total_tokens == hf.score([ScoreRequest(QUESTION, SEGMENTS[:1], "\\boxed{23}")])[0].num_tokens
    server.start()
    step = session.append(SEGMENTS[1])  # the same step, retried: nothing was lost
    assert abs(step.J - hf.score(REQUESTS[:1])[0].J[2]) <= 1e-4


def test_base_urls_in_the_openai_form_and_with_credentials(tiny_llama_dir):
    """issue 28: a base URL ending in /v1 gave a 404 on /v1/v1/models; credentials in the URL were
    echoed in error messages."""
    from repro_env.errors import ConfigError
    from repro_env.scoring.options import ServerOptions
    from repro_env.scoring.server import ServerClient

    port = free_port()  # nothing listens there
    client = ServerClient(ServerOptions(base_url=f"http://user:s3cret@127.0.0.1:{port}/v1/", retries=0))
    assert client.url == f"http://127.0.0.1:{port}"
    with pytest.raises(ScorerError, match=rf"GET http://127.0.0.1:{port}/v1/models failed after 1 attempts") as info:
        client.request("GET", "/v1/models")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        ServerOptions(base_url="ftp://user:s3cret@example.org")
    assert "ftp://***@example.org" in str(info.value) and "s3cret" not in str(info.value)


def test_malformed_server_replies_are_scorer_errors(monkeypatch):
    """issue 28: [] from /v1/models, choices that are strings, mixed index types and a non-UTF-8 body
    raised AttributeError, TypeError or UnicodeDecodeError, which skip the trainer's checkpoint path."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from repro_env.scoring.options import ServerOptions
    from repro_env.scoring.server import ServerClient

    class NotUtf8(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'\xff\xfe{"data": []}')

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", free_port()), NotUtf8)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = ServerClient(ServerOptions(base_url=f"http://127.0.0.1:{httpd.server_port}", retries=0))
        with pytest.raises(ScorerError, match=r"GET http://127.0.0.1:\d+/v1/models: the server's reply is not UTF-8"):
            client.request("GET", "/v1/models")
    finally:
        httpd.shutdown()
    replies = {}
    monkeypatch.setattr(client, "request", lambda method, route, body=None, deadline=None: replies[route])
    replies["/v1/models"] = []
    with pytest.raises(ScorerError, match=r"GET /v1/models at http://127.0.0.1:\d+: the server's reply has no "
                                          r"'data' that is a list of dict: \[\]"):
        client.check_model(None, "m")
    scorer = object.__new__(VLLMServerScorer)  # the reply parsing alone: no server, no model
    scorer.client, scorer.served, scorer.url = client, "m", client.url
    replies["/v1/completions"] = {"choices": ["a", "b"]}
    with pytest.raises(ScorerError, match=r"no 'choices' that is a list of dict"):
        scorer._complete([[1], [2]])
    replies["/v1/completions"] = {"choices": [{"index": 0}, {"index": "1"}]}
    with pytest.raises(ScorerError, match=r"expected choices with indices 0..1, got indices \[0, '1'\]"):
        scorer._complete([[1], [2]])
    replies["/v1/completions"] = {"choices": [{"index": 1, "text": "b"}, {"index": 0, "text": "a"}]}
    assert [c["text"] for c in scorer._complete([[1], [2]])] == ["a", "b"]


def serve(handler_body) -> tuple[Any, str]:
    """A local HTTP server thread whose GET handler is ``handler_body(handler)``; (server, base URL)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            handler_body(self)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_port}"


def drip(handler, pause: float = 0.25, size: int = 40) -> None:
    """A reply that arrives one byte at a time: each read is quick, the whole takes size × pause."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(size))
    handler.end_headers()
    for _ in range(size):
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(pause)


def test_time_limits_are_wall_clock_and_replies_are_bounded(monkeypatch):
    """issue 28: a server dripping a byte every 0.5 s took 44 s against a 3 s limit (the limit was per
    socket read); timeout_s was ignored; a 300 MB reply was read whole."""
    from repro_env.scoring import server as server_module
    from repro_env.scoring.options import ServerOptions
    from repro_env.scoring.server import ServerClient

    httpd, url = serve(drip)  # 40 bytes over 10 s
    try:
        client = ServerClient(ServerOptions(base_url=url, request_timeout_s=1.0, retries=0))
        with pytest.raises(ScorerError, match=r"GET .*/v1/models failed after 1 attempts \(timeout 1.0 s each\): "
                                              r"_TimeLimit: no whole reply within 1.0 s"):
            client.request("GET", "/v1/models")
        patient = ServerClient(ServerOptions(base_url=url, request_timeout_s=60.0, retries=3))
        with pytest.raises(ScorerError, match=r"within the call's timeout_s\): _TimeLimit"):
            patient.request("GET", "/v1/models", deadline=time.monotonic() + 1.0)  # a call's limit cuts retries
    finally:
        httpd.shutdown()

    def big(handler):
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(b"[" + b"0," * (1 << 20) + b"0]")

    monkeypatch.setattr(server_module, "MAX_REPLY_BYTES", 1 << 20)
    httpd, url = serve(big)
    try:
        with pytest.raises(ScorerError, match=r"GET .*/v1/models: the reply is larger than 1 MB; lower "
                                              r"options.batch_prompts"):
            ServerClient(ServerOptions(base_url=url, retries=0)).request("GET", "/v1/models")
    finally:
        httpd.shutdown()

