"""Export a model as a GGUF file for llama.cpp: :func:`export_gguf`.

Written through the ``gguf`` package's ``GGUFWriter`` (llama.cpp's own writer), one
tensor at a time (memory stays at about one weight):

* architecture ``llama`` (Llama, Mistral without a sliding window, llama2.c models),
  ``qwen2``, ``qwen3`` or ``gemma3`` (norms written as ``1 + w``, as llama.cpp's converter
  does; ``attention.sliding_window``), with the hyper parameters llama.cpp reads (context
  length, widths, heads, ``rope.dimension_count``, ``rope.freq_base``, RMSNorm epsilon,
  ``attention.key_length`` when ``head_dim`` is not ``dim / n_heads``);
* tensors under llama.cpp's names (``token_embd``, ``blk.N.attn_q``...), 2-D weights in
  ``dtype`` (F32, F16, BF16 or Q8_0; Q8_0 needs ``in_features % 32 == 0`` and falls back to
  F16 for other weights, as llama.cpp's converter does), norms and biases F32;
  compressed linears expanded with their zeros (Q8_0 keeps exact zeros too: a zero
  quantizes to 0);
* the Q/K rows of ``llama`` files permuted the way ``convert_hf_to_gguf.py`` does
  (:func:`sparseforge.models.gguf.permute_qk`, the inverse of what our loader undoes);
  llama2.c models, already in that order, are written as they are;
* the tokenizer: one read from a GGUF file (Gemma 3's SentencePiece...) written back as its
  ``tokenizer.ggml.*`` entries were; a byte-level BPE (SmolLM2, Llama 3, Qwen2...) as
  ``tokenizer.ggml.model = "gpt2"`` with its merges and the ``pre`` name llama.cpp knows for
  its pre-tokenizer; a llama2.c tokenizer as ``"llama"`` (SentencePiece) with its scores,
  byte pieces and ``<s>``/``</s>``.

Refused with ``ValueError`` before anything is written: SliceGPT models, other families,
what llama.cpp would compute differently (a sliding window on ``llama``/``qwen2``/``qwen3``,
which llama.cpp does not apply there; a Gemma 3 whose local/global layer pattern, local RoPE
base or query scale differ from the values llama.cpp fixes), tokenizers without a GGUF form
(pass ``tokenizer=False`` to write the weights alone).
"""

from __future__ import annotations

import json
import numbers
import os
import re
from typing import Any

import ml_dtypes
import numpy as np

from .. import _progress
from .._validate import check_bool
from . import _export_io as io
from .export_hf import ExportReport, check_expressible
from .gguf import (
    _BLOCK_NAMES,
    _GLOBAL_NAMES,
    _SANDWICH_NAMES,
    GEMMA3_LOCAL_ROPE_BASE,
    GEMMA3_SWA_PATTERN,
)
from .llama import LlamaModel
from .tokenizer import Llama2cTokenizer

__all__ = ["GGUF_DTYPES", "export_gguf"]

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
_FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}  # llama.cpp's LlamaFileType

# Hugging Face name -> GGUF tensor name: the loader's map (gguf.py), inverted, so the two
# directions cannot drift apart.
_GLOBAL = {hf: g for g, hf in _GLOBAL_NAMES.items()}
_BLOCK = {hf: g for g, hf in _BLOCK_NAMES.items()}
_SANDWICH = {**_BLOCK, **{hf: g for g, hf in _SANDWICH_NAMES.items()}}
_BLOCK_RE = re.compile(r"model\.layers\.(\d+)\.(.+)\Z")

# llama.cpp's names for the pre-tokenizers hf_tokenizer.py builds (and HF tokenizer.json
# files spell the same way)
_LLAMA3_REGEX_START = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
_QWEN2_REGEX_START = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"


def _gguf_name(name: str, sandwich: bool = False) -> str:
    if name in _GLOBAL:
        return _GLOBAL[name]
    m = _BLOCK_RE.match(name)
    names = _SANDWICH if sandwich else _BLOCK
    if m is None or m.group(2) not in names:
        raise ValueError(f"model: weight {name!r} has no GGUF name")
    return f"blk.{int(m.group(1))}.{names[m.group(2)]}"


