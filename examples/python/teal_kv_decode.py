"""Decode with TEAL and a KV policy on the compiled runtime, and save what the C++ twin needs.

    python examples/python/teal_kv_decode.py [--model stories260K.bin] [--save model.sf]
                                             [--budget 32] [--tokens 48]

TEAL thresholds for 50 % activation sparsity (uniform, calibrated on text the model itself
generates), then greedy decoding from BOS with the full cache and with an H2O cache of
``--budget`` tokens per layer and kv head: every step is one core call (the runtime's
Session over the paged cache with the policy). ``--save`` writes the model and, beside it,
``<file>.teal`` (one "weight-name threshold" line per linear) for the C++ twin,
examples/cpp/kv_policy_example.cc, which loads both and decodes the same way with the core
alone. Without --model: stories260K from the data directory, or a small random model.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
from generate import _random_model, _stories260k

import sparseforge as sf
from sparseforge import models as sm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model file sparseforge.models.load reads")
    ap.add_argument("--save", help="where to write the model (default: a temp file)")
    ap.add_argument("--budget", type=int, default=32, help="H2O tokens per layer and kv head")
    ap.add_argument("--tokens", type=int, default=48, help="tokens to generate")
    args = ap.parse_args()
    path = args.model or _stories260k()
    model = sm.load(path) if path else _random_model()
    tok = model.tokenizer
    bos = tok.bos_id if tok is not None and tok.bos_id is not None else 0
    n = min(args.tokens, model.config.max_seq_len - 1)

    # TEAL: thresholds at 50 % of every linear's input, from the model's own text
    calib = [bos, *model.generate([bos], model.config.max_seq_len - 1, stop_at_eos=False)]
    stats = sf.activation.calibrate(model, np.asarray(calib), seqlen=len(calib))
    th = sf.activation.teal_uniform(stats, 0.5)
    teal = sf.activation.SparseForward(model, th).wrap()

    for name, cache in (
        ("full cache", None),
        (f"H2O {args.budget}", sf.kv.PolicyCache(model, "h2o", tokens=args.budget)),
    ):
        ids = teal.generate([bos], n, cache=cache, stop_at_eos=False)
        text = tok.decode([bos, *ids]) if tok is not None else " ".join(map(str, ids))
        held = "" if cache is None else f", cache {cache.bytes_in_use} bytes"
        print(f"TEAL 50% + {name}{held}: {text!r}")

    out = args.save or os.path.join(tempfile.mkdtemp(), "model.sf")
    sm.save(model, out)
    with open(out + ".teal", "w") as f:  # the C++ twin's input: name threshold
        for w, t in sorted(th.values.items()):
            f.write(f"{w} {t!r}\n")
    print(f"saved {out} and {out}.teal ({len(th.values)} thresholds)")


if __name__ == "__main__":
    main()
