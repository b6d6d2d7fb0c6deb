"""A KV-cache policy in generation: greedy decoding with H2O and StreamingLLM caches of a
fixed token budget, against the full cache: agreement of the generated tokens, the NLL
through the decode loop, and the memory the cache holds.

Run: python examples/python/kv_policy.py [--model stories260k] [--budget 64]
"""

from __future__ import annotations

import _common
import numpy as np

import sparseforge as sf
from sparseforge import models as sm


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--budget", type=int, default=64, help="tokens kept per layer and head")
    p.add_argument("--tokens", type=int, default=192, help="tokens scored through the loop")
    args = p.parse_args()
    model = sm.load(_common.model_path(args.model), linear_backend="sparseforge")
    assert model.tokenizer is not None
    ids = model.tokenizer.encode(_common.eval_text()[:20_000])[: args.tokens]
    prompt = ids[:48]
    full = model.generate(prompt, 32)
    for name, options in (("full", {}), ("streaming_llm", {"sinks": 4}), ("h2o", {})):
        budget = None if name == "full" else args.budget
        cache = sf.kv.PolicyCache(model, name, budget, **options)
        logits = model.step(prompt, cache)  # prefill: exact attention, then compress
        out = []
        for _ in range(32):  # greedy decode through the policy's cache
            nxt = int(np.argmax(logits[-1]))
            out.append(nxt)
            logits = model.step([nxt], cache)
        same = sum(a == b for a, b in zip(out, full, strict=False)) / len(full)
        nll = sf.kv.decode_nll(model, ids, sf.kv.PolicyCache(model, name, budget, **options),
                               prefill=32)  # fmt: skip
        print(
            f"{name:14s} budget {budget or 'all':>4}: {same:.0%} of the full cache's tokens, "
            f"NLL {nll.mean():.4f} nats/token, cache peak {cache.peak_bytes / 1e3:.1f} kB"
        )


if __name__ == "__main__":
    main()
