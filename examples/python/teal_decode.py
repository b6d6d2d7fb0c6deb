"""TEAL activation sparsity at decode: calibrate histograms, pick thresholds with TEAL's
greedy search for a model-wide 40 % / 50 %, then measure perplexity and generate (decode
runs TEAL's sparse kernels on the compiled runtime), and measure the sparsity achieved.

Run: python examples/python/teal_decode.py [--model stories260k] [--max-windows 4]
"""

from __future__ import annotations

import _common

import sparseforge as sf
from sparseforge import models as sm


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--seqlen", type=int, default=256)
    args = p.parse_args()
    A = sf.activation
    model = sm.load(_common.model_path(args.model), linear_backend="sparseforge")
    assert model.tokenizer is not None
    seqlen = min(args.seqlen, model.config.max_seq_len)
    calib = model.tokenizer.encode(_common.english_text()[:60_000])
    evaluation = _common.eval_text()
    stats = A.calibrate(model, calib, seqlen=seqlen, max_windows=4)
    path = A.teal_greedy(  # the search stops at 60 %: enough for the targets below
        model, stats, calib, seqlen=seqlen, max_windows=1, base_step=0.1, max_sparsity=0.6
    )
    dense = sm.perplexity(model, evaluation, seqlen=seqlen, max_windows=args.max_windows)
    print(f"dense: perplexity {dense.ppl:.3f}")
    prompt = model.tokenizer.encode("Once upon a time")
    for target in (0.4, 0.5):
        th = path.thresholds(stats, target)
        fwd = A.SparseForward(model, th)
        sparse = fwd.wrap()
        ppl = sm.perplexity(sparse, evaluation, seqlen=seqlen, max_windows=args.max_windows)
        new = sparse.generate(prompt, 24)  # decode on the compiled runtime, TEAL kernels
        fwd.reset_stats()
        sparse.forward(prompt + new)  # the hooked forward counts what the thresholds zero
        got = fwd.achieved()["model"]
        print(
            f"TEAL {target:.0%}: perplexity {ppl.ppl:.3f} ({ppl.ppl / dense.ppl:.3f} x dense); "
            f"measured sparsity {got:.3f}"
        )
        print("  ", repr(model.tokenizer.decode(prompt + new)[:120]))


if __name__ == "__main__":
    main()
