// The benchmark method in C++ (bench/README.md): candidates and baselines interleaved in
// one run, best-of-N, inputs rotated through a working set >= 4x the last-level cache so
// every call streams from DRAM, and a markdown table with build_info() beside it.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "sparseforge/core/build_info.h"

namespace sfbench {

// Last-level cache size in bytes from sysfs (the largest cache index), 32 MiB if unknown.
inline size_t llc_bytes() {
  size_t best = 0;
  for (int i = 0; i < 8; ++i) {
    std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/size");
    std::string s;
    if (!(f >> s)) continue;
    size_t v = std::stoul(s);
    if (s.back() == 'K') v *= 1024;
    if (s.back() == 'M') v *= 1024 * 1024;
    best = std::max(best, v);
  }
  return best ? best : size_t{32} << 20;
}

// How many copies of an input of `bytes` make a working set of at least 4x the LLC.
inline size_t copies_for(size_t bytes) {
  const size_t need = 4 * llc_bytes();
  return std::max<size_t>(2, (need + bytes - 1) / bytes);
}

struct Case {
  std::string name;
  std::function<void(size_t copy)> run;  // one call on input copy `copy`
  double best = 1e300;
};

// Interleaves the cases round-robin for `reps` rounds; each case's best time (seconds).
inline void run_interleaved(std::vector<Case>& cases, size_t copies, int reps) {
  size_t copy = 0;
  for (auto& c : cases) c.run(copy++ % copies);  // warm-up
  for (int r = 0; r < reps; ++r) {
    for (auto& c : cases) {
      const auto t0 = std::chrono::steady_clock::now();
      c.run(copy++ % copies);
      const double dt =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      c.best = std::min(c.best, dt);
    }
  }
}

// "2026-11-22 03:15 UTC"
inline std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", std::gmtime(&t));
  return buf;
}

inline std::string command_line(int argc, char** argv) {
  std::string out;
  for (int i = 0; i < argc; ++i) out += (i ? " " : "") + std::string(argv[i]);
  return out;
}

inline std::string build_info_markdown() {
  std::ostringstream s;
  s << "| key | value |\n|---|---|\n";
  for (const auto& kv : sparseforge::build_info())
    s << "| " << kv.first << " | " << kv.second << " |\n";
  s << "| llc_bytes | " << llc_bytes() << " |\n";
  return s.str();
}

}  // namespace sfbench
