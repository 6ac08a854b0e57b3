// Element-wise mathematics of the SDE steps, shared by the CPU and CUDA kernels.
//
// Every supported step (DanceGRPO "dance", Flow-GRPO "flow", coefficients-
// preserving "cps", DDPO's DDIM) has a mean that is affine in the current
// sample x and the model output v, and a per-sample standard deviation:
//
//     mean = a * x + b * v,     x' = mean + std * noise,
//     log p(x') = -(x' - mean)^2 / (2 std^2) - log(std) - log(sqrt(2 pi)).
//
// So one fused kernel serves every variant; a variant is only its coefficient
// function below (computed once per sample, in double). The formulas are the
// ones in shared/DESIGN.md section 4, rearranged into (a, b, std).
//
// This header includes no torch or CUDA headers so that the CUDA kernels
// compile with plain `nvcc -c` on machines whose torch has no CUDA headers.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DGH_HD __host__ __device__ __forceinline__
#else
#define DGH_HD inline __attribute__((always_inline))
#endif

namespace dancegrpo {

enum class StepKind : int32_t { Dance = 0, Flow = 1, Cps = 2, Ddim = 3 };

struct StepCoefficients {
  double a;    // weight of the current sample x in the mean
  double b;    // weight of the model output v in the mean
  double std;  // standard deviation of the Gaussian transition
};

// Per-sample constants of the element loop, in float.
struct SampleTerms {
  float a, b, std;
  float inv_two_var;  // 1 / (2 std^2)
};

// bfloat16 storage (bit pattern of the upper half of a float).
struct bf16 {
  uint16_t bits;
};

// Every (sample storage X, model-output storage V) pair the kernels are built for.
#define DGH_FOR_EACH_STORAGE(M) M(float, float) M(float, bf16) M(bf16, float) M(bf16, bf16)

// Everything below has internal linkage: the CPU tile loops are compiled once per
// instruction set (baseline, AVX2) and each translation unit must keep its own copy
// of these helpers, never one merged across them by the linker.
namespace {

// DanceGRPO flux_step with constant noise level eta:
//   mean = x + ds * [v + eta^2/(2 s) * (x + (1 - s) v)],  std = eta sqrt(s - s').
DGH_HD StepCoefficients dance_coefficients(double s, double s_next, double eta) {
  const double ds = s_next - s;
  const double k = eta * eta / (2.0 * s);
  return {1.0 + ds * k, ds * (1.0 + k * (1.0 - s)), eta * sqrt(s - s_next)};
}

// Flow-GRPO sde_step_with_logprob with noise level a:
//   std_t = a sqrt(s / (1 - s)), where the s = 1 in the denominator is replaced by
//   the first sub-1 sigma of the schedule, which is s' at the step that starts at s = 1.
DGH_HD StepCoefficients flow_coefficients(double s, double s_next, double level) {
  const double dt = s_next - s;
  const double s_den = s >= 1.0 ? s_next : s;
  const double std_t = level * sqrt(s / (1.0 - s_den));
  const double c = std_t * std_t / (2.0 * s);
  return {1.0 + c * dt, (1.0 + c * (1.0 - s)) * dt, std_t * sqrt(-dt)};
}

// Coefficients-preserving sampling: std = s' sin(a pi/2); with x0 = x - s v and
// eps = x + (1 - s) v, mean = x0 (1 - s') + eps sqrt(s'^2 - std^2).
DGH_HD StepCoefficients cps_coefficients(double s, double s_next, double level) {
  const double std = s_next * sin(level * 1.5707963267948966);
  const double k = sqrt(fmax(s_next * s_next - std * std, 0.0));
  return {(1.0 - s_next) + k, -s * (1.0 - s_next) + (1.0 - s) * k, std};
}

// DDIM with eta (DDPO's ddim_step_with_logprob), epsilon prediction, no sample clipping.
// t = alpha_prod_t, t_next = alpha_prod_t_prev.
DGH_HD StepCoefficients ddim_coefficients(double alpha, double alpha_prev, double eta) {
  const double variance = (1.0 - alpha_prev) / (1.0 - alpha) * (1.0 - alpha / alpha_prev);
  const double std = eta * sqrt(fmax(variance, 0.0));
  const double root_ratio = sqrt(alpha_prev) / sqrt(alpha);
  const double direction = sqrt(fmax(1.0 - alpha_prev - std * std, 0.0));
  return {root_ratio, -root_ratio * sqrt(1.0 - alpha) + direction, std};
}

DGH_HD StepCoefficients step_coefficients(StepKind kind, double t, double t_next, double level) {
  switch (kind) {
    case StepKind::Dance: return dance_coefficients(t, t_next, level);
    case StepKind::Flow: return flow_coefficients(t, t_next, level);
    case StepKind::Cps: return cps_coefficients(t, t_next, level);
    default: return ddim_coefficients(t, t_next, level);
  }
}

DGH_HD SampleTerms sample_terms(StepKind kind, double t, double t_next, double level) {
  const StepCoefficients c = step_coefficients(kind, t, t_next, level);
  return {static_cast<float>(c.a), static_cast<float>(c.b), static_cast<float>(c.std),
          static_cast<float>(0.5 / (c.std * c.std))};
}

// log p for one sample from the sum of squared residuals over its n elements:
// the "mean" reduction averages over elements (DanceGRPO/Flow-GRPO), "sum" adds.
DGH_HD float finish_log_prob(double sum_sq, int64_t n, double std, bool sum_reduction) {
  const double log_norm = log(std) + 0.91893853320467274178;  // log(std) + log(sqrt(2 pi))
  const double quad = sum_sq / (2.0 * std * std);
  return static_cast<float>(sum_reduction ? -quad - n * log_norm : -quad / n - log_norm);
}

// bfloat16 <-> float by bit manipulation (round to nearest even), identical on host
// and device, so both backends round the same way.
DGH_HD float to_float(float v) { return v; }

DGH_HD float to_float(bf16 v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

DGH_HD float round_to(float v, const float*) { return v; }

DGH_HD bf16 round_to(float v, const bf16*) {
  uint32_t u;
  memcpy(&u, &v, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

// Rounds a float to storage type T.
template <class T>
DGH_HD T store_as(float v) {
  return round_to(v, static_cast<const T*>(nullptr));
}

// The element operations every backend runs (CPU tile loops and CUDA kernels).
DGH_HD float mean_of(const SampleTerms& s, float x, float v) { return s.a * x + s.b * v; }

template <class X>
struct Drawn {
  X prev;          // next sample as stored
  float mean;      // its mean, float
  float residual;  // stored next sample - mean
};

// Rollout: prev = store_as<X>(mean + std * noise). The residual is taken against the
// sample as stored (after rounding), so the log-prob scores exactly what the trainer
// later reads back from the rollout buffer.
template <class X, class V>
DGH_HD Drawn<X> draw(const SampleTerms& s, X x, V v, X noise) {
  const float m = mean_of(s, to_float(x), to_float(v));
  const X p = store_as<X>(m + s.std * to_float(noise));
  return {p, m, to_float(p) - m};
}

// Training: residual of a stored next sample under a new model output.
template <class X, class V>
DGH_HD float residual(const SampleTerms& s, X x, V v, X prev) {
  return to_float(prev) - mean_of(s, to_float(x), to_float(v));
}

// Per-sample factor of d log p / d v = factor * (prev - mean):
// upstream gradient * b / std^2, divided by n for the mean reduction.
DGH_HD float grad_factor(const SampleTerms& s, float upstream, int64_t n, bool sum_reduction) {
  return upstream * s.b * 2.f * s.inv_two_var / (sum_reduction ? 1.f : static_cast<float>(n));
}

template <class X, class V>
DGH_HD V grad_wrt_v(const SampleTerms& s, float factor, X x, V v, X prev) {
  return store_as<V>(factor * residual(s, x, v, prev));
}

}  // namespace
}  // namespace dancegrpo
