"""``sparseforge export MODEL --format hf|gguf --out PATH``: write a model for another
runtime (transformers, llama.cpp). See docs/export.md."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from .models import _export_io
from .models.export_gguf import GGUF_DTYPES


def export_cmd(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from . import _model_cli
    from . import models as sm

    # validate the destination before loading anything
    if args.format == "hf":
        _export_io.check_out_dir(args.out, args.overwrite, "--out")
        if args.dtype is not None and args.dtype not in _export_io.DTYPES:
            raise ValueError(
                f"--dtype: expected one of {', '.join(_export_io.DTYPES)} for --format hf, "
                f"got {args.dtype!r}"
            )
        from .models.export_hf import parse_size

        parse_size(args.max_shard_size, "--max-shard-size")
    else:
        if args.compression is not None:
            raise ValueError("--compression: applies to --format hf only")
        _export_io.check_out_file(args.out, args.overwrite, "--out")
        if args.dtype is not None and args.dtype not in GGUF_DTYPES:
            raise ValueError(
                f"--dtype: expected one of {', '.join(GGUF_DTYPES)} for --format gguf, "
                f"got {args.dtype!r}"
            )
    model = _model_cli.load_model(args.model, args.threads)
    t0 = time.perf_counter()
    if args.format == "hf":
        report = sm.export_hf(
            model,
            args.out,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
            tokenizer=not args.no_tokenizer,
            compression=args.compression,
            progress=_model_cli._show(args),
        )
    else:
        report = sm.export_gguf(
            model,
            args.out,
            dtype=args.dtype or "f32",
            overwrite=args.overwrite,
            tokenizer=not args.no_tokenizer,
            progress=_model_cli._show(args),
        )
    out.write(f"model: {model.source}\n")
    out.write(f"exported ({args.format}) in {time.perf_counter() - t0:.1f} s: {report}\n")
    return 0


def add_export_command(sub: Any) -> None:
    e = sub.add_parser(
        "export",
        help="write a model as a Hugging Face directory (transformers) or a GGUF file (llama.cpp)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="examples:\n  sparseforge export pruned.sfm --format hf --out pruned-hf\n"
        "  sparseforge export pruned.sfm --format gguf --dtype q8_0 --out pruned.gguf",
    )
    e.add_argument(
        "model",
        help="a llama2.c .bin, a .gguf file, a Hugging Face directory, a file written by "
        "`sparseforge prune --out`, or the names smollm2 / stories260k",
    )
    e.add_argument("--format", choices=["hf", "gguf"], required=True)
    e.add_argument("--out", required=True, help="directory (hf) or .gguf file (gguf) to write")
    e.add_argument(
        "--dtype",
        default=None,
        help="hf: float32|float16|bfloat16 (default: keep each weight's dtype); "
        "gguf: f32|f16|bf16|q8_0 (default f32)",
    )
    e.add_argument(
        "--compression",
        choices=["sparse-24-bitmask", "sparse-bitmask"],
        default=None,
        help="hf: store the block linears in a compressed-tensors sparse layout",
    )
    e.add_argument("--max-shard-size", default="5GB", help="hf: bytes per safetensors shard")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output")
    e.add_argument("--no-tokenizer", action="store_true", help="write the weights only")
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--quiet", action="store_true", help="no progress on stderr")
    e.set_defaults(func=export_cmd)
