// CPU drivers of the fused SDE kernels.
//
// Work is split into fixed tiles of kTile elements of one sample; tiles run on
// ATen's intra-op pool (OpenMP in the PyTorch wheels, so torch.set_num_threads
// applies). Each tile's partial sum of squared residuals goes to its own slot and
// slots are added in a fixed order, so log-probs are bitwise reproducible for any
// thread count. The tile loops come in two builds (sde_tiles.cpp); the AVX2 one is
// used when the CPU has AVX2 and FMA, unless DANCEGRPO_CPU_ISA=generic.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "../sde_kernels.h"
#include "sde_tiles.h"

namespace dancegrpo {

const char* cpu_isa() {
#if defined(DGH_HAVE_AVX2)
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* forced = std::getenv("DANCEGRPO_CPU_ISA");
  const bool generic = forced != nullptr && std::string(forced) == "generic";
  return has_avx2 && !generic ? "avx2" : "generic";
#else
  return "generic";
#endif
}

namespace {

constexpr int64_t kTile = 16384;  // elements per parallel work item (64 KiB of float)

bool use_avx2() {
#if defined(DGH_HAVE_AVX2)
  return cpu_isa()[0] == 'a';
#else
  return false;
#endif
}

// Calls tile(b, terms of b, begin, length) for every tile of every sample, in
// parallel; returns the tiles' results in order ([batch][tiles]).
template <class Tile>
std::vector<double> for_each_tile(const StepProblem& p, Tile tile) {
  std::vector<SampleTerms> terms(p.batch);
  for (int64_t b = 0; b < p.batch; ++b) terms[b] = sample_terms(p.kind, p.t[b], p.t_next[b], p.level);
  const int64_t tiles = std::max<int64_t>(1, (p.per_sample + kTile - 1) / kTile);
  std::vector<double> partial(p.batch * tiles, 0.0);
  at::parallel_for(0, p.batch * tiles, 1, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      const int64_t b = k / tiles;
      const int64_t begin = (k % tiles) * kTile;
      partial[k] = tile(b, terms[b], begin, std::min(kTile, p.per_sample - begin));
    }
  });
  return partial;
}

// Adds each sample's tile sums in a fixed order and applies the Gaussian constants.
void finish(const StepProblem& p, const std::vector<double>& partial, float* log_prob) {
  const int64_t tiles = static_cast<int64_t>(partial.size()) / p.batch;
  for (int64_t b = 0; b < p.batch; ++b) {
    double sum_sq = 0.0;
    for (int64_t k = 0; k < tiles; ++k) sum_sq += partial[b * tiles + k];
    const double std = step_coefficients(p.kind, p.t[b], p.t_next[b], p.level).std;
    log_prob[b] = finish_log_prob(sum_sq, p.per_sample, std, p.sum_reduction);
  }
}

}  // namespace

template <class X, class V>
void step_forward_cpu(const StepProblem& p, const StepTensors<X, V>& t) {
  const auto step = use_avx2() ? &avx2::step_tile<X, V> : &generic::step_tile<X, V>;
  finish(p, for_each_tile(p, [&](int64_t b, const SampleTerms& s, int64_t i, int64_t n) {
    X* mean = t.mean_at(b) ? t.mean_at(b) + i : nullptr;
    return step(s, t.v_at(b) + i, t.x_at(b) + i, t.in_at(b) + i, t.prev_at(b) + i, mean, n);
  }), t.log_prob);
}

template <class X, class V>
void log_prob_forward_cpu(const StepProblem& p, const StepTensors<X, V>& t) {
  const auto score = use_avx2() ? &avx2::residual_tile<X, V> : &generic::residual_tile<X, V>;
  finish(p, for_each_tile(p, [&](int64_t b, const SampleTerms& s, int64_t i, int64_t n) {
    return score(s, t.v_at(b) + i, t.x_at(b) + i, t.in_at(b) + i, n);
  }), t.log_prob);
}

template <class X, class V>
void log_prob_backward_cpu(const StepProblem& p, const StepTensors<X, V>& t) {
  const auto grad = use_avx2() ? &avx2::grad_tile<X, V> : &generic::grad_tile<X, V>;
  for_each_tile(p, [&](int64_t b, const SampleTerms& s, int64_t i, int64_t n) {
    const float factor = grad_factor(s, t.grad_log_prob[b], p.per_sample, p.sum_reduction);
    grad(s, factor, t.v_at(b) + i, t.x_at(b) + i, t.in_at(b) + i, t.grad_at(b) + i, n);
    return 0.0;
  });
}

#define DGH_INSTANTIATE(X, V)                                                           \
  template void step_forward_cpu<X, V>(const StepProblem&, const StepTensors<X, V>&);     \
  template void log_prob_forward_cpu<X, V>(const StepProblem&, const StepTensors<X, V>&); \
  template void log_prob_backward_cpu<X, V>(const StepProblem&, const StepTensors<X, V>&);
DGH_FOR_EACH_STORAGE(DGH_INSTANTIATE)
#undef DGH_INSTANTIATE

}  // namespace dancegrpo
