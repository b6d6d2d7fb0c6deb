"""sf.save / sf.load / sf.load_metadata: the safetensors-compatible on-disk container.

Round trips of every dtype and rank (bit for bit), odd names, user metadata, compressed
tensors through a fake format class implementing the protocol; interoperability with the
``safetensors`` package both ways; every truncation and bit flips in the size prefix, the
header and the data raise ValueError naming the file (and the tensor where one is hit);
structurally corrupt headers re-signed with a valid header CRC; atomic writes; bad input.
The file layout is checked against the spec in docs/formats.md by reading it here by hand.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import sparseforge as sf
from sparseforge import _container

ALL_DTYPES = [
    np.bool_,
    np.uint8,
    np.int8,
    ml_dtypes.float8_e5m2,
    ml_dtypes.float8_e4m3fn,
    np.int16,
    np.uint16,
    np.float16,
    ml_dtypes.bfloat16,
    np.int32,
    np.uint32,
    np.float32,
    np.float64,
    np.int64,
    np.uint64,
]
SHAPES = [(), (1,), (7,), (3, 5), (2, 3, 4), (0,), (3, 0), (2, 1, 1, 3)]


def random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Random bit patterns (NaN payloads included) of the dtype."""
    dt = np.dtype(dtype)
    count = int(np.prod(shape))
    if dt == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    raw = rng.integers(0, 256, size=count * dt.itemsize, dtype=np.uint8)
    return raw.view(dt).reshape(shape)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.tobytes() == np.ascontiguousarray(b).tobytes()
    )


