"""Pruning quality on real weights: every linear layer of stories260K.

Calibration inputs are synthetic but LLM-shaped (correlated features, a few outlier
channels; realdata.correlated_activations), 8 x in_features tokens per layer. The relative
output error ``||(W - W_hat) X^T||^2 / ||W X^T||^2`` (reconstruction_error with
H = X^T X) must order the methods as the literature does — OBS <= SparseGPT <= Wanda <=
magnitude — on at least 80% of the layers for each adjacent pair. Skips when the data file
is absent (set SPARSEFORGE_DATA).

One exception, by design of the methods rather than of the code: at 50% *unstructured*,
SparseGPT chooses its mask jointly over all rows of a block (rows get different
sparsities) while OBS, Wanda and magnitude (row scope) prune exactly half of every row. On
the attention q/k projections, whose rows differ a lot in scale, that freedom beats greedy
OBS (1.3-2x lower error on all ten wq/wk layers, with correct implementations of both),
so OBS <= SparseGPT is asserted per layer only at 2:4 (the same per-group constraint for
both) and on the mean over layers at 50%; OBS and SparseGPT are each compared with Wanda
per layer at both settings.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytest

import sparseforge as sf
from realdata import correlated_activations, load_stories260k_linears, stories260k_path

METHODS = ("obs", "sparsegpt", "wanda", "magnitude")
SETTINGS = ("50%", "2:4")
MIN_FRACTION = 0.8
OBS_MAX_IN = 1024


def calibration(name: str, in_features: int) -> np.ndarray:
    """H = X^T X (float64) for a layer, from 8 x in_features tokens with outliers."""
    X = correlated_activations(
        in_features,
        8 * in_features,
        zlib.crc32(name.encode()),
        outlier_channels=4,
        outlier_scale=20.0,
    ).astype(np.float64)
    return X.T @ X


def prune_all(W: np.ndarray, H: np.ndarray, setting: str) -> dict[str, np.ndarray]:
    kw: dict[str, Any] = {"pattern": "2:4"} if setting == "2:4" else {"sparsity": 0.5}
    # magnitude per layer at 50%, as the Wanda repository's baseline
    mag_kw = kw if setting == "2:4" else {"sparsity": 0.5, "scope": "layer"}
    col_norms = np.sqrt(np.diagonal(H)).astype(np.float32)  # ||X_j||: the scale does not matter
    out = {
        "magnitude": sf.prune.magnitude(W, **mag_kw).weight,
        "wanda": sf.prune.wanda(W, col_norms, **kw).weight,
        "sparsegpt": sf.prune.sparsegpt(W, H, **kw).weight,
    }
    if W.shape[1] <= OBS_MAX_IN:
        out["obs"] = sf.prune.obs(W, H, **kw).weight
    return out


@pytest.fixture(scope="module")
def table() -> dict[str, dict[str, dict[str, float]]]:
    """setting -> layer -> method -> relative reconstruction error."""
    if stories260k_path() is None:
        pytest.skip(
            "stories260K.bin not found: put it in ../shared/data/stories260K "
            "or set SPARSEFORGE_DATA"
        )
    layers = load_stories260k_linears()
    out: dict[str, dict[str, dict[str, float]]] = {s: {} for s in SETTINGS}
    for name, W in layers.items():
        H = calibration(name, W.shape[1])
        for setting in SETTINGS:
            out[setting][name] = {
                m: sf.prune.reconstruction_error(W, Wh, H)
                for m, Wh in prune_all(W, H, setting).items()
            }
    return out


def print_table(setting: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\nstories260K, {setting}: relative output error")
    print(f"{'layer':<14}" + "".join(f"{m:>11}" for m in METHODS))
    for name, errs in rows.items():
        print(f"{name:<14}" + "".join(f"{errs.get(m, float('nan')):>11.4f}" for m in METHODS))
    mean = {m: np.mean([e[m] for e in rows.values() if m in e]) for m in METHODS}
    print(f"{'mean':<14}" + "".join(f"{mean[m]:>11.4f}" for m in METHODS))


def test_all_35_layers_loaded(table: dict[str, dict[str, dict[str, float]]]) -> None:
    assert len(table["50%"]) == 35
    assert all(set(e) == set(METHODS) for e in table["50%"].values())  # OBS everywhere


ORDERED_PAIRS = [
    ("2:4", "obs", "sparsegpt"),
    ("2:4", "sparsegpt", "wanda"),
    ("2:4", "wanda", "magnitude"),
    ("2:4", "obs", "wanda"),
    ("50%", "sparsegpt", "wanda"),
    ("50%", "wanda", "magnitude"),
    ("50%", "obs", "wanda"),
]


@pytest.mark.parametrize(("setting", "better", "worse"), ORDERED_PAIRS)
def test_method_ordering(
    table: dict[str, dict[str, dict[str, float]]], setting: str, better: str, worse: str
) -> None:
    rows = table[setting]
    print_table(setting, rows)
    pairs = [(e[better], e[worse]) for e in rows.values() if better in e and worse in e]
    wins = sum(b <= w for b, w in pairs)
    losers = [name for name, e in rows.items() if better in e and e[better] > e[worse]]
    assert wins >= MIN_FRACTION * len(pairs), (
        f"{better} <= {worse} on only {wins}/{len(pairs)} layers at {setting}; not on {losers}"
    )


def test_obs_beats_sparsegpt_on_average_at_50(
    table: dict[str, dict[str, dict[str, float]]],
) -> None:
    rows = table["50%"]
    obs = float(np.mean([e["obs"] for e in rows.values()]))
    sgpt = float(np.mean([e["sparsegpt"] for e in rows.values()]))
    assert obs <= sgpt, (obs, sgpt)


@pytest.mark.parametrize("setting", SETTINGS)
def test_errors_are_sane(table: dict[str, dict[str, dict[str, float]]], setting: str) -> None:
    for name, errs in table[setting].items():
        for m, e in errs.items():
            assert 0.0 < e < 1.0, (setting, name, m, e)
