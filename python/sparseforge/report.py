"""One self-contained HTML page about pruning runs (``sparseforge report``).

From the JSON files ``sparseforge prune --report-json`` writes: a summary of each run
(method, target, achieved sparsity, perplexity before and after, time, saved size), a
sparsity-vs-perplexity plot when several runs carry perplexities, each run's per-layer table
(sparsity, reconstruction error, time), and a **sparsity visualiser** computed from the
user's own (dense) model: for one linear, the kept/pruned pattern of a weight tile under
magnitude 50 %, Wanda 50 % and Wanda 2:4, beside the input channels' activation norms, with
how much of the outlier channels' weights each method keeps.

Everything is inline (SVG drawn here, CSS in the page): no script, no network, no
matplotlib. :func:`layer_visual` computes the visualiser's data, :func:`render_html` the
page, :func:`write_report` both and the file (atomically).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import prune as _prune

__all__ = ["layer_visual", "load_runs", "masks_svg", "render_html", "sweep_svg", "write_report"]

REPORT_KIND = "sparseforge prune report"


# -- data --------------------------------------------------------------------------------


def load_runs(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Read ``--report-json`` files (``ValueError`` naming a file that is not one)."""
    runs = []
    for p in paths:
        path = Path(p)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a JSON report ({e})") from e
        if not isinstance(data, dict) or data.get("kind") != REPORT_KIND:
            raise ValueError(
                f"{path}: not a report written by `sparseforge prune --report-json` "
                f"(expected kind {REPORT_KIND!r})"
            )
        if not isinstance(data.get("prune"), dict) or not isinstance(
            data["prune"].get("layers"), list
        ):
            raise ValueError(f"{path}: the report has no per-layer 'prune' section")
        data["_file"] = str(path)
        runs.append(data)
    return runs


