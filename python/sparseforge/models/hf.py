"""Hugging Face checkpoint directories (``config.json`` + ``*.safetensors``) -> LlamaModel.

Accepted: ``model_type`` ``llama``, ``mistral`` or ``qwen2`` with SiLU SwiGLU MLPs, plain
RoPE (no ``rope_scaling``), no MLP biases and no attention biases except Qwen2's Q/K/V
biases (``...q_proj.bias``, ``...k_proj.bias``, ``...v_proj.bias``). Weights come from
``model.safetensors`` or from the shards that ``model.safetensors.index.json`` lists.

Memory mapping: each safetensors file is parsed here (8-byte little-endian header length,
JSON header, raw little-endian data) and mapped with ``np.memmap``; every weight is a
read-only view of the map, so nothing is read until the model touches it and the
operating system pages blocks in (and out) as the forward walks through them. F32, F16 and
BF16 (``ml_dtypes.bfloat16``) tensors are accepted. With ``dtype=np.float32`` (the
default) fp16/bf16 weights are converted on first access and kept; ``dtype=None`` keeps the
stored dtype and hands out the zero-copy views.

Q/K rows are in Hugging Face order, so ``rope_style="half"`` (``rotate_half``).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

if TYPE_CHECKING:
    from .config import LlamaConfig
    from .llama import LlamaModel

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "SafetensorsWeights",
    "build_config",
    "check_weight_shapes",
    "expected_weight_shapes",
    "load_hf",
    "read_hf_config",
]

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")

_ST_FLOAT_DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
_MAX_HEADER = 100_000_000  # the safetensors limit


# -- config and weight-shape helpers shared with the GGUF loader --------------------------


def build_config(fields: dict[str, Any], *, source: str) -> LlamaConfig:
    """A :class:`LlamaConfig` from loader fields (``head_dim`` None means the default).

    Raises
    ------
    ValueError
        Naming ``source`` and the config's complaint.
    """
    from .config import LlamaConfig

    fields = dict(fields)
    if fields.get("head_dim") is None:
        fields["head_dim"] = 0
    try:
        return LlamaConfig(**fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: invalid model configuration: {e}") from e


def expected_weight_shapes(
    config: LlamaConfig, *, biases: bool = False
) -> dict[str, tuple[int, ...]]:
    """Hugging Face weight names and shapes a model of ``config`` needs
    (``config.weight_shapes()``); ``biases=True`` adds Qwen2's Q/K/V biases."""
    shapes = dict(config.weight_shapes())
    if biases:
        for i in range(config.n_layers):
            p = f"model.layers.{i}.self_attn."
            shapes[p + "q_proj.bias"] = (config.q_dim,)
            shapes[p + "k_proj.bias"] = (config.kv_dim,)
            shapes[p + "v_proj.bias"] = (config.kv_dim,)
    return shapes


def check_weight_shapes(
    config: LlamaConfig,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    source: str,
    describe: Callable[[str], str] = repr,
    biases: bool = False,
) -> None:
    """Raise ValueError naming ``source`` if a needed weight is missing or misshapen."""
    missing = []
    for name, shape in expected_weight_shapes(config, biases=biases).items():
        if name not in shapes:
            missing.append(name)
            continue
        got = tuple(shapes[name])
        if got != shape:
            raise ValueError(
                f"{source}: weight {describe(name)} has shape {got}, expected {shape} "
                "from the model configuration"
            )
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ValueError(f"{source}: missing weight {missing[0]!r}{more}")
    if not biases:
        extra = sorted(n for n in shapes if n.endswith(".bias"))
        if extra:
            raise ValueError(
                f"{source}: bias {extra[0]!r} present, but this architecture has no biases "
                "(expected only .weight tensors)"
            )


# -- safetensors, memory-mapped ------------------------------------------------------------


