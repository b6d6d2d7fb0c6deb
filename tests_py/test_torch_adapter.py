"""sparseforge.torch: pruning a transformers LlamaForCausalLM in place gives the same
weights as sparseforge.models.prune on the same checkpoint and calibration windows."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

import realdata
from sparseforge import models as sm

torch = pytest.importorskip("torch")
if importlib.util.find_spec("transformers") is None:
    pytest.skip("transformers is not installed", allow_module_level=True)

import sparseforge.torch as sft  # noqa: E402

STORIES = realdata.stories260k_path()
pytestmark = pytest.mark.skipif(
    STORIES is None, reason="stories260K not found (../shared/data or SPARSEFORGE_DATA)"
)


def _perm(head_dim: int) -> np.ndarray:
    # llama2.c's interleaved Q/K rows -> Hugging Face's rotate_half order, per head
    return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def to_hf(model: sm.LlamaModel) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden_dim,
            num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
            num_key_value_heads=c.n_kv_heads, max_position_embeddings=c.max_seq_len,
            rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=True,
            attention_bias=False, mlp_bias=False,
        )
    ).eval()  # fmt: skip
    p = _perm(c.head_dim)
    state = {}
    for name in c.weight_shapes():
        w = np.asarray(model.weight(name), dtype=np.float32)
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            w = w.reshape(-1, c.head_dim, w.shape[1])[:, p].reshape(w.shape)
        state[name] = torch.from_numpy(np.array(w))
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=False)
    return hf


def hf_weight(hf: Any, model: sm.LlamaModel, name: str) -> np.ndarray:
    w = dict(hf.named_parameters())[name].detach().numpy()
    if name.endswith(("q_proj.weight", "k_proj.weight")):
        d = model.config.head_dim
        inv = np.argsort(_perm(d))
        w = w.reshape(-1, d, w.shape[1])[:, inv].reshape(w.shape)
    return np.asarray(w)


@pytest.fixture(scope="module")
def setup() -> tuple[sm.LlamaModel, np.ndarray]:
    assert STORIES is not None
    model = sm.load(STORIES, linear_backend="sparseforge")
    text = (STORIES.parent.parent / "tinystories-valid-excerpt" / "tinystories_val.txt").read_text()
    windows = sm.calibration_windows(model, text[:30000], nsamples=4, seqlen=96)
    return model, windows


@pytest.mark.parametrize(
    ("method", "sparsity", "pattern"),
    [
        ("magnitude", 0.5, None),
        ("wanda", 0.5, None),
        ("wanda", None, "2:4"),
        ("sparsegpt", 0.5, None),
    ],
)
def test_same_pruned_weights_as_sf_models(
    setup: tuple[sm.LlamaModel, np.ndarray],
    method: str,
    sparsity: float | None,
    pattern: str | None,
) -> None:
    base, windows = setup
    ours = sm.LlamaModel(base.config, base._weights, base.tokenizer, linear_backend="sparseforge")
    hf = to_hf(base)
    params_before = {n: p.data_ptr() for n, p in hf.named_parameters()}
    sm.prune(ours, windows, method=method, sparsity=sparsity, pattern=pattern, progress=False)
    rep = sft.prune_model(
        hf, windows, method=method, sparsity=sparsity, pattern=pattern, progress=False
    )
    # pruned in place: the same parameter storage
    assert {n: p.data_ptr() for n, p in hf.named_parameters()} == params_before
    assert len(rep.layers) == 7 * base.config.n_layers
    worst_mask, worst_err = 0.0, 0.0
    for i in range(base.config.n_layers):
        for name in ours.linear_names(i):
            a = np.asarray(ours.weight(name))
            b = hf_weight(hf, base, name)
            assert (b == 0).mean() == pytest.approx((a == 0).mean(), abs=2e-3), name
            worst_mask = max(worst_mask, float(((a == 0) != (b == 0)).mean()))
            worst_err = max(worst_err, float(np.abs(a - b).max() / np.abs(a).max()))
    if method == "magnitude":
        assert worst_mask == 0.0
        assert worst_err == 0.0
    else:
        # The two forwards agree to ~1e-6 (float32 attention/RoPE order); scores that
        # close can swap a few near-tied weights. SparseGPT's updates inherit the same.
        assert worst_mask <= 2e-3, worst_mask
        assert worst_err <= (2e-3 if method == "wanda" else 5e-2), worst_err


def test_bad_input(setup: tuple[sm.LlamaModel, np.ndarray]) -> None:
    base, windows = setup
    hf = to_hf(base)
    with pytest.raises(ValueError, match="method: expected one of"):
        sft.prune_model(hf, windows, method="nope")
    with pytest.raises(ValueError, match="calib: expected"):
        sft.prune_model(hf, windows[0], method="magnitude")
    with pytest.raises(TypeError, match="calib: expected integer token ids"):
        sft.prune_model(hf, windows.astype(np.float32), method="magnitude")
    with pytest.raises(ValueError, match=r"pattern: 4:8 needs in_features divisible by 8"):
        sft.prune_model(hf, windows, method="magnitude", pattern="4:8", progress=False)
    with pytest.raises(ValueError, match="has no decoder layers"):
        sft.prune_model(torch.nn.Linear(4, 4), windows, method="magnitude")
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        sft.prune_model(object(), windows)
