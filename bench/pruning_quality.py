"""Pruning quality on stories260K -> bench/results/pruning-quality.md.

For every linear layer of Karpathy's stories260K (5 blocks x wq, wk, wv, wo, w1, w2, w3),
with synthetic calibration inputs shaped like LLM activations (correlated features and a
few outlier channels: ``tests_py/realdata.py``), the relative output error

    ||(W - W_hat) X^T||^2 / ||W X^T||^2  =  sparseforge.prune.reconstruction_error(W, W_hat, X^T X)

of each method at 50% unstructured and at 2:4:

* magnitude (per layer at 50%, as the Wanda repository's baseline; per group at 2:4),
* OBD (diagonal saliency, no update),
* Wanda,
* Wanda's mask + the exact least-squares reconstruction (``reconstruct(method="exact")``),
* SparseGPT (float32 sweep, block 128, percdamp 0.01),
* OBS (exact greedy, in_features <= 1024 only).

This measures quality, not time: no timing, no best-of-N. The same numbers are asserted
(as orderings) by ``tests_py/test_quality.py``.

Run from the repository root: ``python bench/pruning_quality.py`` (a few seconds;
``--quick`` for the first block only). The data file is looked up as in the tests
(``../shared/data/stories260K`` beside the repository, or ``SPARSEFORGE_DATA``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import sparseforge as sf

try:
    from bench import harness
except ImportError:  # run as a script: python bench/pruning_quality.py
    import harness  # type: ignore[no-redef, import-not-found]

_TESTS = Path(__file__).resolve().parent.parent / "tests_py"
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

import realdata  # noqa: E402  (needs the path above)

SETTINGS = ("50%", "2:4")
METHODS = ("magnitude", "obd", "wanda", "wanda+exact", "sparsegpt", "obs")
OBS_MAX_IN = 1024


def calibration(
    name: str, in_features: int, tokens_per_feature: int, outliers: int, scale: float
) -> np.ndarray:
    """H = X^T X (float64); the seed is derived from the layer name, as in the tests."""
    X = realdata.correlated_activations(
        in_features,
        tokens_per_feature * in_features,
        zlib.crc32(name.encode()),
        outlier_channels=outliers,
        outlier_scale=scale,
    ).astype(np.float64)
    return X.T @ X


def methods(setting: str) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    kw: dict[str, Any] = {"pattern": "2:4"} if setting == "2:4" else {"sparsity": 0.5}
    mag_kw = kw if setting == "2:4" else {"sparsity": 0.5, "scope": "layer"}

    def norms(H: np.ndarray) -> np.ndarray:  # ||X_j||; Wanda's ranking ignores the scale
        return np.sqrt(np.diagonal(H)).astype(np.float32)

    def wanda_exact(W: np.ndarray, H: np.ndarray) -> np.ndarray:
        mask = sf.prune.wanda(W, norms(H), **kw).mask
        return sf.prune.reconstruct(W, H, mask, method="exact").weight

    return {
        "magnitude": lambda W, H: sf.prune.magnitude(W, **mag_kw).weight,
        "obd": lambda W, H: sf.prune.obd(W, H, **kw).weight,
        "wanda": lambda W, H: sf.prune.wanda(W, norms(H), **kw).weight,
        "wanda+exact": wanda_exact,
        "sparsegpt": lambda W, H: sf.prune.sparsegpt(W, H, **kw).weight,
        "obs": lambda W, H: sf.prune.obs(W, H, **kw).weight,
    }


def fmt(e: float | None) -> str:
    return "—" if e is None else f"{e:.5f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out",
        type=Path,
        default=harness.RESULTS_DIR / "pruning-quality.md",
        help="markdown report (default: %(default)s)",
    )
    p.add_argument("--quick", action="store_true", help="first block only (smoke run)")
    p.add_argument("--tokens-per-feature", type=int, default=8, help="calibration tokens / in")
    p.add_argument("--outlier-channels", type=int, default=4)
    p.add_argument("--outlier-scale", type=float, default=20.0)
    args = p.parse_args(argv)

    path = realdata.stories260k_path()
    if path is None:
        p.error("stories260K.bin not found: ../shared/data/stories260K or set SPARSEFORGE_DATA")
    started = datetime.datetime.now().astimezone()
    source = harness.source_note()
    layers = realdata.load_stories260k_linears(path)
    if args.quick:
        layers = {k: v for k, v in layers.items() if k.startswith("layers.0.")}

    errors: dict[str, dict[str, dict[str, float | None]]] = {s: {} for s in SETTINGS}
    seconds: dict[str, float] = dict.fromkeys(METHODS, 0.0)
    for name, W in layers.items():
        H = calibration(
            name, W.shape[1], args.tokens_per_feature, args.outlier_channels, args.outlier_scale
        )
        for setting in SETTINGS:
            row: dict[str, float | None] = {}
            for method, fn in methods(setting).items():
                if method == "obs" and W.shape[1] > OBS_MAX_IN:
                    row[method] = None
                    continue
                t0 = time.perf_counter()
                W_hat = fn(W, H)
                seconds[method] += time.perf_counter() - t0
                row[method] = sf.prune.reconstruction_error(W, W_hat, H)
            errors[setting][name] = row
        print(f"  {name} {W.shape}", file=sys.stderr)

    sections = []
    summary_rows = []
    for setting in SETTINGS:
        rows = errors[setting]
        means = {
            m: float(np.mean([r[m] for r in rows.values() if r[m] is not None])) for m in METHODS
        }
        summary_rows.append([setting, *(fmt(means[m]) for m in METHODS)])
        table = harness.md_table(
            ("layer", "shape", *METHODS),
            [
                [name, "x".join(map(str, layers[name].shape)), *(fmt(r[m]) for m in METHODS)]
                for name, r in rows.items()
            ]
            + [["**mean**", "", *(f"**{fmt(means[m])}**" for m in METHODS)]],
        )
        sections.append(f"## {setting}: relative output error per layer\n\n{table}")
    summary = harness.md_table(("setting", *METHODS), summary_rows)
    print(summary)

    wins = []
    for setting in SETTINGS:
        rows = errors[setting]
        for better, worse in (
            ("obs", "sparsegpt"),
            ("sparsegpt", "wanda"),
            ("wanda+exact", "wanda"),
            ("wanda", "magnitude"),
        ):
            pairs = [
                (r[better], r[worse])
                for r in rows.values()
                if r[better] is not None and r[worse] is not None
            ]
            n = sum(b <= w for b, w in pairs)  # type: ignore[operator]
            wins.append([setting, f"{better} <= {worse}", f"{n}/{len(pairs)}"])
    wins_table = harness.md_table(("setting", "ordering", "layers where it holds"), wins)

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    facts = {
        "Date": f"{started:%Y-%m-%d %H:%M %Z}",
        "Command": f"`{harness.command_line()}` (cwd `{os.getcwd()}`)",
        "Source": source,
        "Data": f"`{path}` (sha256 `{sha[:16]}…`), {len(layers)} linear layers",
        "Calibration": (
            f"synthetic, {args.tokens_per_feature} x in_features tokens per layer: "
            "X = (Z A) * scale, Z standard normal, A = I + 0.6 G / sqrt(in), log-normal "
            f"channel scales, {args.outlier_channels} outlier channels x {args.outlier_scale:g}; "
            "seed = crc32(layer name); H = X^T X"
        ),
        "Metric": "reconstruction_error(W, W_hat, H) = ||(W - W_hat) X^T||^2 / ||W X^T||^2",
        "Methods": (
            "magnitude (layer scope at 50%), obd, wanda (col_norms = sqrt(diag H)), "
            "wanda+exact (Wanda's mask, reconstruct(method='exact')), sparsegpt (float32, "
            "block 128, percdamp 0.01), obs (percdamp 0.01)"
        ),
        "Time per method (s, all layers and settings)": ", ".join(
            f"{m} {seconds[m]:.2f}" for m in METHODS
        ),
    }
    parts = ["# Pruning quality: stories260K linear layers\n"]
    if args.quick:
        parts.append("> **--quick**: first block only.\n")
    parts.append("\n".join(f"- **{k}:** {v}" for k, v in facts.items()) + "\n")
    parts.append("## Mean over layers\n\n" + summary)
    parts.append(
        "SparseGPT's unstructured mask is chosen jointly over all rows of a block (rows get "
        "different sparsities); OBS, Wanda and OBD prune a fixed number per row (per group "
        "at 2:4). Where rows differ a lot in scale (the attention q/k projections) that "
        "freedom can let SparseGPT beat greedy OBS at 50%. OBD and Wanda rank each row "
        "identically (0.5 w^2 H_jj is the square of |w| ||X_j|| / sqrt(2)), so their "
        "columns agree.\n\n" + wins_table
    )
    parts += sections
    parts.append("## Build\n\n" + harness.build_info_table())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(p.rstrip("\n") + "\n" for p in parts), encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
