"""sparseforge.torch masks and schedules: zeros stay zero through optimizer steps, training
masks equal the core's one-shot masks, masks save/load with the model, the cubic schedule
equals its formula (and torch.ao's CubicSL), bad schedules leave the model untouched."""

from __future__ import annotations

import numpy as np
import pytest

import sparseforge as sf

torch = pytest.importorskip("torch")

import sparseforge.torch as sft  # noqa: E402
from sparseforge.torch import masks as sfm  # noqa: E402
from sparseforge.torch._util import float32_view  # noqa: E402


class MLP(torch.nn.Module):  # type: ignore[misc,name-defined]
    def __init__(self, d_in: int = 16, d_hidden: int = 24, d_out: int = 8) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(d_in, d_hidden)
        self.fc2 = torch.nn.Linear(d_hidden, d_hidden)
        self.head = torch.nn.Linear(d_hidden, d_out)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _data(seed: int = 0, n: int = 64) -> tuple[object, object]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=g), torch.randn(n, 8, generator=g)


def _state_entries(opt: object, p: object) -> list[object]:
    return [v for v in opt.state[p].values() if hasattr(v, "shape") and v.shape == p.shape]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-2),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-2),
    ],
    ids=["sgd-momentum-wd", "adamw", "adam-coupled-wd"],
)
def test_zeros_stay_zero_under_optimizers(make_opt) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = MLP()
    x, y = _data()
    opt = make_opt(model.parameters())
    # a dense warm-up so the optimizer has state everywhere, then masks appear
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    sp = sft.Sparsifier(model, ["fc1", "fc2"]).attach(opt)
    sp.prune(0.5, scope="layer")
    K, accumulation = 12, 4
    for step in range(K):
        if step == K // 2:  # the mask changes mid-training (grows)
            sp.prune(0.75, scope="row")
        opt.zero_grad()
        for j in range(accumulation):
            sl = slice(16 * j, 16 * (j + 1))
            (torch.nn.functional.mse_loss(model(x[sl]), y[sl]) / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        for mod in sp.modules.values():  # grads are masked before the step (tensor hook)
            assert torch.all(mod.weight.grad[~mod.sparsity_mask] == 0)
        opt.step()
        for mod in sp.modules.values():
            m = mod.sparsity_mask
            assert torch.all(mod.weight[~m] == 0), f"step {step}: a pruned weight revived"
            for st in _state_entries(opt, mod.weight):
                assert torch.all(st[~m] == 0)
    assert 0.75 <= sp.sparsity() < 0.76  # row 0.75 AND the earlier layer-scope mask
    assert sp.weight_sparsity() >= 0.75
    # the head was not masked and kept training
    assert int((model.head.weight == 0).sum()) == 0


def test_float32_view_is_zero_copy() -> None:
    w = torch.randn(4, 8)
    view, zero_copy = float32_view(w)
    assert zero_copy
    assert np.shares_memory(view, w.numpy())
    view64, zc = float32_view(w.double())
    assert not zc
    assert view64.dtype == np.float32


@pytest.mark.parametrize(
    ("kwargs", "oracle"),
    [
        ({"sparsity": 0.6, "scope": "row"}, lambda W: sf.prune.magnitude(W, 0.6, scope="row")),
        (
            {"sparsity": 0.3, "scope": "layer"},
            lambda W: sf.prune.magnitude(W, 0.3, scope="layer"),
        ),
        ({"pattern": "2:4"}, lambda W: sf.prune.magnitude(W, pattern="2:4")),
        ({"pattern": "1:8"}, lambda W: sf.prune.magnitude(W, pattern="1:8")),
        (
            {"sparsity": 0.5, "block": (2, 4)},
            lambda W: sf.prune.block_magnitude(W, 0.5, (2, 4)),
        ),
    ],
)
def test_training_masks_equal_core_oneshot_masks(kwargs, oracle) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(1)
    w = torch.randn(16, 32)
    w[0, :8] = 0.25  # ties: lower index pruned first in both
    mask = sfm.select_mask(w, **kwargs)
    np.testing.assert_array_equal(mask.numpy(), oracle(w.numpy().copy()).mask)


def test_global_and_wanda_and_score_masks_equal_core() -> None:
    torch.manual_seed(2)
    ws = {"a": torch.randn(8, 16), "b": torch.randn(4, 16) * 3}
    got = sfm.select_masks(ws, 0.7, scope="global")
    want = sf.prune.magnitude_global([w.numpy().copy() for w in ws.values()], 0.7)
    for (n, _), r in zip(ws.items(), want, strict=True):
        np.testing.assert_array_equal(got[n].numpy(), r.mask)
    norms = torch.rand(16)
    m = sfm.select_mask(ws["a"], 0.5, method="wanda", col_norms=norms)
    ref = sf.prune.wanda(ws["a"].numpy().copy(), norms.numpy(), 0.5).mask
    np.testing.assert_array_equal(m.numpy(), ref)
    scores = torch.rand(8, 16, dtype=torch.float64)
    m = sfm.select_mask(ws["a"], 0.5, scores=scores)
    ref = sf.prune.magnitude(scores.float().numpy(), 0.5).mask
    np.testing.assert_array_equal(m.numpy(), ref)


def test_masks_save_and_load_with_the_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(3)
    model = MLP()
    sp = sft.Sparsifier(model, ["fc1", "fc2"])
    sp.prune(0.5)
    state = model.state_dict()
    assert "fc1.sparsity_mask" in state
    assert state["fc1.sparsity_mask"].dtype == torch.bool
    fresh = MLP()
    sp2 = sfm.load_state_dict_with_masks(fresh, state)
    assert sp2 is not None
    for n in ("fc1", "fc2"):
        assert torch.equal(sp2.masks[n], sp.masks[n])
        assert torch.equal(fresh.get_submodule(n).weight, model.get_submodule(n).weight)
    # continue training: zeros stay zero
    opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2, weight_decay=0.1)
    sp2.attach(opt)
    x, y = _data()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(fresh(x), y).backward()
        opt.step()
    assert torch.all(fresh.fc1.weight[~sp2.masks["fc1"]] == 0)
    # mask file round trip
    path = tmp_path / "masks.safetensors"
    sp.save(path)
    third = MLP()
    sp3 = sft.Sparsifier(third, ["fc1", "fc2"])
    sp3.load(path)
    for n in ("fc1", "fc2"):
        assert torch.equal(sp3.masks[n], sp.masks[n])
    assert not list(tmp_path.glob("*.tmp"))


