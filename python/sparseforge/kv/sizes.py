"""KV-cache bytes per token of a model configuration (DeepSeek-V2 report, Table 1)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

KNOWN_CONFIGS: dict[str, dict[str, int]] = {
    # meta-llama/Llama-2-7b-hf config.json: MHA
    "llama-2-7b": {"num_layers": 32, "num_heads": 32, "num_kv_heads": 32, "head_dim": 128},
    # meta-llama/Meta-Llama-3-8B config.json: GQA, 8 kv heads
    "llama-3-8b": {"num_layers": 32, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128},
    # deepseek-ai/DeepSeek-V2 config.json: MLA, kv_lora_rank 512, qk_rope_head_dim 64
    "deepseek-v2": {
        "num_layers": 60,
        "num_heads": 128,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
    },
    # deepseek-ai/DeepSeek-V2-Lite: 27 layers (the V2 report's "small MoE" row)
    "deepseek-v2-lite": {
        "num_layers": 27,
        "num_heads": 16,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
    },
    # deepseek-ai/DeepSeek-V3 inference/configs/config_671B.json: 61 layers
    "deepseek-v3": {
        "num_layers": 61,
        "num_heads": 128,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
    },
}

_ALIASES = {
    "num_hidden_layers": "num_layers",
    "n_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "n_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "n_kv_heads": "num_kv_heads",
}


def _config_dict(config: Any) -> dict[str, int]:
    if isinstance(config, str):
        if config.lower() not in KNOWN_CONFIGS:
            raise ValueError(f"config: unknown name {config!r}; known: {sorted(KNOWN_CONFIGS)}")
        return dict(KNOWN_CONFIGS[config.lower()])
    if isinstance(config, Mapping):
        raw = dict(config)
    else:
        raw = {k: getattr(config, k) for k in dir(config) if not k.startswith("_")}
    out: dict[str, int] = {}
    for k, v in raw.items():
        key = _ALIASES.get(k, k)
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            out.setdefault(key, int(v))
    if "head_dim" not in out and "hidden_size" in out and "num_heads" in out:
        out["head_dim"] = out["hidden_size"] // out["num_heads"]
    if "head_dim" not in out and "dim" in out and "num_heads" in out:
        out["head_dim"] = out["dim"] // out["num_heads"]
    if "num_kv_heads" not in out and "num_heads" in out:
        out["num_kv_heads"] = out["num_heads"]
    if "num_layers" not in out:
        raise ValueError("config: missing num_layers (or num_hidden_layers / n_layers)")
    return out


def attention_kind(config: Any) -> str:
    """The attention kind of a configuration: "MHA", "GQA", "MQA" or "MLA"."""
    c = _config_dict(config)
    if c.get("kv_lora_rank"):
        return "MLA"
    if c.get("num_kv_heads") == 1:
        return "MQA"
    if c.get("num_kv_heads") == c.get("num_heads"):
        return "MHA"
    return "GQA"


def elements_per_token(config: Any) -> int:
    """Cached elements per token over all layers: MHA ``2 n_h d_h l``, GQA ``2 n_g d_h l``,
    MQA ``2 d_h l``, MLA ``(d_c + d_h^R) l`` (DeepSeek-V2 report, Table 1)."""
    c = _config_dict(config)
    layers = c["num_layers"]
    if c.get("kv_lora_rank"):
        return (c["kv_lora_rank"] + c.get("qk_rope_head_dim", 0)) * layers
    for key in ("num_kv_heads", "head_dim"):
        if key not in c:
            raise ValueError(f"config: missing {key}")
    return 2 * c["num_kv_heads"] * c["head_dim"] * layers


def bytes_per_token(config: Any, dtype: Any = "bfloat16") -> int:
    """KV-cache bytes per token of context for a model configuration.

    ``config``: a name from :data:`KNOWN_CONFIGS`, a mapping or an object with
    ``num_layers``/``num_hidden_layers``, ``num_heads``, ``num_kv_heads``, ``head_dim`` (or
    ``hidden_size``), or for MLA ``kv_lora_rank`` and ``qk_rope_head_dim``. ``dtype``: the
    cache dtype (default bfloat16, 2 bytes)."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    sizes = {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1, "int8": 1}
    if name not in sizes:
        raise ValueError(f"dtype: expected one of {sorted(sizes)}, got {dtype!r}")
    return elements_per_token(config) * sizes[name]
