// Multi-scale deformable attention: CUDA launchers (fp32 / fp64 / fp16 / bf16 value,
// accumulation in fp32, fp64 for fp64), registered for the CUDA dispatch key of the msda
// operators defined in msda_cpu.cpp. The kernels themselves are in msda_cuda_kernels.cuh,
// which the test-only SIMT emulator (emu/) compiles unchanged for the CPU.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: that needs the cuSPARSE/cuBLAS headers
#include <torch/library.h>

#include "msda_cuda_kernels.cuh"

namespace msda {
namespace {

at::Tensor forward_cuda(const at::Tensor& value_in, const at::Tensor& shapes_in, const at::Tensor& starts_in,
                        const at::Tensor& loc, const at::Tensor& attn) {
  const c10::cuda::CUDAGuard guard(value_in.device());
  const Inputs in = prepare_inputs(value_in, shapes_in, starts_in, loc, attn);
  const Sizes& s = in.s;
  at::Tensor out = at::empty({s.N, s.Lq, s.Mv * s.D}, in.value.options());
  if (out.numel() == 0) return out;
  const Plan plan = plan_launch(in, loc, attn, {in.value.data_ptr(), out.data_ptr()}, Pass::kForward);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.value.scalar_type(), "msda_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_variant<scalar_t, ForwardWidths<scalar_t>>(plan, [&](auto index, auto vec, auto kvec) {
      using index_t = decltype(index);
      constexpr int V = decltype(vec)::value;
      constexpr bool kVec = decltype(kvec)::value;
      forward_kernel<scalar_t, acc_t, index_t, V, kVec><<<plan.blocks, kThreads, 0, stream>>>(
          in.value.data_ptr<scalar_t>(), in.shapes.data_ptr<int64_t>(), in.starts.data_ptr<int64_t>(),
          plan.loc.data_ptr<acc_t>(), plan.attn.data_ptr<acc_t>(), out.data_ptr<scalar_t>(),
          geometry<index_t>(plan));
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& value_in, const at::Tensor& shapes_in,
                                                             const at::Tensor& starts_in, const at::Tensor& loc,
                                                             const at::Tensor& attn, const at::Tensor& grad_out_in) {
  const c10::cuda::CUDAGuard guard(value_in.device());
  const Inputs in = prepare_inputs(value_in, shapes_in, starts_in, loc, attn);
  Grads g = backward_buffers(in, loc, grad_out_in);
  if (g.grad_out.numel() > 0) {
    const Plan plan = plan_launch(in, loc, attn, {in.value.data_ptr(), g.grad_out.data_ptr(), g.value.data_ptr()},
                                  Pass::kBackward);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.value.scalar_type(), "msda_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      with_variant<scalar_t, BackwardWidths<scalar_t>>(plan, [&](auto index, auto vec, auto kvec) {
        using index_t = decltype(index);
        constexpr int V = decltype(vec)::value;
        constexpr bool kVec = decltype(kvec)::value;
        backward_kernel<scalar_t, acc_t, index_t, V, kVec><<<plan.blocks, kThreads, 0, stream>>>(
            in.value.data_ptr<scalar_t>(), in.shapes.data_ptr<int64_t>(), in.starts.data_ptr<int64_t>(),
            plan.loc.data_ptr<acc_t>(), plan.attn.data_ptr<acc_t>(), g.grad_out.data_ptr<scalar_t>(),
            g.value.data_ptr<acc_t>(), g.loc.data_ptr<acc_t>(), g.attn.data_ptr<acc_t>(), geometry<index_t>(plan));
      });
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return finish_backward(in, std::move(g));
}

}  // namespace

TORCH_LIBRARY_IMPL(msda, CUDA, m) {
  m.impl("ms_deform_attn_forward", &forward_cuda);
  m.impl("ms_deform_attn_backward", &backward_cuda);
}

}  // namespace msda