def test_mask_file_for_another_model_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = MLP()
    sp = sft.Sparsifier(model, ["fc1", "fc2"])
    sp.prune(0.5)
    path = tmp_path / "m.safetensors"
    sp.save(path)
    other = MLP(d_hidden=32)
    sp_other = sft.Sparsifier(other, ["fc1", "fc2"])
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"path: .*another model"):
        sp_other.load(path)
    for k, v in other.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(ValueError, match="masks: 'nope'"):
        sp.set_masks({"nope": torch.ones(2, 2, dtype=torch.bool)})


def test_state_dict_with_masks_for_another_model_leaves_the_model_untouched() -> None:
    model = MLP()
    sft.Sparsifier(model, ["fc1", "fc2"]).prune(0.5)
    state = model.state_dict()
    for other, match in [
        (MLP(d_hidden=32), r"state_dict: fc1\.sparsity_mask has shape \(24, 16\)"),
        (torch.nn.Sequential(torch.nn.Linear(16, 24)), "state_dict: fc1.sparsity_mask names no"),
    ]:
        before = {k: v.clone() for k, v in other.state_dict().items()}
        with pytest.raises(ValueError, match=match):
            sfm.load_state_dict_with_masks(other, state)
        after = other.state_dict()
        assert set(after) == set(before)  # no mask buffer was added
        for k, v in after.items():
            assert torch.equal(v, before[k])
        assert all(not m._backward_hooks for m in other.modules())
    # the same names and shapes but a missing entry
    partial = {k: v for k, v in state.items() if k != "head.bias"}
    fresh = MLP()
    with pytest.raises(ValueError, match=r"state_dict: written for another model \(missing"):
        sfm.load_state_dict_with_masks(fresh, partial)
    assert "fc1.sparsity_mask" not in fresh.state_dict()


