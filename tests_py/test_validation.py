"""One error discipline (python/sparseforge/_validate.py): the cases the fuzzer found and
the issue listed, each now a TypeError/ValueError naming the argument."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import sparseforge as sf
from sparseforge import _validate as v
from sparseforge import kv, moe
from sparseforge.models import LlamaConfig, LlamaModel


def test_checks_name_the_argument_and_pick_the_type() -> None:
    with pytest.raises(TypeError, match="flag: expected a bool"):
        v.check_bool("yes", "flag")
    with pytest.raises(TypeError, match="n: expected an int"):
        v.check_int(1.0, "n")
    with pytest.raises(TypeError, match="n: expected an int"):
        v.check_int(True, "n")
    with pytest.raises(ValueError, match=r"n: expected an int in \[1, 4\], got 5"):
        v.check_int(5, "n", 1, 4)
    with pytest.raises(ValueError, match="x: expected a finite number"):
        v.check_number(float("nan"), "x", finite=False)
    assert v.check_number(float("inf"), "x", finite=False) == float("inf")
    with pytest.raises(ValueError, match=r"x: expected a number > 0"):
        v.check_number(0, "x", 0.0, lo_open=True)
    with pytest.raises(ValueError, match="mode: expected one of"):
        v.check_choice("", "mode", ("a", "b"))
    with pytest.raises(TypeError, match="a: expected a numeric array, got dtype complex"):
        v.check_array(np.ones(3, complex), "a")
    with pytest.raises(TypeError, match="a: expected a numeric array, got dtype object"):
        v.check_array(np.array([object()]), "a")
    with pytest.raises(ValueError, match="a: expected a 2-D array"):
        v.check_array(np.ones(3), "a", ndim=2)
    with pytest.raises(ValueError, match="a: contains NaN"):
        v.check_array([1.0, np.nan], "a", finite=True)
    e = v.UnknownNameError("name: 'x' is not known")
    assert isinstance(e, KeyError)
    assert isinstance(e, ValueError)
    assert str(e) == "name: 'x' is not known"


def test_router_ids_are_range_checked_before_narrowing() -> None:
    r = moe.Router()
    w = np.ones((1, 2), np.float32)
    with pytest.raises(ValueError, match="expert_ids: expected values in"):
        r.assign(np.array([[2**32 + 1, 0]]), w, num_experts=4)
    with pytest.raises(ValueError, match="expert_ids: expected values in"):
        r.assign(np.array([[-1, 0]]), w, num_experts=4)
    with pytest.raises(ValueError, match="num_experts"):
        r.assign(np.array([[0, 1]]), w, num_experts=2**40)
    # in range: unchanged behaviour
    got = r.assign(np.array([[3, 1]], np.int64), w, num_experts=4)
    np.testing.assert_array_equal(got.expert_ids, [[3, 1]])


def test_dispatch_and_combine_refuse_foreign_or_tampered_routing() -> None:
    rng = np.random.default_rng(0)
    routing = moe.route(rng.standard_normal((6, 4)).astype(np.float32), top_k=2)
    x = rng.standard_normal((6, 8)).astype(np.float32)
    for bad in (None, {}, "routing", 3):
        with pytest.raises(TypeError, match="routing: expected a RoutingResult"):
            moe.dispatch(x, bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="routing: expected a RoutingResult"):
            moe.combine(x, bad)  # type: ignore[arg-type]
    import dataclasses

    huge = dataclasses.replace(routing, capacity=10**12)  # would ask for E * 10^12 * D floats
    with pytest.raises(ValueError, match=r"routing\.capacity"):
        moe.dispatch(x, huge, layout="padded")
    wild = dataclasses.replace(routing, token_of=np.full_like(routing.token_of, 10**6))
    with pytest.raises(ValueError, match=r"routing\.token_of"):
        moe.dispatch(x, wild)
    # the untampered result still round-trips: dispatch then combine of identity experts
    y = moe.combine(moe.dispatch(x, routing), routing)
    want = (routing.weights * routing.kept).sum(1, keepdims=True) * x
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_kv_helpers_refuse_wrong_objects_and_shapes() -> None:
    q = np.ones((4, 8), np.float32)
    for bad in (None, "cache", {}, 0):
        with pytest.raises(TypeError, match=r"cache: expected a sparseforge\.kv\.PagedKVCache"):
            kv.quest_select(bad, 0, q, 1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="cache"):
            kv.make_policy("h2o", 8).prefill(bad, 0, q, q, q)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="q_nope: expected a 2-D"):
        kv.mla_absorb_query(np.ones(4), np.ones((1, 2)), np.ones((1, 4, 6)))
    with pytest.raises(TypeError, match="out_latent: expected an array"):
        kv.mla_output(None, np.ones((2, 4, 6)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="K: expected a 3-D"):
        kv.page_metrics(q, np.ones((8, 8)), np.array([[0]]), 4)
    with pytest.raises(ValueError, match="rope_theta"):
        kv.apply_rope(np.ones((2, 8), np.float32), [0, 1], rope_theta=float("nan"))
    c = kv.PagedKVCache(1, 2, 8)
    with pytest.raises(ValueError, match="page_budget"):
        kv.quest_select(c, 0, q, 2**31)
    with pytest.raises(TypeError, match="return_mass: expected a bool"):
        kv.decode_attention(c, 0, q, return_mass="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_layers"):
        kv.pyramid_budgets(2**31, 100, 32)


def test_activation_objects_validate_their_fields() -> None:
    with pytest.raises(ValueError, match="kind"):
        sf.activation.Thresholds("", {}, {}, 0.5, "m", {})
    with pytest.raises(ValueError, match="target"):
        sf.activation.Thresholds("teal", {}, {}, float("nan"), "m", {})
    with pytest.raises(ValueError, match="values"):
        sf.activation.Thresholds("teal", {"a": -1.0}, {}, 0.5, "m", {})
    X = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="rank"):
        sf.activation.fit_predictor(X, X, rank=2**63)
    with pytest.raises(TypeError, match="X: expected an array"):
        sf.activation.fit_predictor(None, X, rank=1)  # type: ignore[arg-type]
    p = sf.activation.fit_predictor(X, X, rank=2)
    for bad in (np.ones((4, 2), complex), np.full((4, 2), np.nan, np.float32)):
        with pytest.raises((TypeError, ValueError), match="A"):
            sf.activation.LayerPredictor(bad, p.a, p.B, 2)
    h = sf.activation.Histogram()
    h.update(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="threshold"):
        h.sparsity_at(float("nan"))


def test_model_weight_names() -> None:
    c = LlamaConfig(
        dim=16, hidden_dim=24, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=32, max_seq_len=32
    )
    rng = np.random.default_rng(0)
    m = LlamaModel(
        c, {n: rng.standard_normal(s).astype(np.float32) for n, s in c.weight_shapes().items()}
    )
    with pytest.raises(ValueError, match="name: 'nope' is not a weight"):
        m.weight("nope")
    with pytest.raises(KeyError):  # still a KeyError for existing callers
        m.set_weight("nope", np.ones(3, np.float32))
    with pytest.raises(TypeError, match="name: expected a weight name"):
        m.weight(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "module",
    [
        "sparseforge.prune",
        "sparseforge.kernels",
        "sparseforge.format",
        "sparseforge.kv",
        "sparseforge.moe",
        "sparseforge.activation",
        "sparseforge.calib",
        "sparseforge.structured",
        "sparseforge.models",
    ],
)
def test_tab_completion_shows_the_api_only(module: str) -> None:
    mod = importlib.import_module(module)
    names = dir(mod)
    assert names == sorted(mod.__all__)
    assert not {"np", "Any", "cast", "annotations", "numbers"} & set(names)


def test_llama2c_tokenizer_piece_out_of_range(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import struct

    from sparseforge.models import Llama2cTokenizer

    raw = struct.pack("<i", 8)
    for i, piece in enumerate([b"<unk>", b"<s>", b"</s>", b"a"]):
        raw += struct.pack("<fi", float(i), len(piece)) + piece
    (tmp_path / "tok.bin").write_bytes(raw)
    tok = Llama2cTokenizer(tmp_path / "tok.bin", 4)
    assert tok.piece(3) == b"a"
    for bad in (4, -1, 2**63):
        with pytest.raises(ValueError, match=r"token: expected an id in \[0, 4\)"):
            tok.piece(bad)
    with pytest.raises(TypeError, match="token: expected an int"):
        tok.score("a")  # type: ignore[arg-type]


def test_generate_stop_must_be_token_ids() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from sparseforge import runtime as rt
    from tinymodels import random_model

    s = rt.Session(random_model(0), 16, num_threads=1)
    for bad, exc in (({}, TypeError), ("ab", TypeError), ([1.5], TypeError), ([-1], ValueError)):
        with pytest.raises(exc, match="stop"):
            s.generate([1, 2], 2, stop=bad)
    assert len(s.generate([1, 2], 2, stop=np.array([31]))) <= 2
