// Inner loops of the CPU kernels over one tile of one sample (pointers already at
// the tile start). sde_tiles.cpp is compiled once per instruction set into its own
// namespace (generic = baseline x86-64 / any CPU, avx2 = AVX2 + FMA); sde_cpu.cpp
// picks one at run time.
#pragma once

#include <cstdint>

#include "../sde_math.h"

#define DGH_DECLARE_TILES(isa)                                                                               \
  namespace isa {                                                                                            \
  /* Rollout: writes prev (and mean when non-null); returns the sum of squared residuals. */                 \
  template <class X, class V>                                                                                \
  double step_tile(const SampleTerms& s, const V* v, const X* x, const X* noise, X* prev, X* mean, int64_t n); \
  /* Training: sum of squared residuals of a stored next sample. */                                         \
  template <class X, class V>                                                                                \
  double residual_tile(const SampleTerms& s, const V* v, const X* x, const X* prev, int64_t n);              \
  /* Training backward: grad = factor * (prev - mean). */                                                    \
  template <class X, class V>                                                                                \
  void grad_tile(const SampleTerms& s, float factor, const V* v, const X* x, const X* prev, V* grad, int64_t n); \
  }

namespace dancegrpo {
DGH_DECLARE_TILES(generic)
#if defined(DGH_HAVE_AVX2)
DGH_DECLARE_TILES(avx2)
#else
namespace avx2 = generic;  // no AVX2 build for this target: both names run the baseline loops
#endif
}  // namespace dancegrpo
