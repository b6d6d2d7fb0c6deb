# sparseforge._core.runtime: RuntimeModel, RuntimeSession (bind_runtime.cc).
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from .kvcache import KVPolicyCache

class RuntimeModel:
    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        n_layers: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        vocab_size: int,
        max_seq_len: int,
        norm_eps: float,
        rope_theta: float,
        rope_style: str,
        tied_embeddings: bool,
        arch: str,
    ) -> None: ...
    def set_linear(
        self, block: int, j: int, w: Any, wt: Any, bias: Any, threshold: float | None
    ) -> None: ...
    def set_norms(self, block: int, attn: Any, mlp: Any) -> None: ...
    def set_family(
        self,
        activation: str,
        embed_scale: float,
        query_scale: float,
        final_softcap: float,
        qk_norm: bool,
        sandwich_norms: bool,
        layer_window: list[int],
        layer_rope_theta: list[float],
    ) -> None: ...
    def set_block_norms(
        self, block: int, q_norm: Any, k_norm: Any, attn_post: Any, mlp_post: Any
    ) -> None: ...
    def set_embed(self, embed: Any) -> None: ...
    @staticmethod
    def load(path: str, verify: bool = True, num_threads: int = 0) -> RuntimeModel: ...
    def validate(self) -> None: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def tokenizer_kind(self) -> str: ...
    @property
    def weight_bytes(self) -> int: ...
    @property
    def frozen(self) -> bool: ...

class RuntimeSession:
    @overload
    def __init__(self, model: RuntimeModel, capacity: int, num_threads: int = 0) -> None: ...
    @overload
    def __init__(
        self, model: RuntimeModel, policy_cache: KVPolicyCache, num_threads: int = 0
    ) -> None: ...
    def prefill(self, tokens: list[int], last_only: bool = False) -> npt.NDArray[np.float32]: ...
    def step(self, token: int) -> npt.NDArray[np.float32]: ...
    def generate(
        self,
        prompt: list[int],
        max_new_tokens: int,
        temperature: float,
        top_k: int,
        top_p: float,
        seed: int,
        stop: list[int],
    ) -> list[int]: ...
    def read_kv(self, layer: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
    def set_model(self, model: RuntimeModel) -> None: ...
    def reset(self) -> None: ...
    @property
    def num_threads(self) -> int: ...
    @num_threads.setter
    def num_threads(self, arg1: int) -> None: ...
    @property
    def length(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def kv_bytes(self) -> int: ...
    @property
    def model(self) -> RuntimeModel: ...
