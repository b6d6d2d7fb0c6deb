# sparseforge._core.moe: MoE routing, capacity, dispatch/combine, losses (bind_moe.cc).
from typing import Any

import numpy as np
import numpy.typing as npt

def route(
    logits: npt.NDArray[np.float32],
    top_k: int,
    score: str,
    renormalize: bool,
    routed_scaling_factor: float,
    bias: npt.NDArray[np.float32] | None,
    n_group: int,
    topk_group: int,
    group_score: str,
    num_threads: int,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def assign_capacity(
    expert_ids: npt.NDArray[np.int32],
    num_experts: int,
    priority_values: npt.NDArray[np.float32] | None,
    capacity_mode: str,
    capacity_factor: float,
    capacity: int,
    priority: str,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.int64], int, int]: ...
def dispatch_plan(
    expert_ids: npt.NDArray[np.int32], locations: npt.NDArray[np.int32], num_experts: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int32]]: ...
def gather(
    x: npt.NDArray[np.float32], token_of: npt.NDArray[np.int32], num_threads: int
) -> npt.NDArray[np.float32]: ...
def combine(
    buffer: npt.NDArray[np.float32],
    row_of: npt.NDArray[np.int32],
    weights: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32] | None,
    accumulate: bool,
    num_threads: int,
) -> npt.NDArray[np.float32]: ...
def swiglu_ffn(
    x: npt.NDArray[np.float32],
    offsets: npt.NDArray[np.int64],
    token_of: npt.NDArray[np.int32],
    row_of: npt.NDArray[np.int32],
    weights: npt.NDArray[np.float32],
    w_gate: npt.NDArray[Any],
    w_up: npt.NDArray[Any],
    w_down: npt.NDArray[Any],
    want_norms: bool,
    num_threads: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]: ...
def load_balancing_loss(
    logits: npt.NDArray[np.float32],
    num_layers: int,
    top_k: int,
    kind: str,
    expert_ids: npt.NDArray[np.int32] | None,
    token_mask: npt.NDArray[np.bool_] | None,
) -> float: ...
def z_loss(logits: npt.NDArray[np.float32]) -> float: ...
