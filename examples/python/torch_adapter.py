"""Prune a transformers model in place with sparseforge.torch.prune_model (Wanda 2:4),
then check the pruned weights and the loss with transformers' own forward. Calibration is
plain text tokenised by the model's own Hugging Face tokenizer (no sparseforge model).

The model: a local Hugging Face directory (--hf DIR), or by default stories260K exported to
one with sf.models.export_hf (real weights, offline). Needs torch and transformers.
Run: python examples/python/torch_adapter.py [--hf DIR] [--nsamples 16]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import _common
import numpy as np

from sparseforge import models as sm


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--hf", default=None, help="a Hugging Face model directory")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=128)
    args = p.parse_args()
    import torch
    import transformers

    import sparseforge.torch as sft

    if args.hf is None:  # stories260K as a transformers directory
        ours = sm.load(_common.model_path(args.model or "stories260k"))
        hf_dir = Path(tempfile.mkdtemp(prefix="sparseforge-hf-")) / "model"
        sm.export_hf(ours, hf_dir)
    else:
        hf_dir = Path(args.hf)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model.eval()
    seqlen = min(args.seqlen, model.config.max_position_embeddings)
    text = _common.english_text()
    held_out = sft.text_windows(text[-50_000:], tokenizer, nsamples=4, seqlen=seqlen, seed=1)

    def loss() -> float:
        with torch.no_grad():
            ids = torch.as_tensor(held_out)
            return float(model(input_ids=ids, labels=ids).loss)

    before = loss()
    report = sft.prune_model(
        model,
        text[:100_000],  # text + tokenizer; ready id windows work too
        tokenizer=tokenizer,
        nsamples=args.nsamples,
        seqlen=seqlen,
        method="wanda",
        pattern="2:4",
        progress=False,
    )
    after = loss()
    W = model.model.layers[0].mlp.down_proj.weight.detach().numpy()
    kept = (W.reshape(W.shape[0], -1, 4) != 0).sum(axis=2)
    assert kept.max() <= 2  # every group of 4 along in_features keeps at most 2
    print(
        f"{hf_dir.name}: {len(report.layers)} linears pruned 2:4 (sparsity "
        f"{report.overall_sparsity:.3f}) in {report.seconds:.1f} s"
    )
    print(
        f"held-out loss: dense {before:.4f} -> pruned {after:.4f} nats/token "
        f"(perplexity {np.exp(before):.2f} -> {np.exp(after):.2f})"
    )
    model.save_pretrained(hf_dir.parent / "pruned")  # dense tensors holding the zeros
    print(f"saved with save_pretrained: {hf_dir.parent / 'pruned'}")


if __name__ == "__main__":
    main()
