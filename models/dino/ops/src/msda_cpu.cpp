// Multi-scale deformable attention: operator schema (TORCH_LIBRARY msda) and CPU kernels.
//
// Forward parallelises over (n, query, head) tasks; each task accumulates D channels
// (contiguous in value) in the accumulation type over all levels and points.
// Backward parallelises over (n, head) tasks: every task owns a disjoint slice of
// grad_value (all levels of one head of one image), so the scatter needs no atomics, and
// every (query, level, point) it visits owns its grad_loc / grad_attn entries; like the
// forward it walks queries in order, reading each query's output gradient once.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "msda_common.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>  // declares every x86 intrinsic; the AVX2 ones are used only in the avx2 build below
#endif

namespace msda {
namespace {

// the kernels, twice: portable, and (GCC on x86-64) compiled for AVX2 + FMA
namespace base {
#include "msda_cpu_kernels.h"
}  // namespace base
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MSDA_HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define MSDA_KERNELS_AVX2 1  // the kernels' intrinsics paths (GCC's __AVX2__ is not reliable under the pragma)
namespace avx2 {
#include "msda_cpu_kernels.h"
}  // namespace avx2
#undef MSDA_KERNELS_AVX2
#pragma GCC pop_options
#endif

bool cpu_has_avx2() {
#ifdef MSDA_HAVE_AVX2
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

template <typename scalar_t, typename... Args>
void forward_kernel(Args&&... args) {
#ifdef MSDA_HAVE_AVX2
  if (cpu_has_avx2()) return avx2::forward_kernel<scalar_t>(std::forward<Args>(args)...);
#endif
  base::forward_kernel<scalar_t>(std::forward<Args>(args)...);
}

template <typename scalar_t, typename... Args>
void backward_kernel(Args&&... args) {
#ifdef MSDA_HAVE_AVX2
  if (cpu_has_avx2()) return avx2::backward_kernel<scalar_t>(std::forward<Args>(args)...);
#endif
  base::backward_kernel<scalar_t>(std::forward<Args>(args)...);
}

at::Tensor forward_cpu(const at::Tensor& value_in, const at::Tensor& shapes_in, const at::Tensor& starts_in,
                       const at::Tensor& loc, const at::Tensor& attn) {
  const Inputs in = prepare_inputs(value_in, shapes_in, starts_in, loc, attn);
  const Sizes& s = in.s;
  at::Tensor out = at::empty({s.N, s.Lq, s.Mv * s.D}, in.value.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, in.value.scalar_type(), "msda_forward_cpu", [&] {
    forward_kernel<scalar_t>(in.value, in.shapes.data_ptr<int64_t>(), in.starts.data_ptr<int64_t>(), loc, attn, out, s);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& value_in, const at::Tensor& shapes_in,
                                                            const at::Tensor& starts_in, const at::Tensor& loc,
                                                            const at::Tensor& attn, const at::Tensor& grad_out_in) {
  const Inputs in = prepare_inputs(value_in, shapes_in, starts_in, loc, attn);
  Grads g = backward_buffers(in, loc, grad_out_in, /*zero_filled=*/false);
  if (g.grad_out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, in.value.scalar_type(), "msda_backward_cpu", [&] {
      backward_kernel<scalar_t>(in.value, in.shapes.data_ptr<int64_t>(), in.starts.data_ptr<int64_t>(), loc, attn,
                                g.grad_out, g.value, g.loc, g.attn, in.s);
    });
  } else {  // no output gradient: nothing flows back
    g.value.zero_();
    g.loc.zero_();
    g.attn.zero_();
  }
  return finish_backward(in, std::move(g));
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
// (importing it loads this library and runs the registrations above). The tag records the
// sources it was built from (setup.py defines MSDA_SOURCE_HASH); _build.py reads it from the
// file to notice a stale install without loading it.
#ifndef MSDA_SOURCE_HASH
#define MSDA_SOURCE_HASH unknown
#endif
#define MSDA_STR2(x) #x
#define MSDA_STR(x) MSDA_STR2(x)
static const char msda_source_tag[] = "msda-source-hash:" MSDA_STR(MSDA_SOURCE_HASH);
#define MSDA_CAT2(a, b) a##b
#define MSDA_CAT(a, b) MSDA_CAT2(a, b)
static PyModuleDef msda_module = {PyModuleDef_HEAD_INIT, "msda_ext", "msda kernels (see torch.ops.msda)", -1, nullptr};
PyMODINIT_FUNC MSDA_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  PyObject* m = PyModule_Create(&msda_module);
  if (m != nullptr) PyModule_AddStringConstant(m, "source_tag", msda_source_tag);
  return m;
}
