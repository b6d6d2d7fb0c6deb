// sparseforge: weight, activation and KV-cache sparsity for LLMs on the CPU.
//
// One include for C++ users of the core (link sparseforge::core):
//   core/   views (row-major, non-owning), dtypes (fp32/fp16/bf16), errors, parallel_for,
//           run-time SIMD dispatch, build_info
//   prune/  masks, N:M patterns, magnitude pruning
//   kernels/ dense GEMV/GEMM, row skip, column skip (TEAL), sparse SwiGLU
//   format/ + kernels/unstructured.h: bitmap and CSR weights, their GEMV/GEMM
//   models/ the per-token ops of a Llama-family forward (RMSNorm, RoPE, attention)
//   kvcache/ the paged KV cache, decode attention, Quest, and the eleven KV policies
//           (make_policy, PolicyCache) that runtime::Session runs with a model
//   format/container.h: the on-disk container (safetensors-compatible, CRC-checked) reader
//   runtime/ a model in its stored formats (with TEAL thresholds) and a session that runs
//           prefill, decode steps and generation over its KV cache in one call
//   calib/  streaming calibration statistics (LayerStats); prune/ also Wanda, SparseGPT, OBS
//   moe/    routing and expert dispatch; activation/ activation-sparsity predictors
// Every header under sparseforge/ is included here (tests_py/test_examples.py checks it).
#pragma once

#include "sparseforge/activation/predictor.h"
#include "sparseforge/calib/layer_stats.h"
#include "sparseforge/core/build_info.h"
#include "sparseforge/core/cpu.h"
#include "sparseforge/core/dtype.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/memory.h"
#include "sparseforge/core/object_mutex.h"
#include "sparseforge/core/parallel.h"
#include "sparseforge/core/view.h"
#include "sparseforge/format/container.h"
#include "sparseforge/format/nm.h"
#include "sparseforge/format/unstructured.h"
#include "sparseforge/kernels/activation.h"
#include "sparseforge/kernels/dense.h"
#include "sparseforge/kernels/nm.h"
#include "sparseforge/kernels/unstructured.h"
#include "sparseforge/kvcache/attention.h"
#include "sparseforge/kvcache/paged_cache.h"
#include "sparseforge/kvcache/policy.h"
#include "sparseforge/models/block_forward.h"
#include "sparseforge/models/ops.h"
#include "sparseforge/moe/dispatch.h"
#include "sparseforge/moe/routing.h"
#include "sparseforge/prune/magnitude.h"
#include "sparseforge/prune/mask.h"
#include "sparseforge/prune/obs.h"
#include "sparseforge/prune/select.h"
#include "sparseforge/prune/sparsegpt.h"
#include "sparseforge/prune/wanda.h"
#include "sparseforge/runtime/model.h"
#include "sparseforge/runtime/saved_model.h"
#include "sparseforge/runtime/session.h"
