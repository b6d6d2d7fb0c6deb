// Prune a weight matrix to 2:4 and 50% per row with the C++ core, and check the results.
#include <cstdio>
#include <random>
#include <vector>

#include <sparseforge/sparseforge.h>

int main() {
  namespace sf = sparseforge;
  const size_t rows = 256, cols = 512;  // W: (out_features, in_features), row-major
  std::vector<float> W(rows * cols);
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (float& w : W) w = normal(rng);

  std::vector<uint8_t> keep(rows * cols);  // 1 = kept
  sf::MaskView mask(keep.data(), rows, cols);
  sf::ConstMatrixView<float> view(W.data(), rows, cols);

  sf::prune::magnitude_nm_mask(view, sf::prune::parse_nm("2:4"), mask, /*num_threads=*/0);
  std::vector<float> pruned = W;
  sf::prune::apply_mask(sf::MatrixView<float>(pruned.data(), rows, cols), mask, 0);
  const sf::prune::NMViolations v =
      sf::prune::nm_violations(sf::ConstMatrixView<float>(pruned.data(), rows, cols), {2, 4}, 5, 0);
  const size_t zeros =
      sf::prune::count_zeros(sf::ConstMatrixView<float>(pruned.data(), rows, cols), 0);

  sf::prune::magnitude_mask(view, 0.5, sf::prune::Scope::kRow, mask, 0);
  size_t kept_row0 = 0;
  for (size_t c = 0; c < cols; ++c) kept_row0 += keep[c];

  try {
    sf::prune::magnitude_nm_mask(view, {2, 3}, mask, 0);  // 512 % 3 != 0
    std::puts("error: expected an exception for 2:3");
    return 1;
  } catch (const sf::InvalidArgument& e) {
    std::printf("bad input is an exception: %s\n", e.what());
  }

  std::printf("sparseforge %s, simd %s\n", sf::build_info()[0].second.c_str(),
              sf::simd_level_name(sf::simd_level()));
  std::printf("2:4: sparsity %.3f, %zu of %zu groups violate the pattern\n",
              static_cast<double>(zeros) / (rows * cols), v.violating, v.groups);
  std::printf("50%% per row: row 0 keeps %zu of %zu\n", kept_row0, cols);
  const bool ok = v.violating == 0 && zeros == rows * cols / 2 && kept_row0 == cols / 2;
  std::puts(ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
