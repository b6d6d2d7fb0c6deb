"""Structured dropout (LayerDrop, DropHead, MLP-neuron drop) against independent oracles:
a model with the skipped layers deleted, and o_proj / down_proj weights with the dropped
heads' / neurons' columns zeroed and the rest scaled by 1/(1-p)."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sparseforge.torch import dropout as sdrop  # noqa: E402


def _model(layers: int = 4, seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).train()


def _ids(batch: int = 1) -> torch.Tensor:
    return torch.randint(0, 40, (batch, 9), generator=torch.Generator().manual_seed(3))


def test_layerdrop_equals_the_model_without_the_skipped_layers() -> None:
    model = _model(layers=6)
    ref = copy.deepcopy(model)
    ld = sdrop.LayerDrop(model, p=0.5, seed=7)
    ids = _ids()
    seen = set()
    for _ in range(6):
        out = model(ids).logits
        skipped = list(ld.last)
        seen.add(tuple(skipped))
        kept = [i for i in range(6) if i not in skipped]
        oracle = copy.deepcopy(ref)
        oracle.model.layers = torch.nn.ModuleList([oracle.model.layers[i] for i in kept])
        oracle.config.num_hidden_layers = len(kept)
        torch.testing.assert_close(out, oracle(ids, use_cache=False).logits, rtol=1e-5, atol=1e-6)
    assert len(seen) > 1  # the decision changes between forwards
    # eval mode: identity
    model.eval()
    ref.eval()
    torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=0)
    assert ld.last == [] or model.training is False


def test_layerdrop_rates_frequency_and_gradients() -> None:
    model = _model(layers=4)
    ld = sdrop.LayerDrop(model, p=0.4, schedule="linear", seed=1)
    assert ld.rates == pytest.approx([0.1, 0.2, 0.3, 0.4])
    # the decisions are the seeded generator's draws, one per layer and forward, in order
    oracle = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (1, 3), generator=torch.Generator().manual_seed(3))
    counts = [0] * 4
    with torch.no_grad():
        for _ in range(40):
            model(ids, use_cache=False)
            expect = [i for i in range(4) if float(torch.rand(1, generator=oracle)) < ld.rates[i]]
            assert ld.last == expect
            for i in ld.last:
                counts[i] += 1
    assert counts[0] < counts[3]  # deeper layers are dropped more often
    # a skipped layer gets no gradient; the others do
    ids = _ids()
    model.zero_grad()
    while True:
        model(ids, labels=ids).loss.backward()
        if ld.last and len(ld.last) < 4:
            break
        model.zero_grad()
    for i, layer in enumerate(model.model.layers):
        g = layer.mlp.down_proj.weight.grad
        if i in ld.last:
            assert g is None or not torch.any(g)
        else:
            assert g is not None
            assert torch.any(g)


def test_layerdrop_same_seed_same_decisions_and_remove_restores() -> None:
    a, b = _model(), _model()
    la, lb = sdrop.LayerDrop(a, p=0.5, seed=3), sdrop.LayerDrop(b, p=0.5, seed=3)
    ids = _ids()
    for _ in range(5):
        torch.testing.assert_close(a(ids).logits, b(ids).logits, rtol=0, atol=0)
        assert la.last == lb.last
    ref = _model()
    la.remove()
    assert "forward" not in a.model.layers[0].__dict__
    torch.testing.assert_close(a(ids).logits, ref(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["head", "neuron"])
def test_unit_drop_equals_zeroed_and_scaled_weight_columns(kind: str) -> None:
    model = _model(layers=2)
    ref = copy.deepcopy(model)
    p = 0.5
    if kind == "head":
        drop = sdrop.HeadDrop(model, p=p, seed=11)
        units, name = 4, "self_attn.o_proj"
    else:
        drop = sdrop.NeuronDrop(model, p=p, seed=11)
        units, name = 24, "mlp.down_proj"
    ids = _ids(batch=2)
    out = model(ids).logits
    for b in range(2):
        oracle = copy.deepcopy(ref)
        for i, layer in enumerate(oracle.model.layers):
            keep = drop.last[i][b]  # (units,) bool
            assert keep.shape == (units,)
            lin = layer.get_submodule(name)
            width = lin.in_features // units
            col = keep.float().repeat_interleave(width) / (1 - p)
            with torch.no_grad():
                lin.weight.mul_(col[None, :])
        torch.testing.assert_close(out[b : b + 1], oracle(ids[b : b + 1], use_cache=False).logits,
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    # something was dropped and something kept
    allk = torch.cat([drop.last[i].flatten() for i in range(2)])
    assert allk.any()
    assert not allk.all()
    # eval: identity; p = 0: identity in training too; remove() detaches
    model.eval()
    ref.eval()
    torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=0)
    drop.remove()
    model.train()
    ref.train()
    torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=0)


def test_unit_drop_p_zero_is_identity() -> None:
    model = _model(layers=2)
    ref = copy.deepcopy(model)
    sdrop.HeadDrop(model, p=0.0)
    sdrop.NeuronDrop(model, p=0.0)
    ids = _ids()
    torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=0)


def test_bad_arguments_name_the_argument_and_leave_the_model_alone() -> None:
    model = _model(layers=2)
    ids = _ids()
    before = model(ids).logits.detach()
    hooks = sum(len(m._forward_pre_hooks) for m in model.modules())
    for call, match in [
        (lambda: sdrop.LayerDrop(model, p=1.0), "p:"),
        (lambda: sdrop.LayerDrop(model, p=-0.1), "p:"),
        (lambda: sdrop.LayerDrop(model, p="x"), "p:"),
        (lambda: sdrop.LayerDrop(model, schedule="cubic"), "schedule:"),
        (lambda: sdrop.LayerDrop(model, rates=[0.1]), "rates:"),
        (lambda: sdrop.LayerDrop(model, rates=[0.1, 1.5]), r"rates\[1\]:"),
        (lambda: sdrop.HeadDrop(model, p=0.1, num_heads=5), "num_units:"),
        (lambda: sdrop.HeadDrop(model, p=0.1, num_heads=0), "num_heads:"),
        (lambda: sdrop.HeadDrop(model, p=0.1, module="self_attn.nope"), "module:"),
        (lambda: sdrop.NeuronDrop(model, p=0.1, module="mlp.nope"), "module:"),
        (lambda: sdrop.NeuronDrop(torch.nn.Linear(3, 3), p=0.1), "model:"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            call()
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == hooks
    assert all("forward" not in layer.__dict__ for layer in model.model.layers)
    torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_structured_dropout_on_the_gpu_draws_the_cpu_masks() -> None:
    cpu = _model(layers=3)
    gpu = copy.deepcopy(cpu).to("cuda")
    drops = [(sdrop.HeadDrop(m, p=0.5, seed=5), sdrop.NeuronDrop(m, p=0.3, seed=6),
              sdrop.LayerDrop(m, p=0.3, seed=7)) for m in (cpu, gpu)]  # fmt: skip
    ids = _ids(batch=2)
    for _ in range(3):
        a = cpu(ids, use_cache=False).logits
        b = gpu(ids.to("cuda"), use_cache=False).logits
        assert drops[0][2].last == drops[1][2].last
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)
        b.sum().backward()  # gradients flow on the device