def gguf_arch(config: Any) -> str:
    """llama.cpp's ``general.architecture`` for ``config``, or ValueError naming what
    llama.cpp would compute differently."""
    c = config
    arch = str(
        {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}.get(
            c.arch, c.arch
        )
    )
    if arch in ("llama", "qwen2", "qwen3"):
        if c.sliding_window:
            raise ValueError(
                f"model: a {c.arch} model with a sliding window ({c.sliding_window} tokens) "
                f"cannot be expressed in GGUF: llama.cpp's {arch!r} architecture has no "
                "sliding-window attention (it would attend every token)"
            )
        return arch
    if arch == "gemma3":
        types = tuple(
            "full_attention" if (i + 1) % GEMMA3_SWA_PATTERN == 0 else "sliding_attention"
            for i in range(c.n_layers)
        )
        problems = []
        if c.sliding_window and c.layer_types != types:
            problems.append(
                f"layer types other than llama.cpp's one global in {GEMMA3_SWA_PATTERN}"
            )
        if c.sliding_window and (c.rope_theta_local or c.rope_theta) != GEMMA3_LOCAL_ROPE_BASE:
            problems.append(f"a local RoPE base other than {GEMMA3_LOCAL_ROPE_BASE:g}")
        scale = (c.dim / c.n_heads) ** -0.5 if c.n_layers == 62 else c.head_dim**-0.5
        if abs(c.attention_scale - scale) > 1e-6 * scale:
            problems.append(f"a query scale other than {scale:.6g} (query_pre_attn_scalar)")
        if problems:
            raise ValueError(
                "model: this Gemma 3 configuration cannot be expressed in GGUF: llama.cpp "
                "fixes what the file does not say, and this model has " + "; ".join(problems)
            )
        return arch
    raise ValueError(f"model: architecture {c.arch!r} has no GGUF export here")


def _import_gguf() -> Any:
    from .gguf import _import_gguf as imp

    return imp()


# -- tokenizer -----------------------------------------------------------------------------


def _pre_name(pre: Any) -> str | None:
    """llama.cpp's ``tokenizer.ggml.pre`` for a tokenizers pre-tokenizer JSON, or None."""
    if not isinstance(pre, dict):
        return None
    kind = pre.get("type")
    if kind == "ByteLevel" and pre.get("use_regex", True):
        return "gpt2"
    if kind != "Sequence":
        return None
    parts = pre.get("pretokenizers") or []
    types = [p.get("type") for p in parts]
    if (
        types == ["Digits", "ByteLevel"]
        and parts[0].get("individual_digits")
        and parts[1].get("use_regex", True)
    ):
        return "smollm"
    if types == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = (parts[0].get("pattern") or {}).get("Regex", "")
        if regex.startswith(_LLAMA3_REGEX_START):
            return "llama-bpe"
        if regex.startswith(_QWEN2_REGEX_START):
            return "qwen2"
    return None


def _byte_level_vocab(backend: Any, vocab_size: int, what: str) -> dict[str, Any]:
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ValueError(
            f"model: tokenizer {what} is not a byte-level BPE (model type "
            f"{model.get('type')!r}); only byte-level BPE and llama2.c tokenizers have a GGUF "
            "form here (pass tokenizer=False to write the weights alone)"
        )
    pre = _pre_name(spec.get("pre_tokenizer"))
    if pre is None:
        raise ValueError(
            f"model: tokenizer {what}: its pre-tokenizer has no llama.cpp name here "
            f"({json.dumps(spec.get('pre_tokenizer'))[:120]}); pass tokenizer=False"
        )
    tokens: list[str | None] = [None] * vocab_size
    types = [1] * vocab_size
    for piece, i in model["vocab"].items():
        if 0 <= int(i) < vocab_size:
            tokens[int(i)] = piece
    for added in spec.get("added_tokens") or []:
        i = int(added["id"])
        if 0 <= i < vocab_size:
            tokens[i] = added["content"]
            types[i] = 3 if added.get("special") else 4
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i] = f"[PAD{i}]"
            types[i] = 5  # unused
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return {"model": "gpt2", "pre": pre, "tokens": tokens, "types": types, "merges": merges}


