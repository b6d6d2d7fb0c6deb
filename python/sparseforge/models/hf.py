"""Hugging Face checkpoint directories (``config.json`` + ``*.safetensors``) -> LlamaModel.

Accepted: ``model_type`` ``llama``, ``mistral`` (sliding window), ``qwen2`` (Q/K/V biases,
``...q_proj.bias`` etc.), ``qwen3`` (QK-norm), ``gemma3_text`` (Gemma 3: embedding scale,
``1 + w`` norms, sandwich norms, GeGLU, QK-norm, local/global attention with two RoPE
bases) and ``gemma2`` (Gemma 2: the same without QK-norm, with logit soft caps), each with
plain RoPE (no ``rope_scaling``) and no MLP biases. The family becomes the fields of
:class:`~sparseforge.models.LlamaConfig` (see there). Weights come from
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

import os
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from .._io import confined, first_nonfinite, load_json, open_regular, parse_json
from .._validate import check_bool

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

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma2")
_GEMMA = ("gemma3_text", "gemma2")

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
    """Raise ValueError naming ``source`` if a needed weight is missing or misshapen.

    The layer count the configuration claims is checked against the blocks present first,
    so a corrupt count (10^9 layers) fails at once instead of driving per-layer work."""
    present = set()
    for n in shapes:
        if n.startswith("model.layers."):
            idx = n.split(".", 3)[2]
            if idx.isdigit():
                present.add(int(idx))
    if config.n_layers > len(present):
        raise ValueError(
            f"{source}: the configuration claims {config.n_layers} layers, the weights hold "
            f"{len(present)} blocks"
        )
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


def _header_int(v: Any) -> int:
    """A non-negative JSON integer of a header (no bools, floats or strings)."""
    if type(v) is not int or v < 0 or v >= 2**62:
        raise ValueError(f"expected a non-negative integer, got {v!r:.40}")
    return v


class _SafetensorsFile:
    """Header of one safetensors file plus a lazily created read-only memory map."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open_regular(path, "safetensors file") as f:
                size = os.fstat(f.fileno()).st_size
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
            header = parse_json(raw, f"{path}: safetensors header")
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
                shape = tuple(_header_int(s) for s in entry["shape"])
                begin, end = (_header_int(o) for o in entry["data_offsets"])
                if len(shape) > 8:
                    raise ValueError(f"{len(shape)} dimensions")
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}: corrupt header entry {name!r:.200} ({err})") from err
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
    if index.exists():
        data = load_json(index, "safetensors index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise ValueError(
                f"{index}: not a safetensors index (expected 'weight_map': an object of file names)"
            )
        names = sorted(set(weight_map.values()))
        files = []
        for n in names:
            # shards must stay inside the model directory (no '..', absolute paths or
            # symlinks out): an index is data, not a licence to read any file
            p = confined(d, n, f"{index}: shard")
            if not p.exists():
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
    if not path.exists():
        raise ValueError(f"{d}: no config.json (expected a Hugging Face model directory)")
    try:
        cfg = load_json(path, "config.json", max_bytes=10_000_000)
    except ValueError as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return cfg


