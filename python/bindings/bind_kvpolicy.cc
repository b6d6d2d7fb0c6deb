// KV policy glue: the core's policies (kvcache/policy.h) and PolicyCache as classes. Each
// call locks the objects it touches in one order (policy cache, policy, paged cache) with
// ObjectLock, so objects shared between Python threads are serialised, never corrupted. The
// facade (sparseforge/kv/policies/, kv/policy_cache.py) validates names and shapes first.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bindings.h"
#include "numpy_view.h"
#include "sparseforge/core/error.h"
#include "sparseforge/kvcache/policy.h"

namespace py = pybind11;
namespace sf = sparseforge;
namespace skv = sparseforge::kv;

namespace sfpy {
namespace {

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

skv::GroupReduce reduce_of(const std::string& s) {
  if (s == "mean") return skv::GroupReduce::kMean;
  if (s == "max") return skv::GroupReduce::kMax;
  if (s == "sum") return skv::GroupReduce::kSum;
  throw sf::InvalidArgument("group_reduce: expected 'mean', 'max' or 'sum', got '" + s + "'");
}

skv::EvictAt evict_at_of(const std::string& s) {
  if (s == "default") return skv::EvictAt::kDefault;
  if (s == "prefill") return skv::EvictAt::kPrefill;
  if (s == "decode") return skv::EvictAt::kDecode;
  throw sf::InvalidArgument("evict: expected 'prefill' or 'decode', got '" + s + "'");
}

// budget: None, or a list of (is_fraction, value) pairs: one entry = every layer.
skv::Budget budget_of(const py::object& entries, bool per_layer) {
  skv::Budget b;
  if (entries.is_none()) return b;
  const auto list = py::cast<std::vector<std::pair<bool, double>>>(entries);
  if (list.empty()) throw sf::InvalidArgument("budget: expected at least one entry");
  b.given = true;
  if (per_layer) {
    for (const auto& e : list) b.per_layer.push_back({e.first, e.second});
  } else {
    b.uniform = {list[0].first, list[0].second};
  }
  return b;
}

std::shared_ptr<skv::Policy> make(const std::string& name, const py::object& budget, bool per_layer,
                                  const std::string& reduce, bool reduce_given,
                                  const std::string& evict, size_t sinks, double recent_ratio,
                                  size_t window, size_t kernel_size, bool max_pool, double beta,
                                  double alpha_safeguard, const std::string& scorer,
                                  size_t dense_layers, uint64_t seed, bool keep_last) {
  skv::PolicyOptions o;
  o.reduce = reduce_of(reduce);
  o.reduce_given = reduce_given;
  o.evict_at = evict_at_of(evict);
  o.sinks = sinks;
  o.recent_ratio = recent_ratio;
  o.window = window;
  o.kernel_size = kernel_size;
  o.max_pool = max_pool;
  o.beta = beta;
  o.alpha_safeguard = alpha_safeguard;
  o.scorer = scorer;
  o.dense_layers = dense_layers;
  o.seed = seed;
  o.keep_last = keep_last;
  return std::shared_ptr<skv::Policy>(skv::make_policy(name, budget_of(budget, per_layer), o));
}

std::vector<int64_t> positions_of(const skv::PagedKVCache& c, size_t layer, const py::object& p,
                                  size_t T) {
  if (p.is_none()) {
    std::vector<int64_t> out(T);
    const int64_t start = c.last_position(layer) + 1;
    for (size_t t = 0; t < T; ++t) out[t] = start + static_cast<int64_t>(t);
    return out;
  }
  const auto a = py::cast<I64Array>(p);
  if (a.ndim() != 1 || static_cast<size_t>(a.size()) != T)
    throw sf::InvalidArgument("positions: expected " + std::to_string(T) + " positions");
  return std::vector<int64_t>(a.data(), a.data() + a.size());
}

void prefill(skv::Policy& pol, skv::PagedKVCache& c, size_t layer, py::handle q_obj,
             py::handle k_obj, py::handle v_obj, const py::object& positions, int num_threads) {
  const sf::ConstMatrixView<float> q = matrix_in(q_obj, "q", kF32).as<float>();
  const sf::AnyConstMatrix k = matrix_in(k_obj, "k");
  const sf::AnyConstMatrix v = c.config().latent ? sf::AnyConstMatrix() : matrix_in(v_obj, "v");
  const int threads = threads_arg(num_threads);
  ObjectLock lp(pol.mutex());
  ObjectLock lc(c.mutex());
  if (layer >= c.config().num_layers)
    throw sf::InvalidArgument("layer: expected in [0, " + std::to_string(c.config().num_layers) +
                              "), got " + std::to_string(layer));
  const std::vector<int64_t> pos = positions_of(c, layer, positions, k.rows);
  if (pos.empty()) throw sf::InvalidArgument("k: expected at least one token");
  py::gil_scoped_release release;
  pol.prefill(c, layer, q, k, v, pos.data(), pos.size(), threads);
}

py::array decode(skv::Policy& pol, skv::PagedKVCache& c, size_t layer, py::handle q_obj,
                 py::handle k_obj, py::handle v_obj, int64_t position, float scale,
                 int num_threads) {
  const sf::ConstMatrixView<float> q = matrix_in(q_obj, "q", kF32).as<float>();
  const sf::AnyConstMatrix k = matrix_in(k_obj, "k");
  const sf::AnyConstMatrix v = c.config().latent ? sf::AnyConstMatrix() : matrix_in(v_obj, "v");
  const int threads = threads_arg(num_threads);
  ObjectLock lp(pol.mutex());
  ObjectLock lc(c.mutex());
  if (layer >= c.config().num_layers)
    throw sf::InvalidArgument("layer: expected in [0, " + std::to_string(c.config().num_layers) +
                              "), got " + std::to_string(layer));
  if (position < 0) position = c.last_position(layer) + 1;
  py::array out = new_array(
      sf::DType::kF32, {static_cast<py::ssize_t>(q.rows), static_cast<py::ssize_t>(c.value_dim())});
  const sf::MatrixView<float> ov = matrix_view(out).as<float>();
  py::gil_scoped_release release;
  pol.decode(c, layer, q, k, v, position, ov, scale, threads);
  return out;
}

py::array score(const skv::Policy& pol, const skv::PagedKVCache& c, size_t layer, py::handle q_obj,
                py::handle k_obj, int num_threads) {
  const auto* sp = dynamic_cast<const skv::ScorerPolicy*>(&pol);
  if (sp == nullptr)
    throw sf::InvalidArgument(std::string("policy: ") + pol.name() +
                              " is not a score-once policy (no per-token scores)");
  const sf::ConstMatrixView<float> q = matrix_in(q_obj, "q", kF32).as<float>();
  const sf::AnyConstMatrix k = matrix_in(k_obj, "k");
  const int threads = threads_arg(num_threads);
  ObjectLock lp(pol.mutex());
  ObjectLock lc(c.mutex());
  const size_t Hkv = c.config().num_kv_heads, T = k.rows;
  std::vector<double> s;
  {
    py::gil_scoped_release release;
    sp->score(c, layer, q, k, T, threads, s);
  }
  py::array_t<double> out({static_cast<py::ssize_t>(Hkv), static_cast<py::ssize_t>(T)});
  std::copy(s.begin(), s.end(), out.mutable_data());
  return std::move(out);
}

py::object last_pages(const skv::Policy& pol) {
  ObjectLock lp(pol.mutex());
  const size_t stride = pol.last_pages_stride();
  if (stride == 0) return py::none();
  const auto& p = pol.last_pages();
  py::array_t<int32_t> out(
      {static_cast<py::ssize_t>(p.size() / stride), static_cast<py::ssize_t>(stride)});
  std::copy(p.begin(), p.end(), out.mutable_data());
  return std::move(out);
}

void pc_attend(skv::PolicyCache& pc, size_t layer, py::handle q_obj, py::handle k_obj,
               py::handle v_obj, float scale, py::handle out_obj, int num_threads) {
  const sf::ConstMatrixView<float> q = matrix_in(q_obj, "q", kF32).as<float>();
  const sf::ConstMatrixView<float> k = matrix_in(k_obj, "k", kF32).as<float>();
  const sf::ConstMatrixView<float> v = matrix_in(v_obj, "v", kF32).as<float>();
  const sf::MatrixView<float> out = matrix_inout(out_obj, "out", kF32).as<float>();
  const int threads = threads_arg(num_threads);
  ObjectLock l0(pc.mutex());
  ObjectLock l1(pc.policy().mutex());
  ObjectLock l2(pc.cache().mutex());
  py::gil_scoped_release release;
  pc.attend(layer, q, k, v, scale, out, threads);
}

}  // namespace

void register_kvpolicy(py::module_& m) {
  using P = skv::Policy;
  py::class_<P, std::shared_ptr<P>>(m, "KVPolicyCore")
      .def(py::init(&make), py::arg("name"), py::arg("budget"), py::arg("per_layer"),
           py::arg("group_reduce"), py::arg("reduce_given"), py::arg("evict"), py::arg("sinks"),
           py::arg("recent_ratio"), py::arg("window"), py::arg("kernel_size"), py::arg("max_pool"),
           py::arg("beta"), py::arg("alpha_safeguard"), py::arg("scorer"), py::arg("dense_layers"),
           py::arg("seed"), py::arg("keep_last"))
      .def("prefill", &prefill, py::arg("cache"), py::arg("layer"), py::arg("q"), py::arg("k"),
           py::arg("v"), py::arg("positions"), py::arg("num_threads"))
      .def("decode", &decode, py::arg("cache"), py::arg("layer"), py::arg("q"), py::arg("k"),
           py::arg("v"), py::arg("position"), py::arg("scale"), py::arg("num_threads"))
      .def("score", &score, py::arg("cache"), py::arg("layer"), py::arg("q"), py::arg("k"),
           py::arg("num_threads"))
      .def(
          "layer_budget",
          [](P& p, const skv::PagedKVCache& c, size_t layer) {
            ObjectLock lp(p.mutex());
            ObjectLock lc(c.mutex());
            if (layer >= c.config().num_layers)
              throw sf::InvalidArgument("layer: expected in [0, " +
                                        std::to_string(c.config().num_layers) + "), got " +
                                        std::to_string(layer));
            return p.layer_budget(c, layer);
          },
          py::arg("cache"), py::arg("layer"))
      .def("reset", locked(&P::reset))
      .def("clone",
           [](const P& p) {
             ObjectLock lp(p.mutex());
             return std::shared_ptr<P>(p.clone());
           })
      .def_property_readonly("name", [](const P& p) { return std::string(p.name()); })
      .def_property_readonly("evicts", &P::evicts)
      .def_property_readonly("decode_evicts", &P::decode_evicts)
      .def_property_readonly("last_pages", &last_pages);
  m.def(
      "keep_top",
      [](skv::PagedKVCache& c, size_t layer,
         const py::array_t<double, py::array::c_style | py::array::forcecast>& s, size_t n_keep) {
        ObjectLock lc(c.mutex());
        if (layer >= c.config().num_layers) throw sf::InvalidArgument("layer: out of range");
        if (s.ndim() != 2 || static_cast<size_t>(s.shape(0)) != c.config().num_kv_heads)
          throw sf::InvalidArgument("scores: expected a (num_kv_heads, L) array");
        const size_t cols = static_cast<size_t>(s.shape(1));
        for (size_t h = 0; h < c.config().num_kv_heads; ++h)
          if (c.length(layer, h) > cols)
            throw sf::InvalidArgument("scores: expected at least " +
                                      std::to_string(c.length(layer, h)) + " columns");
        skv::keep_top(c, layer, s.data(), cols, n_keep);
      },
      py::arg("cache"), py::arg("layer"), py::arg("scores"), py::arg("n_keep"));
  m.def(
      "pyramid_budgets",
      [](size_t n, size_t context, double budget, size_t window, double beta) {
        return skv::pyramid_budgets(n, context, budget, window, beta);
      },
      py::arg("num_layers"), py::arg("context"), py::arg("budget"), py::arg("window"),
      py::arg("beta"));
  m.def("policy_names", &skv::policy_names);

  using PC = skv::PolicyCache;
  py::class_<PC, std::shared_ptr<PC>>(m, "KVPolicyCache")
      .def(py::init([](std::shared_ptr<skv::PagedKVCache> cache, size_t num_heads,
                       std::shared_ptr<P> policy, bool prefill_compress) {
             return std::make_shared<PC>(std::move(cache), num_heads, std::move(policy),
                                         prefill_compress);
           }),
           py::arg("cache"), py::arg("num_heads"), py::arg("policy"), py::arg("prefill_compress"))
      .def("attend", &pc_attend, py::arg("layer"), py::arg("q"), py::arg("k"), py::arg("v"),
           py::arg("scale"), py::arg("out"), py::arg("num_threads"))
      .def("advance",
           [](PC& pc, size_t T) {
             ObjectLock l(pc.mutex());
             pc.advance(T);
           })
      .def("reset",
           [](PC& pc) {
             ObjectLock l0(pc.mutex());
             ObjectLock l1(pc.policy().mutex());
             ObjectLock l2(pc.cache().mutex());
             pc.reset();
           })
      .def("fork",
           [](const PC& pc) {
             ObjectLock l0(pc.mutex());
             ObjectLock l1(pc.policy().mutex());
             ObjectLock l2(pc.cache().mutex());
             return std::make_shared<PC>(pc);
           })
      .def_property_readonly("length", locked(&PC::length))
      .def_property_readonly("cache", [](const PC& pc) { return pc.shared_cache(); })
      .def_property_readonly("policy", [](const PC& pc) { return pc.shared_policy(); })
      .def_property_readonly("num_heads", &PC::num_heads);
}

}  // namespace sfpy