def _llama2c_vocab(tok: Llama2cTokenizer, vocab_size: int) -> dict[str, Any]:
    tokens, types, scores = [], [], []
    for i in range(tok.vocab_size):
        if i == tok.BOS:
            text, kind = "<s>", 3
        elif i == tok.EOS:
            text, kind = "</s>", 3
        elif i == 0:
            text, kind = "<unk>", 2
        else:
            raw = tok.piece(i)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"model: tokenizer piece {i} ({raw!r}) is not UTF-8") from e
            kind = 6 if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text) else 1
            text = text.replace(" ", "\u2581")
        tokens.append(text)
        types.append(kind)
        scores.append(float(tok.score(i)))
    for i in range(tok.vocab_size, vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(5)
        scores.append(-1e9)
    return {"model": "llama", "tokens": tokens, "types": types, "scores": scores}


def _tokenizer_meta(model: LlamaModel) -> dict[str, Any]:
    tok = model.tokenizer
    if tok is None:
        raise ValueError("model: has no tokenizer to write; pass tokenizer=False")
    vocab = model.config.vocab_size
    source = getattr(tok, "gguf_meta", None)
    if source and len(source.get("tokenizer.ggml.tokens") or ()) == vocab:
        return {"passthrough": source}  # read from a GGUF file: written back as it was
    if isinstance(tok, Llama2cTokenizer):
        out = _llama2c_vocab(tok, vocab)
        out.update(bos=tok.BOS, eos=tok.EOS, unk=0, add_bos=True)
        return out
    backend = getattr(tok, "backend", None)
    if backend is None or not hasattr(backend, "to_str"):
        raise ValueError(
            f"model: its tokenizer {type(tok).__name__} has no GGUF form; pass tokenizer=False"
        )
    out = _byte_level_vocab(backend, vocab, tok.name)
    out.update(
        bos=getattr(tok, "declared_bos_id", tok.bos_id),
        eos=tok.eos_id,
        unk=None,
        add_bos=tok.bos_id is not None,
    )
    return out


def _add_tokenizer(w: Any, meta: dict[str, Any]) -> None:
    if "passthrough" in meta:
        for key, value in meta["passthrough"].items():
            if isinstance(value, (bool, np.bool_)):
                w.add_bool(key, bool(value))
            elif isinstance(value, numbers.Integral):
                w.add_uint32(key, int(value))
            elif isinstance(value, str):
                w.add_string(key, value)
            elif isinstance(value, list) and value:
                w.add_array(key, value)
        return
    w.add_tokenizer_model(meta["model"])
    if "pre" in meta:
        w.add_tokenizer_pre(meta["pre"])
    w.add_token_list(meta["tokens"])
    w.add_token_types(meta["types"])
    if "scores" in meta:
        w.add_token_scores(meta["scores"])
        w.add_add_space_prefix(True)
    if "merges" in meta:
        w.add_token_merges(meta["merges"])
    if meta["bos"] is not None:
        w.add_bos_token_id(int(meta["bos"]))
    if meta["eos"] is not None:
        w.add_eos_token_id(int(meta["eos"]))
    if meta["unk"] is not None:
        w.add_unk_token_id(int(meta["unk"]))
    w.add_add_bos_token(bool(meta["add_bos"]))
    w.add_add_eos_token(False)


# -- tensors -------------------------------------------------------------------------------


def _plan(name: str, shape: tuple[int, ...], dtype: str) -> str:
    """GGUF type of a tensor: norms and biases F32; 2-D weights the requested type (Q8_0
    falls back to F16 when the rows are not whole 32-value blocks)."""
    if len(shape) != 2:
        return "F32"
    if dtype == "q8_0":
        return "Q8_0" if shape[1] % 32 == 0 else "F16"
    return {"f32": "F32", "f16": "F16", "bf16": "BF16"}[dtype]


def _encode(a: np.ndarray, kind: str, gguf: Any) -> np.ndarray:
    if kind == "F32":
        return np.ascontiguousarray(a, dtype=np.float32)
    if kind == "F16":
        return np.ascontiguousarray(a.astype(np.float16))
    if kind == "BF16":
        b = a if a.dtype == ml_dtypes.bfloat16 else a.astype(np.float32).astype(ml_dtypes.bfloat16)
        return np.ascontiguousarray(b).view(np.uint8)
    q: np.ndarray = gguf.quants.quantize(
        np.ascontiguousarray(a, dtype=np.float32), gguf.GGMLQuantizationType.Q8_0
    )
    return q


def _nbytes(shape: tuple[int, ...], kind: str) -> int:
    n = int(np.prod(shape))
    return {"F32": 4 * n, "F16": 2 * n, "BF16": 2 * n}.get(kind, n // 32 * 34)


def export_gguf(
    model: LlamaModel,
    out: str | os.PathLike[str],
    *,
    dtype: str = "f32",
    overwrite: bool = False,
    tokenizer: bool = True,
    name: str | None = None,
    progress: bool | None = None,
) -> ExportReport:
    """Write ``model`` as a GGUF file that llama.cpp runs (and
    :func:`sparseforge.models.load` reads back).

    Parameters
    ----------
    model : LlamaModel
        Its current weights (pruned, compressed: written dense with their zeros).
    out : path of the ``.gguf`` file; its folder must exist; an existing file is refused
        unless ``overwrite=True``. Written to a temporary sibling and renamed: a failure
        leaves nothing behind.
    dtype : {"f32", "f16", "bf16", "q8_0"}
        Storage of the 2-D weights (norms and biases stay F32).
    tokenizer : bool
        Embed the tokenizer (default); False writes the weights and hyper parameters only.
    name : str, optional
        ``general.name`` (default: from the model's family).
    progress : bool or None
        A progress bar over the tensors on stderr (None: when stderr is a terminal or
        ``SPARSEFORGE_PROGRESS=1``; False: quiet).

    Returns
    -------
    ExportReport
        ``files`` has the one file; ``notes`` lists Q8_0 fallbacks.

    Raises
    ------
    ValueError
        Before anything is written: a bad ``out``/``dtype``, a model GGUF cannot express
        (SliceGPT, another family), a tokenizer without a GGUF form.
    ImportError
        Without the ``gguf`` package.
    """
    model = io.check_model(model)
    target = io.check_out_file(out, overwrite)
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    check_bool(tokenizer, "tokenizer")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    _progress.check_progress(progress)
    check_expressible(model)
    gguf = _import_gguf()
    from .gguf import permute_qk

    c = model.config
    arch = gguf_arch(c)
    tok_meta = _tokenizer_meta(model) if tokenizer and model.tokenizer is not None else None

    names = io.export_names(model)
    shapes = dict(c.weight_shapes())
    for n in names:
        if n not in shapes:
            shapes[n] = (c.q_dim,) if ".q_proj." in n else (c.kv_dim,)
    plan = [
        (n, _gguf_name(n, c.sandwich_norms), shapes[n], _plan(n, shapes[n], dtype)) for n in names
    ]
    notes = [
        f"{g}: {s[1]} inputs are not whole Q8_0 blocks of 32; written F16"
        for _, g, s, kind in plan
        if dtype == "q8_0" and len(s) == 2 and kind != "Q8_0"
    ]

    w = gguf.GGUFWriter(None, arch)
    w.add_name(name or f"{c.arch} (sparseforge export)")
    w.add_context_length(c.max_seq_len)
    w.add_embedding_length(c.dim)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.hidden_dim)
    w.add_head_count(c.n_heads)
    w.add_head_count_kv(c.n_kv_heads)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(float(c.rope_theta))
    w.add_layer_norm_rms_eps(float(c.norm_eps))
    if c.head_dim * c.n_heads != c.dim and arch != "gemma3":
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
    if arch == "gemma3":
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        if c.sliding_window:
            w.add_sliding_window(c.sliding_window)
        if c.final_softcap:
            w.add_final_logit_softcapping(float(c.final_softcap))
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(_FILE_TYPE[dtype])
    if dtype == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if tok_meta is not None:
        _add_tokenizer(w, tok_meta)
    gt = gguf.GGMLQuantizationType
    for _, gname, shape, kind in plan:
        raw = None if kind in ("F32", "F16") else getattr(gt, kind)
        np_dtype = {"F32": np.float32, "F16": np.float16}.get(kind, np.uint8)
        nbytes = _nbytes(shape, kind)
        byte_shape = shape if raw is None else (*shape[:-1], nbytes // int(np.prod(shape[:-1])))
        w.add_tensor_info(gname, byte_shape, np.dtype(np_dtype), nbytes, raw_dtype=raw)

    zeros = 0
    bar = _progress.bar(len(plan), "sparseforge export_gguf", unit="tensors", progress=progress)
    with bar, io.atomic_file(target) as tmp:
        try:
            w.write_header_to_file(path=tmp)
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            for hf_name, _, _, kind in plan:
                a = io.hf_order_weight(model, hf_name, None)
                if arch == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                    a = permute_qk(a, c.n_heads)
                elif arch == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                    a = permute_qk(a, c.n_kv_heads)
                if c.norm_offset and a.ndim == 1 and hf_name.endswith("norm.weight"):
                    a = a.astype(np.float32) + np.float32(c.norm_offset)  # llama.cpp's 1 + w
                if io.is_linear(hf_name):
                    zeros += int(a.size - np.count_nonzero(a))
                w.write_tensor_data(_encode(a, kind, gguf))
                bar.update()
        finally:
            w.close()
    report = ExportReport(target, {target.name: target.stat().st_size}, len(plan), zeros)
    report.notes += notes
    return report
