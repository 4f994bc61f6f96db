"""Shared fixtures: a tiny Llama model and byte-level BPE tokenizer built locally (no hub access).

The tokenizer pre-splits text with a Llama-3-style regex in which punctuation keeps the line breaks
that follow it (``" ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"``), so BPE learns tokens such as ``".\\n\\n"``:
a segment delimiter is then *inside* a token, which is exactly the case where boundary mapping by
character offsets matters (REPRO_SPEC §1).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# Llama-3's pre-tokenisation regex: `[\r\n]*` after punctuation lets ".\n\n" become one token.
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")
VOCAB_SIZE = 500


def arithmetic_corpus(num_docs: int = 300, seed: int = 0) -> list[str]:
    """Short step-by-step arithmetic "reasoning" with blank-line segment breaks."""
    rng = random.Random(seed)
    words = ["First", "Then", "So", "Next", "Now", "Wait", "Hence", "Check"]
    docs = []
    for _ in range(num_docs):
        a, b, c = rng.randint(1, 99), rng.randint(1, 99), rng.randint(1, 9)
        steps = [
            f"Question: what is {a} + {b} times {c}?",
            f"{rng.choice(words)}, {b} * {c} = {b * c}.",
            f"{rng.choice(words)}, {a} + {b * c} = {a + b * c}.",
            f"The answer is \\boxed{{{a + b * c}}}.",
        ]
        docs.append("\n\n".join(steps[: rng.randint(2, 4)]) + rng.choice(["", "\n\n", "\n"]))
    return docs


def build_tokenizer(out_dir: Path):
    """Train a byte-level BPE (~500 tokens) and save it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(arithmetic_corpus(), trainer=trainer)
    bos_id = backend.token_to_id("<s>")
    # tokenizer(text) must add BOS (the scorer's convention for q + τ), never EOS.
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    backend.no_padding()
    backend.no_truncation()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=512,
    )
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_tiny_llama(out_dir: Path, vocab_size: int, bos_id: int, eos_id: int, pad_id: int) -> None:
    """A seeded, randomly initialised 2-layer Llama saved as safetensors.

    Two query heads of 32 over one key/value head (grouped-query attention, as in the real models):
    32 is the smallest head size vLLM's CPU attention runs, so the vLLM tests load this model too.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    # A larger init than the default 0.02 keeps the next-token distributions far from uniform, so
    # log-probs and entropies differ between positions and the tests can see a wrong mask.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(out_dir, safe_serialization=True)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """Directory with a tiny random Llama + byte-level BPE tokenizer, loadable offline."""
    out_dir = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = build_tokenizer(out_dir)
    build_tiny_llama(out_dir, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                     tokenizer.pad_token_id)
    return out_dir


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama_dir):
    """The fixture tokenizer, reloaded from disk as every scorer loads it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``repro-env vllm-serve`` in a child process."""

    def __init__(self, model: Path, port: int) -> None:
        self.model, self.port, self.url = model, port, f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        script = Path(sys.executable).with_name("repro-env")
        self.process = subprocess.Popen(
            [str(script), "vllm-serve", "--model", str(self.model), "--port", str(self.port),
             "--max-model-len", "512", "--max-logprobs", "600"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        first = self.process.stdout.readline()  # the command the CLI prints before it execs
        assert "vllm.entrypoints.openai.api_server" in first and f"--port {self.port}" in first
        from repro_env.scoring.server import wait_for_server

        wait_for_server(self.url, timeout_s=300, process=self.process)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=60)


@pytest.fixture(scope="session")
def vllm_server(tiny_llama_dir):
    """A real vLLM OpenAI server (CPU build) on loopback serving the fixture model, once per suite."""
    server = Server(tiny_llama_dir, free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(vllm_server):
    """The suite's vLLM server, started again if a fault test left it stopped."""
    if not vllm_server.running:
        vllm_server.start()
    return vllm_server


def load_example(name: str):
    """``examples/<name>.py`` imported as a module, so tests exercise the example's own code."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny matmuls run fastest on one thread, and one thread does not thrash a shared 2-core box."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def registries_restored():
    """Names a test registers (scorer backends, source kinds, learners) end with the test."""
    from repro_env.agents.run_config import LEARNERS
    from repro_env.scoring import base
    from repro_env.sources import SOURCES

    saved = [(r, dict(r._targets), dict(r._loaded), dict(r._origins), r._plugins_read)
             for r in (base.SCORERS, SOURCES, LEARNERS)]
    options = dict(base._OPTIONS)
    yield
    for registry, targets, loaded, origins, plugins_read in saved:
        registry._targets, registry._loaded, registry._origins = targets, loaded, origins
        registry._plugins_read = plugins_read
    base._OPTIONS.clear()
    base._OPTIONS.update(options)


class ForwardCounter:
    """Counts forward passes of the transformer of ``owner.model`` (a scorer or a policy)."""

    def __init__(self, owner) -> None:
        self.calls = 0
        self.handle = owner.model.base_model.register_forward_hook(self._hook)

    def _hook(self, *args) -> None:
        self.calls += 1
