// The runtime (Model + Session) on a tiny random model against a naive float64 forward
// written here from the formulas (runtime/model.h): prefill, decode steps, GQA, both RoPE
// styles, biases, tied heads, N:M and bitmap weights, TEAL; 1 vs 2 threads bitwise; bad
// input throwing InvalidArgument with the cache untouched; sampling.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "sparseforge/core/error.h"
#include "sparseforge/format/container.h"
#include "sparseforge/format/nm.h"
#include "sparseforge/format/unstructured.h"
#include "sparseforge/runtime/model.h"
#include "sparseforge/runtime/saved_model.h"
#include "sparseforge/runtime/session.h"
#include "testing/random.h"

namespace sparseforge {
namespace runtime {
namespace {

using testing::normal;

// Owns the arrays of a random model and a Model of views into them.
struct Tiny {
  ModelConfig c;
  std::vector<std::vector<float>> mats;  // per linear: (out, in) row-major
  std::vector<std::vector<float>> biases;
  std::vector<std::vector<float>> norms;
  std::vector<float> embed, head, final_norm;
  std::vector<format::NMMatrix> nm;
  std::vector<format::BitmapMatrix> bm;
  std::vector<std::vector<float>> transposed;
  Model m;

  explicit Tiny(ModelConfig cfg, bool bias, uint64_t seed = 1) : c(cfg) {
    const size_t outs[7] = {c.q_dim(),    c.kv_dim(),   c.kv_dim(), c.dim,
                            c.hidden_dim, c.hidden_dim, c.dim};
    const size_t ins[7] = {c.dim, c.dim, c.dim, c.q_dim(), c.dim, c.dim, c.hidden_dim};
    m.config = c;
    embed = normal(c.vocab_size * c.dim, seed, 1.0f);
    m.embed = ConstMatrixView<float>(embed.data(), c.vocab_size, c.dim);
    mats.reserve(7 * c.n_layers);
    norms.reserve(2 * c.n_layers);
    biases.reserve(3 * c.n_layers);
    m.blocks.resize(c.n_layers);
    for (size_t i = 0; i < c.n_layers; ++i) {
      Block& b = m.blocks[i];
      Linear* ls[7] = {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down};
      for (int j = 0; j < 7; ++j) {
        mats.push_back(normal(outs[j] * ins[j], seed + 10 * i + j + 2, 0.3f));
        ls[j]->w = Weight::of(ConstMatrixView<float>(mats.back().data(), outs[j], ins[j]));
        if (bias && j < 3) {
          biases.push_back(normal(outs[j], seed + 100 + 10 * i + j, 0.5f));
          ls[j]->bias = biases.back().data();
        }
      }
      norms.push_back(normal(c.dim, seed + 200 + i, 0.2f));
      for (float& x : norms.back()) x += 1.0f;
      b.attn_norm = norms.back().data();
      norms.push_back(normal(c.dim, seed + 300 + i, 0.2f));
      for (float& x : norms.back()) x += 1.0f;
      b.mlp_norm = norms.back().data();
    }
    final_norm = normal(c.dim, seed + 400, 0.2f);
    for (float& x : final_norm) x += 1.0f;
    m.final_norm = final_norm.data();
    if (!c.tied_embeddings) {
      head = normal(c.vocab_size * c.dim, seed + 500, 0.3f);
      m.head.w = Weight::of(ConstMatrixView<float>(head.data(), c.vocab_size, c.dim));
    }
  }

  // Every block linear pruned 2:4 (magnitude), stored as NMMatrix; mats keep the pruned
  // dense values for the reference.
  void to_nm() {
    nm.reserve(mats.size());
    size_t idx = 0;
    for (Block& b : m.blocks) {
      for (Linear* l : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down}) {
        const ConstMatrixView<float> W = l->w.dense.as<float>();
        nm.push_back(format::nm_from_dense(W, 2, 4, format::NMFromDense::kMagnitude, 1));
        format::nm_to_dense(nm.back(), MatrixView<float>(mats[idx].data(), W.rows, W.cols), 1);
        l->w = Weight::of(nm.back());
        ++idx;
      }
    }
  }

  // Weights below 0.2 in magnitude dropped, stored as BitmapMatrix.
  void to_bitmap() {
    bm.reserve(mats.size());
    size_t idx = 0;
    for (Block& b : m.blocks) {
      for (Linear* l : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down}) {
        const size_t rows = l->w.rows(), cols = l->w.cols();
        for (float& x : mats[idx]) x = std::fabs(x) < 0.2f ? 0.0f : x;
        bm.push_back(
            format::bitmap_from_dense(ConstMatrixView<float>(mats[idx].data(), rows, cols)));
        l->w = Weight::of(bm.back());
        ++idx;
      }
    }
  }

