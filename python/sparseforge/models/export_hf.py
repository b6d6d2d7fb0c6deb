"""Export a model as a Hugging Face directory that ``transformers`` loads:
:func:`export_hf`.

What is written (``docs/export.md``):

* ``config.json`` — ``LlamaForCausalLM`` (``MistralForCausalLM``, ``Qwen2ForCausalLM``,
  ``Qwen3ForCausalLM``, ``Gemma3ForCausalLM`` (text), ``Gemma2ForCausalLM`` for those
  families, with their sliding windows, layer types and RoPE bases), every size explicit
  (``head_dim`` too, so Minitron width-pruned models whose ``n_heads * head_dim !=
  hidden_size`` load), ``torch_dtype`` the embedding's dtype;
* ``generation_config.json`` — BOS/EOS ids;
* ``model.safetensors``, or shards ``model-0000k-of-0000n.safetensors`` with
  ``model.safetensors.index.json`` when the weights exceed ``max_shard_size`` (the layout
  ``save_pretrained`` writes); each tensor in its own dtype unless ``dtype`` is given;
  compressed linears expanded to dense arrays with their zeros; Q/K rows of
  llama2.c-style (``rope_style="interleaved"``) models permuted to ``rotate_half`` order;
* the tokenizer: ``tokenizer.json`` (a ``tokenizers`` file, read by
  ``PreTrainedTokenizerFast``), ``tokenizer_config.json`` and ``special_tokens_map.json``.
  A llama2.c tokenizer becomes the equivalent SentencePiece-style BPE ``tokenizer.json``
  (byte fallback, merges ranked by the pieces' scores); no ``tokenizer.model``
  (SentencePiece protobuf) is written, so the slow ``LlamaTokenizer`` cannot be built.

Not expressible, refused with ``ValueError`` before anything is written: SliceGPT models
(``config.residual_dims``: transformers' Llama has no residual shortcut matrices) and
configurations no transformers family computes (e.g. a Llama with GeGLU).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .. import _progress
from .._validate import check_bool
from . import _export_io as io
from . import compressed_tensors as ct
from .llama import LlamaModel
from .tokenizer import Llama2cTokenizer

__all__ = ["ExportReport", "export_hf", "hf_tokenizer_backend"]

_ARCHS = {
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
}
_TORCH_DTYPE = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
DEFAULT_MAX_SHARD_SIZE = 5 * 10**9  # transformers' save_pretrained default before v5


class ExportReport:
    """What an export wrote: ``path``, ``files`` (name -> bytes), ``tensors``,
    ``zeros`` (exact zeros in the linear weights written) and ``notes``."""

    def __init__(self, path: Path, files: dict[str, int], tensors: int, zeros: int) -> None:
        self.path = path
        self.files = files
        self.tensors = tensors
        self.zeros = zeros
        self.notes: list[str] = []

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    def __repr__(self) -> str:
        return (
            f"ExportReport({str(self.path)!r}, {len(self.files)} files, "
            f"{self.total_bytes / 1e6:.2f} MB, {self.tensors} tensors)"
        )

    def __str__(self) -> str:
        lines = [
            f"{self.path}: {self.total_bytes / 1e6:.2f} MB in {len(self.files)} files "
            f"({self.tensors} tensors, {self.zeros} zero weights in the linears)"
        ]
        lines += [f"  {n}  {b / 1e6:.2f} MB" for n, b in sorted(self.files.items())]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*\Z", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20}
_UNITS["gib"] = 2**30


def parse_size(value: Any, what: str = "max_shard_size") -> int:
    """Bytes from an int or a string like ``"500MB"`` / ``"2GiB"``."""
    if isinstance(value, bool):
        raise TypeError(f"{what}: expected an int or a size string, got bool")
    if isinstance(value, (int, np.integer)):
        n = int(value)
    elif isinstance(value, str):
        m = _SIZE.match(value)
        if m is None:
            raise ValueError(f"{what}: expected a size like 500MB or 2GB, got {value!r}")
        n = int(float(m.group(1)) * _UNITS[(m.group(2) or "B").lower()])
    else:
        raise TypeError(f"{what}: expected an int or a size string, got {type(value).__name__}")
    if n <= 0:
        raise ValueError(f"{what}: expected a positive size, got {value!r}")
    return n


def check_expressible(model: LlamaModel) -> tuple[str, str]:
    """``(model_type, architecture)`` of transformers for ``model``, or ValueError."""
    c = model.config
    if c.residual_dims:
        raise ValueError(
            "model: a SliceGPT-sliced model (config.residual_dims set) cannot be expressed "
            "as a transformers checkpoint: LlamaForCausalLM has no residual shortcut "
            "matrices (attn_shortcut / mlp_shortcut) and one residual width; save it with "
            "sparseforge.models.save instead"
        )
    if c.arch not in _ARCHS:
        raise ValueError(
            f"model: architecture {c.arch!r} has no transformers export here "
            f"(expected one of {', '.join(_ARCHS)})"
        )
    family = _family_of(c)
    if family != c.arch:
        raise ValueError(
            f"model: its configuration ({_describe_family(c)}) is not what transformers' "
            f"{_ARCHS[c.arch][1]} computes; no transformers architecture expresses it"
        )
    biases = [n for n in model._weights if n.endswith(".bias")]
    allowed = (".self_attn.q_proj.bias", ".self_attn.k_proj.bias", ".self_attn.v_proj.bias")
    bad = [n for n in biases if not n.endswith(allowed)]
    if bad or (biases and c.arch != "qwen2"):
        raise ValueError(
            f"model: bias {(bad or biases)[0]!r} cannot be expressed by "
            f"{_ARCHS[c.arch][1]} (only Qwen2 has q/k/v biases)"
        )
    return _ARCHS[c.arch]


def _family_of(c: Any) -> str:
    """The transformers family whose forward the config's family fields describe."""
    gemma = (
        c.sandwich_norms
        and c.norm_offset == 1.0
        and c.activation == "gelu_tanh"
        and abs(c.embed_scale - c.dim**0.5) < 1e-6 * c.dim**0.5
    )
    if gemma and c.qk_norm and not c.attn_softcap and not c.final_softcap:
        return "gemma3"
    if gemma and not c.qk_norm and not c.rope_theta_local:
        return "gemma2"
    plain = (
        not c.sandwich_norms
        and c.norm_offset == 0.0
        and c.activation == "silu"
        and c.embed_scale == 1.0
        and not c.query_scale
        and not c.attn_softcap
        and not c.final_softcap
        and not c.rope_theta_local
    )
    if not plain:
        return "?"
    if c.qk_norm:
        return "qwen3" if c.arch == "qwen3" else "?"
    if c.arch == "qwen3":
        return "?"
    if c.arch in ("llama",) and c.sliding_window:
        return "?"
    if c.arch == "mistral" and c.layer_types:
        return "?"
    return str(c.arch)


