// parallel_for: coverage, per-call thread counts, exceptions escaping OpenMP regions.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace {

TEST(Parallel, EveryIndexExactlyOnceForAnySizeThreadsAndGrain) {
  for (size_t n : {0, 1, 2, 3, 7, 17, 100, 1001}) {
    for (int threads : {1, 2, 3, 8}) {
      for (size_t grain : {0, 1, 5, 64}) {
        std::vector<std::atomic<int>> hits(n);
        parallel_for(
            n, threads,
            [&](size_t b, size_t e) {
              ASSERT_LT(b, e);
              for (size_t i = b; i < e; ++i) hits[i]++;
            },
            grain);
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << n << " " << threads;
      }
    }
  }
}

TEST(Parallel, ExceptionInsideRegionReachesCaller) {
  for (int threads : {1, 2, 4}) {
    try {
      parallel_for_each(1000, threads, [](size_t i) {
        if (i == 777) throw std::runtime_error("boom at 777");
      });
      FAIL() << "no exception with " << threads << " threads";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "boom at 777");
    }
  }
}

// Several failing indices: the caller sees the lowest one, as a serial loop would raise,
// whatever the thread count.
TEST(Parallel, LowestFailureIsReportedForAnyThreadCount) {
  for (int threads : {1, 2, 3, 8}) {
    try {
      parallel_for_each(4000, threads, [](size_t i) {
        if (i % 1000 == 999) SF_THROW(InvalidArgument, "bad index %zu", i);
      });
      FAIL();
    } catch (const InvalidArgument& e) {
      EXPECT_EQ(std::string(e.what()).rfind("bad index 999 ", 0), 0u) << e.what();
    }
  }
}

TEST(Parallel, DynamicCoversEveryIndexAndReportsTheLowestFailure) {
  for (int threads : {1, 2, 3, 8}) {
    std::vector<std::atomic<int>> hits(777);
    parallel_for_dynamic(hits.size(), threads, [&](size_t i) { hits[i]++; });
    for (auto& h : hits) ASSERT_EQ(h.load(), 1);
    try {
      parallel_for_dynamic(500, threads, [](size_t i) {
        if (i == 123 || i == 400) SF_THROW(InvalidArgument, "task %zu", i);
      });
      FAIL();
    } catch (const InvalidArgument& e) {
      EXPECT_EQ(std::string(e.what()).rfind("task 123 ", 0), 0u) << e.what();
    }
  }
}

TEST(Parallel, NestedLoopsRunAndCover) {
  std::vector<std::atomic<int>> hits(64 * 64);
  parallel_for_each(
      64, 2, [&](size_t i) { parallel_for_each(64, 2, [&](size_t j) { hits[i * 64 + j]++; }); });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
}

TEST(Parallel, ResolveNumThreads) {
  EXPECT_GE(resolve_num_threads(0), 1);
  EXPECT_GE(resolve_num_threads(-1), 1);
  EXPECT_EQ(resolve_num_threads(3), 3);
  EXPECT_THROW(resolve_num_threads(100000), InvalidArgument);
}

// Work that depends only on the index gives bitwise identical results for any count.
TEST(Parallel, ResultsIdenticalForOneAndManyThreads) {
  auto run = [](int threads) {
    std::vector<float> out(10007);
    parallel_for_each(out.size(), threads, [&](size_t i) {
      float acc = 0.0f;
      for (size_t j = 0; j <= i % 97; ++j) acc += 1.0f / static_cast<float>(i + j + 1);
      out[i] = acc;
    });
    return out;
  };
  const auto one = run(1);
  for (int t : {2, 3, 7}) EXPECT_EQ(run(t), one);
}

}  // namespace
}  // namespace sparseforge
