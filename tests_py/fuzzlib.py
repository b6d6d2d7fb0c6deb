"""The API and file fuzzers (docs/robustness.md): hostile arguments for every public entry
point, mutated files for every reader, each case in a worker process with a timeout and a
memory cap, every outcome classified.

Outcomes
--------
refused    TypeError / ValueError (or the library's subclasses) -- the contract
wrong-type any other exception escaped (AttributeError, IndexError, KeyError, ...)
crash      the worker died of a signal (segfault, abort)
hang       no answer within the per-case timeout
memory     MemoryError / bad_alloc under the memory cap: a size reached the allocator
accepted   returned normally. Judged a defect ("silent") only for values that are never
           valid for the argument (a str where a number or array belongs, a dict, an object
           or complex array, NaN) or a mutated file under a checksum; other acceptances
           (a negative int where negatives mean "from the end"...) are counted, not judged.

Cases are enumerated deterministically (a case id names its target, argument and value),
so ``python bench/fuzz.py --case api:123`` replays one. The fast slice in the test suite
runs a fixed stride of the cases; ``bench/fuzz.py`` runs all of them.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
MEMORY_CAP = 3 << 30
CASE_TIMEOUT = 20.0

# ---------------------------------------------------------------------------------- values

NEVER_VALID = "never-valid"


def hostile_values() -> list[tuple[str, Any, bool]]:
    """(label, value, never_valid). Built fresh in the worker (arrays are mutable)."""
    rng = np.random.default_rng(0)
    return [
        ("None", None, False),
        ("str", "x", True),
        ("empty-str", "", False),
        ("dict", {}, True),
        ("list-str", ["a", "b"], True),
        ("True", True, False),
        ("zero", 0, False),
        ("minus-one", -1, False),
        ("two^31", 2**31, False),
        ("two^63", 2**63, False),
        ("ten^30", 10**30, False),
        ("float-half", 0.5, False),
        ("nan", float("nan"), True),
        ("inf", float("inf"), False),
        ("-inf", float("-inf"), False),
        ("arr-0d", np.array(1.0, np.float32), False),
        ("arr-1d", rng.standard_normal(8).astype(np.float32), False),
        ("arr-3d", rng.standard_normal((2, 4, 8)).astype(np.float32), False),
        ("arr-empty", np.zeros((0, 8), np.float32), False),
        ("arr-f64", rng.standard_normal((8, 8)), False),
        ("arr-int", np.arange(64, dtype=np.int64).reshape(8, 8), False),
        ("arr-int-huge", np.full((2, 2), 2**40, np.int64), False),
        ("arr-bool", np.ones((8, 8), bool), False),
        ("arr-complex", np.ones((8, 8), np.complex64), True),
        ("arr-object", np.array([[object()] * 8] * 8, dtype=object), True),
        ("arr-nan", np.full((8, 8), np.nan, np.float32), False),
        ("arr-inf", np.full((8, 8), np.inf, np.float32), False),
        ("arr-noncontig", rng.standard_normal((8, 16)).astype(np.float32)[:, ::2], False),
        ("arr-wide", rng.standard_normal((8, 1 << 12)).astype(np.float32), False),
        ("list-float", [[1.0] * 8] * 8, False),
    ]


# ------------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    make: Callable[[], tuple[Callable[..., Any], list[Any], dict[str, Any]]]
    args: list[str | int] = field(default_factory=list)  # which to mutate (index or kwarg)


def _targets() -> list[Target]:
    import sparseforge as sf
    import sparseforge.models as sm
    from sparseforge import activation, calib, kernels, kv, moe, prune
    from sparseforge import format as fmt
    from sparseforge import runtime as rt
    from sparseforge.models import LlamaConfig, LlamaModel

    rng = np.random.default_rng(1)
    W = rng.standard_normal((8, 8)).astype(np.float32)
    x8 = rng.standard_normal(8).astype(np.float32)
    X = rng.standard_normal((16, 8)).astype(np.float32)
    H = (X.T @ X / 16 + np.eye(8)).astype(np.float32)

    def cache() -> Any:
        c = kv.PagedKVCache(2, 2, 8, page_size=4)
        k = rng.standard_normal((6, 2, 8)).astype(np.float32)
        c.append(0, k, k)
        return c

    def routing() -> Any:
        return moe.route(rng.standard_normal((6, 4)).astype(np.float32), top_k=2)

    def tiny_model() -> Any:
        c = LlamaConfig(
            dim=16,
            hidden_dim=24,
            n_layers=1,
            n_heads=2,
            n_kv_heads=1,
            vocab_size=32,
            max_seq_len=32,
        )
        w = {n: rng.standard_normal(s).astype(np.float32) for n, s in c.weight_shapes().items()}
        return LlamaModel(c, w)

    def session() -> Any:
        s = rt.Session(tiny_model(), 16, num_threads=1)
        s.prefill([1, 2])
        return s

    def fresh_dir() -> Any:
        import tempfile

        root = os.environ.get("SF_FUZZ_SCRATCH")  # run() removes it at the end
        return Path(tempfile.mkdtemp(prefix="export-", dir=root)) / "out"

    def stats() -> Any:
        s = calib.LayerStats(8)
        s.update(X)
        return s

    def hist() -> Any:
        h = activation.Histogram()
        h.update(x8)
        return h

    T = Target
    return [
        T("prune.magnitude", lambda: (prune.magnitude, [W, 0.5], {}), [0, 1, "scope", "pattern"]),
        T("prune.wanda", lambda: (prune.wanda, [W, np.ones(8, np.float32), 0.5], {}), [0, 1, 2]),
        T(
            "prune.sparsegpt",
            lambda: (prune.sparsegpt, [W, H, 0.5], {}),
            [0, 1, 2, "block_size", "percdamp"],
        ),
        T("prune.obd", lambda: (prune.obd, [W, H, 0.5], {}), [1, 2]),
        T("prune.reconstruct", lambda: (prune.reconstruct, [W, H, W > 0], {}), [1, 2, "method"]),
        T(
            "prune.block_magnitude",
            lambda: (prune.block_magnitude, [W, 0.5], {"block": 4}),
            [0, 1, "block"],
        ),
        T("prune.check_pattern", lambda: (prune.check_pattern, [W, "2:4"], {}), [0, 1]),
        T("prune.sparsity", lambda: (prune.sparsity, [W], {}), [0, "num_threads"]),
        T("prune.apply_mask_", lambda: (prune.apply_mask_, [W.copy(), W > 0], {}), [0, 1]),
        T("calib.LayerStats", lambda: (calib.LayerStats, [8], {}), [0, "hessian"]),
        T("calib.LayerStats.update", lambda: (stats().update, [X], {}), [0, "num_threads"]),
        T("calib.LayerStats.merge", lambda: (stats().merge, [stats()], {}), [0]),
        T(
            "format.NMTensor.from_dense",
            lambda: (fmt.NMTensor.from_dense, [W], {"n": 2, "m": 4}),
            [0, "n", "m"],
        ),
        T("format.BitmapTensor.from_dense", lambda: (fmt.BitmapTensor.from_dense, [W], {}), [0]),
        T("kernels.gemv", lambda: (kernels.gemv, [W, x8], {}), [0, 1, "out", "num_threads"]),
        T("kernels.gemm", lambda: (kernels.gemm, [W, X.T.copy()], {}), [0, 1, "out"]),
        T(
            "kernels.gemv_sparse_input",
            lambda: (kernels.gemv_sparse_input, [W, x8, 0.5], {}),
            [0, 1, 2],
        ),
        T("kernels.gemv_rows", lambda: (kernels.gemv_rows, [W, x8, np.arange(3)], {}), [0, 1, 2]),
        T(
            "kv.PagedKVCache",
            lambda: (kv.PagedKVCache, [2, 2, 8], {}),
            [0, 1, 2, 3, "dtype", "value_dim", "rope_mode", "rope_theta", "page_bounds"],
        ),
        T(
            "kv.PagedKVCache.append",
            lambda: (
                cache().append,
                [0, np.ones((2, 2, 8), np.float32), np.ones((2, 2, 8), np.float32)],
                {},
            ),
            [0, 1, 2, 3],
        ),
        T("kv.PagedKVCache.evict", lambda: (cache().evict, [0, 0, [1, 2]], {}), [0, 1, 2]),
        T("kv.PagedKVCache.keep", lambda: (cache().keep, [0, 0, [1, 2]], {}), [0, 1, 2]),
        T("kv.PagedKVCache.gather", lambda: (cache().gather, [0, 1], {}), [0, 1]),
        T(
            "kv.PagedKVCache.set_scores",
            lambda: (cache().set_scores, [0, 1, np.ones(6)], {}),
            [0, 1, 2],
        ),
        T(
            "kv.decode_attention",
            lambda: (kv.decode_attention, [cache(), 0, np.ones((4, 8), np.float32)], {}),
            [0, 1, 2, "pages", "group_reduce", "scale", "query_position", "return_mass"],
        ),
        T(
            "kv.quest_select",
            lambda: (kv.quest_select, [cache(), 0, np.ones((4, 8), np.float32), 1], {}),
            [0, 1, 2, 3],
        ),
        T(
            "kv.quest_page_scores",
            lambda: (kv.quest_page_scores, [cache(), 0, np.ones((4, 8), np.float32)], {}),
            [1, 2],
        ),
        T(
            "kv.window_attention_mass",
            lambda: (
                kv.window_attention_mass,
                [np.ones((6, 2, 8), np.float32), np.ones((6, 2, 8), np.float32), 2],
                {},
            ),
            [0, 1, 2],
        ),
        T(
            "kv.apply_rope",
            lambda: (kv.apply_rope, [np.ones((3, 8), np.float32), [0, 1, 2]], {}),
            [0, 1, "rope_style", "rope_theta"],
        ),
        T(
            "kv.attention_metrics",
            lambda: (
                kv.attention_metrics,
                [
                    np.ones((2, 8), np.float32),
                    np.ones((6, 8), np.float32),
                    np.ones((6, 8), np.float32),
                    np.ones(6, bool),
                ],
                {},
            ),
            [0, 1, 2, 3, "scale"],
        ),
        T(
            "kv.page_metrics",
            lambda: (
                kv.page_metrics,
                [np.ones((2, 8), np.float32), np.ones((1, 8, 8), np.float32), np.array([[0]]), 4],
                {},
            ),
            [0, 1, 2, 3],
        ),
        T(
            "kv.mla_absorb_query",
            lambda: (
                kv.mla_absorb_query,
                [np.ones((2, 4)), np.ones((2, 2)), np.ones((2, 4, 6))],
                {},
            ),
            [0, 1, 2],
        ),
        T(
            "kv.mla_output",
            lambda: (kv.mla_output, [np.ones((2, 6)), np.ones((2, 4, 6))], {}),
            [0, 1],
        ),
        T("kv.make_policy", lambda: (kv.make_policy, ["h2o", 8], {}), [0, 1]),
        T(
            "kv.policy.prefill",
            lambda: (
                kv.make_policy("snapkv", 4).prefill,
                [
                    cache(),
                    0,
                    np.ones((6, 2, 8), np.float32),
                    np.ones((6, 2, 8), np.float32),
                    np.ones((6, 4, 8), np.float32),
                ],
                {},
            ),
            [0, 1, 2, 3, 4],
        ),
        T("kv.pyramid_budgets", lambda: (kv.pyramid_budgets, [4, 100, 32], {}), [0, 1, 2, "beta"]),
        T(
            "moe.route",
            lambda: (moe.route, [np.ones((6, 4), np.float32)], {"top_k": 2}),
            [0, "top_k"],
        ),
        T(
            "moe.Router.assign",
            lambda: (
                moe.Router().assign,
                [np.array([[0, 1], [2, 3]]), np.ones((2, 2), np.float32)],
                {},
            ),
            [0, 1, "num_experts"],
        ),
        T(
            "moe.dispatch",
            lambda: (moe.dispatch, [np.ones((6, 8), np.float32), routing()], {}),
            [0, 1, "layout"],
        ),
        T(
            "moe.combine",
            lambda: (moe.combine, [np.ones((12, 8), np.float32), routing()], {}),
            [0, 1, "out"],
        ),
        T("moe.expert_capacity", lambda: (moe.expert_capacity, [16, 2, 4, 1.0], {}), [0, 1, 2, 3]),
        T(
            "moe.load_balancing_loss",
            lambda: (moe.load_balancing_loss, [np.ones((6, 4), np.float32)], {}),
            [0, "kind", "top_k", "alpha"],
        ),
        T("moe.z_loss", lambda: (moe.z_loss, [np.ones((6, 4), np.float32)], {}), [0, "alpha"]),
        T("moe.jitter", lambda: (moe.jitter, [np.ones((6, 4), np.float32), 0.1], {}), [0, 1]),
        T("activation.Histogram.update", lambda: (hist().update, [x8], {}), [0]),
        T("activation.Histogram.threshold", lambda: (hist().threshold, [0.5], {}), [0, 1]),
        T("activation.Histogram.sparsity_at", lambda: (hist().sparsity_at, [0.5], {}), [0]),
        T("activation.Histogram.merge", lambda: (hist().merge, [hist()], {}), [0]),
        T(
            "activation.fit_predictor",
            lambda: (activation.fit_predictor, [X, X], {"rank": 2}),
            [0, 1, "rank", "ridge", "keep"],
        ),
        T(
            "activation.Thresholds",
            lambda: (activation.Thresholds, ["teal", {}, {}, 0.5, "uniform-empirical", {}], {}),
            [0, 1, 2, 3, 4, 5],
        ),
        T(
            "models.LlamaConfig",
            lambda: (
                LlamaConfig,
                [],
                {
                    "dim": 16,
                    "hidden_dim": 24,
                    "n_layers": 1,
                    "n_heads": 2,
                    "n_kv_heads": 1,
                    "vocab_size": 32,
                    "max_seq_len": 32,
                },
            ),
            [
                "dim",
                "n_layers",
                "n_heads",
                "vocab_size",
                "norm_eps",
                "rope_theta",
                "head_dim",
                "residual_dims",
            ],
        ),
        T(
            "models.LlamaModel.weight",
            lambda: (tiny_model().weight, ["model.norm.weight"], {}),
            [0],
        ),
        T(
            "models.LlamaModel.set_weight",
            lambda: (tiny_model().set_weight, ["model.norm.weight", np.ones(16, np.float32)], {}),
            [0, 1],
        ),
        T("models.LlamaModel.forward", lambda: (tiny_model().forward, [[1, 2, 3]], {}), [0]),
        T("sf.threads", lambda: (sf.prune.sparsity, [W], {"num_threads": 1}), ["num_threads"]),
        # the runtime (sf.runtime: the core's decode loop) and the exports
        T(
            "runtime.Session",
            lambda: (rt.Session, [tiny_model(), 16], {"num_threads": 1}),
            [1, "num_threads"],
        ),
        T("runtime.Session.prefill", lambda: (session().prefill, [[1, 2, 3]], {}), [0]),
        T("runtime.Session.step", lambda: (session().step, [3], {}), [0]),
        T(
            "runtime.Session.generate",
            lambda: (
                session().generate,
                [[1, 2], 4],
                {"temperature": 0.5, "top_k": 4, "top_p": 0.9, "seed": 1, "stop": [7]},
            ),
            [0, 1, "temperature", "top_k", "top_p", "seed", "stop"],
        ),
        T(
            "runtime.compile_model",
            lambda: (rt.compile_model, [tiny_model()], {"thresholds": None}),
            [0, "thresholds"],
        ),
        T(
            "models.export_hf",
            lambda: (
                sm.export_hf,
                [tiny_model(), fresh_dir()],
                {"dtype": None, "max_shard_size": "1MB", "tokenizer": False},
            ),
            [0, "dtype", "max_shard_size", "overwrite", "tokenizer", "compression"],
        ),
        T(
            "models.export_gguf",
            lambda: (
                sm.export_gguf,
                [tiny_model(), fresh_dir().with_suffix(".gguf")],
                {"tokenizer": False},
            ),
            [0, "dtype", "overwrite", "tokenizer", "name"],
        ),
    ]


# --------------------------------------------------------------------------------- files


def _file_formats(d: Path) -> dict[str, tuple[Path, str, bool]]:
    """name -> (seed file, loader expression over `path`, checksummed)."""
    import sparseforge as sf
    from sparseforge import _container
    from sparseforge.models import LlamaConfig, LlamaModel, save

    rng = np.random.default_rng(3)
    out: dict[str, tuple[Path, str, bool]] = {}
    W = rng.standard_normal((8, 16)).astype(np.float32)
    p = d / "c.sft"
    _container.save(
        p,
        {
            "w": W,
            "nm": sf.format.NMTensor.from_dense(
                np.where(np.arange(16) % 2, W, 0).astype(np.float32), n=2, m=4
            ),
            "b": np.ones(3, bool),
        },
    )
    out["container"] = (p, "_container.load(path)", True)
    c = LlamaConfig(
        dim=16, hidden_dim=24, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=32, max_seq_len=32
    )
    w = {n: rng.standard_normal(s).astype(np.float32) for n, s in c.weight_shapes().items()}
    p = d / "m.sfm"
    save(LlamaModel(c, w), p)
    out["saved-model"] = (p, "load_saved(path)", True)
    st = sf.calib.LayerStats(8)
    st.update(rng.standard_normal((4, 8)).astype(np.float32))
    p = d / "s.npz"
    st.save(p)
    out["stats-npz"] = (p, "sf.calib.LayerStats.load(path)", True)
    th = sf.activation.Thresholds(
        "teal", {"a.weight": 0.5}, {"a.weight": 0.5}, 0.5, "uniform-empirical", {"n_layers": 1}
    )
    p = d / "t.json"
    th.save(p)
    out["thresholds-json"] = (p, "sf.activation.Thresholds.load(path)", False)
    # llama2.c legacy export of the same tiny model
    import struct

    from sparseforge.models.llama2c import _arrays, _header_tuple

    cfg2 = LlamaConfig(
        dim=16,
        hidden_dim=24,
        n_layers=1,
        n_heads=2,
        n_kv_heads=1,
        vocab_size=32,
        max_seq_len=32,
        tied_embeddings=True,
    )
    p = d / "m.bin"
    with open(p, "wb") as f:
        f.write(struct.pack("<7i", *_header_tuple(cfg2)))
        for _, shape in _arrays(cfg2):
            f.write(rng.standard_normal(shape).astype("<f4").tobytes())
    out["llama2c"] = (p, "load_llama2c(path)", False)
    try:
        import safetensors.numpy as stn

        hf = d / "hf"
        hf.mkdir()
        (hf / "config.json").write_text(
            json.dumps(
                {
                    "model_type": "llama",
                    "hidden_size": 16,
                    "intermediate_size": 24,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "num_key_value_heads": 1,
                    "vocab_size": 32,
                    "max_position_embeddings": 32,
                }
            )
        )
        stn.save_file(w, str(hf / "model.safetensors"))
        out["hf-config"] = (hf / "config.json", "load_hf(path.parent, tokenizer=False)", False)
        out["hf-safetensors"] = (
            hf / "model.safetensors",
            "load_hf(path.parent, tokenizer=False)",
            False,
        )
    except ImportError:  # pragma: no cover
        pass
    try:
        import gguf  # noqa: F401

        sys.path.insert(0, str(HERE))
        gg = d / "m.gguf"
        import gguf as g

        wr = g.GGUFWriter(str(gg), "llama")
        wr.add_block_count(1)
        wr.add_context_length(32)
        wr.add_embedding_length(16)
        wr.add_feed_forward_length(24)
        wr.add_head_count(2)
        wr.add_head_count_kv(1)
        wr.add_layer_norm_rms_eps(1e-5)
        names = {
            "model.embed_tokens.weight": "token_embd.weight",
            "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight",
        }
        blk = {
            "input_layernorm.weight": "attn_norm.weight",
            "self_attn.q_proj.weight": "attn_q.weight",
            "self_attn.k_proj.weight": "attn_k.weight",
            "self_attn.v_proj.weight": "attn_v.weight",
            "self_attn.o_proj.weight": "attn_output.weight",
            "post_attention_layernorm.weight": "ffn_norm.weight",
            "mlp.gate_proj.weight": "ffn_gate.weight",
            "mlp.up_proj.weight": "ffn_up.weight",
            "mlp.down_proj.weight": "ffn_down.weight",
        }
        for n, a in w.items():
            gname = names.get(n) or "blk.0." + blk[n.split(".", 3)[3]]
            wr.add_tensor(gname, a)
        wr.write_header_to_file()
        wr.write_kv_data_to_file()
        wr.write_tensors_to_file()
        wr.close()
        out["gguf"] = (gg, "load_gguf(path, tokenizer=False)", False)
    except ImportError:  # pragma: no cover
        pass
    return out


def _mutate(data: bytes, k: int) -> tuple[str, bytes]:
    """The k-th deterministic mutation of a file."""
    rng = np.random.default_rng(k)
    n = len(data)
    kind = k % 6
    b = bytearray(data)
    if kind == 0:
        cut = int(rng.integers(0, n))
        return f"truncate@{cut}", bytes(b[:cut])
    if kind == 1:
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, n))
            b[i] ^= 1 << int(rng.integers(0, 8))
        return "bitflip", bytes(b)
    if kind == 2:  # an extreme integer where a count/size/offset may live (the header)
        i = int(rng.integers(0, min(n - 8, 512))) if n > 8 else 0
        val = [2**64 - 1, 2**63, 2**40, 0, 2**32 + 1, 10**12][int(rng.integers(0, 6))]
        b[i : i + 8] = val.to_bytes(8, "little")
        return f"int64@{i}={val}", bytes(b)
    if kind == 3:
        i = int(rng.integers(0, n))
        return f"insert@{i}", bytes(b[:i] + rng.integers(0, 256, 16, np.uint8).tobytes() + b[i:])
    if kind == 4:  # a digit in the text header changed (JSON counts, shapes, offsets)
        digits = [i for i in range(min(n, 4096)) if 48 <= b[i] <= 57]
        if digits:
            i = digits[int(rng.integers(0, len(digits)))]
            b[i : i + 1] = str(int(rng.integers(0, 10))).encode() * int(rng.integers(1, 12))
        return "digits", bytes(b)
    i = int(rng.integers(0, max(n - 64, 1)))
    b[i : i + 64] = b"\xff" * len(b[i : i + 64])
    return f"ff64@{i}", bytes(b)


# ------------------------------------------------------------------------------ worker


def _classify_exc(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return "memory"
    if isinstance(e, (TypeError, ValueError)):
        return "refused"
    try:
        import sparseforge as sf

        if isinstance(e, sf.NumericalError):
            return "refused"
    except ImportError:  # pragma: no cover
        pass
    return "wrong-type"


def api_cases() -> list[tuple[int, int, str, Any]]:
    """(case id, target index, target name, argument)."""
    out = []
    n_vals = len(hostile_values())
    for ti, t in enumerate(_targets()):
        for a in t.args:
            for vi in range(n_vals):
                out.append((len(out), ti, t.name, (a, vi)))
    return out


#: Acceptances that are the documented behaviour, not defects: (target, argument, value).
DOCUMENTED = {
    # "any other non-empty numeric array is counted with numpy" (prune.sparsity docstring)
    ("prune.sparsity", 0, "arr-complex"),
    # empty tables and a free-form method label are valid Thresholds
    ("activation.Thresholds", 1, "dict"),
    ("activation.Thresholds", 2, "dict"),
    ("activation.Thresholds", 4, "str"),
    ("activation.Thresholds", 5, "dict"),
    # export_gguf's name is a free-form label written to general.name
    ("models.export_gguf", "name", "str"),
}


def _run_api_case(targets: list[Target], ti: int, a: str | int, vi: int) -> dict[str, Any]:
    label, value, never = hostile_values()[vi]
    fn, args, kwargs = targets[ti].make()
    args, kwargs = list(args), dict(kwargs)
    if isinstance(a, int):
        if a >= len(args):
            return {"outcome": "skip"}
        args[a] = value
    else:
        kwargs[a] = value
    try:
        fn(*args, **kwargs)
    except BaseException as e:
        out = _classify_exc(e)
        return {"outcome": out, "exc": f"{type(e).__name__}: {str(e)[:160]}", "value": label}
    if never and (targets[ti].name, a, label) not in DOCUMENTED:
        return {"outcome": "silent", "value": label}
    return {"outcome": "accepted", "value": label}


def _run_file_case(
    fmt: dict[str, tuple[Path, str, bool]], name: str, k: int, work: Path
) -> dict[str, Any]:
    import sparseforge as sf  # noqa: F401 - used by the loader expressions
    from sparseforge import _container  # noqa: F401
    from sparseforge.models import load_llama2c, load_saved  # noqa: F401
    from sparseforge.models.gguf import load_gguf  # noqa: F401
    from sparseforge.models.hf import load_hf  # noqa: F401

    seed, expr, checked = fmt[name]
    path = seed
    reference = _fingerprint(eval(expr, {**globals(), **locals()}))
    how, data = _mutate(seed.read_bytes(), k)
    if seed.parent.name == "hf":
        tgt = work / f"hf{k}"
        tgt.mkdir(exist_ok=True)
        for f in seed.parent.iterdir():
            (tgt / f.name).write_bytes(f.read_bytes())
        path = tgt / seed.name
    else:
        path = work / f"{k}{seed.suffix}"
    path.write_bytes(data)
    try:
        got = _fingerprint(eval(expr, {**globals(), **locals()}))
    except BaseException as e:
        return {
            "outcome": _classify_exc(e),
            "exc": f"{type(e).__name__}: {str(e)[:160]}",
            "value": how,
        }
    finally:
        if path.is_file():
            path.unlink()
    # under a checksum, a mutation may only be accepted if what loads is what was saved
    # (a flipped zip timestamp is harmless; a changed value is not)
    return {"outcome": "silent" if checked and got != reference else "accepted", "value": how}


def _fingerprint(obj: Any) -> str:
    """A digest of what a loader returned: arrays, compressed tensors, statistics, models."""
    import hashlib

    h = hashlib.sha256()

    def add(x: Any) -> None:
        if hasattr(x, "to_dense"):
            x = x.to_dense()
        if isinstance(x, np.ndarray):
            h.update(str((x.dtype, x.shape)).encode())
            h.update(np.ascontiguousarray(x).tobytes())
        else:
            h.update(repr(x).encode())

    if isinstance(obj, dict):
        for k in sorted(obj):
            h.update(k.encode())
            add(obj[k])
    elif hasattr(obj, "_impl") and hasattr(obj, "has_hessian"):  # LayerStats
        add(obj.tokens)
        add(obj._impl.sum_squares())
        add(obj._impl.xtx_lower())
    elif hasattr(obj, "weight") and hasattr(obj, "config"):  # LlamaModel
        add(obj.config)
        for n in sorted(obj.config.weight_shapes()):
            add(obj.weight(n))
    elif hasattr(obj, "to_json"):
        add(obj.to_json())
    else:
        add(obj)
    return h.hexdigest()


def worker_main(kind: str, ids: list[int], seeds_dir: str | None) -> None:  # pragma: no cover
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    import warnings

    warnings.simplefilter("ignore")
    if kind == "api":
        cases = api_cases()
        targets = _targets()
        for i in ids:
            _, ti, _, (a, vi) = cases[i]
            try:
                r = _run_api_case(targets, ti, a, vi)
            except BaseException as e:
                r = {"outcome": _classify_exc(e), "exc": f"setup {type(e).__name__}: {e}"}
            print(json.dumps({"id": i, **r}), flush=True)
    else:
        d = Path(seeds_dir or ".")
        fmt = _file_formats_cached(d)
        names = sorted(fmt)
        per = FILE_MUTATIONS_MAX
        for i in ids:
            name, k = names[i // per], i % per
            try:
                r = _run_file_case(fmt, name, k, d / "work")
            except BaseException as e:
                r = {"outcome": _classify_exc(e), "exc": f"setup {type(e).__name__}: {e}"}
            print(json.dumps({"id": i, **r}), flush=True)


FILE_MUTATIONS_MAX = 2000


def _file_formats_cached(d: Path) -> dict[str, tuple[Path, str, bool]]:
    marker = d / "formats.json"
    if marker.exists():
        raw = json.loads(marker.read_text())
        return {k: (Path(v[0]), v[1], v[2]) for k, v in raw.items()}
    (d / "work").mkdir(parents=True, exist_ok=True)
    fmt = _file_formats(d)
    marker.write_text(json.dumps({k: [str(v[0]), v[1], v[2]] for k, v in fmt.items()}))
    return fmt


def file_case_ids(d: Path, per_format: int, stride: int = 1) -> tuple[list[int], list[str]]:
    names = sorted(_file_formats_cached(d))
    ids = [
        fi * FILE_MUTATIONS_MAX + k
        for fi in range(len(names))
        for k in range(0, per_format, stride)
    ]
    return ids, names


# ------------------------------------------------------------------------------ driver


@dataclass
class Report:
    results: dict[int, dict[str, Any]] = field(default_factory=dict)

    def counts(self) -> Counter[str]:
        return Counter(r["outcome"] for r in self.results.values())

    def defects(self) -> list[tuple[int, dict[str, Any]]]:
        bad = ("wrong-type", "crash", "hang", "memory", "silent")
        return [(i, r) for i, r in sorted(self.results.items()) if r["outcome"] in bad]


def run(
    kind: str,
    ids: list[int],
    *,
    seeds_dir: str | None = None,
    workers: int = 2,
    timeout: float = CASE_TIMEOUT,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Run the cases in worker processes (``workers`` at a time); a worker that crashes or
    stops answering is replaced and its current case recorded as crash / hang."""
    import shutil
    import tempfile

    scratch = tempfile.mkdtemp(prefix="sf-fuzz-")  # the export targets write below it
    try:
        return _run(kind, ids, seeds_dir, workers, timeout, log, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(
    kind: str,
    ids: list[int],
    seeds_dir: str | None,
    workers: int,
    timeout: float,
    log: Callable[[str], None] | None,
    scratch: str,
) -> Report:
    rep = Report()
    pending = list(ids)
    chunk = max(1, len(pending) // (workers * 4) + 1)
    queue = [pending[i : i + chunk] for i in range(0, len(pending), chunk)]
    running: list[tuple[subprocess.Popen[str], list[int], float]] = []
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, SF_FUZZ_SCRATCH=scratch)

    def start(batch: list[int]) -> None:
        code = (
            f"import sys; sys.path.insert(0, {str(HERE)!r}); import fuzzlib; "
            f"fuzzlib.worker_main({kind!r}, {batch!r}, {seeds_dir!r})"
        )
        p = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        running.append((p, batch, time.monotonic()))

    while queue or running:
        while queue and len(running) < workers:
            start(queue.pop(0))
        streams = {p.stdout.fileno(): (p, b, t) for p, b, t in running if p.stdout}
        ready, _, _ = select.select(list(streams), [], [], 1.0)
        now = time.monotonic()
        for p, batch, t0 in list(running):
            assert p.stdout is not None
            if p.stdout.fileno() in ready:
                line = p.stdout.readline()
                if line:
                    r = json.loads(line)
                    rep.results[r.pop("id")] = r
                    running[running.index((p, batch, t0))] = (p, batch, now)
                    continue
                p.wait()
                running.remove((p, batch, t0))
                rest = [i for i in batch if i not in rep.results]
                if rest:  # died mid-batch: the first unanswered case is the culprit
                    sig = p.returncode
                    rep.results[rest[0]] = {
                        "outcome": "crash" if sig and sig < 0 else "memory" if sig else "crash",
                        "exc": f"exit {sig}",
                    }
                    if rest[1:]:
                        queue.insert(0, rest[1:])
                p.stdout.close()
            elif now - t0 > timeout:
                p.kill()
                p.wait()
                p.stdout.close()
                running.remove((p, batch, t0))
                rest = [i for i in batch if i not in rep.results]
                if rest:
                    rep.results[rest[0]] = {"outcome": "hang", "exc": f"> {timeout:.0f} s"}
                    if rest[1:]:
                        queue.insert(0, rest[1:])
        if log and len(rep.results) % 500 == 0:
            log(f"{len(rep.results)}/{len(ids)}")
    return rep


def describe_api(i: int) -> str:
    _, _, name, (a, vi) = api_cases()[i]
    return f"{name} arg {a!r} = {hostile_values()[vi][0]}"
