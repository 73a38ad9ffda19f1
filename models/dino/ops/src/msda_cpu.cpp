// Multi-scale deformable attention: operator schema (TORCH_LIBRARY msda) and CPU kernels.
//
// Forward parallelises over (n, query, head) tasks; each task accumulates D channels
// (contiguous in value) in the accumulation type over all levels and points.
// Backward parallelises over (n, head, level) tasks: every task owns a disjoint slice
// of grad_value (one level of one head), so the scatter needs no atomics, and every
// (query, point) it visits owns its grad_loc / grad_attn entries.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "msda_common.h"

namespace msda {
namespace {

template <typename scalar_t>
void forward_kernel(const at::Tensor& value, const int64_t* shapes, const int64_t* starts, const at::Tensor& loc,
                    const at::Tensor& attn, at::Tensor& out, const Sizes& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* v = value.data_ptr<scalar_t>();
  const acc_t* lp = loc.data_ptr<acc_t>();
  const acc_t* ap = attn.data_ptr<acc_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  const auto ls = loc.strides();
  const auto as = attn.strides();
  const int64_t D = s.D, Mv = s.Mv, row = Mv * D;
  const int64_t tasks = s.N * s.Lq * Mv;
  at::parallel_for(0, tasks, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(D);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t m = t % Mv, q = (t / Mv) % s.Lq, n = t / (Mv * s.Lq);
      const int64_t ml = m % s.Ml;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const acc_t* lb = lp + n * ls[0] + q * ls[1] + ml * ls[2];
      const acc_t* ab = ap + n * as[0] + q * as[1] + ml * as[2];
      const scalar_t* vb = v + n * s.S * row + m * D;
      for (int64_t l = 0; l < s.L; ++l) {
        const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
        const scalar_t* vl = vb + starts[l] * row;
        for (int64_t p = 0; p < s.P; ++p) {
          const acc_t* xy = lb + l * ls[3] + p * ls[4];
          const auto c = bilinear_corners<acc_t>(xy[0], xy[ls[5]], H, W);
          if (!c.any) continue;
          const acc_t a = ab[l * as[3] + p * as[4]];
          for (int k = 0; k < 4; ++k) {
            if (c.idx[k] < 0) continue;
            const acc_t cw = a * c.w[k];
            const scalar_t* vp = vl + c.idx[k] * row;
            for (int64_t d = 0; d < D; ++d) acc[d] += cw * static_cast<acc_t>(vp[d]);
          }
        }
      }
      scalar_t* op = o + t * D;
      for (int64_t d = 0; d < D; ++d) op[d] = static_cast<scalar_t>(acc[d]);
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& value, const int64_t* shapes, const int64_t* starts, const at::Tensor& loc,
                     const at::Tensor& attn, const at::Tensor& grad_out, at::Tensor& grad_value,
                     at::Tensor& grad_loc, at::Tensor& grad_attn, const Sizes& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* v = value.data_ptr<scalar_t>();
  const scalar_t* g = grad_out.data_ptr<scalar_t>();
  const acc_t* lp = loc.data_ptr<acc_t>();
  const acc_t* ap = attn.data_ptr<acc_t>();
  acc_t* gv = grad_value.data_ptr<acc_t>();  // accumulation-type buffer (N, S, Mv, D)
  acc_t* gl = grad_loc.data_ptr<acc_t>();    // contiguous (N, Lq, Mv, L, P, 2)
  acc_t* ga = grad_attn.data_ptr<acc_t>();   // contiguous (N, Lq, Mv, L, P)
  const auto ls = loc.strides();
  const auto as = attn.strides();
  const int64_t D = s.D, Mv = s.Mv, L = s.L, P = s.P, row = Mv * D;
  const int64_t tasks = s.N * Mv * L;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gq(D);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t l = t % L, m = (t / L) % Mv, n = t / (L * Mv);
      const int64_t ml = m % s.Ml;
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
      const int64_t vofs = (n * s.S + starts[l]) * row + m * D;
      const scalar_t* vl = v + vofs;
      acc_t* gvl = gv + vofs;
      for (int64_t q = 0; q < s.Lq; ++q) {
        const scalar_t* gp = g + ((n * s.Lq + q) * Mv + m) * D;
        for (int64_t d = 0; d < D; ++d) gq[d] = static_cast<acc_t>(gp[d]);
        const acc_t* lb = lp + n * ls[0] + q * ls[1] + ml * ls[2] + l * ls[3];
        const acc_t* ab = ap + n * as[0] + q * as[1] + ml * as[2] + l * as[3];
        const int64_t out_ofs = (((n * s.Lq + q) * Mv + m) * L + l) * P;
        for (int64_t p = 0; p < P; ++p) {
          const acc_t* xy = lb + p * ls[4];
          const auto c = bilinear_corners<acc_t>(xy[0], xy[ls[5]], H, W);
          if (!c.any) continue;  // grads stay zero
          const acc_t a = ab[p * as[4]];
          acc_t dots[4] = {0, 0, 0, 0};  // <grad_out, value corner k>
          for (int k = 0; k < 4; ++k) {
            if (c.idx[k] < 0) continue;
            const scalar_t* vp = vl + c.idx[k] * row;
            acc_t* gvp = gvl + c.idx[k] * row;
            const acc_t cw = a * c.w[k];
            acc_t dot = 0;
            // simd reduction: lets the compiler reorder the sum so that the loop vectorises
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < D; ++d) {
              dot += gq[d] * static_cast<acc_t>(vp[d]);
              gvp[d] += cw * gq[d];
            }
            dots[k] = dot;
          }
          const acc_t hh = acc_t(1) - c.lh, hw = acc_t(1) - c.lw;
          ga[out_ofs + p] = c.w[0] * dots[0] + c.w[1] * dots[1] + c.w[2] * dots[2] + c.w[3] * dots[3];
          // d(sample)/d(w_im) and d(sample)/d(h_im), then chain rule through x*W and y*H
          const acc_t dw = hh * (dots[1] - dots[0]) + c.lh * (dots[3] - dots[2]);
          const acc_t dh = hw * (dots[2] - dots[0]) + c.lw * (dots[3] - dots[1]);
          gl[2 * (out_ofs + p)] = a * dw * static_cast<acc_t>(W);
          gl[2 * (out_ofs + p) + 1] = a * dh * static_cast<acc_t>(H);
        }
      }
    }
  });
}

