"""Readers that trust nothing, writers that leave nothing behind (docs/robustness.md).

Every case that could hang (a FIFO, a header claiming 10^9 layers, a tiny greedy step)
runs in a child process with a timeout (tests_py/childproc.py), so a regression fails
with "hang" instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sparseforge as sf
from childproc import run_child
from sparseforge import _container, _io
from sparseforge.models import LlamaConfig
from sparseforge.models.hf import load_hf

safetensors_numpy = pytest.importorskip("safetensors.numpy")

_CFG = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 32,
    "max_position_embeddings": 32,
    "rms_norm_eps": 1e-5,
}


def _state(cfg: dict, layers: int | None = None) -> dict[str, np.ndarray]:
    c = LlamaConfig(
        dim=cfg["hidden_size"],
        hidden_dim=cfg["intermediate_size"],
        n_layers=layers or cfg["num_hidden_layers"],
        n_heads=cfg["num_attention_heads"],
        n_kv_heads=cfg["num_key_value_heads"],
        vocab_size=cfg["vocab_size"],
        max_seq_len=cfg["max_position_embeddings"],
        rope_style="half",
    )
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in c.weight_shapes().items()}


def _hf_dir(d: Path, cfg: dict | None = None, *, index: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = dict(_CFG if cfg is None else cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    if index is None:
        safetensors_numpy.save_file(_state(_CFG), str(d / "model.safetensors"))
    else:
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d


def test_hf_directory_loads_as_a_control(tmp_path: Path) -> None:
    m = load_hf(_hf_dir(tmp_path / "m"), tokenizer=False)
    assert m.config.n_layers == 1


@pytest.mark.parametrize(
    "shard", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors", "link"]
)
def test_shard_index_cannot_escape_the_model_directory(tmp_path: Path, shard: str) -> None:
    safetensors_numpy.save_file(_state(_CFG), str(tmp_path / "outside.safetensors"))
    d = _hf_dir(tmp_path / "m", index={"weight_map": {"model.embed_tokens.weight": shard}})
    (d / "sub").mkdir()
    (d / "link").symlink_to(tmp_path / "outside.safetensors")
    with pytest.raises(ValueError, match="outside the directory"):
        load_hf(d, tokenizer=False)


def test_shard_inside_the_directory_is_fine(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "shards").mkdir()
    safetensors_numpy.save_file(_state(_CFG), str(d / "shards" / "a.safetensors"))
    names = {n: "shards/a.safetensors" for n in _state(_CFG)}
    _hf_dir(d, index={"weight_map": names})
    assert load_hf(d, tokenizer=False).config.n_layers == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hidden_size", "16"),
        ("num_hidden_layers", [1]),
        ("rope_scaling", "linear"),
        ("rope_parameters", 3),
        ("tie_word_embeddings", "yes"),
        ("rms_norm_eps", {"a": 1}),
        ("num_hidden_layers", True),
    ],
)
def test_config_fields_are_type_checked(tmp_path: Path, key: str, value: object) -> None:
    d = _hf_dir(tmp_path / "m", {**_CFG, key: value})
    with pytest.raises(ValueError, match=key):
        load_hf(d, tokenizer=False)


def test_deeply_nested_json_is_a_value_error(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path / "m")
    (d / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested"):
        load_hf(d, tokenizer=False)
    th = tmp_path / "t.json"
    th.write_text('{"a":' * 50_000 + "1" + "}" * 50_000)
    with pytest.raises(ValueError, match="nested"):
        sf.activation.Thresholds.load(th)
    with pytest.raises(ValueError, match="NaN"):
        _io.parse_json('{"a": NaN}', "x")


def test_claimed_layer_counts_fail_fast(tmp_path: Path) -> None:
    for n in (10**7, 10**9, 10**11, 2**31):
        with pytest.raises(ValueError, match="n_layers"):
            LlamaConfig(
                dim=8,
                hidden_dim=8,
                n_layers=n,
                n_heads=2,
                n_kv_heads=1,
                vocab_size=8,
                max_seq_len=8,
            )
    d = _hf_dir(tmp_path / "big", {**_CFG, "num_hidden_layers": 10**9})
    with pytest.raises(ValueError, match="n_layers"):
        load_hf(d, tokenizer=False)
    d = _hf_dir(tmp_path / "more", {**_CFG, "num_hidden_layers": 5000})
    with pytest.raises(ValueError, match="claims 5000 layers, the weights hold 1 blocks"):
        load_hf(d, tokenizer=False)


def test_safetensors_header_ints_are_checked(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path / "m")
    raw = (d / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    for bad in ([2**64, 16], ["1", 16], [-1, 2**62], [1.5, 3]):
        h = dict(header)
        h[key] = {**header[key], "shape": bad}
        text = json.dumps(h).encode()
        (d / "model.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
        with pytest.raises(ValueError, match=r"corrupt header entry|shape"):
            load_hf(d, tokenizer=False)


_FIFO_CHILD = r"""
import os, sys, numpy as np
import sparseforge as sf
from sparseforge import _container
from sparseforge.models import load_llama2c, load_saved
from sparseforge.models.hf import load_hf
d = sys.argv[1] if len(sys.argv) > 1 else {d!r}
fifo = os.path.join(d, "fifo")
hf = os.path.join(d, "hf")
cases = {{
    "container.load": lambda: _container.load(fifo),
    "container.load_metadata": lambda: _container.load_metadata(fifo),
    "load_saved": lambda: load_saved(fifo),
    "load_llama2c": lambda: load_llama2c(fifo),
    "LayerStats.load": lambda: sf.calib.LayerStats.load(fifo),
    "Thresholds.load": lambda: sf.activation.Thresholds.load(fifo),
    "load_hf(config.json fifo)": lambda: load_hf(hf, tokenizer=False),
    "Llama2cTokenizer": lambda: __import__("sparseforge.models").models.Llama2cTokenizer(fifo),
}}
try:
    from sparseforge.models import load_gguf
    cases["load_gguf"] = lambda: load_gguf(fifo)