def read_parts(path: Path) -> tuple[dict[str, Any], bytes]:
    """(header dict, data bytes) read by hand, following docs/formats.md."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_parts(path: Path, header: dict[str, Any], data: bytes) -> None:
    """Write a header (re-signed with the header CRC if it carries one) and data."""
    meta = header.get("__metadata__", {})
    body = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    if "sparseforge.header_crc32" in meta:
        meta["sparseforge.header_crc32"] = "00000000"
        body = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
        body += b" " * (-len(body) % 8)
        crc = f"{zlib.crc32(body):08x}".encode()
        field = b'"sparseforge.header_crc32":"'
        body = body.replace(field + b'00000000"', field + crc + b'"')
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)


class FakeTensor:
    """A compressed format implementing the container protocol (values + index)."""

    _sf_kind = "fake"

    def __init__(self, shape: tuple[int, int], values: np.ndarray, index: np.ndarray) -> None:
        self.shape, self.values, self.index = shape, values, index

    def _sf_state(self) -> tuple[dict[str, str], dict[str, np.ndarray]]:
        meta = {"shape": f"{self.shape[0]},{self.shape[1]}", "note": 'ünï:{}"\\'}
        return meta, {"values": self.values, "index": self.index}

    @classmethod
    def _sf_from_state(cls, meta: dict[str, str], arrays: dict[str, np.ndarray]) -> FakeTensor:
        if set(arrays) != {"values", "index"}:
            raise ValueError(f"expected components index, values, got {sorted(arrays)}")
        if arrays["values"].shape != arrays["index"].shape:
            raise ValueError("values and index differ in shape")
        rows, cols = (int(s) for s in meta["shape"].split(","))
        return cls((rows, cols), arrays["values"], arrays["index"])


def fake(rng: np.random.Generator, rows: int = 4, cols: int = 8) -> FakeTensor:
    values = rng.standard_normal((rows, cols // 2)).astype(ml_dtypes.bfloat16)
    index = rng.integers(0, cols, size=(rows, cols // 2)).astype(np.uint8)
    return FakeTensor((rows, cols), values, index)


@pytest.fixture
def kinds(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_container, "_kinds", lambda: {"fake": FakeTensor})
    return


@pytest.fixture
def sample(tmp_path: Path, kinds: None) -> tuple[Path, dict[str, Any]]:
    """A small file with dense arrays of several item sizes and one compressed tensor."""
    rng = np.random.default_rng(0)
    tensors: dict[str, Any] = {
        "w": rng.standard_normal((3, 5)).astype(np.float32),
        "b": random_array(rng, (2, 3), ml_dtypes.bfloat16),
        "i": np.arange(7, dtype=np.int8),
        "c": fake(rng),
        "d": np.arange(3, dtype=np.float64),
        "m": np.array([True, False, True]),
    }
    path = tmp_path / "sample.safetensors"
    sf.save(path, tensors, metadata={"model": "tiny"})
    return path, tensors


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("mmap", [False, True])
def test_round_trip_every_dtype_and_rank(tmp_path: Path, dtype: Any, mmap: bool) -> None:
    rng = np.random.default_rng(1)
    tensors = {f"t{i}": random_array(rng, s, dtype) for i, s in enumerate(SHAPES)}
    path = tmp_path / "a.safetensors"
    sf.save(path, tensors)
    got = sf.load(path, mmap=mmap)
    assert list(got) == list(tensors)
    for name, arr in tensors.items():
        assert same(got[name], arr), name
        out = got[name]
        assert out.ctypes.data % out.dtype.itemsize == 0  # aligned, also in a memory map
        assert out.flags.c_contiguous
        if mmap and out.size:
            assert not out.flags.writeable
            assert not out.flags.owndata
        if not mmap:
            assert out.flags.writeable


def test_empty_mapping_and_metadata_only(tmp_path: Path) -> None:
    path = tmp_path / "e.safetensors"
    sf.save(path, {})
    assert sf.load(path) == {}
    assert sf.load(path, mmap=True) == {}
    assert sf.load_metadata(path) == {}
    sf.save(path, {}, metadata={"k": "v"})
    assert sf.load_metadata(path) == {"k": "v"}


def test_odd_names_and_order(tmp_path: Path) -> None:
    names = [
        "model.layers.0.self_attn.q_proj.weight",
        "ünïcödé ✓ 🙂",
        'quote " and \\ backslash',
        "new\nline\ttab",
        "colon:in:name",
        "__sf__",  # reserved is "__sf__:" only
        "__metadata",
        "z",
        "a",
        " ",
    ]
    tensors = {n: np.full((2,), i, dtype=np.int32) for i, n in enumerate(names)}
    path = tmp_path / "n.safetensors"
    sf.save(path, tensors)
    got = sf.load(path)
    assert list(got) == names
    for n in names:
        assert same(got[n], tensors[n])


def test_user_metadata(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    meta = {"format": "pt", "ünï": 'cödé "q" \\', "empty": "", "json": '{"a": [1, 2]}'}
    sf.save(path, {"x": np.zeros(3, np.float32)}, metadata=meta)
    assert sf.load_metadata(path) == meta
    assert sf.load_metadata(str(path)) == meta


def test_layout_follows_the_spec(sample: tuple[Path, dict[str, Any]]) -> None:
    path, tensors = sample
    header, data = read_parts(path)
    n = len(path.read_bytes()) - len(data) - 8
    assert n % 8 == 0
    meta = header.pop("__metadata__")
    assert meta["sparseforge.format"] == "1"
    assert meta["sparseforge.checksum"] == "crc32"
    assert meta["model"] == "tiny"
    checksums = json.loads(meta["sparseforge.checksums"])
    described = json.loads(meta["sparseforge.tensors"])
    assert described == {
        "c": {
            "kind": "fake",
            "meta": {"shape": "4,8", "note": 'ünï:{}"\\'},
            "components": {"values": "__sf__:c:values", "index": "__sf__:c:index"},
        }
    }
    assert (
        set(header)
        == set(checksums)
        == {"w", "b", "i", "d", "m", "__sf__:c:values", "__sf__:c:index"}
    )
    ends = sorted((info["data_offsets"] for info in header.values()), key=lambda o: o[0])
    assert ends[0][0] == 0
    assert ends[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ends))
    itemsize = {"F64": 8, "F32": 4, "BF16": 2, "I8": 1, "BOOL": 1, "U8": 1}
    for key, info in header.items():
        begin, end = info["data_offsets"]
        assert (8 + n + begin) % itemsize[info["dtype"]] == 0, key
        assert checksums[key] == f"{zlib.crc32(data[begin:end]):08x}", key
    assert data[slice(*header["w"]["data_offsets"])] == tensors["w"].tobytes()
    raw = path.read_bytes()[8 : 8 + n]
    crc = meta["sparseforge.header_crc32"]
    zeroed = raw.replace(
        f'"sparseforge.header_crc32":"{crc}"'.encode(), b'"sparseforge.header_crc32":"00000000"'
    )
    assert f"{zlib.crc32(zeroed):08x}" == crc


def test_compressed_round_trip(sample: tuple[Path, dict[str, Any]]) -> None:
    path, tensors = sample
    for mmap in (False, True):
        got = sf.load(path, mmap=mmap)
        assert list(got) == ["w", "b", "i", "c", "d", "m"]
        c = got["c"]
        assert isinstance(c, FakeTensor)
        assert c.shape == (4, 8)
        assert same(c.values, tensors["c"].values)
        assert same(c.index, tensors["c"].index)
        for name in ("w", "b", "i", "d", "m"):
            assert same(got[name], tensors[name])
    assert sf.load_metadata(path) == {"model": "tiny"}


def test_non_contiguous_fortran_and_big_endian_are_copied(tmp_path: Path) -> None:
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    tensors = {
        "strided": base[::2, 1::3],
        "fortran": np.asfortranarray(base),
        "transposed": base.T,
        "big": base.astype(">f4"),
        "big_i16": np.arange(5, dtype=">i2"),
    }
    before = {k: (v.copy(), v.dtype) for k, v in tensors.items()}
    path = tmp_path / "c.safetensors"
    sf.save(path, tensors)
    for k, (v, dt) in before.items():  # inputs untouched
        assert tensors[k].dtype == dt
        assert np.array_equal(tensors[k], v)
    got = sf.load(path)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype.newbyteorder("<")
        np.testing.assert_array_equal(got[k], v)
    header, _ = read_parts(path)
    assert header["big"]["dtype"] == "F32"
    assert header["big_i16"]["dtype"] == "I16"


def test_mmap_arrays_outlive_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    x = np.arange(1000, dtype=np.float32)
    sf.save(path, {"x": x})
    got = sf.load(path, mmap=True)
    os.unlink(path)
    np.testing.assert_array_equal(got["x"], x)


def test_file_mode_follows_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "p.safetensors"
    sf.save(path, {"x": np.zeros(2)})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


# ------------------------------------------------------------- the safetensors package


def test_safetensors_reads_our_files(sample: tuple[Path, dict[str, Any]]) -> None:
    st_numpy = pytest.importorskip("safetensors.numpy")
    safetensors = pytest.importorskip("safetensors")
    rng = np.random.default_rng(2)
    path = sample[0].parent / "np.safetensors"
    plain = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.float16, np.int32]
    plain += [np.uint32, np.float32, np.float64, np.int64, np.uint64]
    tensors = {np.dtype(d).name + str(s): random_array(rng, s, d) for d in plain for s in SHAPES}
    sf.save(path, tensors, metadata={"who": "me"})
    got = st_numpy.load_file(str(path))
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        assert same(got[k], v), k
    with safetensors.safe_open(str(path), framework="np") as f:
        assert f.metadata()["who"] == "me"
    # the compressed tensor's components are ordinary tensors under reserved keys
    got = st_numpy.load_file(str(sample[0]))
    assert same(got["__sf__:c:index"], sample[1]["c"].index)


def test_safetensors_torch_reads_bf16_and_fp8(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    rng = np.random.default_rng(3)
    dtypes = {
        "bf16": (ml_dtypes.bfloat16, torch.bfloat16),
        "e4m3": (ml_dtypes.float8_e4m3fn, torch.float8_e4m3fn),
        "e5m2": (ml_dtypes.float8_e5m2, torch.float8_e5m2),
    }
    tensors = {k: random_array(rng, (3, 4), d) for k, (d, _) in dtypes.items()}
    path = tmp_path / "t.safetensors"
    sf.save(path, tensors)
    got = st_torch.load_file(str(path))
    for k, (_, tdt) in dtypes.items():
        assert got[k].dtype == tdt
        assert got[k].view(torch.uint8).numpy().tobytes() == tensors[k].tobytes()


@pytest.mark.parametrize("mmap", [False, True])
def test_we_read_safetensors_files(tmp_path: Path, mmap: bool) -> None:
    st_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(4)
    tensors = {
        "a": rng.standard_normal((4, 5)).astype(np.float32),
        "b": np.arange(3, dtype=np.int64),
        "c": np.ones((2, 2), dtype=np.float16),
        "d": np.array([True, False]),
        "e": np.zeros((0, 3), dtype=np.uint8),
    }
    path = tmp_path / "st.safetensors"
    st_numpy.save_file(tensors, str(path), metadata={"format": "np"})
    got = sf.load(path, mmap=mmap)
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        assert same(got[k], v), k
    assert sf.load_metadata(path) == {"format": "np"}
    st_numpy.save_file(tensors, str(path))  # no __metadata__ at all
    assert sf.load_metadata(path) == {}
    assert set(sf.load(path)) == set(tensors)


def test_unsupported_dtype_in_a_safetensors_file(tmp_path: Path) -> None:
    st_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "c64.safetensors"
    try:
        st_numpy.save_file({"z": np.zeros(2, np.complex64)}, str(path))
    except (KeyError, ValueError, TypeError):
        pytest.skip("this safetensors version cannot write complex64")
    with pytest.raises(ValueError, match=r"c64\.safetensors: tensor 'z': unsupported dtype 'C64'"):
        sf.load(path)


# ------------------------------------------------------------------- corrupt files


def assert_load_fails(path: Path, match: str | None = None) -> str:
    """Every entry point raises ValueError naming the file."""
    messages = []
    for fn in (
        lambda: sf.load(path),
        lambda: sf.load(path, mmap=True),
        lambda: sf.load(path, verify=False),
    ):
        with pytest.raises(ValueError, match=match) as info:
            fn()
        assert str(path) in str(info.value)
        messages.append(str(info.value))
    return messages[0]


def test_every_truncation_fails(sample: tuple[Path, dict[str, Any]]) -> None:
    path, _ = sample
    raw = path.read_bytes()
    broken = path.parent / "truncated.safetensors"
    for size in range(len(raw)):
        broken.write_bytes(raw[:size])
        with pytest.raises(ValueError, match=r"truncated\.safetensors"):
            sf.load(broken)
        if size % 5 == 0:
            with pytest.raises(ValueError, match=r"truncated\.safetensors"):
                sf.load_metadata(broken)
    broken.write_bytes(raw + b"\0")  # trailing bytes are not allowed either
    assert_load_fails(broken, "trailing bytes")


def test_bit_flips_in_size_prefix_and_header_fail(sample: tuple[Path, dict[str, Any]]) -> None:
    path, _ = sample
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    broken = path.parent / "flipped.safetensors"
    positions = [(i, b) for i in range(8) for b in range(8)]
    positions += [(i, i % 8) for i in range(8, 8 + n)]  # every header byte, one bit each
    positions += [(i, (i + 3) % 8) for i in range(8, 8 + n, 5)]  # and another bit for some
    for i, b in positions:
        flipped = bytearray(raw)
        flipped[i] ^= 1 << b
        broken.write_bytes(bytes(flipped))
        with pytest.raises(ValueError, match=r"flipped\.safetensors"):
            sf.load(broken, verify=False)
        if i % 5 == 0:
            with pytest.raises(ValueError, match=r"flipped\.safetensors"):
                sf.load_metadata(broken)


def test_bit_flips_in_data_name_the_tensor(sample: tuple[Path, dict[str, Any]]) -> None:
    path, _ = sample
    header, data = read_parts(path)
    start = len(path.read_bytes()) - len(data)
    names = {
        "w": "'w'",
        "b": "'b'",
        "i": "'i'",
        "d": "'d'",
        "m": "'m'",
        "__sf__:c:values": "'c' (component 'values')",
        "__sf__:c:index": "'c' (component 'index')",
    }
    broken = path.parent / "flipped.safetensors"
    raw = path.read_bytes()
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        for pos in range(begin, end):
            flipped = bytearray(raw)
            flipped[start + pos] ^= 1 << (pos % 8)
            broken.write_bytes(bytes(flipped))
            for mmap in (False, True):
                with pytest.raises(ValueError, match=r"checksum mismatch|BOOL data") as info_:
                    sf.load(broken, mmap=mmap)
                assert f"tensor {names[key]}" in str(info_.value)
    # verify=False skips the data checksums (the header is still checked)
    begin, _ = header["w"]["data_offsets"]
    flipped = bytearray(raw)
    flipped[start + begin] ^= 1
    broken.write_bytes(bytes(flipped))
    assert sf.load(broken, verify=False)["w"].tobytes() != sf.load(path)["w"].tobytes()


def test_garbage_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    path = tmp_path / "g.safetensors"
    cases = [b"", b"1234567", b"\0" * 8, struct.pack("<Q", 2**40) + b"{}"]
    cases += [
        struct.pack("<Q", 2) + b"[]",
        struct.pack("<Q", 2) + b"{}",
        struct.pack("<Q", 4) + b"\xff\xfe{}",
    ]
    cases += [struct.pack("<Q", 3) + b" {}", struct.pack("<Q", 5) + b'{"a":']
    cases += [
        struct.pack("<Q", 16) + rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
        for _ in range(20)
    ]
    cases += [struct.pack("<Q", 10) + b"{" * 10]
    cases += [struct.pack("<Q", 200_000) + b"{" + b"[" * 199_999]  # deep nesting
    for raw in cases:
        path.write_bytes(raw)
        if raw == struct.pack("<Q", 2) + b"{}":
            assert sf.load(path) == {}  # a valid, empty safetensors file
            continue
        assert_load_fails(path)


def _entry(dtype: str, shape: list[int], offsets: list[int]) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda h: h.update(x=_entry("F32", [2], [0, 8])), "overlaps the previous tensor"),
        (lambda h: h["w"].update(data_offsets=[1000, 1060]), "leaves a gap before it"),
        (lambda h: h["w"].update(shape=[3, 4]), "tensor 'w': data_offsets .* hold 60 bytes, shape"),
        (lambda h: h["w"].update(dtype="F16"), "tensor 'w': data_offsets"),
        (lambda h: h["w"].update(dtype="Q4"), "tensor 'w': unsupported dtype 'Q4'"),
        (lambda h: h["w"].update(dtype=4), "tensor 'w': unsupported dtype 4"),
        (lambda h: h["w"].update(shape=[3, -5]), "tensor 'w': bad shape"),
        (lambda h: h["w"].update(shape=[3, 5.0]), "tensor 'w': bad shape"),
        (lambda h: h["w"].update(shape=[0, 2**62]), "tensor 'w': shape .* is too large"),
        (lambda h: h["w"].update(shape=[1] * 33), "tensor 'w': bad shape"),
        (lambda h: h["w"].update(data_offsets=[60, 0]), "tensor 'w': bad data_offsets"),
        (lambda h: h["w"].update(data_offsets=[0]), "tensor 'w': bad data_offsets"),
        (lambda h: h["w"].update(extra=1), "tensor 'w': expected"),
        (lambda h: h.update(w=[1, 2]), "tensor 'w': expected"),
        (lambda h: h.update(__metadata__={"a": 1}), "__metadata__ is not an object of strings"),
        (lambda h: h.update(__metadata__=[]), "__metadata__ is not an object of strings"),
    ],
)
def test_structural_corruption(
    sample: tuple[Path, dict[str, Any]], edit: Callable[[dict[str, Any]], None], match: str
) -> None:
    path, _ = sample
    header, data = read_parts(path)
    edit(header)
    write_parts(path, header, data)
    assert_load_fails(path, match)


def _meta(fn: Callable[[dict[str, str]], Any]) -> Callable[[dict[str, Any]], None]:
    """An edit of the __metadata__ object."""
    return lambda header: fn(header["__metadata__"]) and None


def _json(key: str, fn: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    """An edit of one of sparseforge's JSON-valued metadata entries."""

    def edit(header: dict[str, Any]) -> None:
        value = json.loads(header["__metadata__"][key])
        fn(value)
        header["__metadata__"][key] = json.dumps(value)

    return edit


