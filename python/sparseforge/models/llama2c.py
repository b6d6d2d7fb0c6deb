"""llama2.c checkpoints: the legacy (version 0) ``.bin`` export and its tokenizer.

Layout (little-endian): a header of 7 int32 ``dim, hidden_dim, n_layers, n_heads,
n_kv_heads, vocab_size, seq_len``, then float32 arrays, each matrix row-major
``(out_features, in_features)``::

    token_embedding (vocab, dim)         rms_att (L, dim)
    wq (L, dim, dim)                     wk, wv (L, kv_dim, dim)      wo (L, dim, dim)
    rms_ffn (L, dim)                     w1 (L, hidden, dim)          w2 (L, dim, hidden)
    w3 (L, hidden, dim)                  rms_final (dim,)
    freq_cis_real, freq_cis_imag (seq_len, head_dim / 2)   (unused; run.c recomputes RoPE)
    wcls (vocab, dim)                    only when vocab_size < 0 (untied head)

with ``kv_dim = n_kv_heads * dim / n_heads``. A positive ``vocab_size`` means the output head
shares the token embedding. Q/K rows are in Meta's interleaved RoPE order. The loaded
arrays are read-only views of a memory map of the file (no copy).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .._io import open_regular
from .config import LlamaConfig
from .llama import LlamaModel
from .tokenizer import Llama2cTokenizer

__all__ = ["LLAMA2C_NAMES", "load_llama2c", "read_llama2c_header"]

# llama2.c name -> Hugging Face name ({i}: block index)
LLAMA2C_NAMES = {
    "wq": "model.layers.{i}.self_attn.q_proj.weight",
    "wk": "model.layers.{i}.self_attn.k_proj.weight",
    "wv": "model.layers.{i}.self_attn.v_proj.weight",
    "wo": "model.layers.{i}.self_attn.o_proj.weight",
    "rms_att_weight": "model.layers.{i}.input_layernorm.weight",
    "rms_ffn_weight": "model.layers.{i}.post_attention_layernorm.weight",
    "w1": "model.layers.{i}.mlp.gate_proj.weight",
    "w2": "model.layers.{i}.mlp.down_proj.weight",
    "w3": "model.layers.{i}.mlp.up_proj.weight",
}

_HEADER_BYTES = 28
_MAGIC_V1 = 0x616B3432  # "ak42": llama2.c's version 1/2 exports


def read_llama2c_header(path: str | os.PathLike[str]) -> LlamaConfig:
    """The :class:`LlamaConfig` of a llama2.c legacy export, checking the header only."""
    config, _ = _header(Path(path))
    return config


def _header(path: Path) -> tuple[LlamaConfig, int]:
    """(config, expected file size in bytes)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: model file not found")
    with open_regular(path, "llama2.c model file") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _HEADER_BYTES:
            raise ValueError(
                f"{path}: truncated: {size} bytes, shorter than the 28-byte llama2.c header"
            )
        head = f.read(_HEADER_BYTES)
    fields = struct.unpack("<7i", head)
    if fields[0] == _MAGIC_V1:
        raise ValueError(
            f"{path}: a llama2.c version-1/2 export (magic 'ak42'); only the legacy version-0 "
            "export is supported (export.py --version 0)"
        )
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = fields
    names = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "seq_len")
    for name, value in zip(
        names, (dim, hidden, n_layers, n_heads, n_kv_heads, seq_len), strict=True
    ):
        if not 0 < value <= 1 << 20:
            raise ValueError(
                f"{path}: not a llama2.c legacy export: header {name}={value} (header {fields})"
            )
    if vocab == 0 or abs(vocab) > 1 << 24:
        raise ValueError(f"{path}: not a llama2.c legacy export: header vocab_size={vocab}")
    if dim % n_heads or n_heads % n_kv_heads or (dim // n_heads) % 2:
        raise ValueError(
            f"{path}: not a llama2.c legacy export: header {fields} has dim={dim}, "
            f"n_heads={n_heads}, n_kv_heads={n_kv_heads} (need n_heads | dim, n_kv_heads | "
            "n_heads and an even head size)"
        )
    config = LlamaConfig(
        dim=dim,
        hidden_dim=hidden,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=abs(vocab),
        max_seq_len=seq_len,
        norm_eps=1e-5,
        rope_theta=10000.0,
        rope_style="interleaved",
        tied_embeddings=vocab > 0,
        arch="llama",
    )
    floats = sum(int(np.prod(s)) for _, s in _arrays(config))
    return config, _HEADER_BYTES + 4 * floats


def _arrays(c: LlamaConfig) -> list[tuple[str, tuple[int, ...]]]:
    L, d, kv, hid, half = c.n_layers, c.dim, c.kv_dim, c.hidden_dim, c.head_dim // 2
    out: list[tuple[str, tuple[int, ...]]] = [
        ("token_embedding", (c.vocab_size, d)),
        ("rms_att_weight", (L, d)),
        ("wq", (L, d, d)),
        ("wk", (L, kv, d)),
        ("wv", (L, kv, d)),
        ("wo", (L, d, d)),
        ("rms_ffn_weight", (L, d)),
        ("w1", (L, hid, d)),
        ("w2", (L, d, hid)),
        ("w3", (L, hid, d)),
        ("rms_final_weight", (d,)),
        ("freq_cis_real", (c.max_seq_len, half)),
        ("freq_cis_imag", (c.max_seq_len, half)),
    ]
    if not c.tied_embeddings:
        out.append(("wcls", (c.vocab_size, d)))
    return out


def _find_tokenizer(path: Path, vocab_size: int) -> Path | None:
    for name in (f"tok{vocab_size}.bin", "tokenizer.bin"):
        candidate = path.with_name(name)
        if candidate.is_file():
            return candidate
    return None


def load_llama2c(
    path: str | os.PathLike[str],
    tokenizer_path: str | os.PathLike[str] | None = None,
    *,
    num_threads: int | None = None,
    linear_backend: str = "numpy",
) -> LlamaModel:
    """Load a llama2.c legacy (version 0) ``.bin`` checkpoint.

    Parameters
    ----------
    path : str or PathLike
        The ``.bin`` file. Its size must equal what the header describes (a truncated
        file, trailing bytes or a header of garbage raise ``ValueError`` naming the file);
        every weight must be finite.
    tokenizer_path : str or PathLike, optional
        llama2.c tokenizer file. Default: ``tok{vocab_size}.bin``, else ``tokenizer.bin``,
        beside ``path``; the model gets no tokenizer when neither exists. Its token count
        must equal the model's vocab_size.
    num_threads, linear_backend
        Passed to :class:`LlamaModel`.

    Returns
    -------
    LlamaModel with Hugging Face weight names (``wq`` -> ``q_proj``, ``w1`` -> ``gate_proj``,
    ``w3`` -> ``up_proj``, ``w2`` -> ``down_proj``), ``rope_style="interleaved"``, tied
    embeddings when the header's vocab_size is positive. Weights are read-only float32
    views of a memory map.
    """
    path = Path(path)
    config, expected = _header(path)
    size = path.stat().st_size
    if size != expected:
        what = "truncated" if size < expected else f"{size - expected} trailing bytes"
        raise ValueError(
            f"{path}: {what}: the header {_header_tuple(config)} describes a "
            f"{expected}-byte llama2.c legacy export, the file has {size} bytes"
        )
    data = np.memmap(path, dtype="<f4", mode="r", offset=_HEADER_BYTES)
    if not np.isfinite(data).all():
        bad = int(np.argmin(np.isfinite(data)))
        raise ValueError(
            f"{path}: non-finite weight at float index {bad} (byte {_HEADER_BYTES + 4 * bad})"
        )
    arrays: dict[str, np.ndarray] = {}
    off = 0
    for name, shape in _arrays(config):
        n = int(np.prod(shape))
        arrays[name] = np.asarray(data[off : off + n]).reshape(shape)
        off += n
    weights: dict[str, np.ndarray] = {"model.embed_tokens.weight": arrays["token_embedding"]}
    for i in range(config.n_layers):
        for src, dst in LLAMA2C_NAMES.items():
            weights[dst.format(i=i)] = arrays[src][i]
    weights["model.norm.weight"] = arrays["rms_final_weight"]
    if not config.tied_embeddings:
        weights["lm_head.weight"] = arrays["wcls"]
    if tokenizer_path is None:
        found = _find_tokenizer(path, config.vocab_size)
        tokenizer = None if found is None else Llama2cTokenizer(found, config.vocab_size)
    else:
        tokenizer = Llama2cTokenizer(tokenizer_path, config.vocab_size)
    return LlamaModel(
        config,
        weights,
        tokenizer,
        source=str(path),
        num_threads=num_threads,
        linear_backend=linear_backend,
    )


def _header_tuple(c: LlamaConfig) -> tuple[int, ...]:
    vocab = c.vocab_size if c.tied_embeddings else -c.vocab_size
    return (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, vocab, c.max_seq_len)