except ImportError:
    pass
bad = []
for name, f in cases.items():
    try:
        f()
        bad.append(name + ": accepted")
    except ValueError as e:
        if "FIFO" not in str(e) and "not a" not in str(e):
            bad.append(f"{{name}}: {{e}}")
    except Exception as e:
        bad.append(f"{{name}}: {{type(e).__name__}}: {{e}}")
print("BAD", bad)
assert not bad
"""


def test_every_reader_refuses_a_fifo_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "hf").mkdir()
    os.mkfifo(tmp_path / "hf" / "config.json")
    out = run_child(_FIFO_CHILD.format(d=str(tmp_path)), timeout=60)
    assert out.kind == "ok", str(out)


def test_teal_greedy_refuses_a_step_too_small_to_finish() -> None:
    out = run_child(
        """
        import numpy as np, sparseforge as sf
        from sparseforge.models import LlamaConfig, LlamaModel
        c = LlamaConfig(dim=16, hidden_dim=24, n_layers=1, n_heads=2, n_kv_heads=1,
                        vocab_size=32, max_seq_len=32)
        rng = np.random.default_rng(0)
        w = {n: rng.standard_normal(s).astype(np.float32) for n, s in c.weight_shapes().items()}
        m = LlamaModel(c, w)
        ids = rng.integers(0, 32, 200)
        st = sf.activation.calibrate(m, ids, seqlen=16, max_windows=2)
        try:
            sf.activation.teal_greedy(
                m, st, ids, max_sparsity=0.5, base_step=1e-12, seqlen=16, max_windows=2
            )
        except ValueError as e:
            assert "base_step" in str(e), e
            print("refused")
        """,
        timeout=120,
    )
    assert out.kind == "ok", str(out)
    assert "refused" in out.output


# ---- atomic writes: kill -9 mid-write ---------------------------------------------------

_KILLED_WRITER = r"""
import sys, time, numpy as np
from sparseforge import _container
orig = _container._write_array
def slow(f, arr):
    orig(f, arr)
    f.flush()
    print("WRITING", flush=True)
    time.sleep(60)
_container._write_array = slow
_container.save(sys.argv[1], {"a": np.full(1000, 7.0, np.float32), "b": np.ones(10, np.float32)})
"""


def test_killed_writer_leaves_old_file_and_next_write_removes_debris(tmp_path: Path) -> None:
    target = tmp_path / "t.sft"
    _container.save(target, {"old": np.arange(5, dtype=np.float32)})
    before = target.read_bytes()
    for _ in range(3):  # several kills: several temporaries
        p = subprocess.Popen(
            [sys.executable, "-c", _KILLED_WRITER, str(target)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.startswith("WRITING")
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        assert target.read_bytes() == before  # the old file, intact
        # each new write removed the previous killed write's temporary: one at a time
        debris = _io.stale_temps(target)
        assert len(debris) == 1
        assert debris[0].stat().st_size > 0
    np.testing.assert_array_equal(_container.load(target)["old"], np.arange(5))
    _container.save(target, {"new": np.zeros(3, np.float32)})  # the next write cleans up
    assert sorted(os.listdir(tmp_path)) == ["t.sft"]
    assert list(_container.load(target)) == ["new"]


_KILLED_EXPORT = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
from tinymodels import random_model
import sparseforge.models as sm
from sparseforge.models import _export_io
orig = _export_io.write_safetensors
def slow(*args, **kwargs):
    out = orig(*args, **kwargs)
    print("WRITING", flush=True)
    time.sleep(60)
    return out
_export_io.write_safetensors = slow
sm.export_hf(random_model(0), sys.argv[1], tokenizer=False, overwrite=True)
"""


