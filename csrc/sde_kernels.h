// Backend-neutral description of one fused SDE-step launch and the launcher
// declarations of each backend. No torch headers: the CUDA launchers are built
// by plain nvcc, the torch glue only passes pointers and strides through.
#pragma once

#include <cstdint>

#include "sde_math.h"

namespace dancegrpo {

// A batch of `batch` samples, each `per_sample` contiguous elements; samples may sit
// at any batch stride (e.g. one time slot of a rollout buffer laid out [B, T, ...]).
struct StepProblem {
  StepKind kind;
  int64_t batch;
  int64_t per_sample;
  const double* t;       // per-sample sigma (flow kinds) or alpha_prod (ddim), on the kernel's device
  const double* t_next;  // per-sample next sigma / alpha_prod_prev
  double level;          // eta (dance, ddim) or noise level a (flow, cps)
  bool sum_reduction;    // log-prob over elements: false = mean (default), true = sum
};

// Pointers and batch strides (in elements). `in` is the noise for a rollout step and
// the stored next sample for scoring; unused outputs are null.
template <class X, class V>
struct StepTensors {
  const V* v = nullptr;
  const X* x = nullptr;
  const X* in = nullptr;
  X* prev_out = nullptr;
  X* mean_out = nullptr;
  V* grad_out = nullptr;
  int64_t v_stride = 0, x_stride = 0, in_stride = 0;
  int64_t prev_stride = 0, mean_stride = 0, grad_stride = 0;
  const float* grad_log_prob = nullptr;  // upstream gradient, one per sample (backward)
  float* log_prob = nullptr;             // one per sample (forward)

  // First element of sample b in each tensor.
  DGH_HD const V* v_at(int64_t b) const { return v + b * v_stride; }
  DGH_HD const X* x_at(int64_t b) const { return x + b * x_stride; }
  DGH_HD const X* in_at(int64_t b) const { return in + b * in_stride; }
  DGH_HD X* prev_at(int64_t b) const { return prev_out + b * prev_stride; }
  DGH_HD X* mean_at(int64_t b) const { return mean_out ? mean_out + b * mean_stride : nullptr; }
  DGH_HD V* grad_at(int64_t b) const { return grad_out + b * grad_stride; }
};

// Instruction set the CPU tile loops run with now: "avx2" or "generic".
const char* cpu_isa();

// Rollout step: writes prev_out (and mean_out when non-null) and log_prob.
template <class X, class V>
void step_forward_cpu(const StepProblem& p, const StepTensors<X, V>& t);
// Training: log_prob of the stored next sample `in` under model output v.
template <class X, class V>
void log_prob_forward_cpu(const StepProblem& p, const StepTensors<X, V>& t);
// Training backward: grad_out = d(sum_b g_b log_prob_b)/dv.
template <class X, class V>
void log_prob_backward_cpu(const StepProblem& p, const StepTensors<X, V>& t);

// CUDA launchers (csrc/cuda/sde_cuda.cu). `stream` is a cudaStream_t; `workspace`
// must hold cuda_workspace_floats(p) floats on the device. They return the
// cudaError_t of the launch (0 on success); cuda_error_string names it.
int64_t cuda_workspace_floats(const StepProblem& p);
const char* cuda_error_string(int error);
template <class X, class V>
int step_forward_cuda(const StepProblem& p, const StepTensors<X, V>& t, float* workspace, void* stream);
template <class X, class V>
int log_prob_forward_cuda(const StepProblem& p, const StepTensors<X, V>& t, float* workspace, void* stream);
template <class X, class V>
int log_prob_backward_cuda(const StepProblem& p, const StepTensors<X, V>& t, void* stream);

}  // namespace dancegrpo