at::Tensor forward_cpu(const at::Tensor& value_in, const at::Tensor& shapes_in, const at::Tensor& starts_in,
                       const at::Tensor& loc, const at::Tensor& attn) {
  const Sizes s = check_inputs(value_in, shapes_in, starts_in, loc, attn);
  const at::Tensor value = value_in.contiguous();  // no copy in the usual case
  const at::Tensor shapes = shapes_in.contiguous(), starts = starts_in.contiguous();
  at::Tensor out = at::empty({s.N, s.Lq, s.Mv * s.D}, value.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, value.scalar_type(), "msda_forward_cpu", [&] {
    forward_kernel<scalar_t>(value, shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), loc, attn, out, s);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& value_in, const at::Tensor& shapes_in,
                                                            const at::Tensor& starts_in, const at::Tensor& loc,
                                                            const at::Tensor& attn, const at::Tensor& grad_out_in) {
  const Sizes s = check_inputs(value_in, shapes_in, starts_in, loc, attn);
  const at::Tensor value = value_in.contiguous();
  const at::Tensor shapes = shapes_in.contiguous(), starts = starts_in.contiguous();
  const at::Tensor grad_out = grad_out_in.to(value.scalar_type()).contiguous();
  TORCH_CHECK(grad_out.numel() == s.N * s.Lq * s.Mv * s.D, "msda: grad_output has shape ", grad_out.sizes(),
              ", expected (", s.N, ", ", s.Lq, ", ", s.Mv * s.D, ")");
  const auto acc = loc.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_value = at::zeros(value.sizes(), acc);
  // location/weight grads per value head; summed back to Ml heads below when Ml < Mv
  at::Tensor grad_loc = at::zeros({s.N, s.Lq, s.Mv, s.L, s.P, 2}, acc);
  at::Tensor grad_attn = at::zeros({s.N, s.Lq, s.Mv, s.L, s.P}, acc);
  if (grad_out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, value.scalar_type(), "msda_backward_cpu", [&] {
      backward_kernel<scalar_t>(value, shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), loc, attn, grad_out,
                                grad_value, grad_loc, grad_attn, s);
    });
  }
  if (s.Ml != s.Mv) {  // EMCA layout: value head h used location head h % Ml
    const int64_t K = s.Mv / s.Ml;
    grad_loc = grad_loc.view({s.N, s.Lq, K, s.Ml, s.L, s.P, 2}).sum(2);
    grad_attn = grad_attn.view({s.N, s.Lq, K, s.Ml, s.L, s.P}).sum(2);
  }
  return {grad_value.to(value.scalar_type()), grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY(msda, m) {
  m.def("ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
        "Tensor sampling_loc, Tensor attn_weight) -> Tensor");
  m.def("ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
        "Tensor sampling_loc, Tensor attn_weight, Tensor grad_output) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(msda, CPU, m) {
  m.impl("ms_deform_attn_forward", &forward_cpu);
  m.impl("ms_deform_attn_backward", &backward_cpu);
}

}  // namespace msda

// An empty Python module, so that the ahead-of-time build is importable as `msda_ext`
// (importing it loads this library and runs the registrations above).
#define MSDA_CAT2(a, b) a##b
#define MSDA_CAT(a, b) MSDA_CAT2(a, b)
static PyModuleDef msda_module = {PyModuleDef_HEAD_INIT, "msda_ext", "msda kernels (see torch.ops.msda)", -1, nullptr};
PyMODINIT_FUNC MSDA_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&msda_module); }
