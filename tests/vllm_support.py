"""A vLLM-compatible copy of the ``tiny_llama_dir`` fixture model.

vLLM's CPU attention supports head sizes 32, 64, 80 … only; a fixture model with a smaller head
(hidden 64 over 4 heads = 16) would start an engine that fails at the first forward pass. This
copies the tokenizer and config, sets ``head_dim = 32`` when needed, and initialises the weights
with the fixture's recipe (seed 0, N(0, 0.2) for matrices), so hf and vLLM load the same files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

VLLM_CPU_MIN_HEAD_DIM = 32


def head_dim(model_dir: Path) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def vllm_compatible_model(src: Path, out: Path) -> Path:
    """``src`` itself when vLLM's CPU attention can run it, else a head_dim-32 copy under ``out``."""
    if head_dim(src) >= VLLM_CPU_MIN_HEAD_DIM:
        return src
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    for file in src.glob("tokenizer*"):
        shutil.copy(file, out / file.name)
    config = AutoConfig.from_pretrained(src)
    config.head_dim = VLLM_CPU_MIN_HEAD_DIM
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(out, safe_serialization=True)
    return out
