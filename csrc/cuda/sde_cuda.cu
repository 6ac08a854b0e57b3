// CUDA implementation of the fused SDE kernels. Plain CUDA runtime only (no torch
// headers), so this file compiles with `nvcc -c` anywhere nvcc exists.
//
// Layout: grid (blocks_per_sample, batch); each block grid-strides over its sample,
// reduces the squared residuals with warp shuffles and a shared-memory pass, and
// writes one partial per block. A second tiny kernel adds a sample's partials in a
// fixed order (no atomics), so log-probs are bitwise reproducible run to run.
#include <cuda_runtime.h>

#include <algorithm>

#include "../sde_kernels.h"

namespace dancegrpo {
namespace {

constexpr int kThreads = 256;
constexpr int kItemsPerThread = 8;   // work per thread before another block is worth it
constexpr int kTargetBlocks = 2048;  // enough blocks in flight to fill any current GPU

int blocks_per_sample(const StepProblem& p) {
  const int64_t wanted = (p.per_sample + int64_t(kThreads) * kItemsPerThread - 1) / (int64_t(kThreads) * kItemsPerThread);
  const int64_t cap = std::max<int64_t>(1, kTargetBlocks / std::max<int64_t>(1, p.batch));
  return static_cast<int>(std::max<int64_t>(1, std::min(wanted, cap)));
}

__device__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.f;
  if (warp == 0)
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

__device__ SampleTerms block_terms(const StepProblem& p, int64_t b) {
  __shared__ SampleTerms terms;
  if (threadIdx.x == 0) terms = sample_terms(p.kind, p.t[b], p.t_next[b], p.level);
  __syncthreads();
  return terms;
}

// Element functors: residual of element i of sample b (and any writes it implies).
template <class X, class V, bool kWriteMean>
struct StepResidual {
  StepTensors<X, V> t;
  __device__ float operator()(const SampleTerms& s, int64_t b, int64_t i) const {
    const Drawn<X> d = draw(s, t.x_at(b)[i], t.v_at(b)[i], t.in_at(b)[i]);
    t.prev_at(b)[i] = d.prev;
    if (kWriteMean) t.mean_at(b)[i] = store_as<X>(d.mean);
    return d.residual;
  }
};

template <class X, class V>
struct ScoreResidual {
  StepTensors<X, V> t;
  __device__ float operator()(const SampleTerms& s, int64_t b, int64_t i) const {
    return residual(s, t.x_at(b)[i], t.v_at(b)[i], t.in_at(b)[i]);
  }
};

template <class Residual>
__global__ void __launch_bounds__(kThreads) partial_sums_kernel(StepProblem p, Residual residual, float* partial) {
  const int64_t b = blockIdx.y;
  const SampleTerms s = block_terms(p, b);
  float acc = 0.f;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < p.per_sample; i += int64_t(gridDim.x) * kThreads) {
    const float r = residual(s, b, i);
    acc = fmaf(r, r, acc);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[b * gridDim.x + blockIdx.x] = acc;
}

// One warp per sample adds its partials in a fixed order and applies the constants.
__global__ void finish_kernel(StepProblem p, const float* partial, int blocks, float* log_prob) {
  const int64_t b = blockIdx.x;
  double acc = 0.0;
  for (int k = threadIdx.x; k < blocks; k += 32) acc += partial[b * blocks + k];
  for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);
  if (threadIdx.x == 0) {
    const double std = step_coefficients(p.kind, p.t[b], p.t_next[b], p.level).std;
    log_prob[b] = finish_log_prob(acc, p.per_sample, std, p.sum_reduction);
  }
}

template <class X, class V>
__global__ void __launch_bounds__(kThreads) backward_kernel(StepProblem p, StepTensors<X, V> t) {
  const int64_t b = blockIdx.y;
  const SampleTerms s = block_terms(p, b);
  const float factor = grad_factor(s, t.grad_log_prob[b], p.per_sample, p.sum_reduction);
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < p.per_sample; i += int64_t(gridDim.x) * kThreads)
    t.grad_at(b)[i] = grad_wrt_v(s, factor, t.x_at(b)[i], t.v_at(b)[i], t.in_at(b)[i]);
}

template <class Residual>
int launch_log_prob(const StepProblem& p, Residual residual, float* log_prob, float* workspace, void* stream) {
  if (p.batch > 65535) return static_cast<int>(cudaErrorInvalidConfiguration);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int blocks = blocks_per_sample(p);
  partial_sums_kernel<<<dim3(blocks, p.batch), kThreads, 0, s>>>(p, residual, workspace);
  finish_kernel<<<p.batch, 32, 0, s>>>(p, workspace, blocks, log_prob);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int64_t cuda_workspace_floats(const StepProblem& p) { return p.batch * blocks_per_sample(p); }

const char* cuda_error_string(int error) { return cudaGetErrorString(static_cast<cudaError_t>(error)); }

template <class X, class V>
int step_forward_cuda(const StepProblem& p, const StepTensors<X, V>& t, float* workspace, void* stream) {
  if (t.mean_out) return launch_log_prob(p, StepResidual<X, V, true>{t}, t.log_prob, workspace, stream);
  return launch_log_prob(p, StepResidual<X, V, false>{t}, t.log_prob, workspace, stream);
}

template <class X, class V>
int log_prob_forward_cuda(const StepProblem& p, const StepTensors<X, V>& t, float* workspace, void* stream) {
  return launch_log_prob(p, ScoreResidual<X, V>{t}, t.log_prob, workspace, stream);
}

template <class X, class V>
int log_prob_backward_cuda(const StepProblem& p, const StepTensors<X, V>& t, void* stream) {
  if (p.batch > 65535) return static_cast<int>(cudaErrorInvalidConfiguration);
  backward_kernel<<<dim3(blocks_per_sample(p), p.batch), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p, t);
  return static_cast<int>(cudaGetLastError());
}

#define DGH_INSTANTIATE(X, V)                                                                              \
  template int step_forward_cuda<X, V>(const StepProblem&, const StepTensors<X, V>&, float*, void*);     \
  template int log_prob_forward_cuda<X, V>(const StepProblem&, const StepTensors<X, V>&, float*, void*); \
  template int log_prob_backward_cuda<X, V>(const StepProblem&, const StepTensors<X, V>&, void*);
DGH_FOR_EACH_STORAGE(DGH_INSTANTIATE)
#undef DGH_INSTANTIATE

}  // namespace dancegrpo
