"""Structured pruning: a smaller dense model. Minitron width (fewer MLP neurons), Minitron
depth (fewer blocks) and SliceGPT (a thinner residual stream), each compared with the dense
model by parameters, perplexity and saved size.

Run: python examples/python/structured.py [--model stories260k] [--nsamples 16]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import _common

import sparseforge as sf
from sparseforge import models as sm


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    args = p.parse_args()
    S = sf.structured
    model = sm.load(_common.model_path(args.model), linear_backend="sparseforge")
    c = model.config
    seqlen = min(args.seqlen, c.max_seq_len)
    calib = sm.calibration_windows(
        model, _common.english_text()[:200_000], nsamples=args.nsamples, seqlen=seqlen
    )
    evaluation = _common.eval_text()
    imp = S.importance(model, calib)
    hidden = (c.hidden_dim * 3 // 4) // 8 * 8 or c.hidden_dim
    candidates = {
        "dense": model,
        f"width: hidden_dim {c.hidden_dim} -> {hidden}": S.width(model, imp, hidden_dim=hidden),
        f"depth: {c.n_layers} -> {c.n_layers - 1} blocks": S.depth(
            model, imp, n_layers=c.n_layers - 1
        ),
        "SliceGPT 25%": S.slicegpt(model, calib, sparsity=0.25),
    }
    out = Path(tempfile.mkdtemp(prefix="sparseforge-structured-"))
    base = None
    for i, (label, m) in enumerate(candidates.items()):
        ppl = sm.perplexity(m, evaluation, seqlen=seqlen, max_windows=args.max_windows).ppl
        base = base or ppl
        saved = sm.save(m, out / f"{i}.sfm")
        print(
            f"{label:32s} {S.param_count(m.config) / 1e6:7.3f} M parameters, perplexity "
            f"{ppl:9.2f} ({ppl / base:.2f} x dense), {saved.file_bytes / 1e6:.2f} MB saved"
        )


if __name__ == "__main__":
    main()
