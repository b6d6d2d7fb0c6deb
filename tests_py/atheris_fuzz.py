"""Coverage-guided fuzzing of every file reader with atheris (libFuzzer for Python).

One target per reader; each run mutates a valid seed file (built here, like fuzzlib's file
fuzzer) under libFuzzer's coverage feedback over sparseforge's instrumented Python code,
for a fixed time. An input passes when the reader returns or raises ``TypeError`` /
``ValueError`` (or ``sparseforge.NumericalError``); anything else -- another exception, a
``MemoryError`` under the address-space cap (a size from the file reached the allocator), a
signal (a crash in the C++ reader), an input slower than ``--input-timeout`` -- is a finding:
libFuzzer stops, writes the input to ``crash-*`` / ``timeout-*`` under ``--artifacts`` and
exits non-zero.

    python tests_py/atheris_fuzz.py --target container --seconds 60
    python tests_py/atheris_fuzz.py --list

``tests_py/test_fuzz_coverage.py`` runs every target for a few seconds in CI;
``bench/fuzz_coverage.py`` runs them longer and writes ``bench/results/fuzz_coverage.md``.
The ``cpp-saved-model`` target reaches the C++ reader (``sparseforge::runtime::SavedModel``)
through its binding with checksums off; its C++ code is not coverage-instrumented (gcc
builds), so there the feedback comes from the Python side only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ADDRESS_SPACE_CAP = 6 << 30

# target -> (seed name in fuzzlib._file_formats or an extra seed, file the input replaces)
TARGETS = (
    "container",
    "saved-model",
    "cpp-saved-model",
    "gguf",
    "llama2c",
    "hf-config",
    "hf-index",
    "hf-safetensors",
    "stats-npz",
    "thresholds-json",
    "compressed-tensors",
)


def _extra_seeds(d: Path, fmt: dict[str, tuple[Path, str, bool]]) -> None:
    """Seeds fuzzlib does not build: a sharded HF directory's index, a compressed-tensors
    directory (export_hf(compression=...)), the C++ reader over the saved-model seed."""
    import numpy as np

    import sparseforge.models as sm

    hf = fmt["hf-config"][0].parent
    sharded = d / "hf-sharded"
    sharded.mkdir()
    shutil.copy(hf / "config.json", sharded / "config.json")
    shutil.copy(hf / "model.safetensors", sharded / "model-00001-of-00001.safetensors")
    import safetensors.numpy as stn

    names = list(stn.load_file(str(hf / "model.safetensors")))
    index = {
        "metadata": {"total_size": 0},
        "weight_map": dict.fromkeys(names, "model-00001-of-00001.safetensors"),
    }
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    fmt["hf-index"] = (sharded / "model.safetensors.index.json", "", False)

    c = sm.LlamaConfig(
        dim=16, hidden_dim=24, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=32, max_seq_len=32
    )
    rng = np.random.default_rng(5)
    w = {}
    for n, s in c.weight_shapes().items():
        a = rng.standard_normal(s).astype(np.float32)
        if len(s) == 2:
            a.reshape(-1, 4)[:, 2:] = 0  # 2:4 everywhere
        w[n] = a
    out = d / "ct"
    sm.export_hf(sm.LlamaModel(c, w), out, compression="sparse-24-bitmask", tokenizer=False)
    fmt["compressed-tensors"] = (out / "model.safetensors", "", False)
    fmt["cpp-saved-model"] = fmt["saved-model"]


def _loader(target: str) -> Callable[[Path], Any]:
    import sparseforge as sf
    from sparseforge import _container
    from sparseforge.models import load_llama2c, load_saved
    from sparseforge.models.compressed_tensors import load_compressed_tensors
    from sparseforge.models.gguf import load_gguf
    from sparseforge.models.hf import load_hf

    return {
        "container": lambda p: _container.load(p),
        "saved-model": lambda p: load_saved(p),
        "cpp-saved-model": lambda p: sf.runtime.load(p, verify=False),
        "gguf": lambda p: load_gguf(p, tokenizer=False),
        "llama2c": lambda p: load_llama2c(p),
        "hf-config": lambda p: load_hf(p.parent, tokenizer=False),
        "hf-index": lambda p: load_hf(p.parent, tokenizer=False),
        "hf-safetensors": lambda p: load_hf(p.parent, tokenizer=False),
        "stats-npz": lambda p: sf.calib.LayerStats.load(p),
        "thresholds-json": lambda p: sf.activation.Thresholds.load(p),
        "compressed-tensors": lambda p: load_compressed_tensors(p.parent, tokenizer=False),
    }[target]


def _expected() -> tuple[type[BaseException], ...]:
    import sparseforge as sf

    return (TypeError, ValueError, sf.NumericalError)


def prepare(target: str, work: Path) -> tuple[Path, Path]:
    """Builds the seeds; returns (the file each input replaces, the seed corpus folder)."""
    sys.path.insert(0, str(HERE))
    import fuzzlib

    seeds = work / "seeds"
    seeds.mkdir(parents=True)
    fmt = fuzzlib._file_formats(seeds)
    if target in ("hf-index", "compressed-tensors", "cpp-saved-model"):
        _extra_seeds(seeds, fmt)
    seed = fmt[target][0]
    # the input's home: a private copy of the seed's directory (HF layouts need siblings)
    home = work / "input"
    if seed.parent != seeds:
        shutil.copytree(seed.parent, home)
    else:
        home.mkdir()
        shutil.copy(seed, home / seed.name)
    path = home / seed.name
    corpus = work / "corpus"
    corpus.mkdir()
    shutil.copy(seed, corpus / "seed")
    return path, corpus


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=TARGETS)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--input-timeout", type=int, default=10, help="seconds per input")
    ap.add_argument("--artifacts", default=".", help="where crash-*/timeout-* inputs go")
    ap.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    ap.add_argument(
        "--work",
        help="scratch folder, emptied first (default: $TMPDIR/sf-atheris-<target>); libFuzzer "
        "exits the process, so a run cannot remove it afterwards",
    )
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(TARGETS))
        return
    if args.target is None:
        ap.error("--target is required")
    import atheris

    with atheris.instrument_imports(include=["sparseforge"]):
        import sparseforge
        import sparseforge.activation
        import sparseforge.calib
        import sparseforge.models
        import sparseforge.models.compressed_tensors
        import sparseforge.models.gguf
        import sparseforge.models.hf
        import sparseforge.models.llama2c
        import sparseforge.runtime  # noqa: F401

    work = Path(args.work or Path(tempfile.gettempdir()) / f"sf-atheris-{args.target}")
    shutil.rmtree(work, ignore_errors=True)
    path, corpus = prepare(args.target, work)
    load = _loader(args.target)
    ok = _expected()
    load(path)  # the seed itself must load

    def one_input(data: bytes) -> None:
        path.write_bytes(data)
        with contextlib.suppress(ok):
            load(path)

    # A size from a file that reaches the allocator fails as MemoryError (a finding)
    # instead of swapping the machine.
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))
    os.makedirs(args.artifacts, exist_ok=True)
    fuzz_argv = [
        sys.argv[0],
        f"-max_total_time={args.seconds}",
        f"-timeout={args.input_timeout}",
        f"-seed={args.seed}",
        "-rss_limit_mb=0",  # the address-space cap above bounds memory
        f"-artifact_prefix={os.path.abspath(args.artifacts)}/{args.target}-",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(fuzz_argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
