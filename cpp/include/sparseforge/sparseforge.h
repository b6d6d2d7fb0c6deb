// sparseforge: weight, activation and KV-cache sparsity for LLMs on the CPU.
//
// One include for C++ users of the core (link sparseforge::core):
//   core/   views (row-major, non-owning), dtypes (fp32/fp16/bf16), errors, parallel_for,
//           run-time SIMD dispatch, build_info
//   prune/  masks, N:M patterns, magnitude pruning
#pragma once

#include "sparseforge/core/build_info.h"
#include "sparseforge/core/cpu.h"
#include "sparseforge/core/dtype.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"
#include "sparseforge/core/view.h"
#include "sparseforge/prune/magnitude.h"
#include "sparseforge/prune/mask.h"
#include "sparseforge/prune/select.h"