def _describe_family(c: Any) -> str:
    keys = ("qk_norm", "sliding_window", "sandwich_norms", "norm_offset", "activation",
            "embed_scale", "query_scale", "attn_softcap", "final_softcap")  # fmt: skip
    return ", ".join(f"{k}={getattr(c, k)!r}" for k in keys)


def _config_json(
    model: LlamaModel, dtype_name: str, bos: int | None, eos: int | None
) -> dict[str, Any]:
    c = model.config
    model_type, arch = _ARCHS[c.arch]
    cfg: dict[str, Any] = {
        "architectures": [arch],
        "model_type": model_type,
        "hidden_size": c.dim,
        "intermediate_size": c.hidden_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": None,
        "hidden_act": "silu",
        "tie_word_embeddings": c.tied_embeddings,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": dtype_name,
        "use_cache": True,
    }
    window = c.sliding_window or None
    types = list(c.layer_types) or None
    if model_type == "llama":
        cfg.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    elif model_type == "mistral":
        cfg.update(sliding_window=window)
    elif model_type in ("qwen2", "qwen3"):
        cfg.update(use_sliding_window=window is not None, sliding_window=window)
        if types is not None:
            cfg.update(layer_types=types, max_window_layers=c.n_layers)
        if model_type == "qwen3":
            cfg.update(attention_bias=False)
    else:  # gemma3_text, gemma2
        scalar = 1.0 / c.query_scale**2 if c.query_scale else float(c.head_dim)
        del cfg["hidden_act"]
        cfg.update(
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=round(scalar) if abs(scalar - round(scalar)) < 1e-4 else scalar,
            sliding_window=window,
            attn_logit_softcapping=c.attn_softcap or None,
            final_logit_softcapping=c.final_softcap or None,
            attention_bias=False,
        )
        if types is not None:
            cfg.update(layer_types=types)
        if model_type == "gemma3_text":
            local = c.rope_theta_local or c.rope_theta
            cfg.update(
                rope_local_base_freq=local,
                rope_parameters={
                    "full_attention": {"rope_type": "default", "rope_theta": c.rope_theta},
                    "sliding_attention": {"rope_type": "default", "rope_theta": local},
                },
            )
    return cfg