class _SafetensorsFile:
    """Header of one safetensors file plus a lazily created read-only memory map."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) != 8:
                    raise ValueError(f"{path}: truncated safetensors file ({size} bytes)")
                (n,) = struct.unpack("<Q", head)
                if n > _MAX_HEADER or 8 + n > size:
                    raise ValueError(
                        f"{path}: not a safetensors file or truncated (header length {n}, "
                        f"file {size} bytes)"
                    )
                raw = f.read(n)
        except OSError as e:
            raise ValueError(f"{path}: cannot read ({e})") from e
        try:
            header = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"{path}: corrupt safetensors header ({e})") from e
        if not isinstance(header, dict):
            raise ValueError(f"{path}: corrupt safetensors header (not a JSON object)")
        self.data_start = 8 + n
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = str(entry["dtype"])
                shape = tuple(int(s) for s in entry["shape"])
                begin, end = (int(o) for o in entry["data_offsets"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}: corrupt header entry {name!r} ({err})") from err
            if not 0 <= begin <= end or self.data_start + end > size:
                raise ValueError(
                    f"{path}: truncated safetensors file: tensor {name!r} ends at byte "
                    f"{self.data_start + end}, the file has {size}"
                )
            self.entries[name] = (dtype, shape, begin, end)
        self._map: np.memmap[Any, np.dtype[np.uint8]] | None = None

    def array(self, name: str) -> np.ndarray:
        dtype_name, shape, begin, end = self.entries[name]
        dtype = _ST_FLOAT_DTYPES.get(dtype_name)
        if dtype is None:
            raise ValueError(
                f"{self.path}: tensor {name!r} has dtype {dtype_name}, expected F32, F16 or BF16"
            )
        count = int(np.prod(shape, dtype=np.int64))
        if (end - begin) != count * dtype.itemsize:
            raise ValueError(
                f"{self.path}: tensor {name!r}: {end - begin} bytes for shape {shape} of "
                f"{dtype_name}"
            )
        if count == 0:
            return np.zeros(shape, dtype)
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        start = self.data_start + begin
        return self._map[start : start + end - begin].view(dtype).reshape(shape)


class SafetensorsWeights(Mapping[str, np.ndarray]):
    """Weights of one or more safetensors files, memory-mapped, by tensor name.

    A value is a read-only view of the mapped file (no copy) when ``dtype`` is None or
    equals the stored dtype; otherwise a converted copy made on first access and kept.
    """

    def __init__(self, files: list[Path], *, dtype: Any = np.float32) -> None:
        self._where: dict[str, _SafetensorsFile] = {}
        for p in files:
            st = _SafetensorsFile(p)
            for name in st.entries:
                self._where[name] = st
        self._dtype = None if dtype is None else np.dtype(dtype)
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        st = self._where.get(name)
        if st is None:
            raise KeyError(name)
        a = st.array(name)
        if self._dtype is not None and a.dtype != self._dtype:
            a = a.astype(self._dtype)
            self._cache[name] = a
        return a

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].entries[name][1]

    def stored_dtype(self, name: str) -> str:
        """The safetensors dtype name (``"F32"``, ``"BF16"``, ...)."""
        return self._where[name].entries[name][0]

    def file_of(self, name: str) -> Path:
        return self._where[name].path


class _NamesView(Mapping[str, np.ndarray]):
    """``SafetensorsWeights`` restricted to the names the model uses."""

    def __init__(self, base: SafetensorsWeights, names: list[str]) -> None:
        self._base = base
        self._names = names
        self._set = set(names)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._set:
            raise KeyError(name)
        return self._base[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._set


def _safetensors_files(d: Path) -> list[Path]:
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            names = sorted({str(v) for v in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index}: not a safetensors index (expected 'weight_map')") from e
        files = []
        for n in names:
            p = d / n
            if not p.is_file():
                raise ValueError(f"{index}: lists shard {n!r}, which is missing from {d}")
            files.append(p)
        return files
    single = d / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(d.glob("*.safetensors"))
    if not found:
        raise ValueError(
            f"{d}: no model.safetensors, model.safetensors.index.json or *.safetensors "
            "(PyTorch .bin checkpoints are not read: convert them to safetensors)"
        )
    return found


# -- config.json ---------------------------------------------------------------------------


def _read_config_json(d: Path) -> dict[str, Any]:
    path = d / "config.json"
    if not path.is_file():
        raise ValueError(f"{d}: no config.json (expected a Hugging Face model directory)")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return cfg


def _config_fields(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{path}: model_type {model_type!r} is not supported "
            f"(expected one of {', '.join(SUPPORTED_MODEL_TYPES)}: the Llama family)"
        )

    def need(key: str) -> Any:
        if key not in cfg or cfg[key] is None:
            raise ValueError(f"{path}: missing {key!r}")
        return cfg[key]

    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{path}: hidden_act={act!r} is not supported (expected 'silu')")
    if cfg.get("mlp_bias"):
        raise ValueError(f"{path}: mlp_bias=true is not supported")
    if model_type != "qwen2" and cfg.get("attention_bias"):
        raise ValueError(f"{path}: attention_bias=true is not supported for {model_type}")
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    if rope_type not in (None, "default"):
        raise ValueError(f"{path}: rope scaling {rope_type!r} is not supported")
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"{path}: partial_rotary_factor != 1 is not supported")
    dim = int(need("hidden_size"))
    n_heads = int(need("num_attention_heads"))
    n_kv = cfg.get("num_key_value_heads")
    max_seq = int(cfg.get("max_position_embeddings", 2048))
    window = cfg.get("sliding_window")
    use_window = cfg.get("use_sliding_window", model_type == "mistral")
    if window and use_window and int(window) < max_seq:
        # the full causal forward equals sliding-window attention up to the window
        max_seq = int(window)
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    return {
        "dim": dim,
        "hidden_dim": int(need("intermediate_size")),
        "n_layers": int(need("num_hidden_layers")),
        "n_heads": n_heads,
        "n_kv_heads": int(n_kv) if n_kv is not None else n_heads,
        "vocab_size": int(need("vocab_size")),
        "max_seq_len": max_seq,
        "norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
        "rope_theta": float(theta),
        "rope_style": "half",
        "tied_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "arch": str(model_type),
        "head_dim": int(cfg["head_dim"]) if cfg.get("head_dim") else None,
    }


def read_hf_config(directory: str | os.PathLike[str]) -> LlamaConfig:
    """The :class:`LlamaConfig` of a Hugging Face model directory (``config.json``)."""
    d = Path(directory)
    fields = _config_fields(_read_config_json(d), d / "config.json")
    return build_config(fields, source=str(d / "config.json"))


def load_hf(
    directory: str | os.PathLike[str],
    *,
    dtype: Any = np.float32,
    tokenizer: bool = True,
    num_threads: int | None = None,
    linear_backend: str = "numpy",
) -> LlamaModel:
    """Load a Hugging Face Llama/Mistral/Qwen2 directory as a :class:`LlamaModel`.

    Parameters
    ----------
    directory : path holding ``config.json`` and ``model.safetensors`` (or shards with
        ``model.safetensors.index.json``), optionally ``tokenizer.json``
    dtype : float32 (default), float16, ml_dtypes.bfloat16 or None
        Weights are converted to this dtype on first access (kept); None hands out the
        stored dtype as zero-copy read-only views of the memory-mapped files.
    tokenizer : bool
        Attach ``tokenizer.json`` (needs the ``tokenizers`` package) when it exists.
    num_threads, linear_backend
        Passed to :class:`LlamaModel`.

    Raises
    ------
    ValueError
        Naming the file: missing or unreadable config/weights, unsupported model type or
        variant, a missing weight, a shape that disagrees with ``config.json``, a
        non-float dtype, a tokenizer larger than the vocabulary.
    """
    from .llama import LlamaModel

    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"{d}: not a directory (expected a Hugging Face model directory)")
    if dtype is not None:
        dt = np.dtype(dtype)
        if dt not in (np.dtype(np.float32), np.dtype(np.float16)) and dt.name != "bfloat16":
            raise ValueError(f"dtype: expected float32, float16, bfloat16 or None, got {dt}")
    cfg_path = d / "config.json"
    fields = _config_fields(_read_config_json(d), cfg_path)
    config = build_config(fields, source=str(cfg_path))
    weights = SafetensorsWeights(_safetensors_files(d), dtype=dtype)
    biases = config.arch == "qwen2"
    needed = expected_weight_shapes(config, biases=biases)
    check_weight_shapes(
        config,
        {n: weights.shape(n) for n in weights},
        source=str(d),
        describe=lambda n: f"{n!r} (in {weights.file_of(n).name})",
        biases=biases,
    )
    for n in needed:
        if weights.stored_dtype(n) not in _ST_FLOAT_DTYPES:
            raise ValueError(
                f"{weights.file_of(n)}: tensor {n!r} has dtype {weights.stored_dtype(n)}, "
                "expected F32, F16 or BF16"
            )
    view = _NamesView(weights, list(needed))
    tok = None
    if tokenizer and (d / "tokenizer.json").is_file():
        from .hf_tokenizer import HFTokenizer

        tok = HFTokenizer.from_directory(d)
        if tok.vocab_size > config.vocab_size:
            raise ValueError(
                f"{d / 'tokenizer.json'}: {tok.vocab_size} tokens, the model embeds "
                f"{config.vocab_size}"
            )
    return LlamaModel(
        config, view, tok, source=str(d), num_threads=num_threads, linear_backend=linear_backend
    )
