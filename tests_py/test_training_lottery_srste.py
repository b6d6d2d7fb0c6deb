"""Lottery tickets (rewinding bit for bit, IMP densities, random re-init control), SR-STE
(forward = W*M with the core's N:M mask, gradient = upstream + lambda (1-M) W)."""

from __future__ import annotations

import numpy as np
import pytest

import sparseforge as sf

torch = pytest.importorskip("torch")

import sparseforge.torch as sft  # noqa: E402
from sparseforge.torch import srste  # noqa: E402


def _mlp(seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
        torch.nn.Linear(32, 4),
    )  # fmt: skip


def _train(model, sp, steps: int = 5, seed: int = 0) -> float:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 16, generator=g), torch.randn(32, 4, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # fresh every level
    sp.attach(opt)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return float(loss.detach())


def test_rewind_restores_saved_weights_bit_for_bit() -> None:
    model = _mlp()
    theta0 = sft.snapshot(model)
    lt = sft.LotteryTicket(model, rate=0.2, linear_filter=["0", "2"])
    levels = lt.run(lambda m, sp, level: _train(m, sp), levels=3)
    assert [round(lv.sparsity, 6) for lv in levels] == pytest.approx(
        [0.0, 0.2, 0.36, 0.488], abs=2e-3
    )
    # IMP: global sparsity after r levels = int((1 - 0.8^r) * total) / total
    total = 16 * 32 + 32 * 32
    for lv in levels:
        want = int((1 - 0.8**lv.level) * total) / total
        assert lv.sparsity == pytest.approx(want, abs=1e-12)
    for r in range(1, 4):  # masks only shrink
        for n in levels[r].masks:
            assert not torch.any(levels[r].masks[n] & ~levels[r - 1].masks[n])
    # rewind now: every kept weight equals theta0 bitwise, pruned ones are 0, others equal
    lt.rewind()
    state = model.state_dict()
    for k, v in theta0.items():
        if k.endswith("weight") and k.split(".")[0] in ("0", "2"):
            m = state[k.rsplit(".", 1)[0] + ".sparsity_mask"]
            assert torch.equal(state[k][m], v[m])
            assert torch.all(state[k][~m] == 0)
        else:
            assert torch.equal(state[k], v)


def test_rewind_to_iteration_k_and_bad_snapshot() -> None:
    model = _mlp(1)
    sp0 = sft.Sparsifier(model, ["0", "2"])
    _train(model, sp0, steps=3)
    theta_k = sft.snapshot(model)  # rewinding point after k = 3 steps
    sp0.remove()
    lt = sft.LotteryTicket(model, rate=0.5, rewind_state=theta_k, linear_filter=["0", "2"])
    _train(model, lt.sparsifier, steps=4)
    lt.prune_level(1)
    lt.rewind()
    w = model[0].weight
    m = lt.sparsifier.masks["0"]
    assert torch.equal(w[m], theta_k["0.weight"][m])
    other = _mlp(2)
    other[0] = torch.nn.Linear(16, 8)
    with pytest.raises(ValueError, match="state"):
        sft.rewind(other, theta_k)


def test_random_reinit_keeps_mask_changes_weights() -> None:
    model = _mlp(3)
    lt = sft.LotteryTicket(model, rate=0.5, scope="layer", linear_filter=["0", "2"])
    _train(model, lt.sparsifier)
    lt.prune_level(2)
    lt.rewind()
    before = model[2].weight.detach().clone()
    masks = {n: m.clone() for n, m in lt.sparsifier.masks.items()}
    sft.random_reinit(model, lt.sparsifier, seed=11)
    after = model[2].weight.detach()
    m = masks["2"]
    assert torch.all(after[~m] == 0)
    assert not torch.equal(after[m], before[m])
    # deterministic in the seed
    snap = after.clone()
    sft.random_reinit(model, lt.sparsifier, seed=11)
    assert torch.equal(model[2].weight.detach(), snap)


# -- SR-STE ---------------------------------------------------------------------------


def test_srste_forward_and_gradient_are_the_analytic_form() -> None:
    torch.manual_seed(4)
    lin = torch.nn.Linear(16, 8, bias=False)
    W = lin.weight.detach().clone()
    names = sft.apply_srste(torch.nn.Sequential(lin), "2:4", decay=0.1, linear_filter=["0"])
    assert names == ["0"]
    x = torch.randn(5, 16)
    upstream = torch.randn(5, 8)
    out = lin(x)
    mask = torch.from_numpy(sf.prune.magnitude(W.numpy(), pattern="2:4").mask)
    torch.testing.assert_close(out, x @ (W * mask).T, rtol=0, atol=0)
    out.backward(upstream)
    grad_sparse = upstream.T @ x  # dL/dW~
    want = grad_sparse + 0.1 * (~mask) * W
    p = lin.parametrizations.weight.original
    torch.testing.assert_close(p.grad, want, rtol=1e-6, atol=1e-6)
    # the NM-sparsity reference formula (grad + decay * (1 - mask) * weight), float mask
    ref = grad_sparse + 0.1 * (1 - mask.float()) * W
    torch.testing.assert_close(p.grad, ref, rtol=1e-6, atol=1e-6)


def test_srste_masks_follow_the_weights_and_squash() -> None:
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    sft.apply_srste(model, "2:4", decay=2e-4, linear_filter=["0", "2"])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(16, 8), torch.randn(16, 4)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        for mod in srste.srste_modules(model).values():
            assert torch.all(mod.mask.reshape(-1, 4).sum(1) == 2)
    # the mask in use is recomputed from the current dense weights at each training forward
    model(x)
    for name, p in srste.srste_modules(model).items():
        dense = model.get_submodule(name).parametrizations.weight.original.detach()
        ref = sf.prune.magnitude(dense.numpy().copy(), pattern="2:4").mask
        np.testing.assert_array_equal(p.mask.numpy(), ref)
    sft.remove_srste(model)
    assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for i in (0, 2):
        w = model[i].weight
        assert isinstance(w, torch.nn.Parameter)
        assert torch.all((w != 0).reshape(-1, 4).sum(1) <= 2)


def test_srste_refuses_a_pattern_that_does_not_fit() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Linear(8, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"pattern: 2:4 .*0 has 6"):
        sft.apply_srste(model, "2:4", linear_filter=["0", "1"])
    assert srste.srste_modules(model) == {}
    assert set(model.state_dict()) == set(before)
