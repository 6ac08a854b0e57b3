// Tile loops, compiled once per instruction set: CMake builds this file with
// -DDGH_ISA=generic (baseline flags) and -DDGH_ISA=avx2 (-mavx2 -mfma). It must call
// nothing with external linkage, so no code built for one ISA runs on behalf of
// the other (sde_math.h keeps its helpers in an anonymous namespace for this).
#include "sde_tiles.h"

#ifndef DGH_ISA
#error "DGH_ISA must name the instruction-set namespace (generic or avx2)"
#endif

namespace dancegrpo {
namespace DGH_ISA {
namespace {

constexpr int64_t kChunk = 512;  // float accumulation length before adding into double

// Sum over i < n of residual(i)^2: float inside a chunk (vectorised), double across chunks.
template <class Residual>
double sum_of_squares(int64_t n, Residual residual) {
  double total = 0.0;
  for (int64_t c = 0; c < n; c += kChunk) {
    const int64_t stop = n < c + kChunk ? n : c + kChunk;
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = c; i < stop; ++i) {
      const float r = residual(i);
      acc += r * r;
    }
    total += acc;
  }
  return total;
}

template <bool kWriteMean, class X, class V>
double step_loop(const SampleTerms& s, const V* v, const X* x, const X* noise, X* prev, X* mean, int64_t n) {
  return sum_of_squares(n, [&](int64_t i) {
    const Drawn<X> d = draw(s, x[i], v[i], noise[i]);
    prev[i] = d.prev;
    if (kWriteMean) mean[i] = store_as<X>(d.mean);
    return d.residual;
  });
}

}  // namespace

template <class X, class V>
double step_tile(const SampleTerms& s, const V* v, const X* x, const X* noise, X* prev, X* mean, int64_t n) {
  return mean ? step_loop<true>(s, v, x, noise, prev, mean, n) : step_loop<false>(s, v, x, noise, prev, mean, n);
}

template <class X, class V>
double residual_tile(const SampleTerms& s, const V* v, const X* x, const X* prev, int64_t n) {
  return sum_of_squares(n, [&](int64_t i) { return residual(s, x[i], v[i], prev[i]); });
}

template <class X, class V>
void grad_tile(const SampleTerms& s, float factor, const V* v, const X* x, const X* prev, V* grad, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) grad[i] = grad_wrt_v(s, factor, x[i], v[i], prev[i]);
}

#define DGH_INSTANTIATE(X, V)                                                                                 \
  template double step_tile<X, V>(const SampleTerms&, const V*, const X*, const X*, X*, X*, int64_t);        \
  template double residual_tile<X, V>(const SampleTerms&, const V*, const X*, const X*, int64_t);            \
  template void grad_tile<X, V>(const SampleTerms&, float, const V*, const X*, const X*, V*, int64_t);
DGH_FOR_EACH_STORAGE(DGH_INSTANTIATE)
#undef DGH_INSTANTIATE

}  // namespace DGH_ISA
}  // namespace dancegrpo