# -- schedules ------------------------------------------------------------------------


def test_cubic_schedule_equals_formula_and_torch_ao() -> None:
    from torch.ao.pruning.scheduler.cubic_scheduler import CubicSL

    sched = sft.GradualMagnitude(final=0.9, start=0, end=100, frequency=1)
    for t, want in [(0, 0.0), (10, 0.2439), (50, 0.7875), (100, 0.9), (150, 0.9)]:
        assert sched.sparsity_at(t) == pytest.approx(want, abs=1e-12)
    for t in range(0, 101):
        ao = CubicSL.sparsity_compute_fn(0.0, 0.9, t, 0, 1, 100)
        assert sched.sparsity_at(t) == pytest.approx(ao, abs=1e-12)
    # staircase with frequency, initial > 0 and a start offset: Zhu & Gupta at every step
    s = sft.GradualMagnitude(initial=0.1, final=0.8, start=20, end=70, frequency=10)
    for t in range(0, 90):
        if t < 20:
            want = 0.1
        elif t >= 70:
            want = 0.8
        else:
            u = 20 + (t - 20) // 10 * 10
            want = 0.8 + (0.1 - 0.8) * (1 - (u - 20) / 50) ** 3
        assert s.sparsity_at(t) == pytest.approx(want, abs=1e-15)
        assert s.is_update(t) == (20 <= t <= 70 and ((t - 20) % 10 == 0))


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: sft.GradualMagnitude(final=0.5, start=10, end=5), "end"),
        (lambda: sft.GradualMagnitude(final=1.0, start=0, end=5), "final"),
        (lambda: sft.GradualMagnitude(final=0.5, initial=-0.1, start=0, end=5), "initial"),
        (lambda: sft.OneShot(1.5), "sparsity"),
        (lambda: sft.IterativeMagnitude(rate=1.0, rounds=2, steps_per_round=3), "rate"),
        (lambda: sft.GradualMagnitude(final=0.5, start=0, end=5, frequency=0), "frequency"),
    ],
)
def test_bad_schedules_raise(factory, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        factory()


def test_pattern_that_does_not_fit_leaves_model_untouched() -> None:
    model = MLP(d_in=18)  # fc1 in_features 18: not a multiple of 4
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sched = sft.GradualMagnitude(final=0.5, start=0, end=10)
    with pytest.raises(ValueError, match=r"pattern: 2:4 .*fc1 has 18"):
        sft.Pruner(model, sched, pattern="2:4", linear_filter=["fc1", "fc2"])
    with pytest.raises(ValueError, match="block"):
        sft.Pruner(model, sched, block=(4, 4), linear_filter=["fc1"])
    with pytest.raises(ValueError, match=r"schedule: pattern 2:4 needs final sparsity 0\.5"):
        sft.Pruner(model, sft.GradualMagnitude(final=0.6, start=0, end=10), pattern="2:4",
                   linear_filter=["fc2"])  # fmt: skip
    assert set(model.state_dict()) == set(before)  # no mask buffers were added
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def _train_steps(model, pruner, steps):  # type: ignore[no-untyped-def]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.sparsifier.attach(opt)
    x, y = _data(5)
    levels = []
    for t in range(steps):
        if pruner.step(t) is not None:
            levels.append((t, pruner.sparsifier.masks))
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return levels


def test_gradual_unstructured_reaches_target_and_masks_grow() -> None:
    torch.manual_seed(4)
    model = MLP()
    pr = sft.Pruner(model, sft.GradualMagnitude(final=0.8, start=2, end=20, frequency=3),
                    linear_filter=["fc1", "fc2"])  # fmt: skip
    prev = None
    for t in range(25):
        before = {n: w.detach().clone() for n, w in pr.sparsifier.weights().items()}
        level = pr.step(t)
        if level is not None:
            assert level == pytest.approx(pr.schedule.sparsity_at(t))
            for n, m in pr.sparsifier.masks.items():
                # equals the core's one-shot mask of the weights at that moment
                ref = sf.prune.magnitude(before[n].numpy(), level, scope="row").mask
                np.testing.assert_array_equal(m.numpy(), ref)
                if prev is not None:
                    assert not torch.any(m & ~prev[n])  # masks only grow
            prev = {n: m.clone() for n, m in pr.sparsifier.masks.items()}
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = _data(t)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        pr.sparsifier.after_step(opt)
    # row scope: int(0.8 * 16) = 12 of fc1's 16 and int(0.8 * 24) = 19 of fc2's 24 per row
    assert pr.sparsifier.sparsity() == pytest.approx((24 * 12 + 24 * 19) / (24 * 16 + 24 * 24))


def test_gradual_nm_ends_exactly_nm() -> None:
    torch.manual_seed(5)
    model = MLP()
    pr = sft.Pruner(model, sft.GradualMagnitude(final=0.5, start=0, end=12, frequency=4),
                    pattern="2:4", linear_filter=["fc1", "fc2"])  # fmt: skip
    levels = _train_steps(model, pr, 14)
    assert [t for t, _ in levels] == [0, 4, 8, 12]
    for mod in pr.sparsifier.modules.values():
        groups = mod.sparsity_mask.reshape(-1, 4).sum(dim=1)
        assert torch.all(groups == 2)
        assert torch.all((mod.weight != 0).reshape(-1, 4).sum(dim=1) <= 2)
    # before the end only part of the groups are 2:4
    pr2 = sft.Pruner(MLP(), sft.GradualMagnitude(final=0.5, start=0, end=12, frequency=4),
                     pattern="2:4", linear_filter=["fc1"])  # fmt: skip
    pr2.step(4)
    frac = 1 - (1 - 4 / 12) ** 3
    groups = pr2.sparsifier.masks["fc1"].reshape(-1, 4).sum(dim=1)
    assert int((groups == 2).sum()) == int(np.floor(frac * groups.numel()))


def test_gradual_block_and_iterative() -> None:
    torch.manual_seed(6)
    model = MLP()
    pr = sft.Pruner(model, sft.GradualMagnitude(final=0.5, start=0, end=6, frequency=3),
                    block=(4, 4), linear_filter=["fc2"])  # fmt: skip
    _train_steps(model, pr, 8)
    tiles = pr.sparsifier.masks["fc2"].reshape(6, 4, 6, 4).permute(0, 2, 1, 3).reshape(36, 16)
    assert set(tiles.sum(dim=1).tolist()) <= {0, 16}
    assert int((tiles.sum(dim=1) == 0).sum()) == 18
    model = MLP()
    imp = sft.IterativeMagnitude(rate=0.2, rounds=3, steps_per_round=4)
    pr = sft.Pruner(model, imp, scope="global", linear_filter=["fc1", "fc2"])
    levels = _train_steps(model, pr, 16)
    assert [t for t, _ in levels] == [4, 8, 12]
    total = 16 * 24 + 24 * 24
    assert pr.sparsifier.sparsity() == pytest.approx(int((1 - 0.8**3) * total) / total)


def test_one_shot_then_finetune_from_prune_model() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(7)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    report, sp, logs = sft.prune_and_finetune(
        model, ids[:2], [ids[2:]], steps=4, method="wanda", sparsity=0.5, lr=1e-3,
        progress=False, prune_kwargs={"progress": False},
    )  # fmt: skip
    assert len(report.layers) == 14
    assert len(sp.modules) == 14
    assert len(logs) == 4
    assert all(np.isfinite(log.loss) for log in logs)
    for n, mod in sp.modules.items():
        assert n.startswith("model.layers.")
        assert torch.all(mod.weight[~mod.sparsity_mask] == 0)
        assert float((~mod.sparsity_mask).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert logs[-1].sparsity == pytest.approx(sp.sparsity())


def test_frozen_linears_are_masked_without_gradient_hooks() -> None:
    model = MLP()
    model.fc1.weight.requires_grad_(False)  # e.g. a frozen teacher copy or a frozen layer
    sp = sft.Sparsifier(model, ["fc1", "fc2"])
    sp.prune(0.5)
    assert torch.all(model.fc1.weight[~sp.masks["fc1"]] == 0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sp.attach(opt)
    x, y = _data()
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert torch.all(model.fc2.weight[~sp.masks["fc2"]] == 0)