  // TEAL: every block linear thresholded at t, with its dense transposed weight.
  void teal(float t) {
    transposed.reserve(mats.size());
    size_t idx = 0;
    for (Block& b : m.blocks) {
      for (Linear* l : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down}) {
        const size_t rows = l->w.rows(), cols = l->w.cols();
        std::vector<float> wt(rows * cols);
        for (size_t r = 0; r < rows; ++r) {
          for (size_t k = 0; k < cols; ++k) wt[k * rows + r] = mats[idx][r * cols + k];
        }
        transposed.push_back(std::move(wt));
        l->wt = Weight::of(ConstMatrixView<float>(transposed.back().data(), cols, rows));
        l->teal = true;
        l->threshold = t;
        ++idx;
      }
    }
  }
};

// ---------------------------------------------------------------------------------------
// The naive reference: float64, straight from the formulas.

using Vec = std::vector<double>;

Vec matvec(const std::vector<float>& W, size_t rows, size_t cols, const Vec& x, double t) {
  Vec y(rows, 0.0);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      const double xc = std::fabs(x[c]) > t ? x[c] : 0.0;
      y[r] += static_cast<double>(W[r * cols + c]) * xc;
    }
  }
  return y;
}

Vec rmsnorm(const Vec& x, const float* w, double eps) {
  double ss = 0.0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + eps);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = w[i] * x[i] * inv;
  return y;
}

void rope(Vec& x, size_t heads, size_t D, size_t pos, double theta, models::RopeStyle style) {
  const size_t half = D / 2;
  for (size_t h = 0; h < heads; ++h) {
    for (size_t i = 0; i < half; ++i) {
      const double ang = static_cast<double>(pos) * std::pow(theta, -2.0 * i / D);
      const size_t a = style == models::RopeStyle::kHalf ? i : 2 * i;
      const size_t b = style == models::RopeStyle::kHalf ? i + half : 2 * i + 1;
      const double x0 = x[h * D + a], x1 = x[h * D + b];
      x[h * D + a] = x0 * std::cos(ang) - x1 * std::sin(ang);
      x[h * D + b] = x0 * std::sin(ang) + x1 * std::cos(ang);
    }
  }
}

// Logits (T, vocab) of tokens at positions 0..T-1; `t` is the TEAL threshold (-1: none).
std::vector<Vec> reference(const Tiny& tm, const std::vector<int64_t>& tokens, double t = -1.0) {
  const ModelConfig& c = tm.c;
  const size_t T = tokens.size(), D = c.head_dim, group = c.n_heads / c.n_kv_heads;
  std::vector<std::vector<Vec>> K(c.n_layers), V(c.n_layers);
  std::vector<Vec> out;
  for (size_t p = 0; p < T; ++p) {
    Vec h(c.dim);
    for (size_t d = 0; d < c.dim; ++d) h[d] = tm.embed[tokens[p] * c.dim + d];
    for (size_t i = 0; i < c.n_layers; ++i) {
      const Block& b = tm.m.blocks[i];
      const auto W = [&](int j) -> const std::vector<float>& { return tm.mats[7 * i + j]; };
      Vec x = rmsnorm(h, b.attn_norm, c.norm_eps);
      Vec q = matvec(W(0), c.q_dim(), c.dim, x, t), k = matvec(W(1), c.kv_dim(), c.dim, x, t),
          v = matvec(W(2), c.kv_dim(), c.dim, x, t);
      const Linear* qkv[3] = {&b.q, &b.k, &b.v};
      Vec* outs[3] = {&q, &k, &v};
      for (int j = 0; j < 3; ++j) {
        if (qkv[j]->bias) {
          for (size_t r = 0; r < outs[j]->size(); ++r) (*outs[j])[r] += qkv[j]->bias[r];
        }
      }
      rope(q, c.n_heads, D, p, c.rope_theta, c.rope_style);
      rope(k, c.n_kv_heads, D, p, c.rope_theta, c.rope_style);
      K[i].push_back(k);
      V[i].push_back(v);
      Vec a(c.q_dim(), 0.0);
      for (size_t hq = 0; hq < c.n_heads; ++hq) {
        const size_t g = hq / group;
        Vec s(p + 1);
        double mx = -1e300;
        for (size_t j = 0; j <= p; ++j) {
          double dot = 0.0;
          for (size_t d = 0; d < D; ++d) dot += q[hq * D + d] * K[i][j][g * D + d];
          s[j] = dot / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, s[j]);
        }
        double z = 0.0;
        for (double& e : s) z += (e = std::exp(e - mx));
        for (size_t j = 0; j <= p; ++j) {
          for (size_t d = 0; d < D; ++d) a[hq * D + d] += s[j] / z * V[i][j][g * D + d];
        }
      }
      const Vec o = matvec(W(3), c.dim, c.q_dim(), a, t);
      for (size_t d = 0; d < c.dim; ++d) h[d] += o[d];
      x = rmsnorm(h, b.mlp_norm, c.norm_eps);
      const Vec g = matvec(W(4), c.hidden_dim, c.dim, x, t),
                u = matvec(W(5), c.hidden_dim, c.dim, x, t);
      Vec m(c.hidden_dim);
      for (size_t r = 0; r < c.hidden_dim; ++r) m[r] = g[r] / (1.0 + std::exp(-g[r])) * u[r];
      const Vec y = matvec(W(6), c.dim, c.hidden_dim, m, t);
      for (size_t d = 0; d < c.dim; ++d) h[d] += y[d];
    }
    const Vec x = rmsnorm(h, tm.m.final_norm, c.norm_eps);
    out.push_back(matvec(c.tied_embeddings ? tm.embed : tm.head, c.vocab_size, c.dim, x, -1.0));
  }
  return out;
}

