"""sparseforge.moe against independent oracles: hand-worked cases, numpy float64 ports of
HF Mixtral / Switch / DeepSeek-V3 / megablocks formulas, and the HF implementations
themselves when torch + transformers are installed."""

from __future__ import annotations

import threading
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import sparseforge as sf
from sparseforge import moe

# ---------------------------------------------------------------------------------------
# numpy float64 references


def ref_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def ref_topk(values: np.ndarray, k: int) -> np.ndarray:
    """Per row: indices of the k largest, descending, ties by lower index."""
    out = np.empty((values.shape[0], k), np.int64)
    for t, row in enumerate(values):
        order = np.lexsort((np.arange(row.size), -row))
        out[t] = order[:k]
    return out


def ref_route(
    logits: np.ndarray,
    k: int,
    *,
    score: str = "softmax",
    renormalize: bool = True,
    scale: float = 1.0,
    bias: np.ndarray | None = None,
    n_group: int = 1,
    topk_group: int = 1,
    group_score: str = "top2_sum",
) -> tuple[np.ndarray, np.ndarray]:
    """A numpy port of HF DeepseekV3TopkRouter / DeepSeek-V3 Gate (and Mixtral's router)."""
    s = (
        ref_softmax(logits)
        if score == "softmax"
        else 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    )
    choice = s + (0.0 if bias is None else bias.astype(np.float64))
    T, E = s.shape
    if n_group > 1:
        grouped = choice.reshape(T, n_group, E // n_group)
        if group_score == "top2_sum":
            gs = np.sort(grouped, axis=-1)[..., -2:].sum(-1)
        else:
            gs = grouped.max(-1)
        gidx = ref_topk(gs, topk_group)
        gmask = np.zeros((T, n_group), bool)
        np.put_along_axis(gmask, gidx, True, axis=1)
        choice = np.where(np.repeat(gmask, E // n_group, axis=1), choice, -np.inf)
    ids = ref_topk(choice, k)
    w = np.take_along_axis(s, ids, axis=1)
    if renormalize:
        w = w / (w.sum(axis=1, keepdims=True) + 1e-20)
    return ids, w * scale


def ref_capacity(ids: np.ndarray, E: int, cap: int, order: np.ndarray | None = None) -> np.ndarray:
    """Slot-major cumulative priority: Switch's cumsum for k = 1, GShard / Tutel's running
    cumsum across slots for k > 1. ``order``: tokens in priority order."""
    T, k = ids.shape
    order = np.arange(T) if order is None else order
    loc = np.full((T, k), -1, np.int64)
    used = np.zeros(E, np.int64)
    for j in range(k):
        onehot = np.zeros((T, E), np.int64)
        onehot[np.arange(T), ids[order, j]] = 1
        prio = np.cumsum(onehot, axis=0) + used  # 1-based rank within the expert
        rank = prio[np.arange(T), ids[order, j]]
        loc[order, j] = np.where(rank <= cap, rank - 1, -1)
        used = np.minimum(used + onehot.sum(0), cap)
    return loc


def ref_swiglu(x: np.ndarray, g: np.ndarray, u: np.ndarray, d: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    a = x @ g.astype(np.float64).T
    h = a / (1 + np.exp(-a)) * (x @ u.astype(np.float64).T)
    return h @ d.astype(np.float64).T


def ref_moe(x: np.ndarray, r: moe.RoutingResult, experts: tuple[np.ndarray, ...]) -> np.ndarray:
    """A dense per-token loop over kept slots."""
    g, u, d = experts
    y = np.zeros(x.shape, np.float64)
    for t in range(x.shape[0]):
        for j in range(r.top_k):
            if r.locations[t, j] >= 0:
                e = r.expert_ids[t, j]
                y[t] += r.weights[t, j] * ref_swiglu(x[t : t + 1], g[e], u[e], d[e])[0]
    return y


def ref_mixtral_loss(layers: list[np.ndarray], k: int, mask: np.ndarray | None = None) -> float:
    E = layers[0].shape[1]
    cnt = np.zeros(E)
    prob = np.zeros(E)
    rows = 0.0
    w = np.ones(layers[0].shape[0]) if mask is None else mask.astype(np.float64)
    for lg in layers:
        p = ref_softmax(lg)
        for t, row in enumerate(ref_topk(p, k)):
            cnt[row] += w[t]
        prob += (p * w[:, None]).sum(0)
        rows += w.sum()
    return float(E * np.sum(cnt / rows * prob / rows))


def ref_megablocks_loss(layers: list[np.ndarray], k: int) -> float:
    """megablocks batched_load_balancing_loss with moe_loss_weight = 1."""
    E, T, L = layers[0].shape[1], layers[0].shape[0], len(layers)
    counts = np.concatenate(
        [np.bincount(ref_topk(ref_softmax(lg), k).ravel(), minlength=E) for lg in layers]
    )
    scores = np.concatenate([ref_softmax(lg).mean(0) for lg in layers])
    return float(E / (L * T * k) * np.dot(counts, scores))


def ref_switch_loss(lg: np.ndarray) -> float:
    E, T = lg.shape[1], lg.shape[0]
    p = ref_softmax(lg)
    f = np.bincount(ref_topk(p, 1)[:, 0], minlength=E) / T
    return float(E * np.sum(f * p.mean(0)))


def logits_of(rng: np.random.Generator, T: int, E: int, scale: float = 2.0) -> np.ndarray:
    return (rng.standard_normal((T, E)) * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Routing


def test_hand_worked_topk_tie_goes_to_lower_index() -> None:
    r = moe.route(np.array([[1.0, 3.0, 2.0, 3.0]], np.float32), top_k=2)
    assert r.expert_ids.tolist() == [[1, 3]]
    np.testing.assert_array_equal(r.weights, [[0.5, 0.5]])
    assert r.expert_ids.dtype == np.int32
    assert r.weights.dtype == np.float32
    assert r.load.tolist() == [0, 1, 0, 1]
    assert r.num_dropped == 0


@pytest.mark.parametrize("k", [1, 2, 3, 8])
@pytest.mark.parametrize("renormalize", [True, False])
def test_softmax_topk_matches_reference(
    rng: np.random.Generator, k: int, renormalize: bool
) -> None:
    lg = logits_of(rng, 57, 8)
    r = moe.route(lg, top_k=k, renormalize=renormalize)
    ids, w = ref_route(lg, k, renormalize=renormalize)
    np.testing.assert_array_equal(r.expert_ids, ids)
    np.testing.assert_allclose(r.weights, w, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(r.scores, ref_softmax(lg), rtol=2e-6, atol=1e-8)
    assert r.load.sum() == 57 * k


@pytest.mark.parametrize(
    ("n_group", "topk_group", "group_score"),
    [(1, 1, "top2_sum"), (4, 2, "top2_sum"), (8, 3, "top2_sum"), (4, 1, "max"), (8, 8, "max")],
)
def test_deepseek_groups_and_bias_match_reference(
    rng: np.random.Generator, n_group: int, topk_group: int, group_score: str
) -> None:
    E, k = 32, 4
    lg = logits_of(rng, 41, E)
    bias = (rng.standard_normal(E) * 0.3).astype(np.float32)
    router = moe.Router.deepseek_v3(
        bias, top_k=k, n_group=n_group, topk_group=topk_group, group_score=group_score
    )
    r = router.route(lg)
    ids, w = ref_route(
        lg,
        k,
        score="sigmoid",
        bias=bias,
        scale=2.5,
        n_group=n_group,
        topk_group=topk_group,
        group_score=group_score,
    )
    np.testing.assert_array_equal(r.expert_ids, ids)
    np.testing.assert_allclose(r.weights, w, rtol=3e-6, atol=1e-7)
    # The bias selects but does not weigh: weights are gathered from the unbiased scores.
    s = 1 / (1 + np.exp(-lg.astype(np.float64)))
    picked = np.take_along_axis(s, r.expert_ids.astype(np.int64), axis=1)
    np.testing.assert_allclose(r.weights, 2.5 * picked / picked.sum(1, keepdims=True), rtol=3e-6)


def test_bias_changes_selection_only() -> None:
    lg = np.zeros((1, 4), np.float32)
    b = np.array([0.0, 0.1, -0.1, 0.2], np.float32)
    r = moe.Router(top_k=2, score="sigmoid", bias=b, routed_scaling_factor=2.5).route(lg)
    assert r.expert_ids.tolist() == [[3, 1]]
    np.testing.assert_array_equal(r.weights, [[1.25, 1.25]])
    np.testing.assert_array_equal(r.scores, np.full((1, 4), 0.5, np.float32))


def test_hf_deepseek_v3_router() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    E, k = 16, 4
    cfg = DeepseekV3Config(
        n_routed_experts=E,
        num_experts_per_tok=k,
        n_group=4,
        topk_group=2,
        hidden_size=E,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
    )
    hf = DeepseekV3TopkRouter(cfg)
    rng = np.random.default_rng(7)
    bias = (rng.standard_normal(E) * 0.2).astype(np.float32)
    with torch.no_grad():
        hf.weight.copy_(torch.eye(E))  # logits = hidden states
        hf.e_score_correction_bias.copy_(torch.from_numpy(bias))
    lg = logits_of(rng, 33, E)
    with torch.no_grad():
        _, hw, hi = hf(torch.from_numpy(lg))
    r = moe.Router.deepseek_v3(bias, top_k=k, n_group=4, topk_group=2).route(lg)
    hi, hw = hi.numpy(), hw.numpy()
    for t in range(lg.shape[0]):  # HF's topk(sorted=False): compare as sets
        o_hf, o_sf = np.argsort(hi[t]), np.argsort(r.expert_ids[t])
        np.testing.assert_array_equal(hi[t][o_hf], r.expert_ids[t][o_sf])
        np.testing.assert_allclose(hw[t][o_hf], r.weights[t][o_sf], rtol=1e-6)


def test_hf_mixtral_router() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

    E = 8
    hf = MixtralTopKRouter(MixtralConfig(num_local_experts=E, num_experts_per_tok=2, hidden_size=E))
    with torch.no_grad():
        hf.weight.copy_(torch.eye(E))
    lg = logits_of(np.random.default_rng(3), 40, E)
    with torch.no_grad():
        _, hw, hi = hf(torch.from_numpy(lg))
    r = moe.Router.mixtral().route(lg)
    np.testing.assert_array_equal(r.expert_ids, hi.numpy())
    np.testing.assert_allclose(r.weights, hw.numpy(), rtol=1e-6)


def test_threads_bitwise_and_python_threads(rng: np.random.Generator) -> None:
    # Large enough that routing, gather and combine use several threads (>= 64 KiB each).
    lg = logits_of(rng, 1501, 16)
    x = rng.standard_normal((1501, 24)).astype(np.float32)
    ex = tuple(
        rng.standard_normal(s).astype(np.float32) * 0.2 for s in [(16, 20, 24)] * 2 + [(16, 24, 20)]
    )
    router = moe.Router.deepseek_v3(None, top_k=3, n_group=4, topk_group=2)
    ra, rb = router.route(lg, num_threads=1), router.route(lg, num_threads=3)
    np.testing.assert_array_equal(ra.expert_ids, rb.expert_ids)
    np.testing.assert_array_equal(ra.weights, rb.weights)
    y1 = moe.moe_ffn(x, ex, routing=ra, num_threads=1)
    y3 = moe.moe_ffn(x, ex, routing=ra, num_threads=3)
    np.testing.assert_array_equal(y1, y3)
    buf = moe.dispatch(x, ra, num_threads=3)
    np.testing.assert_array_equal(buf, moe.dispatch(x, ra, num_threads=1))
    np.testing.assert_array_equal(
        moe.combine(buf, ra, num_threads=1), moe.combine(buf, ra, num_threads=3)
    )
    results: list[Any] = [None, None]

    def work(i: int) -> None:
        results[i] = moe.moe_ffn(x, ex, routing=ra, num_threads=2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(results[0], y1)
    np.testing.assert_array_equal(results[1], y1)


def test_empty_batch() -> None:
    r = moe.route(np.zeros((0, 4), np.float32), top_k=2)
    assert r.expert_ids.shape == (0, 2)
    assert r.num_dropped == 0
    assert r.drop_fraction == 0.0
    y = moe.moe_ffn(
        np.zeros((0, 3), np.float32),
        (
            np.ones((4, 5, 3), np.float32),
            np.ones((4, 5, 3), np.float32),
            np.ones((4, 3, 5), np.float32),
        ),
        routing=r,
    )
    assert y.shape == (0, 3)


# ---------------------------------------------------------------------------------------
# Capacity


def test_switch_capacity_hand_worked() -> None:
    # Top-1 choices 0 0 1 0 0, capacity 2: tokens 3 and 4 overflow expert 0.
    lg = np.array([[5, 0], [5, 0], [0, 5], [5, 0], [5, 0]], np.float32)
    r = moe.Router(top_k=1, renormalize=False, capacity_mode="fixed", capacity=2).route(lg)
    assert r.locations[:, 0].tolist() == [0, 1, 0, -1, -1]
    assert r.dropped_tokens.tolist() == [False, False, False, True, True]
    assert r.load.tolist() == [4, 1]
    assert r.expert_counts.tolist() == [2, 1]
    assert r.num_dropped == 2
    assert r.drop_fraction == pytest.approx(0.4)
    # Score priority: the most confident tokens keep their slots.
    lg2 = lg * np.array([[0.1], [0.9], [0.5], [0.8], [0.2]], np.float32)
    r2 = moe.Router(top_k=1, capacity_mode="fixed", capacity=2, priority="score").route(lg2)
    assert r2.locations[:, 0].tolist() == [-1, 0, 0, 1, -1]


def test_position_priority_matches_hf_switch_cumsum(rng: np.random.Generator) -> None:
    """HF SwitchTransformersTop1Router: keep = cumsum(one_hot(argmax), tokens) <= capacity."""
    T, E, cap = 64, 4, 9
    lg = logits_of(rng, T, E)
    r = moe.Router.switch(capacity=cap).route(lg)
    onehot = np.eye(E, dtype=np.int64)[np.argmax(lg, axis=1)]
    keep = (onehot * (np.cumsum(onehot, axis=0) <= cap)).sum(1) == 1
    np.testing.assert_array_equal(r.kept[:, 0], keep)
    np.testing.assert_allclose(r.weights[:, 0], ref_softmax(lg).max(1), rtol=2e-6)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("mode", ["fixed", "dynamic", "dropless"])
@pytest.mark.parametrize("priority", ["position", "score"])
def test_capacity_matches_reference(
    rng: np.random.Generator, k: int, mode: str, priority: str
) -> None:
    T, E = 50, 6
    lg = logits_of(rng, T, E) + np.array([2, 1, 0, 0, 0, 0], np.float32)  # skewed
    kw: dict[str, Any] = {} if mode == "dropless" else {"capacity_factor": 1.0}
    r = moe.Router(top_k=k, capacity_mode=mode, priority=priority, **kw).route(lg)
    load = np.bincount(r.expert_ids.ravel(), minlength=E)
    fixed = min(int(np.ceil(1.0 * k * T / E)), T)
    cap = {"fixed": fixed, "dynamic": min(fixed, load.max()), "dropless": load.max()}[mode]
    assert r.capacity == cap
    if mode == "fixed":
        assert cap == moe.expert_capacity(T, k, E, 1.0)
    order = None
    if priority == "score":
        order = np.argsort(-r.scores.max(1), kind="stable")
    loc = ref_capacity(r.expert_ids.astype(np.int64), E, cap, order)
    np.testing.assert_array_equal(r.locations, loc)
    np.testing.assert_array_equal(r.load, load)
    kept_ids = r.expert_ids[loc >= 0]
    np.testing.assert_array_equal(r.expert_counts, np.bincount(kept_ids, minlength=E))
    assert r.expert_counts.max() <= cap
    assert r.num_dropped == int((loc < 0).sum()) == int(r.load.sum() - r.expert_counts.sum())
    if mode == "dropless":
        assert r.num_dropped == 0


def test_drop_rate_falls_with_capacity_factor(rng: np.random.Generator) -> None:
    lg = logits_of(rng, 400, 8) + np.linspace(4, 0, 8, dtype=np.float32)  # Zipf-like skew
    rates = [
        moe.Router(top_k=2, capacity_mode="fixed", capacity_factor=cf).route(lg).drop_fraction
        for cf in (0.5, 1.0, 1.5, 4.0)
    ]
    assert rates[0] > rates[1] > rates[2] > 0
    assert rates[3] == 0.0
    assert rates[0] >= 0.5  # half the slots exist


# ---------------------------------------------------------------------------------------
# Dispatch / combine / FFN


def test_dispatch_combine_equals_dense_loop(rng: np.random.Generator) -> None:
    T, E, D = 45, 5, 7
    lg = logits_of(rng, T, E)
    x = rng.standard_normal((T, D)).astype(np.float32)
    r = moe.Router(top_k=2, capacity_mode="fixed", capacity_factor=0.8).route(lg)
    assert r.num_dropped > 0
    scales = rng.standard_normal(E).astype(np.float32)
    # Compact: expert e multiplies its rows by scales[e].
    buf = moe.dispatch(x, r)
    assert buf.shape == (int(r.expert_counts.sum()), D)
    for e in range(E):
        a, b = r.offsets[e], r.offsets[e + 1]
        np.testing.assert_array_equal(buf[a:b], x[r.token_of[a:b]])
        buf[a:b] *= scales[e]
    y = moe.combine(buf, r)
    ref = np.zeros((T, D))
    for t in range(T):
        for j in range(2):
            if r.locations[t, j] >= 0:
                e = r.expert_ids[t, j]
                ref[t] += float(r.weights[t, j]) * float(scales[e]) * x[t].astype(np.float64)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    # Padded (E, capacity, D): zero rows past each expert's count; same combine.
    pad = moe.dispatch(x, r, layout="padded")
    assert pad.shape == (E, r.capacity, D)
    for e in range(E):
        n = r.expert_counts[e]
        np.testing.assert_array_equal(pad[e, :n], x[r.token_of[r.offsets[e] : r.offsets[e + 1]]])
        assert not pad[e, n:].any()
    y_pad = moe.combine(pad * scales[:, None, None], r)
    np.testing.assert_array_equal(y_pad, y)
    # accumulate adds into out.
    out = np.ones((T, D), np.float32)
    res = moe.combine(buf, r, out=out, accumulate=True)
    assert res is out
    np.testing.assert_allclose(out, y + 1, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_moe_ffn_matches_reference(rng: np.random.Generator, dtype: Any) -> None:
    T, E, D, H = 53, 6, 16, 24
    x = rng.standard_normal((T, D)).astype(np.float32)
    g = (rng.standard_normal((E, H, D)) * 0.3).astype(dtype)
    u = (rng.standard_normal((E, H, D)) * 0.3).astype(dtype)
    d = (rng.standard_normal((E, D, H)) * 0.3).astype(dtype)
    wr = rng.standard_normal((E, D)).astype(np.float32)
    router = moe.Router(top_k=2, capacity_mode="fixed", capacity_factor=1.0)
    y, r = moe.moe_ffn(x, (g, u, d), router_weight=wr, router=router, return_routing=True)
    np.testing.assert_allclose(
        r.scores, ref_softmax(x.astype(np.float64) @ wr.T.astype(np.float64)), rtol=1e-4, atol=1e-6
    )
    ref = ref_moe(x, r, (g.astype(np.float32), u.astype(np.float32), d.astype(np.float32)))
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert not y[r.dropped_tokens].any()

    # The callable path computes the same thing through dispatch/combine.
    def f(e: int, xe: np.ndarray) -> np.ndarray:
        return ref_swiglu(
            xe, g[e].astype(np.float32), u[e].astype(np.float32), d[e].astype(np.float32)
        )

    y2 = moe.moe_ffn(x, f, routing=r)
    np.testing.assert_allclose(y2, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


# ---------------------------------------------------------------------------------------
# Losses


def circulant_logits(E: int) -> np.ndarray:
    v = np.linspace(2.0, -1.0, E, dtype=np.float32)
    return np.stack([np.roll(v, t) for t in range(E)])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_losses_at_uniform_routing(k: int) -> None:
    lg = circulant_logits(8)  # each expert is top-j exactly once; mean probability 1/E
    alpha = 0.01
    assert moe.load_balancing_loss(lg, kind="switch", top_k=k, alpha=alpha) == pytest.approx(
        alpha, rel=1e-12
    )
    assert moe.load_balancing_loss(lg, kind="mixtral", top_k=k, alpha=alpha) == pytest.approx(
        alpha * k, rel=1e-12
    )
    assert moe.load_balancing_loss(lg, kind="megablocks", top_k=k, alpha=alpha) == pytest.approx(
        alpha, rel=1e-12
    )


def test_loss_hand_worked_collapse() -> None:
    # Every token picks expert 0 with p0 = 0.7: Switch = E * 1 * 0.7.
    p = np.array([0.7, 0.1, 0.1, 0.1])
    lg = np.tile(np.log(p).astype(np.float32), (5, 1))
    p32 = ref_softmax(lg)[0]
    assert moe.load_balancing_loss(lg, kind="switch") == pytest.approx(4 * p32[0], rel=1e-12)
    assert moe.load_balancing_loss(lg, kind="mixtral", top_k=2) == pytest.approx(
        4 * (p32[0] + p32[1]), rel=1e-12
    )
    assert moe.load_balancing_loss(lg, kind="megablocks", top_k=2) == pytest.approx(
        2 * (p32[0] + p32[1]), rel=1e-12
    )


@pytest.mark.parametrize("layers", [1, 3])
def test_losses_match_references(rng: np.random.Generator, layers: int) -> None:
    ls = [logits_of(rng, 37, 8) for _ in range(layers)]
    stacked = np.stack(ls)
    assert moe.load_balancing_loss(ls, kind="mixtral", top_k=2) == pytest.approx(
        ref_mixtral_loss(ls, 2), rel=1e-12
    )
    assert moe.load_balancing_loss(stacked, kind="megablocks", top_k=2) == pytest.approx(
        ref_megablocks_loss(ls, 2), rel=1e-12
    )
    sw = np.mean([ref_switch_loss(lg) for lg in ls])
    assert moe.load_balancing_loss(ls, kind="switch") == pytest.approx(sw, rel=1e-12)
    if layers > 1:  # pooled (HF) vs per-layer (megablocks) really differ
        assert moe.load_balancing_loss(ls, kind="mixtral", top_k=2) / 2 != pytest.approx(
            moe.load_balancing_loss(ls, kind="megablocks", top_k=2), rel=1e-6
        )
    z = np.mean([np.log(np.exp(lg.astype(np.float64)).sum(1)) ** 2 for lg in ls])
    assert moe.z_loss(ls) == pytest.approx(z, rel=1e-12)
    assert moe.z_loss(stacked, alpha=0.001) == pytest.approx(0.001 * z, rel=1e-12)


def test_mask_and_given_ids(rng: np.random.Generator) -> None:
    lg = logits_of(rng, 30, 6)
    mask = rng.random(30) < 0.6
    assert moe.load_balancing_loss(lg, kind="mixtral", top_k=2, token_mask=mask) == pytest.approx(
        ref_mixtral_loss([lg], 2, mask), rel=1e-12
    )
    # Given ids (e.g. from a biased router) are counted instead of softmax top-k.
    ids = np.zeros((30, 2), np.int64)
    ids[:, 1] = 1
    P = ref_softmax(lg).mean(0)
    assert moe.load_balancing_loss(lg, kind="mixtral", top_k=2, expert_ids=ids) == pytest.approx(
        6 * (P[0] + P[1]), rel=1e-12
    )


def test_hf_mixtral_and_switch_losses(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func as mixtral_lbl
    from transformers.models.switch_transformers import modeling_switch_transformers as st

    ls = [logits_of(rng, 24, 8) for _ in range(3)]
    for top_k in (1, 2, 4):
        hf = float(mixtral_lbl(tuple(torch.from_numpy(a) for a in ls), 8, top_k))
        assert moe.load_balancing_loss(ls, kind="mixtral", top_k=top_k) == pytest.approx(
            hf, rel=1e-5
        )
    mask = np.ones((2, 12), np.int64)
    mask[0, 9:] = 0
    mask[1, :2] = 0
    hf = float(mixtral_lbl(tuple(torch.from_numpy(a) for a in ls), 8, 2, torch.from_numpy(mask)))
    ours = moe.load_balancing_loss(
        ls, kind="mixtral", top_k=2, token_mask=mask.ravel().astype(bool)
    )
    assert ours == pytest.approx(hf, rel=1e-5)
    # Switch, one group: HF's E^2 * mean(f * P) over one group is E * sum f P.
    lg = ls[0]
    probs = torch.softmax(torch.from_numpy(lg), -1)[None]
    hf_sw = float(st.load_balancing_loss_func(probs, torch.argmax(probs, -1)))
    assert moe.load_balancing_loss(lg, kind="switch") == pytest.approx(hf_sw, rel=1e-5)
    hf_z = float(st.router_z_loss_func(torch.from_numpy(lg)[None]))
    assert moe.z_loss(lg) == pytest.approx(hf_z, rel=1e-5)


# ---------------------------------------------------------------------------------------
# Jitter and router logits


def test_jitter_seeded_and_training_only(rng: np.random.Generator) -> None:
    x = rng.standard_normal((20, 6)).astype(np.float32)
    wr = rng.standard_normal((4, 6)).astype(np.float32)
    a = moe.jitter(x, 0.1, seed=3)
    np.testing.assert_array_equal(a, moe.jitter(x, 0.1, seed=np.random.default_rng(3)))
    ratio = a / x
    assert np.all(ratio >= 0.9 - 1e-6)
    assert np.all(ratio <= 1.1 + 1e-6)
    assert ratio.std() > 0.01
    clean = moe.router_logits(x, wr, jitter_eps=0.1, seed=3)  # not training: no noise
    np.testing.assert_allclose(clean, x @ wr.T, rtol=1e-5, atol=1e-5)
    noisy = moe.router_logits(x, wr, jitter_eps=0.1, seed=3, training=True)
    np.testing.assert_allclose(noisy, a @ wr.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="eps"):
        moe.jitter(x, 1.5)


# ---------------------------------------------------------------------------------------
# Expert pruning


def test_prune_by_frequency_and_output_norm(rng: np.random.Generator) -> None:
    T, E, D, H = 200, 4, 8, 12
    x = rng.standard_normal((T, D)).astype(np.float32)
    lg = np.tile(np.array([3.0, 2.0, 0.0, -1.0], np.float32), (T, 1)) + logits_of(rng, T, E, 1.0)
    g = (rng.standard_normal((E, H, D)) * 0.3).astype(np.float32)
    u = (rng.standard_normal((E, H, D)) * 0.3).astype(np.float32)
    d = (rng.standard_normal((E, D, H)) * 0.3).astype(np.float32)
    d[0] *= 1e-3  # the most used expert writes almost nothing
    d[2] *= 50.0
    ex = (g, u, d)
    router = moe.Router(top_k=2)
    freq = moe.prune_experts(x, ex, num_keep=2, logits=lg, router=router)
    assert freq.keep.tolist() == [0, 1]
    r = router.route(lg)
    np.testing.assert_allclose(freq.importance, r.load / (2 * T))
    norm = moe.prune_experts(x, ex, num_keep=2, logits=lg, router=router, method="output_norm")
    # Reference importance: sum of w * ||f_e(x_t)|| over routed slots, / T.
    ref = np.zeros(E)
    for t in range(T):
        for j in range(2):
            e = r.expert_ids[t, j]
            ref[e] += r.weights[t, j] * np.linalg.norm(ref_swiglu(x[t : t + 1], g[e], u[e], d[e]))
    np.testing.assert_allclose(norm.importance, ref / T, rtol=1e-4)
    assert 0 not in norm.keep.tolist()
    assert norm.experts is not None
    for a, b in zip(norm.experts, ex, strict=True):
        np.testing.assert_array_equal(a, b[norm.keep])
    wr = rng.standard_normal((E, D)).astype(np.float32)
    p = moe.prune_experts(x, ex, num_keep=3, router_weight=wr, method="weight")
    assert p.router_weight is not None
    assert p.router_weight.shape == (3, D)
    np.testing.assert_array_equal(p.router_weight, wr[p.keep])
    with pytest.raises(ValueError, match="num_keep"):
        moe.prune_experts(x, ex, num_keep=1, logits=lg, router=router)


# ---------------------------------------------------------------------------------------
# Bad input


def test_bad_input_names_the_argument() -> None:
    lg = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="top_k"):
        moe.route(lg, top_k=7)
    with pytest.raises(ValueError, match="top_k"):
        moe.route(lg, top_k=0)
    with pytest.raises(TypeError, match="top_k"):
        moe.route(lg, top_k=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capacity_factor"):
        moe.Router(capacity_mode="fixed", capacity_factor=0.0)
    with pytest.raises(ValueError, match="capacity_factor"):
        moe.Router(capacity_mode="dynamic", capacity_factor=-1.0)
    with pytest.raises(ValueError, match="capacity_factor"):
        moe.Router(capacity_factor=1.0)  # dropless has no capacity
    with pytest.raises(ValueError, match="capacity"):
        moe.Router(capacity_mode="fixed", capacity=0)
    with pytest.raises(ValueError, match="capacity_factor"):
        moe.expert_capacity(10, 2, 4, 0.0)
    bad = lg.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="logits"):
        moe.route(bad)
    with pytest.raises(ValueError, match="logits"):
        moe.load_balancing_loss(bad)
    with pytest.raises(ValueError, match="logits"):
        moe.z_loss(bad)
    with pytest.raises(TypeError, match="logits"):
        moe.route(lg.astype(np.float64))
    with pytest.raises(TypeError, match="logits"):
        moe.route(lg.tolist())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="logits"):
        moe.route(np.zeros(6, np.float32))
    with pytest.raises(ValueError, match="n_group"):
        moe.route(lg, top_k=1, n_group=4)
    with pytest.raises(ValueError, match="topk_group"):
        moe.Router(n_group=2, topk_group=3)
    with pytest.raises(ValueError, match="top_k"):
        moe.route(lg, top_k=4, n_group=3, topk_group=1)  # 1 group of 2 experts
    with pytest.raises(ValueError, match="bias"):
        moe.route(lg, bias=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="score"):
        moe.Router(score="relu")
    with pytest.raises(ValueError, match="priority"):
        moe.Router(priority="random")
    with pytest.raises(ValueError, match="kind"):
        moe.load_balancing_loss(lg, kind="gshard")
    with pytest.raises(ValueError, match="expert_ids"):
        moe.load_balancing_loss(lg, kind="mixtral", top_k=2, expert_ids=np.zeros((4, 3), np.int32))
    with pytest.raises(ValueError, match="expert_ids"):
        moe.load_balancing_loss(
            lg, kind="mixtral", top_k=2, expert_ids=np.full((4, 2), 9, np.int32)
        )
    with pytest.raises(ValueError, match="expert_ids"):
        moe.Router().assign(np.full((4, 2), -1), np.zeros((4, 2), np.float32), num_experts=6)
    r = moe.route(lg)
    x = np.zeros((4, 3), np.float32)
    ex = (
        np.zeros((6, 5, 3), np.float32),
        np.zeros((6, 5, 3), np.float32),
        np.zeros((6, 3, 5), np.float32),
    )
    with pytest.raises(ValueError, match="x"):
        moe.moe_ffn(np.zeros((5, 3), np.float32), ex, routing=r)
    with pytest.raises(ValueError, match="w_down"):
        moe.moe_ffn(x, (ex[0], ex[1], np.zeros((6, 5, 3), np.float32)), routing=r)
    with pytest.raises(TypeError, match="w_up"):
        moe.moe_ffn(x, (ex[0], ex[1].astype(np.float16), ex[2]), routing=r)
    with pytest.raises(ValueError, match="exactly one"):
        moe.moe_ffn(x, ex)
    with pytest.raises(ValueError, match="expert_out"):
        moe.combine(np.zeros((3, 3), np.float32), r)
    with pytest.raises(ValueError, match="layout"):
        moe.dispatch(x, r, layout="dense")


def test_public_surface() -> None:
    assert sf.moe is moe
    assert "moe" in sf.__all__