def layer_visual(
    model: Any,
    calib_ids: np.ndarray,
    *,
    layer: str | None = None,
    rows: int = 24,
    cols: int = 48,
    outlier_fraction: float = 0.01,
) -> dict[str, Any]:
    """The visualiser's data for one linear of ``model`` (dense weights).

    ``calib_ids``: 2-D token windows run through the model to measure every linear's
    input channel norms (``sqrt(mean x_j^2)``, Wanda's statistic). ``layer`` defaults to
    the linear whose input has the most pronounced outlier channel (largest max/median
    norm). Masks come from the whole layer (per output row): magnitude 50 %, Wanda 50 %,
    Wanda 2:4. The tile is ``cols`` consecutive input channels (aligned to 4) centred on
    the largest-norm channel, and the ``rows`` output rows where magnitude and Wanda
    disagree most inside it. "Outlier channels" are the top ``outlier_fraction`` of
    channels by norm (at least one); ``kept_outlier`` is each method's fraction of their
    weights kept, over the whole layer.
    """
    from .models.llama import Hooks

    ids = np.asarray(calib_ids)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def capture(name: str, x: np.ndarray) -> None:
        if layer is not None and name != layer:
            return
        x64 = np.asarray(x, dtype=np.float64)
        sums[name] = sums.get(name, 0.0) + np.einsum("ij,ij->j", x64, x64)
        counts[name] = counts.get(name, 0) + x.shape[0]

    for w in ids:
        model.forward(w, hooks=Hooks(linear_input=capture))
    if not sums:
        raise ValueError(f"layer: {layer!r} is not a linear of the model")
    norms_all = {n: np.sqrt(sums[n] / counts[n]) for n in sums}

    def ratio(n: str) -> float:
        v = norms_all[n]
        return float(v.max() / max(float(np.median(v)), 1e-12))

    name = layer if layer is not None else max(sorted(norms_all), key=ratio)
    norms = norms_all[name].astype(np.float32)
    W = np.ascontiguousarray(np.asarray(model.weight(name), dtype=np.float32))
    out_f, in_f = W.shape
    masks = {
        "magnitude 50%": _prune.magnitude(W, 0.5).mask,
        "Wanda 50%": _prune.wanda(W, norms, 0.5).mask,
    }
    if in_f % 4 == 0:
        masks["Wanda 2:4"] = _prune.wanda(W, norms, pattern="2:4").mask
    k = max(1, round(outlier_fraction * in_f))
    outliers = np.sort(np.argsort(-norms, kind="stable")[:k])
    kept_outlier = {m: float(mask[:, outliers].mean()) for m, mask in masks.items()}
    kept_other = {
        m: float(np.delete(mask, outliers, axis=1).mean()) if in_f > k else 0.0
        for m, mask in masks.items()
    }
    width = min(cols - cols % 4 or 4, in_f - in_f % 4 or in_f)
    top = int(np.argmax(norms))
    start = max(0, min(in_f - width, top - width // 2))
    start -= start % 4
    c0, c1 = start, start + width
    diff = (masks["magnitude 50%"][:, c0:c1] != masks["Wanda 50%"][:, c0:c1]).sum(axis=1)
    nrows = min(rows, out_f)
    row_idx = np.sort(np.argsort(-diff, kind="stable")[:nrows])
    tile = W[np.ix_(row_idx, np.arange(c0, c1))]
    return {
        "layer": name,
        "shape": [int(out_f), int(in_f)],
        "tokens": int(ids.size),
        "norm_ratio": ratio(name),
        "columns": [int(c0), int(c1)],
        "rows": [int(r) for r in row_idx],
        "norms": [float(v) for v in norms[c0:c1]],
        "norm_median": float(np.median(norms)),
        "norm_max": float(norms.max()),
        "weights": [[float(v) for v in r] for r in tile],
        "masks": {
            m: [[bool(v) for v in r] for r in mask[np.ix_(row_idx, np.arange(c0, c1))]]
            for m, mask in masks.items()
        },
        "outlier_channels": [int(c) for c in outliers],
        "kept_outlier": kept_outlier,
        "kept_other": kept_other,
    }


# -- formatting (the page and the tests read numbers through these) ----------------------


def fmt_sparsity(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def fmt_error(v: float | None) -> str:
    return "-" if v is None else f"{v:.4e}"


def fmt_ppl(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def fmt_seconds(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _target(p: dict[str, Any]) -> str:
    if p.get("pattern"):
        return str(p["pattern"])
    s = p.get("sparsity")
    return f"{(0.5 if s is None else float(s)) * 100:g}%"


def _ppl(run: dict[str, Any], which: str) -> float | None:
    ppl = run.get("perplexity")
    if not isinstance(ppl, dict) or not isinstance(ppl.get(which), dict):
        return None
    v = ppl[which].get("ppl")
    return None if v is None else float(v)


# -- SVG ---------------------------------------------------------------------------------

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def sweep_svg(runs: list[dict[str, Any]]) -> str:
    """Sparsity (x) against perplexity (y, log scale): one series per method and pattern
    kind, the dense perplexity as a dashed line."""
    pts = [
        (float(r["prune"]["overall_sparsity"]), _ppl(r, "pruned"), r)
        for r in runs
        if _ppl(r, "pruned") is not None
    ]
    if len(pts) < 2:
        return ""
    dense = [d for d in (_ppl(r, "dense") for r in runs) if d is not None]
    ys = [p for _, p, _ in pts if p is not None] + dense
    lo, hi = math.log(min(ys)), math.log(max(ys))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    W, H, L, R, T, B = 640, 360, 70, 20, 20, 50
    xs = [x for x, _, _ in pts]
    x0, x1 = 0.0, max(max(xs) * 1.1, 0.1)

    def sx(x: float) -> float:
        return L + (x - x0) / (x1 - x0) * (W - L - R)

    def sy(y: float) -> float:
        return T + (hi - math.log(y)) / (hi - lo) * (H - T - B)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" role="img" aria-label="sparsity against perplexity">',
        f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="#fafafa" '
        'stroke="#999"/>',
    ]
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        parts.append(
            f'<text x="{sx(x):.1f}" y="{H - B + 16}" font-size="11" text-anchor="middle">'
            f"{x:.2f}</text>"
        )
    for i in range(5):
        y = math.exp(lo + (hi - lo) * i / 4)
        parts.append(
            f'<text x="{L - 6}" y="{sy(y) + 4:.1f}" font-size="11" text-anchor="end">'
            f"{y:.3g}</text>"
            f'<line x1="{L}" x2="{W - R}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#e4e4e4"/>'
        )
    parts.append(
        f'<text x="{(L + W - R) / 2}" y="{H - 12}" font-size="12" text-anchor="middle">'
        "overall sparsity of the linears</text>"
        f'<text x="16" y="{(T + H - B) / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 16 {(T + H - B) / 2})">perplexity (log)</text>'
    )
    if dense:
        d = dense[0]
        parts.append(
            f'<line x1="{L}" x2="{W - R}" y1="{sy(d):.1f}" y2="{sy(d):.1f}" stroke="#555" '
            f'stroke-dasharray="5 4"/><text x="{W - R - 4}" y="{sy(d) - 5:.1f}" font-size="11" '
            f'text-anchor="end">dense {fmt_ppl(d)}</text>'
        )
    series: dict[str, list[tuple[float, float]]] = {}
    for x, py, r in pts:
        key = r["prune"]["method"] + (" N:M" if r["prune"].get("pattern") else "")
        series.setdefault(key, []).append((x, float(py or 0.0)))
    for i, (key, sp) in enumerate(sorted(series.items())):
        c = _COLOURS[i % len(_COLOURS)]
        sp.sort()
        if len(sp) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sp)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="1.5"/>')
        for x, y in sp:
            parts.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{c}">'
                f"<title>{_e(key)}: sparsity {fmt_sparsity(x)}, perplexity {fmt_ppl(y)}"
                "</title></circle>"
            )
        parts.append(
            f'<rect x="{L + 10}" y="{T + 8 + 16 * i}" width="10" height="10" fill="{c}"/>'
            f'<text x="{L + 26}" y="{T + 17 + 16 * i}" font-size="11">{_e(key)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def masks_svg(v: dict[str, Any]) -> str:
    """Side by side, one grid per method: kept weights coloured by sign and size, pruned
    ones pale grey; above each grid the channel norms as bars, outliers in red."""
    weights = np.asarray(v["weights"], dtype=np.float64)
    nr, nc = weights.shape
    cell = max(4, min(10, 420 // max(nc, 1)))
    bar_h, gap, label_h = 60, 24, 34
    grid_w, grid_h = nc * cell, nr * cell
    methods = list(v["masks"])
    W = len(methods) * (grid_w + gap) + gap
    H = label_h + bar_h + 6 + grid_h + 20
    norms = np.asarray(v["norms"])
    nmax = float(max(norms.max(), 1e-12))
    outl = set(v["outlier_channels"])
    c0 = v["columns"][0]
    scale = float(np.abs(weights).max()) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" role="img" aria-label="kept and pruned weights">'
    ]
    for m_i, m in enumerate(methods):
        ox = gap + m_i * (grid_w + gap)
        mask = np.asarray(v["masks"][m], dtype=bool)
        parts.append(
            f'<text x="{ox}" y="14" font-size="13" font-weight="bold">{_e(m)}</text>'
            f'<text x="{ox}" y="29" font-size="11">keeps {v["kept_outlier"][m] * 100:.1f}% of '
            f"outlier-channel weights, {v['kept_other'][m] * 100:.1f}% of the others</text>"
        )
        for j, n in enumerate(norms):
            h = bar_h * float(n) / nmax
            colour = "#d62728" if (c0 + j) in outl else "#888"
            parts.append(
                f'<rect x="{ox + j * cell}" y="{label_h + bar_h - h:.1f}" width="{cell - 1}" '
                f'height="{h:.1f}" fill="{colour}"/>'
            )
        gy = label_h + bar_h + 6
        for i in range(nr):
            for j in range(nc):
                if mask[i, j]:
                    a = 0.25 + 0.75 * min(1.0, abs(weights[i, j]) / scale)
                    colour = "#1f4e9c" if weights[i, j] >= 0 else "#b03a2e"
                    style = f'fill="{colour}" fill-opacity="{a:.2f}"'
                else:
                    style = 'fill="#ececec"'
                parts.append(
                    f'<rect x="{ox + j * cell}" y="{gy + i * cell}" width="{cell - 1}" '
                    f'height="{cell - 1}" {style}/>'
                )
        for j in range(nc):
            if (c0 + j) in outl:
                parts.append(
                    f'<rect x="{ox + j * cell - 0.5}" y="{gy - 0.5}" width="{cell}" '
                    f'height="{grid_h}" fill="none" stroke="#d62728" stroke-width="1"/>'
                )
        parts.append(
            f'<text x="{ox}" y="{gy + grid_h + 14}" font-size="10">input channels {c0}..'
            f"{v['columns'][1] - 1}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


# -- the page ----------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px 32px;
       color: #222; max-width: 1500px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.note { color: #555; font-size: 13px; max-width: 1000px; }
details > summary { cursor: pointer; color: #1f4e9c; }
"""


def _summary_table(runs: list[dict[str, Any]]) -> str:
    head = (
        "<tr><th class='l'>run</th><th class='l'>model</th><th class='l'>method</th>"
        "<th class='l'>target</th><th>overall sparsity</th><th>dense ppl</th>"
        "<th>pruned ppl</th><th>x dense</th><th>prune s</th><th>saved MB</th></tr>"
    )
    rows = []
    for i, r in enumerate(runs):
        p = r["prune"]
        d, q = _ppl(r, "dense"), _ppl(r, "pruned")
        ratio = f"{q / d:.3f}" if d and q else "-"
        saved = r.get("saved") or {}
        mb = f"{saved['file_bytes'] / 1e6:.2f}" if "file_bytes" in saved else "-"
        model = (r.get("model") or {}).get("path", "?")
        rows.append(
            f"<tr id='run-{i}'><td class='l'>{_e(Path(r['_file']).name)}</td>"
            f"<td class='l'>{_e(Path(model).name)}</td><td class='l'>{_e(p['method'])}</td>"
            f"<td class='l'>{_e(_target(p))}</td>"
            f"<td class='sparsity'>{fmt_sparsity(p['overall_sparsity'])}</td>"
            f"<td class='ppl-dense'>{fmt_ppl(d)}</td><td class='ppl-pruned'>{fmt_ppl(q)}</td>"
            f"<td>{ratio}</td><td class='seconds'>{fmt_seconds(p.get('seconds'))}</td>"
            f"<td>{mb}</td></tr>"
        )
    return f"<table id='summary'>{head}{''.join(rows)}</table>"


def _layer_table(i: int, run: dict[str, Any]) -> str:
    rows = []
    for layer in run["prune"]["layers"]:
        shape = "x".join(str(s) for s in layer["shape"])
        rows.append(
            f"<tr><td class='l name'>{_e(layer['name'])}</td><td>{shape}</td>"
            f"<td class='sparsity'>{fmt_sparsity(layer['sparsity'])}</td>"
            f"<td class='error'>{fmt_error(layer.get('error'))}</td>"
            f"<td class='seconds'>{fmt_seconds(layer.get('seconds'))}</td></tr>"
        )
    head = (
        "<tr><th class='l'>linear</th><th>shape</th><th>sparsity</th>"
        "<th>rel. reconstruction error</th><th>seconds</th></tr>"
    )
    return f"<table class='layers' id='layers-{i}'>{head}{''.join(rows)}</table>"


def render_html(runs: list[dict[str, Any]], visual: dict[str, Any] | None = None) -> str:
    """The page for ``runs`` (from :func:`load_runs`) and an optional :func:`layer_visual`."""
    if not runs:
        raise ValueError("runs: expected at least one report")
    from . import __version__

    title = "sparseforge pruning report"
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{title}</title><style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
        f"<p class='note'>{len(runs)} run(s); made by sparseforge {_e(__version__)}. "
        "Perplexity: the dense and the pruned model on the same windows "
        "(<code>sparseforge prune --eval</code>). Reconstruction error of a linear: "
        "‖(W − W′)X‖² / ‖WX‖² on the calibration inputs it saw.</p>",
        "<h2>Runs</h2>",
        _summary_table(runs),
    ]
    for r in runs:
        ppl = r.get("perplexity") or {}
        if ppl:
            d, q = ppl.get("dense", {}), ppl.get("pruned", {})
            out.append(
                f"<p class='note'>{_e(Path(r['_file']).name)}: evaluated on "
                f"{_e(ppl.get('text', '?'))}, {q.get('windows', '?')} windows of "
                f"{q.get('seqlen', '?')} tokens ({q.get('tokens_scored', '?')} tokens scored); "
                f"dense {fmt_ppl(d.get('ppl'))} → pruned {fmt_ppl(q.get('ppl'))}.</p>"
            )
    sweep = sweep_svg(runs)
    if sweep:
        out += ["<h2>Sparsity against perplexity</h2>", sweep]
    if visual is not None:
        out += [
            "<h2>What each method keeps</h2>",
            f"<p class='note'>Layer <code>{_e(visual['layer'])}</code> "
            f"({visual['shape'][0]}x{visual['shape'][1]}) of the dense model, input channel "
            f"norms measured on {visual['tokens']} calibration tokens (largest "
            f"{visual['norm_max']:.3g}, median {visual['norm_median']:.3g}: "
            f"{visual['norm_ratio']:.1f}x). Bars: each input channel's activation norm, the "
            f"top {len(visual['outlier_channels'])} channels (outliers) in red. Grids: the "
            f"{len(visual['rows'])} output rows where magnitude and Wanda differ most in "
            "this tile; kept weights coloured (blue positive, red negative, darker = larger "
            "|w|), pruned ones grey. Magnitude ranks |w| alone and drops small weights that "
            "meet large activations; Wanda ranks |w|·‖x‖ and keeps them. Percentages are "
            "over the whole layer.</p>",
            masks_svg(visual),
        ]
    out.append("<h2>Per layer</h2>")
    for i, r in enumerate(runs):
        p = r["prune"]
        open_attr = " open" if i == 0 else ""
        out.append(
            f"<details{open_attr}><summary>{_e(Path(r['_file']).name)}: {_e(p['method'])} "
            f"{_e(_target(p))}, {len(p['layers'])} linears, "
            f"{p.get('nsamples', '?')} x {p.get('seqlen', '?')} calibration tokens"
            f"</summary>{_layer_table(i, r)}</details>"
        )
    out.append("</body></html>")
    return "\n".join(out)


def write_report(
    path: str | os.PathLike[str],
    runs: list[dict[str, Any]],
    visual: dict[str, Any] | None = None,
) -> Path:
    """Write :func:`render_html` to ``path`` atomically (temporary sibling + rename)."""
    from ._io import atomic_write

    target = Path(path)
    text = render_html(runs, visual)
    with atomic_write(target, "w") as f:
        f.write(text)
    return target