ModelConfig tiny_config() {
  ModelConfig c;
  c.dim = 32;
  c.hidden_dim = 48;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.vocab_size = 40;
  c.max_seq_len = 64;
  c.rope_style = models::RopeStyle::kHalf;
  return c;
}

std::vector<int64_t> tokens(size_t n, uint64_t seed) {
  std::vector<int64_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = static_cast<int64_t>((seed * 7 + i * 13 + i * i) % 40);
  return t;
}

// Prefill `split` tokens then step the rest; every logit within tol of the reference.
void expect_matches_reference(const Tiny& tm, double teal, int threads, double tol = 2e-4) {
  const std::vector<int64_t> ids = tokens(20, 3);
  const std::vector<Vec> ref = reference(tm, ids, teal);
  Session s(tm.m, 32, threads);
  const size_t V = tm.c.vocab_size, split = 7;
  std::vector<float> logits(split * V);
  s.prefill(ids.data(), split, logits.data(), false);
  for (size_t p = 0; p < ids.size(); ++p) {
    if (p >= split) s.step(ids[p], logits.data());
    const float* row = p < split ? logits.data() + p * V : logits.data();
    for (size_t v = 0; v < V; ++v) {
      ASSERT_NEAR(row[v], ref[p][v], tol * (1.0 + std::fabs(ref[p][v]))) << "token " << p;
    }
  }
  EXPECT_EQ(s.length(), ids.size());
}

TEST(Runtime, DenseMatchesNaiveReference) {
  Tiny tm(tiny_config(), false);
  expect_matches_reference(tm, -1.0, 1);
}

TEST(Runtime, InterleavedRopeBiasesTiedHeadMultiQuery) {
  ModelConfig c = tiny_config();
  c.rope_style = models::RopeStyle::kInterleaved;
  c.tied_embeddings = true;
  c.n_kv_heads = 1;
  Tiny tm(c, true);
  expect_matches_reference(tm, -1.0, 2);
}

TEST(Runtime, NMAndBitmapWeights) {
  Tiny a(tiny_config(), false);
  a.to_nm();
  expect_matches_reference(a, -1.0, 1);
  Tiny b(tiny_config(), false);
  b.to_bitmap();
  expect_matches_reference(b, -1.0, 1);
}

TEST(Runtime, TealThresholdsMaskEveryLinearInput) {
  Tiny tm(tiny_config(), false);
  tm.teal(0.3f);
  expect_matches_reference(tm, 0.3, 1);
}

TEST(Runtime, OneAndTwoThreadsBitwise) {
  ModelConfig c = tiny_config();
  c.dim = 256;  // large enough for the kernels to use two threads
  c.hidden_dim = 640;
  c.head_dim = 64;
  Tiny tm(c, false);
  tm.teal(0.2f);
  const std::vector<int64_t> ids = tokens(12, 5);
  std::vector<std::vector<float>> out;
  for (int threads : {1, 2}) {
    Session s(tm.m, 16, threads);
    std::vector<float> logits(ids.size() * c.vocab_size);
    s.prefill(ids.data(), 6, logits.data(), false);
    for (size_t p = 6; p < ids.size(); ++p) s.step(ids[p], logits.data() + p * c.vocab_size);
    out.push_back(logits);
  }
  EXPECT_EQ(out[0], out[1]);
}

