"""Tiny random transformers models of each supported family, saved as Hugging Face
directories: the independent oracle of the family tests (tests_py/test_arch*.py).

Every parameter is redrawn (transformers initialises norms to 1 or 0 and biases to 0, which
would hide a wrong norm convention or a dropped bias): matrices N(0, 0.15^2), biases
N(0, 0.1^2), norm weights N(0, 0.3^2) around 1 (Llama convention) or 0 (Gemma's ``1 + w``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# family -> (transformers config class, model class, config overrides). Windows are small
# so the test sequences (SEQ tokens) run past them.
SEQ = 14
COMMON: dict[str, Any] = dict(
    vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
    rms_norm_eps=1e-6,
)  # fmt: skip
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=False)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(tie_word_embeddings=True)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=5)),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            query_pre_attn_scalar=24,
        ),
    ),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            query_pre_attn_scalar=24,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        ),
    ),
}


def make_hf(family: str, directory: Path, seed: int = 0) -> Any:
    """A random ``family`` model (eager attention, float32, eval mode) saved to
    ``directory``; returns the transformers model."""
    import torch
    import transformers

    cfg_cls, model_cls, over = FAMILIES[family]
    cfg = getattr(transformers, cfg_cls)(**{**COMMON, **over})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).float().eval()
    gemma = family.startswith("gemma")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(r * 0.3 + (0.0 if gemma else 1.0))
            elif name.endswith(".bias"):
                p.copy_(r * 0.1)
            else:
                p.copy_(r * 0.15)
    model.save_pretrained(directory, safe_serialization=True)
    return model


def hf_logits(model: Any, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(torch.as_tensor(ids, dtype=torch.long)[None]).logits[0]
    return np.asarray(out.float().numpy(), dtype=np.float32)


def hf_greedy(model: Any, ids: np.ndarray, n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.as_tensor(ids, dtype=torch.long)[None],
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return [int(t) for t in out[0, len(ids) :]]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30))