def _special_ids(model: LlamaModel) -> tuple[int | None, int | None]:
    tok = model.tokenizer
    if tok is None:
        return None, None
    bos = getattr(tok, "declared_bos_id", tok.bos_id)
    return bos, tok.eos_id


# -- tokenizer -----------------------------------------------------------------------------


def _llama2c_backend(tok: Llama2cTokenizer) -> Any:
    """llama2.c's tokenizer as a ``tokenizers`` SentencePiece-style BPE: pieces with ' ' as
    '▁', BOS/EOS as ``<s>``/``</s>``, byte-fallback pieces ``<0xNN>``, merges ranked by
    the merged piece's score (what run.c merges by)."""
    from .hf_tokenizer import _sentencepiece_bpe, import_tokenizers

    tokens, types, scores = [], [], []
    for i in range(tok.vocab_size):
        piece = tok.piece(i)
        if i == tok.BOS:
            text, kind = "<s>", 3
        elif i == tok.EOS:
            text, kind = "</s>", 3
        elif i == 0:
            text, kind = "<unk>", 2
        else:
            try:
                text = piece.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"model: tokenizer piece {i} ({piece!r}) is not UTF-8 text; it has no "
                    "tokenizer.json spelling"
                ) from e
            kind = 6 if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text) else 1
            text = text.replace(" ", "\u2581")
        tokens.append(text)
        types.append(kind)
        scores.append(float(tok.score(i)))
    meta = {
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_space_prefix": True,
    }
    tokenizers = import_tokenizers()
    return _sentencepiece_bpe(tokenizers, meta, tokens, types, tok.name)


def hf_tokenizer_backend(model: LlamaModel) -> tuple[Any, int | None, int | None, bool]:
    """``(tokenizers.Tokenizer, bos_id, eos_id, add_bos)`` for the model's tokenizer, with
    a post-processor that prepends BOS when the model's tokenizer does; ValueError when it
    has no ``tokenizers`` equivalent."""
    from .hf_tokenizer import import_tokenizers

    tok = model.tokenizer
    if tok is None:
        raise ValueError("model: has no tokenizer to write; pass tokenizer=False")
    tokenizers = import_tokenizers()
    bos: int | None
    eos: int | None
    if isinstance(tok, Llama2cTokenizer):
        backend = _llama2c_backend(tok)
        bos, eos, add_bos = tok.BOS, tok.EOS, True
    else:
        src = getattr(tok, "backend", None)
        if src is None or not hasattr(src, "to_str"):
            raise ValueError(
                f"model: its tokenizer {type(tok).__name__} has no tokenizer.json form "
                "(expected a llama2.c or a `tokenizers` tokenizer); pass tokenizer=False"
            )
        backend = tokenizers.Tokenizer.from_str(src.to_str())
        bos = getattr(tok, "declared_bos_id", tok.bos_id)
        eos, add_bos = tok.eos_id, tok.bos_id is not None
    if add_bos and bos is not None and backend.post_processor is None:
        from tokenizers import processors

        piece = backend.id_to_token(bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{piece} $A", pair=f"{piece} $A {piece} $B", special_tokens=[(piece, bos)]
        )
    return backend, bos, eos, add_bos


