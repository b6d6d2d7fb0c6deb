"""sf.models.prune_ray on a local Ray cluster started here: bit-identical to the
single-process sf.models.prune, a worker killed mid-block is retried, a block whose task
fails for good is left untouched. Skips without ray (the ``ray`` extra)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinymodels
from sparseforge import models as sm
from sparseforge.models import distributed

ray = pytest.importorskip("ray")

# One local cluster for the module (about 10 s to start); the whole file ~35 s on 2 cores.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

# 12 windows of 16 tokens in batches of 2 windows: 6 batches, split over 3 shards.
CALIB = np.random.default_rng(1).integers(3, 80, size=(12, 16))
KW: dict[str, Any] = dict(batch_tokens=32, progress=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    fault = tmp_path_factory.mktemp("ray-fault")
    old = os.environ.get(distributed.FAULT_ENV)
    os.environ[distributed.FAULT_ENV] = str(fault)  # inherited by the workers
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield fault
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop(distributed.FAULT_ENV, None)
        else:
            os.environ[distributed.FAULT_ENV] = old


def weights(model: sm.LlamaModel) -> dict[str, np.ndarray]:
    return {
        n: np.array(model.weight(n))
        for i in range(model.config.n_layers)
        for n in model.linear_names(i)
    }


def assert_same(a: sm.LlamaModel, b: sm.LlamaModel, ra: Any, rb: Any) -> None:
    wa, wb = weights(a), weights(b)
    for n in wa:
        assert wa[n].dtype == wb[n].dtype, n
        assert np.array_equal(wa[n], wb[n]), n
    assert [r.name for r in ra.layers] == [r.name for r in rb.layers]
    assert [(r.sparsity, r.error) for r in ra.layers] == [(r.sparsity, r.error) for r in rb.layers]


@pytest.mark.parametrize(
    ("method", "kw"),
    [
        ("wanda", dict(sparsity=0.5)),  # forward="auto": the core forward, a chain
        ("sparsegpt", dict(pattern="2:4")),
        ("sparsegpt", dict(pattern="2:4", forward="python")),  # parallel, inputs chained
        ("sparsegpt", dict(sparsity=0.6, sequential=False, forward="python")),
        ("wanda", dict(sparsity=0.6, sequential=False)),
        ("magnitude", dict(sparsity=0.3, error=False)),
        ("wanda", dict(pattern="2:4", activations="bfloat16", workers=7, forward="python")),
    ],
)
def test_bit_identical_to_single_process(cluster: Any, method: str, kw: dict[str, Any]) -> None:
    a, b = tinymodels.random_model(3), tinymodels.random_model(3)
    workers = kw.pop("workers", 3)
    ra = sm.prune(a, CALIB, method=method, **KW, **kw)
    rb = sm.prune_ray(b, CALIB, method=method, workers=workers, **KW, **kw)
    assert_same(a, b, ra, rb)
    assert rb.nsamples == 12
    assert rb.seqlen == 16
    assert rb.method == method
    # The pruning happened (not two untouched models).
    dense = weights(tinymodels.random_model(3))
    assert all(not np.array_equal(dense[n], w) for n, w in weights(b).items())


def test_merge_statistics_match_within_rounding(cluster: Any) -> None:
    """statistics="merge": per-shard LayerStats merged (float64 sums), equal to one stream
    up to rounding: same sparsity, errors within 1e-6, nearly all of the mask equal."""
    a, b = tinymodels.random_model(5), tinymodels.random_model(5)
    ra = sm.prune(a, CALIB, method="sparsegpt", sparsity=0.5, **KW)
    rb = sm.prune_ray(b, CALIB, method="sparsegpt", sparsity=0.5, statistics="merge", **KW)
    for x, y in zip(ra.layers, rb.layers, strict=True):
        assert x.sparsity == y.sparsity
        assert x.error is not None
        assert y.error is not None
        assert y.error == pytest.approx(x.error, rel=1e-6)
    wa, wb = weights(a), weights(b)
    agree = np.mean([np.mean((wa[n] == 0) == (wb[n] == 0)) for n in wa])
    assert agree > 0.999


@pytest.mark.parametrize(("stage", "block"), [("calibrate", 0), ("prune", 1), ("forward", 1)])
def test_killed_worker_is_retried(cluster: Path, stage: str, block: int) -> None:
    (cluster / f"arm-{stage}").write_text(str(block))
    a, b = tinymodels.random_model(4), tinymodels.random_model(4)
    ra = sm.prune(a, CALIB, method="sparsegpt", sparsity=0.5, **KW)
    rb = sm.prune_ray(b, CALIB, method="sparsegpt", sparsity=0.5, workers=3, **KW)
    fired = cluster / f"fired-{stage}"
    assert fired.exists()
    assert not (cluster / f"arm-{stage}").exists()
    fired.unlink()
    assert_same(a, b, ra, rb)


def test_failed_block_is_not_half_written(cluster: Path) -> None:
    """No retries left: RayPruneError names block 1; block 0 is committed (equal to the
    single-process result), block 1 keeps every dense weight although some of its 7
    pruning tasks succeeded."""
    (cluster / "arm-prune").write_text("1")
    ref, b = tinymodels.random_model(6), tinymodels.random_model(6)
    sm.prune(ref, CALIB, method="wanda", sparsity=0.5, **KW)
    dense = weights(tinymodels.random_model(6))
    with pytest.raises(distributed.RayPruneError, match="block 1") as info:
        sm.prune_ray(b, CALIB, method="wanda", sparsity=0.5, max_retries=0, **KW)
    (cluster / "fired-prune").unlink()
    assert info.value.block == 1
    assert info.value.done == 1
    wr, wb = weights(ref), weights(b)
    for n in wb:
        expect = wr[n] if n.startswith("model.layers.0.") else dense[n]
        assert np.array_equal(wb[n], expect), n


def test_a_method_error_is_raised_as_in_one_process(cluster: Any) -> None:
    """An exception inside a task (here sparsegpt's check of percdamp) is not retried and
    comes out as the same exception prune() raises; the model is untouched."""
    a, b = tinymodels.random_model(2), tinymodels.random_model(2)
    with pytest.raises(ValueError, match="percdamp") as single:
        sm.prune(a, CALIB, method="sparsegpt", percdamp=-1.0, **KW)
    with pytest.raises(ValueError, match="percdamp") as ray_err:
        sm.prune_ray(b, CALIB, method="sparsegpt", percdamp=-1.0, **KW)
    assert str(ray_err.value) == str(single.value)
    dense = weights(tinymodels.random_model(2))
    assert all(np.array_equal(w, dense[n]) for n, w in weights(b).items())


def test_bad_arguments(cluster: Any) -> None:
    m = tinymodels.random_model(0)
    with pytest.raises(ValueError, match="statistics"):
        sm.prune_ray(m, CALIB, statistics="sum", **KW)
    with pytest.raises(ValueError, match="workers"):
        sm.prune_ray(m, CALIB, workers=0, **KW)
    with pytest.raises(ValueError, match="forward"):
        sm.prune_ray(m, CALIB, forward="gpu", **KW)
    with pytest.raises(ValueError, match="max_retries"):
        sm.prune_ray(m, CALIB, max_retries=-1, **KW)
    with pytest.raises(ValueError, match="method"):
        sm.prune_ray(m, CALIB, method="nope", **KW)
    with pytest.raises(TypeError, match="model"):
        sm.prune_ray("model", CALIB, **KW)  # type: ignore[arg-type]
    assert weights(m).keys() == weights(tinymodels.random_model(0)).keys()