def test_killed_export_leaves_old_directory_and_next_export_removes_debris(
    tmp_path: Path,
) -> None:
    import sparseforge.models as sm
    from tinymodels import random_model

    target = tmp_path / "hf"
    model = random_model(1)
    sm.export_hf(model, target, tokenizer=False)
    before = {f.name: f.read_bytes() for f in target.iterdir()}
    for _ in range(2):
        p = subprocess.Popen(
            [sys.executable, "-c", _KILLED_EXPORT, str(target), str(Path(__file__).parent)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.startswith("WRITING"), line
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        assert {f.name: f.read_bytes() for f in target.iterdir()} == before  # intact
        debris = _io.stale_temps(target)
        assert len(debris) == 1  # the previous kill's directory went with this export
        assert debris[0].is_dir()
        assert any(debris[0].iterdir())
    sm.export_hf(model, target, tokenizer=False, overwrite=True)  # cleans up
    assert sorted(os.listdir(tmp_path)) == ["hf"]
    np.testing.assert_array_equal(
        load_hf(target, tokenizer=False).weight("model.norm.weight"),
        model.weight("model.norm.weight"),
    )


def test_live_writer_temporaries_are_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    live = tmp_path / f".x.json.sf-tmp-{os.getppid()}-abc"
    live.write_text("in progress")
    with _io.atomic_write(target, "w") as f:
        f.write("{}")
    assert live.exists()
    assert target.read_text() == "{}"


def test_every_writer_uses_the_atomic_helper(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    real = _io.atomic_write

    def spy(path, mode="wb"):  # type: ignore[no-untyped-def]
        calls.append(os.path.basename(path))
        return real(path, mode)

    import sparseforge._container as c
    import sparseforge.activation.thresholds as a
    import sparseforge.calib as cal

    for mod in (c, a, cal):
        monkeypatch.setattr(mod, "atomic_write", spy)
    st = sf.calib.LayerStats(4)
    st.update(np.ones((2, 4), np.float32))
    st.save(tmp_path / "s.npz")
    c.save(tmp_path / "c.sft", {"x": np.ones(2, np.float32)})
    th = sf.activation.Thresholds("teal", {}, {}, 0.0, "uniform-empirical", {})
    th.save(tmp_path / "t.json")
    assert calls == ["s.npz", "c.sft", "t.json"]


# ---- statistics and saved tensors ---------------------------------------------------------


def test_statistics_file_with_absurd_token_count_or_forged_shape(tmp_path: Path) -> None:
    st = sf.calib.LayerStats(4)
    st.update(np.ones((3, 4), np.float32))
    st.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["tokens"] = np.array(2**64 - 1, dtype=np.uint64)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="tokens"):
        sf.calib.LayerStats.load(tmp_path / "bad.npz")
    arrays["tokens"] = np.array(3, dtype=np.uint64)
    arrays["sum_squares"] = np.array([1.0, np.nan, 1.0, 1.0])
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(ValueError, match="NaN"):
        sf.calib.LayerStats.load(tmp_path / "nan.npz")
    # a member whose npy header claims 10^12 elements: refused before allocating
    import io
    import zipfile

    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        member, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )
    member.write(np.ones(4).tobytes())
    with zipfile.ZipFile(tmp_path / "forged.npz", "w") as z:
        for k, v in arrays.items():
            if k != "sum_squares":
                b = io.BytesIO()
                np.save(b, v)
                z.writestr(k + ".npy", b.getvalue())
        z.writestr("sum_squares.npy", member.getvalue())
    out = run_child(
        f"""
        import sparseforge as sf
        try:
            sf.calib.LayerStats.load({str(tmp_path / "forged.npz")!r})
        except ValueError as e:
            print("refused", e)
        """,
        timeout=60,
        memory=1 << 30,
    )
    assert out.kind == "ok", str(out)
    assert "refused" in out.output


def test_nonfinite_values_in_saved_tensors_are_reported(tmp_path: Path) -> None:
    w = np.ones((4, 8), np.float32)
    clean = sf.format.NMTensor.from_dense(np.where(np.arange(8) % 2, w, 0), n=2, m=4)
    _kind, meta, parts = _container._compressed_state("nm", clean)
    parts = {k: v.copy() for k, v in parts.items()}
    parts["values"][0, 0] = np.inf
    t = type(clean)._sf_from_state(meta, parts)  # as a tampered or diverged file holds it
    w[1, 1] = np.nan
    _container.save(tmp_path / "a.sft", {"dense": w, "nm": t})
    assert np.isnan(_container.load(tmp_path / "a.sft")["dense"]).any()  # as stored
    with pytest.raises(ValueError, match="NaN or Inf"):
        _container.load(tmp_path / "a.sft", allow_nonfinite=False)
    _container.save(tmp_path / "b.sft", {"nm": t})
    with pytest.raises(ValueError, match=r"'nm'.*NaN or Inf"):
        _container.load(tmp_path / "b.sft", allow_nonfinite=False)


def test_many_zero_size_tensors_load_in_linear_time(tmp_path: Path) -> None:
    # 20,000 here (about 2 s); bench/fuzz.py --long runs the 200,000 (about 15 s)
    count = int(os.environ.get("SPARSEFORGE_ZERO_TENSORS", "20000"))
    out = run_child(
        f"""
        import numpy as np
        from sparseforge import _container
        p = {str(tmp_path / "z.sft")!r}
        _container.save(p, {{f"t{{i}}": np.zeros((0, 3), np.float32) for i in range({count})}})
        assert len(_container.load(p)) == {count}
        print("done")
        """,
        timeout=240,
    )
    assert out.kind == "ok", str(out)
    assert "done" in out.output


# ---- NaN / Inf in GGUF and HF weights -----------------------------------------------------


def test_nonfinite_hf_weight_is_named_unless_allowed(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path / "m")
    state = _state(_CFG)
    name = "model.layers.0.mlp.down_proj.weight"
    state[name][1, 2] = np.inf
    safetensors_numpy.save_file(state, str(d / "model.safetensors"))
    with pytest.raises(
        ValueError, match=rf"{name}.*NaN or Inf at element {1 * state[name].shape[1] + 2}"
    ):
        load_hf(d, tokenizer=False)
    m = load_hf(d, tokenizer=False, allow_nonfinite=True)
    assert np.isinf(m.weight(name)[1, 2])
    with pytest.raises(TypeError, match="allow_nonfinite"):
        load_hf(d, tokenizer=False, allow_nonfinite="no")


def _gguf(path: Path, qtype: str) -> dict[str, np.ndarray]:
    """A 1-layer Llama GGUF whose 2-D weights are stored as ``qtype``; returns the weights."""
    gguf = pytest.importorskip("gguf")
    from sparseforge.models.export_gguf import _gguf_name  # the loader's names, inverted

    c = LlamaConfig(
        dim=32, hidden_dim=64, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=32, max_seq_len=32
    )
    rng = np.random.default_rng(0)
    w = {n: rng.standard_normal(s).astype(np.float32) for n, s in c.weight_shapes().items()}
    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_block_count(1)
    wr.add_context_length(32)
    wr.add_embedding_length(32)
    wr.add_feed_forward_length(64)
    wr.add_head_count(2)
    wr.add_head_count_kv(1)
    wr.add_layer_norm_rms_eps(1e-5)
    q = getattr(gguf.GGMLQuantizationType, qtype)
    for n, a in w.items():
        if a.ndim == 2 and qtype != "F32":
            wr.add_tensor(_gguf_name(n), gguf.quants.quantize(a, q), raw_dtype=q)
        else:
            wr.add_tensor(_gguf_name(n), a)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return w


@pytest.mark.parametrize(("qtype", "offset"), [("F32", 4 * 5), ("Q8_0", 0), ("Q4_1", 2)])
def test_nonfinite_gguf_tensor_is_named_unless_allowed(
    tmp_path: Path, qtype: str, offset: int
) -> None:
    gguf = pytest.importorskip("gguf")
    from sparseforge.models.gguf import load_gguf

    p = tmp_path / "m.gguf"
    _gguf(p, qtype)
    load_gguf(p, tokenizer=False)  # the control loads
    t = next(t for t in gguf.GGUFReader(str(p)).tensors if t.name == "blk.0.ffn_up.weight")
    raw = bytearray(p.read_bytes())
    # F32: element 5 := NaN; quantized: the first block's d (Q8_0) or m (Q4_1) := f16 NaN
    nan = np.array(np.nan, "<f4" if qtype == "F32" else "<f2").tobytes()
    raw[t.data_offset + offset : t.data_offset + offset + len(nan)] = nan
    p.write_bytes(bytes(raw))
    where = "element 5" if qtype == "F32" else "the scale of block 0"
    with pytest.raises(ValueError, match=rf"'blk.0.ffn_up.weight'.*NaN or Inf at {where}"):
        load_gguf(p, tokenizer=False)
    m = load_gguf(p, tokenizer=False, allow_nonfinite=True)
    assert np.isnan(m.weight("model.layers.0.mlp.up_proj.weight")).any()