TEST(Runtime, BadInputThrowsAndLeavesTheCacheUntouched) {
  Tiny tm(tiny_config(), false);
  const std::vector<int64_t> ids = tokens(5, 1);
  Session s(tm.m, 8, 1), fresh(tm.m, 8, 1);
  std::vector<float> logits(8 * 40), a(40), b(40);
  s.prefill(ids.data(), 5, logits.data(), true);
  fresh.prefill(ids.data(), 5, logits.data(), true);
  const int64_t bad[2] = {3, 40};
  EXPECT_THROW(s.prefill(bad, 2, logits.data(), false), InvalidArgument);
  EXPECT_THROW(s.step(-1, logits.data()), InvalidArgument);
  const std::vector<int64_t> four = tokens(4, 2);
  EXPECT_THROW(s.prefill(four.data(), 4, logits.data(), false), InvalidArgument);
  EXPECT_THROW(s.generate(ids.data(), 1, 4, SamplingConfig{}, {}), InvalidArgument);
  EXPECT_EQ(s.length(), 5u);
  s.step(7, a.data());
  fresh.step(7, b.data());
  EXPECT_EQ(a, b);
  EXPECT_THROW(Session(tm.m, 65, 1), InvalidArgument);
  Model broken = tm.m;
  broken.blocks[1].o.w.dense.cols = 16;
  EXPECT_THROW(Session(broken, 8, 1), InvalidArgument);
  broken = tm.m;
  broken.blocks[0].up.teal = true;
  broken.blocks[0].up.threshold = -1.0f;
  EXPECT_THROW(broken.validate(), InvalidArgument);
}

TEST(Runtime, GreedyGenerationIsTheArgmaxOfTheReference) {
  Tiny tm(tiny_config(), false);
  std::vector<int64_t> seq = tokens(4, 9);
  Session s(tm.m, 32, 1);
  const std::vector<int64_t> got = s.generate(seq.data(), seq.size(), 10, SamplingConfig{}, {});
  ASSERT_EQ(got.size(), 10u);
  for (int64_t next : got) {
    const Vec last = reference(tm, seq).back();
    EXPECT_EQ(next, std::max_element(last.begin(), last.end()) - last.begin());
    seq.push_back(next);
  }
}

TEST(Sampler, SeededTopKAndTopP) {
  std::vector<float> logits = {0.0f, 2.0f, 1.0f, 2.0f, -1.0f};
  SamplingConfig greedy;
  EXPECT_EQ(Sampler(greedy).pick(logits.data(), 5), 1);  // ties to the lower id
  SamplingConfig c;
  c.temperature = 1.0f;
  c.seed = 42;
  Sampler a(c), b(c);
  std::vector<int> counts(5, 0);
  for (int i = 0; i < 2000; ++i) {
    const int64_t t = a.pick(logits.data(), 5);
    EXPECT_EQ(t, b.pick(logits.data(), 5));
    ++counts[t];
  }
  // softmax mass: p1 = p3 = 0.3706, p2 = 0.1363, p0 = 0.0502, p4 = 0.0185
  EXPECT_NEAR(counts[1] / 2000.0, 0.3706, 0.05);
  EXPECT_NEAR(counts[0] / 2000.0, 0.0502, 0.02);
  c.top_k = 2;  // ids 1 and 3 only
  Sampler k(c);
  for (int i = 0; i < 200; ++i) {
    const int64_t t = k.pick(logits.data(), 5);
    EXPECT_TRUE(t == 1 || t == 3);
  }
  c.top_k = 0;
  c.top_p = 0.5f;  // 0.37 < 0.5 <= 0.74: ids 1 and 3
  Sampler p(c);
  for (int i = 0; i < 200; ++i) {
    const int64_t t = p.pick(logits.data(), 5);
    EXPECT_TRUE(t == 1 || t == 3);
  }
  c.top_p = 0.0f;
  EXPECT_THROW(Sampler{c}, InvalidArgument);
}

TEST(Container, Crc32IsZlibs) {
  const char* s = "123456789";  // the CRC-32 check value (zlib.crc32(b"123456789"))
  EXPECT_EQ(format::crc32(reinterpret_cast<const uint8_t*>(s), 9), 0xCBF43926u);
  EXPECT_EQ(format::crc32(nullptr, 0), 0u);
  // continuing a CRC over a split buffer equals one pass
  const uint32_t a = format::crc32(reinterpret_cast<const uint8_t*>(s), 4);
  EXPECT_EQ(format::crc32(reinterpret_cast<const uint8_t*>(s) + 4, 5, a), 0xCBF43926u);
}

TEST(Container, MissingFileThrows) {
  EXPECT_THROW(format::ContainerFile::open("/nonexistent/model.sf"), InvalidArgument);
  EXPECT_THROW(SavedModel::load("/nonexistent/model.sf"), InvalidArgument);
}

}  // namespace
}  // namespace runtime
}  // namespace sparseforge