def _config_fields(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """Loader fields from ``config.json``, each checked for its JSON type first (a string
    where a number or an object belongs is a ValueError naming the key)."""
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{path}: model_type {model_type!r:.100} is not supported "
            f"(expected one of {', '.join(SUPPORTED_MODEL_TYPES)})"
        )

    def get(
        key: str, kinds: tuple[type, ...], default: Any = None, *, required: bool = False
    ) -> Any:
        v = cfg.get(key)
        if v is None:
            if required:
                raise ValueError(f"{path}: missing {key!r}")
            return default
        ok = isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise ValueError(f"{path}: {key}: expected {names}, got {type(v).__name__}")
        return v

    def num(key: str, default: Any = None, *, required: bool = False) -> Any:
        v = get(key, (int,), default, required=required)
        return v if v is None else int(v)

    def obj(key: str) -> dict[str, Any]:
        v: dict[str, Any] = get(key, (dict,), {})
        return v

    gemma = model_type in _GEMMA
    act = get("hidden_activation" if gemma else "hidden_act", (str,), None)
    if act is None:
        act = get("hidden_act", (str,), "gelu_pytorch_tanh" if gemma else "silu")
    activation = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}.get(act)
    if activation is None:
        raise ValueError(
            f"{path}: hidden_act={act!r:.100} is not supported (expected 'silu' or "
            "'gelu_pytorch_tanh')"
        )
    if get("mlp_bias", (bool,), False):
        raise ValueError(f"{path}: mlp_bias=true is not supported")
    if model_type != "qwen2" and get("attention_bias", (bool,), False):
        raise ValueError(f"{path}: attention_bias=true is not supported for {model_type}")
    n_layers = num("num_hidden_layers", required=True)
    types = get("layer_types", (list,), None)
    if types is not None:
        if not all(isinstance(t, str) for t in types):
            raise ValueError(f"{path}: layer_types: expected a list of str")
        if len(types) != n_layers:
            raise ValueError(f"{path}: layer_types has {len(types)} entries for {n_layers} layers")
    window = num("sliding_window") or 0
    if model_type in ("qwen2", "qwen3") and types is None:
        if get("use_sliding_window", (bool,), False) and window:
            first = num("max_window_layers", n_layers)
            types = [
                "sliding_attention" if i >= first else "full_attention" for i in range(n_layers)
            ]
        else:
            window = 0
    elif model_type in ("qwen2", "qwen3") and not get("use_sliding_window", (bool,), False):
        window = 0
    if types is not None and "sliding_attention" not in types:
        types, window = None, 0
    if model_type == "gemma3_text" and types is None and window:
        pattern = num("sliding_window_pattern", 6)
        pattern = num("_sliding_window_pattern", pattern)
        types = [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
            for i in range(n_layers)
        ]
    # RoPE: one set of parameters, or one per layer type (Gemma 3 in transformers 5).
    rope = obj("rope_parameters")
    per_type = {k: v for k, v in rope.items() if k in ("full_attention", "sliding_attention")}
    if per_type:
        if not all(isinstance(v, dict) for v in per_type.values()):
            raise ValueError(f"{path}: rope_parameters: expected an object per layer type")
        full = per_type.get("full_attention", {})
        local = per_type.get("sliding_attention", full)
    else:
        full = local = rope
    scaling = obj("rope_scaling")
    for params in (full, local, scaling):
        rope_type = params.get("rope_type") or params.get("type")
        if rope_type not in (None, "default"):
            raise ValueError(f"{path}: rope scaling {rope_type!r:.100} is not supported")
    if get("partial_rotary_factor", (int, float), 1.0) != 1.0:
        raise ValueError(f"{path}: partial_rotary_factor != 1 is not supported")
    dim = num("hidden_size", required=True)
    n_heads = num("num_attention_heads", required=True)
    n_kv = num("num_key_value_heads", n_heads)
    max_seq = num("max_position_embeddings", 2048)
    theta = full.get("rope_theta", get("rope_theta", (int, float), 10000.0))
    theta_local = local.get("rope_theta", get("rope_local_base_freq", (int, float), 0.0))
    for key, v in (("rope_theta", theta), ("rope_local_base_freq", theta_local)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{path}: {key}: expected a number, got {type(v).__name__}")
    head_dim = num("head_dim")
    fields: dict[str, Any] = {
        "dim": dim,
        "hidden_dim": num("intermediate_size", required=True),
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "vocab_size": num("vocab_size", required=True),
        "max_seq_len": max_seq,
        "norm_eps": float(get("rms_norm_eps", (int, float), 1e-6)),
        "rope_theta": float(theta),
        "rope_style": "half",
        "tied_embeddings": get("tie_word_embeddings", (bool,), gemma),
        "arch": {"gemma3_text": "gemma3"}.get(model_type, model_type),
        "head_dim": head_dim if head_dim else None,
        "sliding_window": int(window),
        "layer_types": tuple(types) if (types is not None and window) else (),
        "activation": activation,
        "qk_norm": model_type in ("qwen3", "gemma3_text"),
    }
    if window and not fields["layer_types"] and model_type != "mistral":
        fields["layer_types"] = ("sliding_attention",) * n_layers
    if theta_local and float(theta_local) != float(theta) and fields["layer_types"]:
        fields["rope_theta_local"] = float(theta_local)
    if gemma:
        scalar = get("query_pre_attn_scalar", (int, float), None)
        fields.update(
            embed_scale=float(dim) ** 0.5,
            norm_offset=1.0,
            sandwich_norms=True,
            query_scale=float(scalar) ** -0.5 if scalar else 0.0,
            attn_softcap=float(get("attn_logit_softcapping", (int, float), 0.0) or 0.0),
            final_softcap=float(get("final_logit_softcapping", (int, float), 0.0) or 0.0),
        )
    return fields


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
    allow_nonfinite: bool = False,
) -> LlamaModel:
    """Load a Hugging Face Llama/Mistral/Qwen2/Qwen3/Gemma 3/Gemma 2 directory as a
    :class:`LlamaModel`.

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
    allow_nonfinite : bool
        False (default): every weight is scanned for NaN/Inf at load (one chunked pass over
        the memory-mapped files, nothing kept) and one is a ValueError naming the tensor.
        True loads them as stored.

    Raises
    ------
    ValueError
        Naming the file: missing or unreadable config/weights, unsupported model type or
        variant, a missing weight, a shape that disagrees with ``config.json``, a
        non-float dtype, a NaN or Inf, a tokenizer larger than the vocabulary.
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
    if not check_bool(allow_nonfinite, "allow_nonfinite"):
        for n in needed:
            i = first_nonfinite(weights._where[n].array(n))
            if i is not None:
                raise ValueError(
                    f"{weights.file_of(n)}: tensor {n!r} holds NaN or Inf at element {i} "
                    "(allow_nonfinite=True loads it as stored)"
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