TENSORS = "sparseforge.tensors"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            _meta(lambda m: m.update({"sparseforge.format": "2"})),
            "unsupported sparseforge format version '2'",
        ),
        (_meta(lambda m: m.pop("sparseforge.format")), "without 'sparseforge.format'"),
        (
            _meta(lambda m: m.update({"sparseforge.checksum": "md5"})),
            "unknown checksum algorithm 'md5'",
        ),
        (_meta(lambda m: m.update({"sparseforge.extra": "x"})), "sparseforge metadata keys"),
        (_json("sparseforge.checksums", lambda c: c.pop("w")), "checksum table"),
        (
            _json(TENSORS, lambda t: t["c"]["components"].update(scale="__sf__:c:scale")),
            r"tensor 'c': component 'scale' is missing from the file",
        ),
        (
            _json(TENSORS, lambda t: t["c"]["components"].update(values="w")),
            "tensor 'c': component 'values' has key 'w'",
        ),
        (_json(TENSORS, lambda t: t.pop("c")), "'__sf__:c:.*': a component no tensor describes"),
        (_json(TENSORS, lambda t: t["c"]["components"].pop("index")), "a component no tensor"),
        (
            _json(TENSORS, lambda t: t.update(w=t["c"])),
            "tensor 'w': stored both dense and compressed",
        ),
        (_json(TENSORS, lambda t: t["c"].update(kind=3)), "tensor 'c': bad compressed"),
        (_json(TENSORS, lambda t: t["c"]["meta"].update(k=3)), "tensor 'c': bad compressed"),
        (
            _json(TENSORS, lambda t: t["c"].update(kind="nope")),
            "tensor 'c': unknown compressed kind 'nope'",
        ),
        (_json(TENSORS, lambda t: t["c"]["meta"].update(shape="4")), r"tensor 'c' \(fake\): "),
    ],
)
def test_sparseforge_metadata_corruption(
    sample: tuple[Path, dict[str, Any]], edit: Callable[[dict[str, Any]], None], match: str
) -> None:
    path, _ = sample
    header, data = read_parts(path)
    edit(header)
    write_parts(path, header, data)
    assert_load_fails(path, match)


