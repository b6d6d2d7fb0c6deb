"""Group lasso (penalty and closed-form proximal step over rows, columns, heads, MLP
neurons, N:M groups) and gradient importance (Taylor, Fisher, movement) against hand
computations."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sparseforge.torch as sft  # noqa: E402


def _prox_ref(blocks: list[np.ndarray], thresh: float) -> list[np.ndarray]:
    """Closed form on a list of (G, k_i) arrays (group g = row g of every block)."""
    norms = np.sqrt(sum((b.astype(np.float64) ** 2).sum(axis=1) for b in blocks))
    factor = np.where(norms > thresh, 1 - thresh / np.maximum(norms, 1e-300), 0.0)
    return [b * factor[:, None] for b in blocks]


def _family(kind: str, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """(Groups, [(tensor, to_blocks, from_blocks)]) for each family."""
    if kind == "rows":
        W = torch.tensor(rng.standard_normal((6, 8)), dtype=torch.float32)
        return sft.Groups.rows(W), [W], lambda ws: [ws[0].numpy()]
    if kind == "columns":
        W = torch.tensor(rng.standard_normal((6, 8)), dtype=torch.float32)
        return sft.Groups.columns(W), [W], lambda ws: [ws[0].numpy().T]
    if kind == "nm":
        W = torch.tensor(rng.standard_normal((4, 8)), dtype=torch.float32)
        return sft.Groups.nm(W, 4), [W], lambda ws: [ws[0].numpy().reshape(-1, 4)]
    if kind == "neurons":
        gate = torch.tensor(rng.standard_normal((10, 6)), dtype=torch.float32)
        up = torch.tensor(rng.standard_normal((10, 6)), dtype=torch.float32)
        down = torch.tensor(rng.standard_normal((6, 10)), dtype=torch.float32)
        return (
            sft.Groups.mlp_neurons(gate, up, down),
            [gate, up, down],
            lambda ws: [ws[0].numpy(), ws[1].numpy(), ws[2].numpy().T],
        )
    # heads: 3 heads of head_dim 2 over dim 6
    q = torch.tensor(rng.standard_normal((6, 6)), dtype=torch.float32)
    o = torch.tensor(rng.standard_normal((6, 6)), dtype=torch.float32)
    return (
        sft.Groups.attention_heads(q, o, num_heads=3),
        [q, o],
        lambda ws: [
            ws[0].numpy().reshape(3, 12),
            ws[1].numpy().reshape(6, 3, 2).transpose(1, 0, 2).reshape(3, 12),
        ],
    )


@pytest.mark.parametrize("kind", ["rows", "columns", "nm", "neurons", "heads"])
def test_group_lasso_prox_equals_closed_form(kind: str) -> None:
    rng = np.random.default_rng(0)
    groups, tensors, blocks_of = _family(kind, rng)
    before = [b.copy() for b in blocks_of(tensors)]
    norms = np.sqrt(sum((b.astype(np.float64) ** 2).sum(axis=1) for b in before))
    np.testing.assert_allclose(groups.norms().numpy(), norms, rtol=1e-6)
    # a threshold between the smallest and the largest group norm: some groups vanish
    lam, lr = float(np.median(norms)) / np.sqrt(groups.group_size) / 0.5, 0.5
    thresh = lam * np.sqrt(groups.group_size) * lr
    zeroed = groups.prox_(lam, lr)
    want = _prox_ref(before, thresh)
    for got, ref in zip(blocks_of(tensors), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert zeroed == int((norms <= thresh).sum()) > 0
    assert int(groups.zero_groups().sum()) == zeroed
    after = groups.norms().double().numpy()
    alive = norms > thresh
    np.testing.assert_allclose(after[alive], norms[alive] - thresh, rtol=1e-5)
    assert np.all(after[~alive] == 0)  # exact zeros
    # gamma = 0 is the identity
    snap = [t.clone() for t in tensors]
    groups.prox_(lam, 0.0)
    for a, b in zip(tensors, snap, strict=True):
        assert torch.equal(a, b)


def test_group_lasso_penalty_value_and_gradient() -> None:
    rng = np.random.default_rng(1)
    W = torch.tensor(rng.standard_normal((5, 4)), dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        W[2] = 0.0  # a zero group: subgradient 0, no NaN
    g = sft.Groups.rows(W)
    pen = g.penalty(0.3)
    ref = 0.3 * np.sqrt(4) * np.linalg.norm(W.detach().numpy(), axis=1).sum()
    assert float(pen.detach()) == pytest.approx(ref, rel=1e-12)
    pen.backward()
    Wn = W.detach().numpy()
    n = np.linalg.norm(Wn, axis=1, keepdims=True)
    want = np.where(n > 0, 0.3 * 2 * Wn / np.where(n > 0, n, 1), 0)
    np.testing.assert_allclose(W.grad.numpy(), want, rtol=1e-12)

    def f(w):  # type: ignore[no-untyped-def]
        return sft.Groups.columns(w).penalty(0.7)

    x = torch.tensor(rng.standard_normal((3, 4)), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,))


def test_group_lasso_bad_input() -> None:
    with pytest.raises(ValueError, match="m: in_features 6"):
        sft.Groups.nm(torch.zeros(2, 6), 4)
    with pytest.raises(ValueError, match="num_heads"):
        sft.Groups.attention_heads(torch.zeros(6, 6), torch.zeros(6, 6), num_heads=4)
    with pytest.raises(ValueError, match="members"):
        sft.Groups.mlp_neurons(torch.zeros(4, 3), torch.zeros(5, 3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="lam"):
        sft.Groups.rows(torch.zeros(2, 2)).prox_(-1.0, 0.1)


# -- importance -----------------------------------------------------------------------


def test_taylor_fisher_movement_equal_hand_computation() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False))
    W = model[0].weight.detach().double().numpy()
    imp = sft.GradientImportance(model, ["0"])
    batches = [(torch.randn(6, 4), torch.randn(6, 3)) for _ in range(3)]

    def loss_fn(m, b):  # type: ignore[no-untyped-def]
        x, t = b
        return 0.5 * ((m(x) - t) ** 2).sum() / x.shape[0]

    imp.accumulate(batches, loss_fn)
    taylor = np.zeros_like(W)
    fisher = np.zeros_like(W)
    movement = np.zeros_like(W)
    for x, t in batches:
        xn, tn = x.double().numpy(), t.double().numpy()
        G = (xn @ W.T - tn).T @ xn / xn.shape[0]  # dL/dW of the mean squared loss
        taylor += np.abs(W * G)
        fisher += G * G
        movement -= W * G
    s = imp.scores
    np.testing.assert_allclose(s("taylor")["0"].numpy(), taylor, rtol=1e-5)
    np.testing.assert_allclose(s("fisher")["0"].numpy(), fisher / 3, rtol=1e-5)
    np.testing.assert_allclose(s("movement")["0"].numpy(), movement, rtol=1e-5)
    np.testing.assert_allclose(s("obd")["0"].numpy(), 0.5 * fisher / 3 * W**2, rtol=1e-5)
    assert model[0].weight.grad is None  # accumulate leaves no gradient behind
    # the scores drive masks through the core
    m = sft.select_mask(model[0].weight, 0.5, scores=s("taylor")["0"])
    assert int(m.sum()) == 3 * 2
    with pytest.raises(ValueError, match="kind"):
        s("hessian")


def test_importance_to_structured_aggregates_neurons_and_heads() -> None:
    transformers = pytest.importorskip("transformers")
    from sparseforge.models import LlamaConfig

    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg)
    imp = sft.GradientImportance(model)
    ids = torch.randint(0, 32, (2, 8))
    imp.accumulate([ids], lambda m, b: m(b, labels=b).loss)
    sc = imp.scores("taylor")
    c = LlamaConfig(dim=16, hidden_dim=24, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=32,
                    max_seq_len=32)  # fmt: skip
    st = imp.to_structured(c)
    p = "model.layers.0."
    neurons = (
        sc[p + "mlp.gate_proj"].sum(1)
        + sc[p + "mlp.up_proj"].sum(1)
        + sc[p + "mlp.down_proj"].sum(0)
    )
    np.testing.assert_allclose(st.neurons[0], neurons.numpy(), rtol=1e-12)
    q, o = sc[p + "self_attn.q_proj"], sc[p + "self_attn.o_proj"]
    heads = q.reshape(4, -1).sum(1) + o.reshape(16, 4, 4).sum((0, 2))
    np.testing.assert_allclose(st.heads[0], heads.numpy(), rtol=1e-12)
    assert st.groups[0].shape == (2,)
    assert st.channels.shape == (16,)
