// Prune one linear layer with SparseGPT from calibration statistics streamed in chunks:
// the C++ twin of examples/python/sparsegpt_layer.py (both print the same numbers).
//
// A calibration pass rarely holds all its activations at once: LayerStats takes them chunk
// by chunk (X^T X and the column sums of squares are sums, memory O(in_features^2)), and
// SparseGPT reads its Hessian X^T X / tokens in place. The layer and its inputs come from a
// fixed generator (splitmix64) so the Python twin rebuilds them bit for bit.
//
//   ./sparsegpt_stream_example            # prints the errors, then "ok"
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include <sparseforge/sparseforge.h>

namespace sf = sparseforge;

namespace {

constexpr size_t kOut = 128, kIn = 256;     // W: (out_features, in_features)
constexpr size_t kChunks = 8, kChunk = 64;  // 512 calibration tokens, 64 at a time
constexpr size_t kGroup = 16;               // inputs sharing a component (correlated)

// splitmix64's i-th output (i from 0) as a float in [-1, 1): 24 random bits, exact.
float uniform(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * 0x1.0p-23f - 1.0f;
}

// Chunk c of the calibration inputs: x[t, j] = z[t, j] + z[t, j - j % 16].
std::vector<float> chunk(size_t c) {
  std::vector<float> X(kChunk * kIn);
  for (size_t t = 0; t < kChunk; ++t) {
    const uint64_t row = (c * kChunk + t) * kIn;
    for (size_t j = 0; j < kIn; ++j) {
      X[t * kIn + j] = uniform(2, row + j) + uniform(2, row + j - j % kGroup);
    }
  }
  return X;
}

}  // namespace

int main() {
  std::vector<float> W(kOut * kIn);
  for (size_t i = 0; i < W.size(); ++i) W[i] = 0.05f * uniform(1, i);
  const sf::ConstMatrixView<float> Wv(W.data(), kOut, kIn);

  // 1. Stream the calibration chunks into LayerStats (and, to check, all at once).
  sf::calib::LayerStats stats(kIn, /*hessian=*/true);
  std::vector<float> all;
  for (size_t c = 0; c < kChunks; ++c) {
    const std::vector<float> X = chunk(c);
    stats.update(sf::ConstMatrixView<float>(X.data(), kChunk, kIn), /*num_threads=*/0);
    all.insert(all.end(), X.begin(), X.end());
  }
  sf::calib::LayerStats once(kIn, true);
  once.update(sf::ConstMatrixView<float>(all.data(), kChunks * kChunk, kIn), 0);
  std::vector<double> H(kIn * kIn), H1(kIn * kIn);
  stats.hessian(H.data());
  once.hessian(H1.data());
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < H.size(); ++i) {
    diff = std::max(diff, std::fabs(H[i] - H1[i]));
    scale = std::max(scale, std::fabs(H1[i]));
  }
  const double worst = diff / scale;
  std::printf("tokens %llu in %zu chunks; streamed vs one-shot Hessian: max diff %.1e of max |H|\n",
              static_cast<unsigned long long>(stats.tokens()), kChunks, worst);

  // 2. SparseGPT from the streamed statistics (read in place), 2:4 and 50 %.
  const sf::prune::HessianView Hv = sf::prune::hessian_view(stats);
  std::vector<float> pruned(W.size());
  std::vector<uint8_t> keep(W.size());
  const sf::MatrixView<float> out(pruned.data(), kOut, kIn);
  const sf::MaskView mask(keep.data(), kOut, kIn);

  sf::prune::SparseGPTOptions nm;
  nm.pattern = {2, 4};
  sf::prune::sparsegpt(Wv, Hv, nm, out, mask, 0);
  const sf::prune::NMViolations v =
      sf::prune::nm_violations(sf::ConstMatrixView<float>(pruned.data(), kOut, kIn), {2, 4}, 5, 0);
  const double err_gpt24 = sf::prune::reconstruction_error(Wv, out, Hv, 0);

  sf::prune::SparseGPTOptions half;
  half.sparsity = 0.5;
  sf::prune::sparsegpt(Wv, Hv, half, out, mask, 0);
  const size_t zeros =
      sf::prune::count_zeros(sf::ConstMatrixView<float>(pruned.data(), kOut, kIn), 0);
  const double err_gpt50 = sf::prune::reconstruction_error(Wv, out, Hv, 0);

  // 3. Magnitude 2:4 (no calibration) for comparison.
  sf::prune::magnitude_nm_mask(Wv, {2, 4}, mask, 0);
  pruned = W;
  sf::prune::apply_mask(out, mask, 0);
  const double err_mag24 = sf::prune::reconstruction_error(Wv, out, Hv, 0);

  std::printf("relative layer error ||(W - W') X||^2 / ||W X||^2:\n");
  std::printf("  magnitude 2:4  %.6f\n", err_mag24);
  std::printf("  SparseGPT 2:4  %.6f (%zu groups violate 2:4)\n", err_gpt24, v.violating);
  std::printf("  SparseGPT 50%%  %.6f (sparsity %.4f)\n", err_gpt50,
              static_cast<double>(zeros) / static_cast<double>(W.size()));
  const bool ok = worst < 1e-5 && v.violating == 0 && err_gpt24 < err_mag24 &&
                  err_gpt50 < err_gpt24 && zeros >= W.size() / 2;
  std::puts(ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