def test_unsigned_header_edit_is_caught(sample: tuple[Path, dict[str, Any]]) -> None:
    """A consistent edit of user metadata without re-signing fails the header CRC."""
    path, _ = sample
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'"model":"tiny"', b'"model":"tinY"'))
    assert_load_fails(path, "header checksum mismatch")


def test_rebuild_failure_and_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(6)
    c = fake(rng)
    c.index = c.index[:, :2]  # inconsistent: _sf_from_state refuses it
    path = tmp_path / "bad.safetensors"
    sf.save(path, {"c": c})
    monkeypatch.setattr(_container, "_kinds", lambda: {"fake": FakeTensor})
    assert_load_fails(path, r"tensor 'c' \(fake\): values and index differ in shape")
    monkeypatch.setattr(_container, "_kinds", lambda: {})
    assert_load_fails(path, "tensor 'c': unknown compressed kind 'fake' \\(known: none\\)")


# ------------------------------------------------------------------------ atomicity


def test_failure_midway_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.safetensors"
    sf.save(path, {"old": np.arange(4.0)})
    before = path.read_bytes()
    real = _container._write_array
    for exc in (OSError("disk full (simulated)"), KeyboardInterrupt()):
        calls: list[int] = []

        def failing(
            f: Any, arr: np.ndarray, exc: BaseException = exc, calls: list[int] = calls
        ) -> None:
            calls.append(1)
            if len(calls) == 2:
                raise exc
            real(f, arr)

        monkeypatch.setattr(_container, "_write_array", failing)
        with pytest.raises(type(exc)):
            sf.save(
                path, {"a": np.ones(1000, np.float32), "b": np.ones(9, np.int8), "c": np.ones(3)}
            )
        assert len(calls) == 2
        assert path.read_bytes() == before
        assert os.listdir(tmp_path) == ["model.safetensors"]
    monkeypatch.setattr(_container, "_write_array", real)

    def no_replace(src: str, dst: str) -> None:
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(_container.os, "replace", no_replace)
    with pytest.raises(OSError, match="rename failed"):
        sf.save(path, {"a": np.ones(3)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]
    new = tmp_path / "new.safetensors"
    monkeypatch.setattr(_container, "_write_array", failing)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        sf.save(new, {"a": np.ones(2), "b": np.ones(2, np.int8)})
    assert os.listdir(tmp_path) == ["model.safetensors"]


class Exploding:
    _sf_kind = "fake"

    def _sf_state(self) -> tuple[dict[str, str], dict[str, np.ndarray]]:
        raise RuntimeError("cannot serialise (simulated)")


@pytest.mark.parametrize(
    ("tensors", "exc", "match"),
    [
        ({"a": np.ones(2), "e": Exploding()}, RuntimeError, "simulated"),
        (
            {"a": np.ones(2), "z": np.ones(2, np.complex64)},
            sf.DTypeError,
            r"tensors\['z'\]: expected dtype",
        ),
    ],
)
def test_bad_tensor_leaves_the_old_file(
    tmp_path: Path, tensors: dict[str, Any], exc: type, match: str
) -> None:
    path = tmp_path / "model.safetensors"
    sf.save(path, {"old": np.arange(4.0)})
    before = path.read_bytes()
    with pytest.raises(exc, match=match):
        sf.save(path, tensors)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sf.save(tmp_path / "nope" / "x.safetensors", {"a": np.ones(2)})
    with pytest.raises(FileNotFoundError):
        sf.load(tmp_path / "nope.safetensors")


# ------------------------------------------------------------------------ bad input


class NotAState:
    _sf_kind = "bad kind!"

    def _sf_state(self) -> tuple[dict[str, str], dict[str, np.ndarray]]:
        return {}, {"v": np.ones(2)}


class BadComponent:
    _sf_kind = "fake"

    def __init__(self, state: Any) -> None:
        self.state = state

    def _sf_state(self) -> Any:
        return self.state


@pytest.mark.parametrize(
    ("tensors", "metadata", "exc", "match"),
    [
        ([np.ones(2)], None, TypeError, "tensors: expected a mapping"),
        ({1: np.ones(2)}, None, TypeError, "tensors: name: expected str, got int"),
        ({"": np.ones(2)}, None, ValueError, "tensors: name '' is reserved"),
        ({"__metadata__": np.ones(2)}, None, ValueError, "is reserved"),
        ({"__sf__:x": np.ones(2)}, None, ValueError, "is reserved"),
        ({"\ud800": np.ones(2)}, None, ValueError, "not valid UTF-8"),
        (
            {"a": [1.0, 2.0]},
            None,
            TypeError,
            r"tensors\['a'\]: expected a numpy.ndarray or a sparseforge",
        ),
        ({"a": np.array(["s"])}, None, sf.DTypeError, r"tensors\['a'\]: expected dtype"),
        ({"a": np.array([None])}, None, sf.DTypeError, r"tensors\['a'\]: expected dtype"),
        ({"a": np.ones(2, np.complex128)}, None, sf.DTypeError, "got complex128"),
        (
            {"a": np.zeros(2, [("x", "<f4")])},
            None,
            sf.DTypeError,
            r"tensors\['a'\]: expected dtype",
        ),
        (
            {"a": np.ones(2, np.float16)},
            {"k": 1},
            TypeError,
            r"metadata\['k'\]: expected str, got int",
        ),
        ({"a": np.ones(2, np.float16)}, {2: "v"}, TypeError, "metadata: key: expected str"),
        (
            {"a": np.ones(2, np.float16)},
            {"sparseforge.x": "v"},
            ValueError,
            "metadata: key 'sparseforge.x' is reserved",
        ),
        ({"a": np.ones(2, np.float16)}, ["k"], TypeError, "metadata: expected a mapping"),
        ({"c": NotAState()}, None, ValueError, r"tensors\['c'\]: _sf_kind must be"),
        (
            {"c": BadComponent(({}, {"a-b": np.ones(2)}))},
            None,
            ValueError,
            "component names must be identifiers",
        ),
        ({"c": BadComponent(({}, {}))}, None, TypeError, "non-empty dict of arrays"),
        ({"c": BadComponent([{}, {}])}, None, TypeError, r"_sf_state\(\) must return"),
        (
            {"c": BadComponent(({"k": 1}, {"v": np.ones(2)}))},
            None,
            TypeError,
            r"meta\['k'\]: expected str",
        ),
        (
            {"c": BadComponent(({}, {"v": np.ones(2, np.complex64)}))},
            None,
            sf.DTypeError,
            "component 'v'",
        ),
        (
            {"c": BadComponent(({}, {"v": [1]}))},
            None,
            TypeError,
            "component 'v': expected a numpy.ndarray",
        ),
    ],
)
def test_bad_input(tmp_path: Path, tensors: Any, metadata: Any, exc: type, match: str) -> None:
    path = tmp_path / "x.safetensors"
    with pytest.raises(exc, match=match):
        sf.save(path, tensors, metadata=metadata)
    assert os.listdir(tmp_path) == []


def test_save_does_not_modify_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    tensors = {"a": rng.standard_normal((5, 6)).astype(np.float32), "c": fake(rng)}
    snap = (tensors["a"].copy(), tensors["c"].values.copy(), tensors["c"].index.copy())
    sf.save(tmp_path / "x.safetensors", tensors)
    assert same(tensors["a"], snap[0])
    assert same(tensors["c"].values, snap[1])
    assert same(tensors["c"].index, snap[2])


# ------------------------------------------------------- the real formats, if present


def test_registered_formats_round_trip(tmp_path: Path) -> None:
    """Every kind in sparseforge.format._KINDS survives save/load (with and without mmap)."""
    fmt = pytest.importorskip("sparseforge.format")
    kinds: dict[str, Any] = dict(getattr(fmt, "_KINDS", {}))
    if not kinds:
        pytest.skip("sparseforge.format registers no kinds yet")
    rng = np.random.default_rng(9)
    for dtype in (np.float32, ml_dtypes.bfloat16):
        W = sf.prune.magnitude(rng.standard_normal((13, 40)).astype(dtype), pattern="2:4").weight
        tensors = {
            f"{kind}.weight": cls.from_dense(W, n=2, m=4) if kind == "nm" else cls.from_dense(W)
            for kind, cls in kinds.items()
        }
        tensors["dense"] = W
        path = tmp_path / "formats.safetensors"
        sf.save(path, tensors)
        for mmap in (False, True):
            got = sf.load(path, mmap=mmap)
            assert list(got) == list(tensors)
            for kind, cls in kinds.items():
                t = got[f"{kind}.weight"]
                assert type(t) is cls
                assert same(t.to_dense(), W), kind


def test_save_over_the_mapped_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    x = np.arange(100, dtype=np.float32)
    sf.save(path, {"x": x})
    mapped = sf.load(path, mmap=True)
    sf.save(path, {"x": mapped["x"], "y": mapped["x"][::-1]})
    got = sf.load(path)
    np.testing.assert_array_equal(got["x"], x)
    np.testing.assert_array_equal(got["y"], x[::-1])
    np.testing.assert_array_equal(mapped["x"], x)
