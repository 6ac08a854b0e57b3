// Op schemas of the dancegrpo_hpc library and their CPU kernels.
//
// For each step kind K in {dance, flow, cps, ddim}:
//   K_step(v, x, noise, t, t_next, level, sum_reduction) -> (prev_sample, mean, log_prob)
//   K_step_out(..., prev_sample!, mean!?) -> log_prob            rollout, writes into buffers
//   K_log_prob(v, x, prev_sample, t, t_next, level, sum_reduction) -> log_prob     training
//   K_log_prob_backward(grad, v, x, prev_sample, ...) -> grad_v
// Fake (meta) kernels and autograd are registered from Python (dancegrpo_hpc/ops/fused.py).
#include <Python.h>

#include "ops_common.h"

namespace dancegrpo {
namespace {

struct CpuBackend {
  template <class X, class V>
  static void step_forward(const StepProblem& p, const StepTensors<X, V>& t, const at::Tensor&) {
    step_forward_cpu(p, t);
  }
  template <class X, class V>
  static void log_prob_forward(const StepProblem& p, const StepTensors<X, V>& t, const at::Tensor&) {
    log_prob_forward_cpu(p, t);
  }
  template <class X, class V>
  static void log_prob_backward(const StepProblem& p, const StepTensors<X, V>& t, const at::Tensor&) {
    log_prob_backward_cpu(p, t);
  }
};

void define_kind(torch::Library& m, const std::string& k) {
  const std::string state = "(Tensor model_output, Tensor sample, ";
  const std::string sched = "Tensor t, Tensor t_next, float level, bool sum_reduction";
  const std::string schemas[] = {
      k + "_step" + state + "Tensor noise, " + sched + ") -> (Tensor, Tensor, Tensor)",
      k + "_step_out" + state + "Tensor noise, " + sched + ", Tensor(a!) prev_sample, Tensor(b!)? mean) -> Tensor",
      k + "_log_prob" + state + "Tensor prev_sample, " + sched + ") -> Tensor",
      k + "_log_prob_backward(Tensor grad, Tensor model_output, Tensor sample, Tensor prev_sample, " + sched +
          ") -> Tensor",
  };
  for (const std::string& schema : schemas) m.def(schema.c_str());
}

}  // namespace
}  // namespace dancegrpo

TORCH_LIBRARY(dancegrpo_hpc, m) {
  for (const char* k : {"dance", "flow", "cps", "ddim"}) dancegrpo::define_kind(m, k);
  m.def("cpu_isa() -> str", [] { return std::string(dancegrpo::cpu_isa()); });
}

TORCH_LIBRARY_IMPL(dancegrpo_hpc, CPU, m) { dancegrpo::register_backend<dancegrpo::CpuBackend>(m); }

// A plain extension module: importing dancegrpo_hpc._C runs the registrations above.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "dancegrpo_hpc fused kernels (torch.ops.dancegrpo_hpc)",
                               -1, nullptr};
  return PyModule_Create(&module);
}
