"""llama2.c tokenizer speed: the word-by-word encoder (cache cleared before every run) against
the whole-text heap merge it replaced, interleaved, on WikiText-2's test split (1.3 MB) and
the TinyStories excerpt, with the ids checked equal.

    python bench/bench_tokenizer.py [--reps 3] [--out bench/results/tokenizer.md]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from sparseforge import models as sm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--data", default=os.environ.get("SPARSEFORGE_DATA", "../shared/data"))
    ap.add_argument("--out", default="bench/results/tokenizer.md")
    args = ap.parse_args()
    data = Path(args.data)
    tok = sm.Llama2cTokenizer(data / "stories260K" / "tok512.bin", 512)
    texts = {
        "WikiText-2 test": data / "wikitext-2-raw" / "wiki.test.raw",
        "TinyStories excerpt": data / "tinystories-valid-excerpt" / "tinystories_val.txt",
    }
    rows = []
    for name, path in texts.items():
        text = path.read_text(encoding="utf-8")
        best = {"whole": float("inf"), "words": float("inf")}
        loads = []
        ids = {}
        for _ in range(args.reps):
            for kind in ("whole", "words"):
                tok._word_cache.clear()
                t0 = time.perf_counter()
                if kind == "whole":
                    ids[kind] = tok._encode_whole(text, True)
                else:
                    ids[kind] = tok.encode(text)
                best[kind] = min(best[kind], time.perf_counter() - t0)
                loads.append(os.getloadavg()[0])
        assert ids["whole"] == ids["words"], name
        rows.append(
            f"| {name} | {len(text) / 1e6:.2f} MB | {len(ids['words'])} | "
            f"{best['whole']:.2f} | {best['words']:.2f} | {best['whole'] / best['words']:.1f}x | "
            f"{min(loads):.1f}-{max(loads):.1f} |"
        )
    table = "\n".join(
        [
            "| text | size | tokens | whole-text merge s | word by word s | speed-up | load |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    report = (
        "# llama2.c tokenizer: word-by-word encode\n\n"
        f"Command: `python bench/bench_tokenizer.py --reps {args.reps}`. Best of {args.reps} "
        "interleaved runs each (the word cache cleared before every run); ids equal in every "
        "run. The machine was shared (load: 1-minute load average over the runs).\n\n"
        + table
        + "\n"
    )
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
