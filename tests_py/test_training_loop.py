"""The training-loop helper (per-step logs of loss, lr and sparsity; schedule on optimizer
steps; a group-lasso prox after each step) and the transformers Trainer callback."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")

import sparseforge.torch as sft  # noqa: E402


def _mlp():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def _batches(n: int = 3):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 8, generator=g), torch.randn(8, 4, generator=g)) for _ in range(n)]


def _mse(model, batch):  # type: ignore[no-untyped-def]
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def test_train_logs_every_step_and_follows_the_schedule(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from sparseforge import _progress

    monkeypatch.setattr(_progress, "USE_TQDM", False)  # the plain fallback
    model = _mlp()
    pr = sft.Pruner(model, sft.GradualMagnitude(final=0.75, start=1, end=7, frequency=2),
                    linear_filter=["0", "2"])  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    logs = sft.train(model, _batches(), opt, steps=10, loss_fn=_mse, pruner=pr,
                     scheduler=sched, accumulation=2, clip_grad_norm=1.0,
                     progress=True)  # fmt: skip
    assert [log.step for log in logs] == list(range(10))
    want = [pr.schedule.sparsity_at(t) for t in range(10)]
    # per-row rounding: int(s * in_features) pruned per row (in = 8 and 16)
    for log, s in zip(logs, want, strict=True):
        exact = (16 * int(s * 8) + 4 * int(s * 16)) / (16 * 8 + 4 * 16)
        assert log.sparsity == pytest.approx(exact)
    assert logs[0].lr == pytest.approx(1e-2)
    assert logs[-1].lr == pytest.approx(1e-2 / 10)
    for mod in pr.sparsifier.modules.values():
        assert torch.all(mod.weight[~mod.sparsity_mask] == 0)
    err = capsys.readouterr().err
    if importlib.util.find_spec("tqdm") is None:  # the plain fallback prints every 5 steps
        assert "step 5/10" in err
        assert "step 10/10" in err
        assert "sparsity" in err


def test_train_with_group_lasso_prox_zeroes_whole_rows() -> None:
    model = _mlp()
    groups = sft.Groups.rows(model[0].weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sft.train(model, _batches(), opt, steps=20, loss_fn=_mse, progress=False,
              after_step=lambda t: groups.prox_(lam=0.5, lr=0.1))  # fmt: skip
    zero = groups.zero_groups()
    assert int(zero.sum()) > 0
    assert torch.all(model[0].weight[zero] == 0)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="no transformers")
def test_trainer_callback_keeps_masks_and_logs_sparsity(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": (ids := torch.randint(0, 32, (8,), generator=g)), "labels": ids}
            for _ in range(8)]  # fmt: skip
    pr = sft.Pruner(model, sft.GradualMagnitude(final=0.5, start=0, end=2, frequency=1))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-2,
        weight_decay=0.1, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True,
    )  # fmt: skip
    logged: list[dict] = []

    class Keep(transformers.TrainerCallback):  # type: ignore[misc]
        def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            logged.append(dict(logs or {}))

    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=data,
        callbacks=[sft.sparsity_callback(pruner=pr), Keep()],
    )  # fmt: skip
    trainer.train()
    assert pr.sparsifier.sparsity() == pytest.approx(0.5)
    for mod in pr.sparsifier.modules.values():
        assert torch.all(mod.weight[~mod.sparsity_mask] == 0)
    assert any("sparsity" in entry for entry in logged)
    assert "lm_head" not in pr.sparsifier.modules


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_masks_follow_the_model_to_the_gpu() -> None:
    model = _mlp()
    sp = sft.Sparsifier(model, ["0", "2"])
    sp.prune(0.5)
    model.to("cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sp.attach(opt)
    x, y = torch.randn(8, 8, device="cuda"), torch.randn(8, 4, device="cuda")
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    for mod in sp.modules.values():
        assert mod.sparsity_mask.device.type == "cuda"
        assert torch.all(mod.weight[~mod.sparsity_mask] == 0)
    # a new mask chosen on the GPU equals the one chosen on the CPU copy
    w = model[0].weight.detach()
    assert torch.equal(sft.select_mask(w, 0.7).cpu(), sft.select_mask(w.cpu(), 0.7))
