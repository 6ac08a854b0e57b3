// Torch-facing implementation of the fused SDE ops, shared by the CPU and CUDA
// registrations. A Backend type supplies the three launches; everything else
// (checks, dtype dispatch, allocation, strides) is written once here.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

#include "sde_kernels.h"

namespace dancegrpo {

inline const char* kind_name(StepKind kind) {
  switch (kind) {
    case StepKind::Dance: return "dance";
    case StepKind::Flow: return "flow";
    case StepKind::Cps: return "cps";
    default: return "ddim";
  }
}

// True when every sample's elements are contiguous (any batch stride allowed).
inline bool samples_contiguous(const at::Tensor& t) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

inline at::Tensor as_input(const at::Tensor& t) { return samples_contiguous(t) ? t : t.contiguous(); }

inline void check_state(const char* op, const at::Tensor& v, const at::Tensor& x, const at::Tensor& other,
                        const char* other_name, const at::Tensor& t, const at::Tensor& t_next) {
  TORCH_CHECK(x.dim() >= 1 && x.size(0) >= 1, op, ": sample must have a batch dimension, got shape ", x.sizes());
  TORCH_CHECK(v.sizes() == x.sizes(), op, ": model_output shape ", v.sizes(), " must equal sample shape ",
              x.sizes());
  TORCH_CHECK(other.sizes() == x.sizes(), op, ": ", other_name, " shape ", other.sizes(),
              " must equal sample shape ", x.sizes());
  for (const at::Tensor* s : {&v, &x, &other}) {
    TORCH_CHECK(s->scalar_type() == at::kFloat || s->scalar_type() == at::kBFloat16, op,
                ": fused kernels take float32 or bfloat16 tensors, got ", s->scalar_type());
    TORCH_CHECK(s->device() == x.device(), op, ": all tensors must be on ", x.device(), ", got ", s->device());
  }
  TORCH_CHECK(other.scalar_type() == x.scalar_type(), op, ": ", other_name, " dtype ", other.scalar_type(),
              " must equal sample dtype ", x.scalar_type());
  for (const at::Tensor* s : {&t, &t_next}) {
    TORCH_CHECK(s->scalar_type() == at::kDouble && s->dim() == 1 && s->size(0) == x.size(0) &&
                    s->is_contiguous() && s->device() == x.device(),
                op, ": per-sample schedule values must be contiguous float64 of shape [", x.size(0), "] on ",
                x.device(), ", got ", s->scalar_type(), " ", s->sizes(), " on ", s->device());
  }
}

inline void check_output(const char* op, const char* name, const at::Tensor& out, const at::Tensor& x) {
  TORCH_CHECK(out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type() && out.device() == x.device(), op,
              ": ", name, " must match sample (shape ", x.sizes(), ", ", x.scalar_type(), ", ", x.device(),
              "), got ", out.sizes(), ", ", out.scalar_type(), ", ", out.device());
  TORCH_CHECK(samples_contiguous(out), op, ": ", name, " must be contiguous within each sample");
}

inline StepProblem make_problem(StepKind kind, const at::Tensor& x, const at::Tensor& t, const at::Tensor& t_next,
                                double level, bool sum_reduction) {
  return {kind, x.size(0), x.numel() / x.size(0), t.data_ptr<double>(), t_next.data_ptr<double>(), level,
          sum_reduction};
}

template <class T>
struct Tag {
  using type = T;
};

// Calls f(Tag<X>, Tag<V>) for the storage types of sample (X) and model_output (V).
template <class F>
void dispatch_storage(at::ScalarType x, at::ScalarType v, F&& f) {
  const bool xb = x == at::kBFloat16, vb = v == at::kBFloat16;
  if (!xb && !vb) f(Tag<float>{}, Tag<float>{});
  else if (!xb && vb) f(Tag<float>{}, Tag<bf16>{});
  else if (xb && !vb) f(Tag<bf16>{}, Tag<float>{});
  else f(Tag<bf16>{}, Tag<bf16>{});
}

template <class T>
T* data_as(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

// The checked, sample-contiguous state of one op call (model output v, sample x and
// `in`: the noise or the stored next sample) and the problem it describes.
struct BoundState {
  at::Tensor v, x, in;
  StepProblem p;

  BoundState(StepKind kind, const std::string& op, const char* in_name, const at::Tensor& v_in,
             const at::Tensor& x_in, const at::Tensor& in_in, const at::Tensor& t, const at::Tensor& t_next,
             double level, bool sum_reduction) {
    check_state(op.c_str(), v_in, x_in, in_in, in_name, t, t_next);
    v = as_input(v_in), x = as_input(x_in), in = as_input(in_in);
    p = make_problem(kind, x, t, t_next, level, sum_reduction);
  }

  // Calls f(StepTensors<X, V>&) with v, x and in bound, for this call's storage types.
  template <class F>
  void with_tensors(F&& f) const {
    dispatch_storage(x.scalar_type(), v.scalar_type(), [&](auto xt, auto vt) {
      using X = typename decltype(xt)::type;
      using V = typename decltype(vt)::type;
      StepTensors<X, V> k;
      k.v = data_as<V>(v), k.v_stride = v.stride(0);
      k.x = data_as<X>(x), k.x_stride = x.stride(0);
      k.in = data_as<X>(in), k.in_stride = in.stride(0);
      f(k);
    });
  }

  at::Tensor new_log_prob() const { return at::empty({x.size(0)}, x.options().dtype(at::kFloat)); }
};

template <class K>
using SampleT = std::remove_const_t<std::remove_pointer_t<decltype(K::x)>>;
template <class K>
using OutputT = std::remove_const_t<std::remove_pointer_t<decltype(K::v)>>;

template <class Backend, StepKind Kind>
struct StepOps {
  static std::string name(const char* suffix) { return std::string(kind_name(Kind)) + suffix; }

  static at::Tensor step_out(const at::Tensor& v, const at::Tensor& x, const at::Tensor& noise, const at::Tensor& t,
                             const at::Tensor& t_next, double level, bool sum_reduction, const at::Tensor& prev,
                             const std::optional<at::Tensor>& mean) {
    const BoundState s(Kind, name("_step"), "noise", v, x, noise, t, t_next, level, sum_reduction);
    check_output(name("_step").c_str(), "prev_sample", prev, x);
    if (mean) check_output(name("_step").c_str(), "mean", *mean, x);
    at::Tensor log_prob = s.new_log_prob();
    s.with_tensors([&](auto& k) {
      using X = SampleT<std::decay_t<decltype(k)>>;
      k.prev_out = data_as<X>(prev), k.prev_stride = prev.stride(0);
      if (mean) k.mean_out = data_as<X>(*mean), k.mean_stride = mean->stride(0);
      k.log_prob = log_prob.data_ptr<float>();
      Backend::step_forward(s.p, k, s.x);
    });
    return log_prob;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> step(const at::Tensor& v, const at::Tensor& x,
                                                             const at::Tensor& noise, const at::Tensor& t,
                                                             const at::Tensor& t_next, double level,
                                                             bool sum_reduction) {
    at::Tensor prev = at::empty(x.sizes(), x.options());
    at::Tensor mean = at::empty(x.sizes(), x.options());
    at::Tensor log_prob = step_out(v, x, noise, t, t_next, level, sum_reduction, prev, mean);
    return {prev, mean, log_prob};
  }

  static at::Tensor log_prob(const at::Tensor& v, const at::Tensor& x, const at::Tensor& prev, const at::Tensor& t,
                             const at::Tensor& t_next, double level, bool sum_reduction) {
    const BoundState s(Kind, name("_log_prob"), "prev_sample", v, x, prev, t, t_next, level, sum_reduction);
    at::Tensor log_prob = s.new_log_prob();
    s.with_tensors([&](auto& k) {
      k.log_prob = log_prob.data_ptr<float>();
      Backend::log_prob_forward(s.p, k, s.x);
    });
    return log_prob;
  }

  static at::Tensor log_prob_backward(const at::Tensor& grad_in, const at::Tensor& v, const at::Tensor& x,
                                      const at::Tensor& prev, const at::Tensor& t, const at::Tensor& t_next,
                                      double level, bool sum_reduction) {
    const std::string op = name("_log_prob_backward");
    const BoundState s(Kind, op, "prev_sample", v, x, prev, t, t_next, level, sum_reduction);
    TORCH_CHECK(grad_in.dim() == 1 && grad_in.size(0) == x.size(0) && grad_in.device() == x.device(), op,
                ": grad must have shape [", x.size(0), "] on ", x.device());
    const at::Tensor grad = grad_in.to(at::kFloat).contiguous();
    at::Tensor grad_v = at::empty(v.sizes(), v.options().memory_format(at::MemoryFormat::Contiguous));
    s.with_tensors([&](auto& k) {
      using V = OutputT<std::decay_t<decltype(k)>>;
      k.grad_out = data_as<V>(grad_v), k.grad_stride = grad_v.stride(0);
      k.grad_log_prob = grad.data_ptr<float>();
      Backend::log_prob_backward(s.p, k, s.x);
    });
    return grad_v;
  }
};

template <class Backend, StepKind Kind>
void register_kind(torch::Library& m) {
  using Ops = StepOps<Backend, Kind>;
  const std::string k = kind_name(Kind);
  m.impl((k + "_step").c_str(), TORCH_FN(Ops::step));
  m.impl((k + "_step_out").c_str(), TORCH_FN(Ops::step_out));
  m.impl((k + "_log_prob").c_str(), TORCH_FN(Ops::log_prob));
  m.impl((k + "_log_prob_backward").c_str(), TORCH_FN(Ops::log_prob_backward));
}

template <class Backend>
void register_backend(torch::Library& m) {
  register_kind<Backend, StepKind::Dance>(m);
  register_kind<Backend, StepKind::Flow>(m);
  register_kind<Backend, StepKind::Cps>(m);
  register_kind<Backend, StepKind::Ddim>(m);
}

}  // namespace dancegrpo