def _tokenizer_files(model: LlamaModel) -> dict[str, str]:
    backend, bos, eos, add_bos = hf_tokenizer_backend(model)
    piece = backend.id_to_token
    special: dict[str, Any] = {}
    if bos is not None:
        special["bos_token"] = piece(bos)
    if eos is not None:
        special["eos_token"] = piece(eos)
    unk = getattr(backend.model, "unk_token", None)
    if unk:
        special["unk_token"] = unk
    tconf = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "model_max_length": model.config.max_seq_len,
        "clean_up_tokenization_spaces": False,
    }
    return {
        "tokenizer.json": backend.to_str(),
        "tokenizer_config.json": json.dumps(tconf, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
    }


# -- export --------------------------------------------------------------------------------


def _shards(sizes: list[tuple[str, int]], limit: int) -> list[list[str]]:
    """Greedy in order, as save_pretrained: a tensor starts a new shard when it would
    overflow the current one (a tensor larger than the limit gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, n in sizes:
        if shards[-1] and used + n > limit:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += n
    return shards


def export_hf(
    model: LlamaModel,
    out: str | os.PathLike[str],
    *,
    dtype: Any = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    tokenizer: bool = True,
    compression: str | None = None,
    progress: bool | None = None,
) -> ExportReport:
    """Write ``model`` as a Hugging Face model directory that
    ``transformers.AutoModelForCausalLM.from_pretrained(out)`` loads.

    Parameters
    ----------
    model : LlamaModel
        Its current weights (after pruning / ``set_weight``; compressed linears are
        written dense with their zeros). Not modified.
    out : path of the directory to create. Its parent must exist. An existing non-empty
        directory is refused unless ``overwrite=True``. Written into a temporary sibling
        and renamed into place: a failure leaves no partial directory (and an old one
        untouched).
    dtype : {"float32", "float16", "bfloat16"} or None
        Cast every tensor to this dtype; None (default) keeps each weight's dtype.
    max_shard_size : int or str
        Bytes per safetensors shard (``"500MB"``, ``"2GB"``); default 5 GB. One shard is
        written as ``model.safetensors`` without an index.
    overwrite : bool
    tokenizer : bool
        Write the tokenizer files when the model has a tokenizer (default).
    compression : {None, "sparse-24-bitmask", "sparse-bitmask"}
        Write the block linears in a compressed-tensors sparse layout (llm-compressor's;
        ``config.json`` gets its ``quantization_config``): 2:4 values + bitmask for every
        linear whose groups of 4 hold at most 2 non-zeros (the others stay dense and are
        listed in ``ignore``), or bitmask + non-zeros for every linear. ``lm_head`` stays
        dense. transformers reads these only through the compressed-tensors package
        (docs/export.md says which versions); :func:`sparseforge.models.load` reads them
        into compressed tensors.
    progress : bool or None
        A progress bar over the tensors on stderr (None: when stderr is a terminal or
        ``SPARSEFORGE_PROGRESS=1``; False: quiet).

    Returns
    -------
    ExportReport

    Raises
    ------
    ValueError
        A bad ``out`` / ``dtype`` / ``max_shard_size`` (before any work), a model that
        transformers cannot express (SliceGPT's shortcut matrices, another family), a
        tokenizer without a ``tokenizer.json`` form.
    OSError
        From the file system (a full disk...); nothing is left behind.
    """
    model = io.check_model(model)
    target = io.check_out_dir(out, overwrite)
    dt = io.parse_dtype(dtype)
    limit = parse_size(max_shard_size)
    check_bool(tokenizer, "tokenizer")
    if compression is not None and compression not in ("sparse-24-bitmask", "sparse-bitmask"):
        raise ValueError(
            "compression: expected None, 'sparse-24-bitmask' or 'sparse-bitmask', got "
            f"{compression!r}"
        )
    _progress.check_progress(progress)
    check_expressible(model)
    tok_files = _tokenizer_files(model) if tokenizer and model.tokenizer is not None else {}

    names = io.export_names(model)
    c = model.config
    if c.arch == "qwen2":  # Qwen2ForCausalLM always has q/k/v biases
        for i in range(c.n_layers):
            for proj in ("q_proj", "k_proj", "v_proj"):
                n = f"model.layers.{i}.self_attn.{proj}.bias"
                if n not in names:
                    names.append(n)

    def tensor(name: str) -> np.ndarray:
        if name.endswith(".bias") and name not in model._weights:
            rows = c.q_dim if ".q_proj." in name else c.kv_dim
            return np.zeros(rows, dtype=dt or np.float32)
        return io.hf_order_weight(model, name, dt)

    # sizes from shapes and dtypes, without expanding anything
    def stored_dtype(name: str) -> np.dtype[Any]:
        if dt is not None:
            return dt
        if name.endswith(".bias") and name not in model._weights:
            return np.dtype(np.float32)
        found: np.dtype[Any] = np.dtype(model.weight(name).dtype)
        return found

    shapes = c.weight_shapes()
    sizes = []
    packed: set[str] = set()
    ignore: list[str] = ["lm_head"]
    kept = total = 0
    for n in names:
        shape = shapes.get(n) or ((c.q_dim,) if ".q_proj." in n else (c.kv_dim,))
        nbytes = int(np.prod(shape)) * stored_dtype(n).itemsize
        if compression is not None and ct.is_target(n):
            ok, nnz = ct.fits(model, n, compression)
            if ok:
                packed.add(n)
                rows, cols = int(shape[0]), int(shape[1])
                nbytes = ct.compressed_sizes(rows, cols, nnz, stored_dtype(n).itemsize, compression)
                kept += nnz
                total += int(np.prod(shape))
            else:
                ignore.append(n[: -len(".weight")])
        sizes.append((n, nbytes))
    shards = _shards(sizes, limit)
    embed_dtype = stored_dtype("model.embed_tokens.weight")
    dtype_name = "bfloat16" if embed_dtype.name == "bfloat16" else embed_dtype.name
    bos, eos = _special_ids(model)

    files: dict[str, int] = {}
    zeros = 0
    bar = _progress.bar(len(names), "sparseforge export_hf", unit="tensors", progress=progress)
    with bar, io.atomic_directory(target) as tmp:
        weight_map: dict[str, str] = {}
        for k, shard in enumerate(shards):
            fname = (
                "model.safetensors"
                if len(shards) == 1
                else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            )
            arrays = []
            for n in shard:
                a = tensor(n)
                if io.is_linear(n):
                    zeros += int(a.size - np.count_nonzero(a))
                if n in packed:
                    arrays += ct.compressed_entries(model, n, str(compression), a)
                else:
                    arrays.append((n, a))
                bar.update()
            for key, _ in arrays:
                weight_map[key] = fname
            with open(tmp / fname, "wb") as f:
                io.write_safetensors(f, arrays)
            del arrays
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(s for _, s in sizes)}, "weight_map": weight_map}
            _write_text(tmp / "model.safetensors.index.json", json.dumps(index, indent=2))
        cfg = _config_json(model, dtype_name, bos, eos)
        if compression is not None:
            sparsity = 1.0 - kept / total if total else 0.0
            cfg["quantization_config"] = ct.compression_config(compression, ignore, sparsity)
        _write_text(tmp / "config.json", json.dumps(cfg, indent=2))
        gen = {"_from_model_config": True, "bos_token_id": bos, "eos_token_id": eos}
        _write_text(tmp / "generation_config.json", json.dumps(gen, indent=2))
        for fname, text in tok_files.items():
            _write_text(tmp / fname, text)
        files = {p.name: p.stat().st_size for p in tmp.iterdir()}
    report = ExportReport(target, files, len(names), zeros)
    if isinstance(model.tokenizer, Llama2cTokenizer) and tok_files:
        report.notes.append(
            "llama2.c tokenizer written as a tokenizer.json BPE (no tokenizer.model)"
        )
    return report


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.write("\n")
