# sparseforge._core.models: forward ops (bind_models.cc).
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .calib import LayerStats

def rms_norm(
    x: npt.NDArray[np.float32],
    weight: npt.NDArray[np.float32],
    eps: float,
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...
def rope(
    x: npt.NDArray[np.float32],
    positions: npt.NDArray[np.int64],
    theta: float,
    style: str,
    num_threads: int = 0,
) -> None: ...
def attention(
    q: npt.NDArray[np.float32],
    k: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32],
    scale: float,
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
    window: int = 0,
) -> npt.NDArray[np.float32]: ...
def decode_attention(
    q: npt.NDArray[np.float32],
    k_cache: npt.NDArray[np.float32],
    v_cache: npt.NDArray[np.float32],
    length: int,
    scale: float,
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
    window: int = 0,
) -> npt.NDArray[np.float32]: ...
def swiglu_gate(
    g: npt.NDArray[np.float32],
    u: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...
def geglu_gate(
    g: npt.NDArray[np.float32],
    u: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...
def calib_block_forward(
    h: npt.NDArray[np.float32],
    seqlen: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    rope_theta: float,
    rope_style: str,
    norm_eps: float,
    scale: float,
    weights: Sequence[npt.NDArray[np.float32]],
    biases: Sequence[npt.NDArray[np.float32] | None],
    stats: Sequence[LayerStats | None],
    need_output: bool,
    num_threads: int = 0,
) -> npt.NDArray[np.float32] | None: ...
