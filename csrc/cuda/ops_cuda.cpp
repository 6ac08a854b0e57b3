// CUDA registration of the fused SDE ops: thin glue from tensors to the raw
// launchers in sde_cuda.cu. Built only against a CUDA build of torch.
// Only c10's stream and device guard: ATen/cuda/CUDAContext.h would pull in the
// cuBLAS/cuSPARSE headers, which a CUDA toolkit without those libraries lacks.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops_common.h"

namespace dancegrpo {
namespace {

void check_launch(int error) {
  TORCH_CHECK(error == 0, "dancegrpo_hpc CUDA kernel launch failed: ", cuda_error_string(error));
}

void* current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor workspace_for(const StepProblem& p, const at::Tensor& like) {
  return at::empty({cuda_workspace_floats(p)}, like.options().dtype(at::kFloat));
}

struct CudaBackend {
  template <class X, class V>
  static void step_forward(const StepProblem& p, const StepTensors<X, V>& t, const at::Tensor& like) {
    const c10::cuda::CUDAGuard guard(like.device());
    at::Tensor ws = workspace_for(p, like);
    check_launch(step_forward_cuda(p, t, ws.data_ptr<float>(), current_stream()));
  }
  template <class X, class V>
  static void log_prob_forward(const StepProblem& p, const StepTensors<X, V>& t, const at::Tensor& like) {
    const c10::cuda::CUDAGuard guard(like.device());
    at::Tensor ws = workspace_for(p, like);
    check_launch(log_prob_forward_cuda(p, t, ws.data_ptr<float>(), current_stream()));
  }
  template <class X, class V>
  static void log_prob_backward(const StepProblem& p, const StepTensors<X, V>& t, const at::Tensor& like) {
    const c10::cuda::CUDAGuard guard(like.device());
    check_launch(log_prob_backward_cuda(p, t, current_stream()));
  }
};

}  // namespace
}  // namespace dancegrpo

TORCH_LIBRARY_IMPL(dancegrpo_hpc, CUDA, m) { dancegrpo::register_backend<dancegrpo::CudaBackend>(m); }
