"""Activation sparsity without retraining: TEAL thresholds (uniform and greedy), CATS
gate-first thresholds, the exact-zero path of ReLU MLPs, and Deja Vu style predictors, with
a model forward (:class:`SparseForward`) that runs the column-skip / row-skip kernels.

Workflow::

    stats = sf.activation.calibrate(model, calib_ids, seqlen=256, max_windows=8)
    th = sf.activation.teal_uniform(stats, 0.5)            # or teal_greedy(...).thresholds(0.5)
    th.save("teal50.json"); th = sf.activation.Thresholds.load("teal50.json", model=model)
    fwd = sf.activation.SparseForward(model, th)           # mode "teal"
    sf.models.perplexity(model, text, hooks=...)            # see SparseForward.hooks
    model.generate(ids, 32, hooks=fwd.hooks)               # T = 1 steps run the kernels
    fwd.achieved()                                         # measured sparsity

Names: every threshold entry is keyed by the linear's weight name
(``model.layers.3.mlp.down_proj.weight``) and applies to that linear's **input**; q, k and v
share one input (and one histogram) but keep three entries, as in TEAL. CATS entries are
``model.layers.{i}.mlp.act`` and apply to ``|silu(gate x)|``.

Sparsity is the fraction of zeros, in ``[0, 1)``. "Model-wide" sparsity weights each
linear's input sparsity by its parameter count (the fraction of linear-weight bytes a
decode step does not read), TEAL's effective sparsity; ``lm_head`` is not counted.

See docs/activation.md for the algorithms and the measured results.

Layout: ``histogram`` (:class:`Histogram`), ``calibration`` (:func:`calibrate`,
:class:`ActivationStats`), ``thresholds`` (:class:`Thresholds`, TEAL uniform, CATS), ``greedy``
(:func:`teal_greedy`), ``dejavu`` (predictors), ``forward`` (:class:`SparseForward`,
:class:`SparseModel`).
"""

from __future__ import annotations

from ._common import PROJECTIONS
from .calibration import ActivationStats, calibrate, model_signature
from .dejavu import DejaVuPredictors, LayerPredictor, fit_predictor, train_dejavu
from .forward import MODES, SparseForward, SparseModel
from .greedy import GreedyPath, teal_greedy
from .histogram import Histogram
from .thresholds import Thresholds, cats, teal_uniform, teal_uniform_sequential

__all__ = [
    "MODES",
    "PROJECTIONS",
    "ActivationStats",
    "DejaVuPredictors",
    "GreedyPath",
    "Histogram",
    "LayerPredictor",
    "SparseForward",
    "SparseModel",
    "Thresholds",
    "calibrate",
    "cats",
    "fit_predictor",
    "model_signature",
    "teal_greedy",
    "teal_uniform",
    "teal_uniform_sequential",
    "train_dejavu",
]


def __dir__() -> list[str]:
    """Tab completion shows the public API only (not numpy, typing or helpers)."""
    return sorted(__all__)
