"""Distillation loss against a hand computation, and the torch MoE losses against
sf.moe's forward values, finite-difference gradients (gradcheck, float64) and transformers'
PhiMoE SparseMixer."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import realdata
import sparseforge as sf

torch = pytest.importorskip("torch")

import sparseforge.torch as sft  # noqa: E402
from sparseforge.torch import moe as tmoe  # noqa: E402


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_kd_loss_equals_hand_formula(T: float) -> None:
    rng = np.random.default_rng(0)
    s = rng.standard_normal((2, 5, 7)).astype(np.float32)
    t = rng.standard_normal((2, 5, 7)).astype(np.float32)
    mask = rng.random((2, 5)) > 0.3
    logp = _log_softmax(t.astype(np.float64) / T)
    logq = _log_softmax(s.astype(np.float64) / T)
    kl = (np.exp(logp) * (logp - logq)).sum(-1)  # per token
    got = sft.kd_loss(torch.from_numpy(s), torch.from_numpy(t), temperature=T)
    assert float(got) == pytest.approx(T * T * kl.mean(), rel=1e-5)
    got_m = sft.kd_loss(
        torch.from_numpy(s), torch.from_numpy(t), temperature=T, mask=torch.from_numpy(mask)
    )
    assert float(got_m) == pytest.approx(T * T * kl[mask].mean(), rel=1e-5)
    # not torch's "mean" over token x vocab (which would divide by 7 more)
    assert float(got) != pytest.approx(T * T * kl.mean() / 7, rel=1e-3)
    # gradient w.r.t. the student logits: T (q - p) / tokens
    sl = torch.from_numpy(s).double().requires_grad_(True)
    sft.kd_loss(sl, torch.from_numpy(t).double(), temperature=T).backward()
    want = T * (np.exp(logq) - np.exp(logp)) / 10
    np.testing.assert_allclose(sl.grad.numpy(), want, rtol=1e-4, atol=1e-6)
    # KL(p || p) = 0
    assert float(sft.kd_loss(torch.from_numpy(t), torch.from_numpy(t), temperature=T)) == (
        pytest.approx(0.0, abs=1e-6)
    )


def test_kd_refuses_vocab_mismatch() -> None:
    with pytest.raises(ValueError, match="teacher: vocabulary of 9 logits"):
        sft.kd_loss(torch.zeros(2, 8), torch.zeros(2, 9))
    transformers = pytest.importorskip("transformers")

    def llama(vocab: int):  # type: ignore[no-untyped-def]
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
        ))  # fmt: skip

    student, teacher = llama(32), llama(48).train()
    with pytest.raises(ValueError, match="teacher: vocabulary size 48"):
        sft.Distiller(student, teacher)
    assert all(p.requires_grad for p in teacher.parameters())  # untouched
    assert teacher.training  # not switched to eval mode either
    with pytest.raises(ValueError, match="temperature:"):
        sft.Distiller(student, llama(32).train(), temperature=-1.0)
    d = sft.Distiller(student, llama(32), alpha_kd=1.0, alpha_ce=0.5, alpha_hidden=0.1)
    ids = torch.randint(0, 32, (2, 6))
    loss, parts = d.loss(ids)
    assert set(parts) == {"kd", "ce", "hidden"}
    assert float(loss.detach()) == pytest.approx(
        parts["kd"] + 0.5 * parts["ce"] + 0.1 * parts["hidden"], rel=1e-5
    )
    loss.backward()
    assert all(p.grad is None for p in d.teacher.parameters())


@pytest.mark.skipif(realdata.stories260k_path() is None, reason="stories260K not found")
def test_to_transformers_matches_sparseforge_forward_and_width_pruned() -> None:
    pytest.importorskip("transformers")
    from sparseforge import models as sm
    from sparseforge import structured

    model = sm.load(realdata.stories260k_path())
    ids = np.array([1, 403, 407, 261, 378, 410, 268, 285, 300], dtype=np.int64)
    hf = sft.to_transformers(model)
    with torch.no_grad():
        got = hf(torch.from_numpy(ids)[None]).logits[0].numpy()
    np.testing.assert_allclose(got, model.forward(ids), rtol=1e-4, atol=1e-4)
    text = (realdata.stories260k_path().parent.parent / "tinystories-valid-excerpt"
            / "tinystories_val.txt").read_text()[:4000]  # fmt: skip
    windows = sm.calibration_windows(model, text, nsamples=2, seqlen=32)
    imp = structured.importance(model, windows)
    small = structured.width(model, imp, hidden_dim=120)
    hf_small = sft.to_transformers(small)
    assert hf_small.config.intermediate_size == 120
    with torch.no_grad():
        got = hf_small(torch.from_numpy(ids)[None]).logits[0].numpy()
    np.testing.assert_allclose(got, small.forward(ids), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(realdata.stories260k_path() is None, reason="stories260K not found")
@pytest.mark.parametrize("slice_head", [False, True])
def test_to_torch_sliced_student_matches_sparseforge_and_distils(slice_head: bool) -> None:
    from sparseforge import models as sm
    from sparseforge import structured

    model = sm.load(realdata.stories260k_path())
    text = (realdata.stories260k_path().parent.parent / "tinystories-valid-excerpt"
            / "tinystories_val.txt").read_text()[:6000]  # fmt: skip
    windows = sm.calibration_windows(model, text, nsamples=4, seqlen=32)
    sliced = structured.slicegpt(model, windows, dim=48, slice_head=slice_head)
    assert sliced.config.residual_dims
    with pytest.raises(ValueError, match="to_torch"):
        sft.to_transformers(sliced)
    student = sft.to_torch(sliced)
    ids = np.array([1, 403, 407, 261, 378, 410, 268, 285, 300], dtype=np.int64)
    with torch.no_grad():
        got = student(torch.from_numpy(ids)[None]).logits[0].numpy()
    np.testing.assert_allclose(got, sliced.forward(ids), rtol=1e-4, atol=1e-4)
    # a plain model goes through transformers
    assert type(sft.to_torch(model)).__name__ == "LlamaForCausalLM"
    # distillation from the dense teacher: finite loss, gradients reach the shortcuts,
    # and a few steps lower the KD loss on the batch
    teacher = sft.to_transformers(model)
    d = sft.Distiller(student, teacher, alpha_kd=1.0, alpha_hidden=0.0)
    batch = torch.from_numpy(windows[:2].astype(np.int64))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss, _parts = d.loss(batch)
        loss.backward()
        assert student.model.layers[0].attn_shortcut.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    # masks work on it too (HF-style names)
    sp = sft.Sparsifier.from_zeros(student)
    assert "model.layers.0.attn_shortcut" in sp.modules


# -- MoE ------------------------------------------------------------------------------


def _logits(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 2


@pytest.mark.parametrize("kind", ["switch", "mixtral", "megablocks"])
@pytest.mark.parametrize("layers", [1, 3])
def test_load_balancing_loss_equals_sf_moe(kind: str, layers: int) -> None:
    x = _logits(layers, (layers, 20, 6))
    x[0, 3, :2] = 1.5  # a tie in the top-k: lower index first in both
    mask = np.random.default_rng(9).random(20) > 0.25
    for k in (1, 2):
        for tm in (None, mask):
            want = sf.moe.load_balancing_loss(
                x if layers > 1 else x[0], kind=kind, top_k=k, alpha=0.01, token_mask=tm
            )
            got = tmoe.load_balancing_loss(
                torch.from_numpy(x if layers > 1 else x[0]), kind=kind, top_k=k, alpha=0.01,
                token_mask=None if tm is None else torch.from_numpy(tm),
            )  # fmt: skip
            assert got.dtype == torch.float64
            assert float(got) == pytest.approx(want, rel=1e-12, abs=0)
    ids = np.random.default_rng(3).integers(0, 6, (layers * 20, 2)).astype(np.int32)
    want = sf.moe.load_balancing_loss(x, kind=kind, top_k=2, expert_ids=ids)
    got = tmoe.load_balancing_loss(torch.from_numpy(x), kind=kind, top_k=2,
                                   expert_ids=torch.from_numpy(ids))  # fmt: skip
    assert float(got) == pytest.approx(want, rel=1e-12, abs=0)


def test_z_loss_equals_sf_moe_and_its_gradient() -> None:
    x = _logits(4, (2, 15, 8))
    want = sf.moe.z_loss(x, alpha=1e-3)
    got = tmoe.z_loss(torch.from_numpy(x), alpha=1e-3)
    assert float(got) == pytest.approx(want, rel=1e-12, abs=0)
    xt = torch.from_numpy(x[0]).double().requires_grad_(True)
    tmoe.z_loss(xt, alpha=0.5).backward()
    xn = x[0].astype(np.float64)
    lse = np.log(np.exp(xn).sum(-1, keepdims=True))
    closed = 0.5 * 2 / 15 * lse * np.exp(xn - lse)  # c_z * 2/B * lse * softmax
    np.testing.assert_allclose(xt.grad.numpy(), closed, rtol=1e-10)


@pytest.mark.parametrize("kind", ["switch", "mixtral", "megablocks"])
def test_moe_losses_match_finite_differences(kind: str) -> None:
    # well-separated logits so the top-k choice is stable under the gradcheck perturbation
    base = torch.tensor(_logits(5, (12, 5)), dtype=torch.float64)
    base += torch.arange(5, dtype=torch.float64)[None] * 0.0
    x = base.clone().requires_grad_(True)

    def f(z):  # type: ignore[no-untyped-def]
        return tmoe.load_balancing_loss(z, kind=kind, top_k=2) + tmoe.z_loss(z, alpha=0.1)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7)
    # the gradient flows through the probabilities only: counts are constants
    x.grad = None
    tmoe.load_balancing_loss(x, kind="switch", top_k=1).backward()
    p = torch.softmax(x.detach(), -1)
    c = torch.zeros(5, dtype=torch.float64)
    c.scatter_add_(0, p.argmax(-1), torch.ones(12, dtype=torch.float64))
    # d/dx of E * sum_e (c_e/T) (sum_t p_te / T) = E/T^2 * p_t * (c - p_t . c)
    want = 5 / 144 * p * (c[None] - (p * c[None]).sum(-1, keepdim=True))
    torch.testing.assert_close(x.grad, want, rtol=1e-10, atol=1e-12)


def test_router_jitter() -> None:
    x = torch.ones(1000, 4)
    g = torch.Generator().manual_seed(0)
    y = tmoe.router_jitter(x, 0.01, generator=g)
    assert float(y.min()) >= 0.99
    assert float(y.max()) <= 1.01
    assert float(y.std()) > 0
    assert tmoe.router_jitter(x, 0.0) is x
    with pytest.raises(ValueError, match="eps"):
        tmoe.router_jitter(x, 1.5)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="no transformers")
@pytest.mark.parametrize("training", [True, False])
def test_sparsemixer_equals_transformers_phimoe(training: bool) -> None:
    from transformers.models.phimoe.modeling_phimoe import sparsemixer as ref

    scores = torch.tensor(_logits(6, (32, 8)), dtype=torch.float64)
    s1 = scores.clone().requires_grad_(True)
    s2 = scores.clone().requires_grad_(True)
    torch.manual_seed(123)
    g1, e1 = tmoe.sparsemixer(s1, top_k=2, jitter_eps=0.5, training=training)
    torch.manual_seed(123)
    g2, e2 = ref(s2, jitter_eps=0.5, training=training, top_k=2)
    assert torch.equal(e1, e2)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    up = torch.randn(32, 2, dtype=torch.float64)
    (g1 * up).sum().backward()
    (g2 * up).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=0, atol=0)
    if training:  # the estimator gives the router a gradient
        assert float(s1.grad.abs().sum()) > 0
