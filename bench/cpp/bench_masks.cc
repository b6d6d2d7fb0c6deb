// Core mask selection at 1 and 2 threads and every SIMD level, on real LLM layer shapes.
// Usage: sf_bench_masks [--reps N] [--out bench/results/masks_core.md] [--quick]
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "harness.h"
#include "sparseforge/core/cpu.h"
#include "sparseforge/prune/magnitude.h"

namespace sf = sparseforge;

int main(int argc, char** argv) {
  int reps = 21;
  std::string out_path;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc)
      reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--out") && i + 1 < argc)
      out_path = argv[++i];
    else if (!std::strcmp(argv[i], "--quick"))
      quick = true;
  }
  std::vector<std::pair<size_t, size_t>> shapes = {{4096, 4096}, {11008, 4096}};
  if (quick) shapes = {{1024, 1024}};
  std::ostringstream md;
  md << "# Core mask selection (C++)\n\n- **Date:** " << sfbench::utc_now() << "\n- **Command:** `"
     << sfbench::command_line(argc, argv) << "`\n- **N:** best of " << reps << " interleaved runs, "
     << (quick ? std::string("--quick: 2 input copies, a smoke run, not a measurement")
               : "inputs rotated through >= 4x LLC (" + std::to_string(sfbench::llc_bytes() >> 20) +
                     " MiB)")
     << "\n\nms per call; fp32 weights ~ N(0, 0.02); every SIMD level of this CPU.\n\n";
  md << "| shape | op | simd | threads | ms | Melem/s |\n|---|---|---|---|---|---|\n";
  const sf::SimdLevel top = sf::detected_simd_level();
  for (auto [rows, cols] : shapes) {
    const size_t n = rows * cols;
    const size_t copies = quick ? 2 : sfbench::copies_for(n * 4);
    std::vector<std::vector<float>> W(copies);
    std::mt19937 rng(1);
    std::normal_distribution<float> dist(0.0f, 0.02f);
    for (auto& w : W) {
      w.resize(n);
      for (float& x : w) x = dist(rng);
    }
    std::vector<uint8_t> keep(n);
    std::vector<sfbench::Case> cases;
    struct Meta {
      std::string op;
      int level;
      int threads;
    };
    std::vector<Meta> meta;
    for (int level = 0; level <= static_cast<int>(top); ++level) {
      for (int threads : {1, 2}) {
        auto mk = [&](const std::string& op, std::function<void(const sf::AnyConstMatrix&)> f) {
          cases.push_back({op, [&, f, level](size_t c) {
                             sf::set_simd_level(static_cast<sf::SimdLevel>(level));
                             f(sf::ConstMatrixView<float>(W[c].data(), rows, cols));
                           }});
          meta.push_back({op, level, threads});
        };
        sf::MaskView kv(keep.data(), rows, cols);
        mk("row 50%", [=](const sf::AnyConstMatrix& w) {
          sf::prune::magnitude_mask(w, 0.5, sf::prune::Scope::kRow, kv, threads);
        });
        mk("layer 50%", [=](const sf::AnyConstMatrix& w) {
          sf::prune::magnitude_mask(w, 0.5, sf::prune::Scope::kLayer, kv, threads);
        });
        mk("2:4", [=](const sf::AnyConstMatrix& w) {
          sf::prune::magnitude_nm_mask(w, {2, 4}, kv, threads);
        });
      }
    }
    sfbench::run_interleaved(cases, copies, reps);
    sf::set_simd_level(top);
    for (size_t i = 0; i < cases.size(); ++i) {
      char line[256];
      std::snprintf(line, sizeof line, "| %zux%zu | %s | %s | %d | %.2f | %.0f |\n", rows, cols,
                    meta[i].op.c_str(),
                    sf::simd_level_name(static_cast<sf::SimdLevel>(meta[i].level)), meta[i].threads,
                    cases[i].best * 1e3, n / cases[i].best / 1e6);
      md << line;
      std::fputs(line, stdout);
    }
  }
  md << "\n## Build\n\n" << sfbench::build_info_markdown();
  if (!out_path.empty()) std::ofstream(out_path) << md.str();
  return 0;
}
