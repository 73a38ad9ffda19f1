// Test-only: the msda CUDA kernels (msda_cuda_kernels.cuh, unchanged) built for the CPU
// and run under the SIMT emulator, as torch.ops.msda_emu.{ms_deform_attn_forward,
// ms_deform_attn_backward} (same schema as torch.ops.msda, CPU tensors).
// The launchers mirror msda_cuda.cu's: same input preparation, launch plan (kernel variant,
// grid, block) and arguments. Also: set_seed (block / warp / lane orders), set_arch (which
// architecture's device code the backward runs: 800 = scalar fp32 atomics, 900 = float4
// atomics), plan_of (the kernel variant a call takes) and shim_selftest (small kernels that check
// the emulator's own rules).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <atomic>
#include <cstdio>
#include <string>
#include <vector>

#include "msda_common.h"
// after every torch header: the shim defines __global__, threadIdx, ... as macros
#include "emu/simt_shim.h"
#include "emu/simt_vector_types.h"
#include "msda_cuda_kernels.cuh"

namespace msda {
namespace {

std::atomic<uint64_t> g_seed{0};
std::atomic<uint64_t> g_launches{0};
std::atomic<int64_t> g_arch{900};

uint64_t next_seed() {  // a different order for every launch, reproducible from set_seed
  return g_seed.load() * 0x9E3779B97F4A7C15ull + g_launches.fetch_add(1);
}

void set_seed(int64_t seed) {
  g_seed = static_cast<uint64_t>(seed);
  g_launches = 0;
}

void set_arch(int64_t arch) {
  TORCH_CHECK(arch == 800 || arch == 900, "msda_emu.set_arch: 800 or 900, got ", arch);
  g_arch = arch;
}

int64_t get_arch() { return g_arch.load(); }

void check_cpu(const at::Tensor& value) {
  TORCH_CHECK(value.device().is_cpu(), "msda_emu: the emulator runs on CPU tensors, value is on ", value.device());
}

at::Tensor forward_emu(const at::Tensor& value_in, const at::Tensor& shapes_in, const at::Tensor& starts_in,
                       const at::Tensor& loc, const at::Tensor& attn) {
  check_cpu(value_in);
  const Inputs in = prepare_inputs(value_in, shapes_in, starts_in, loc, attn);
  const Sizes& s = in.s;
  at::Tensor out = at::empty({s.N, s.Lq, s.Mv * s.D}, in.value.options());
  if (out.numel() == 0) return out;
  const Plan plan = plan_launch(in, loc, attn, {in.value.data_ptr(), out.data_ptr()}, Pass::kForward);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.value.scalar_type(), "msda_forward_emu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_variant<scalar_t, ForwardWidths<scalar_t>>(plan, [&](auto index, auto vec, auto kvec) {
      using index_t = decltype(index);
      const scalar_t* v = in.value.data_ptr<scalar_t>();
      const int64_t* shapes = in.shapes.data_ptr<int64_t>();
      const int64_t* starts = in.starts.data_ptr<int64_t>();
      const acc_t* lp = plan.loc.data_ptr<acc_t>();
      const acc_t* ap = plan.attn.data_ptr<acc_t>();
      scalar_t* o = out.data_ptr<scalar_t>();
      const Geometry<index_t> g = geometry<index_t>(plan);
      simt::launch(plan.blocks, kThreads, next_seed(), [=] {
        forward_kernel<scalar_t, acc_t, index_t, decltype(vec)::value, decltype(kvec)::value>(v, shapes, starts, lp,
                                                                                             ap, o, g);
      });
    });
  });
  return out;
}

// The backward as compiled for `arch` (scatter_add's atomics differ).
template <typename scalar_t, typename acc_t, typename index_t, int V, bool kVec>
void launch_backward(const Plan& plan, const Inputs& in, const Grads& gr) {
  const scalar_t* v = in.value.data_ptr<scalar_t>();
  const int64_t* shapes = in.shapes.data_ptr<int64_t>();
  const int64_t* starts = in.starts.data_ptr<int64_t>();
  const acc_t* lp = plan.loc.data_ptr<acc_t>();
  const acc_t* ap = plan.attn.data_ptr<acc_t>();
  const scalar_t* go = gr.grad_out.data_ptr<scalar_t>();
  acc_t* gv = gr.value.data_ptr<acc_t>();
  acc_t* gl = gr.loc.data_ptr<acc_t>();
  acc_t* ga = gr.attn.data_ptr<acc_t>();
  const Geometry<index_t> g = geometry<index_t>(plan);
  if (g_arch.load() >= 900) {
    simt::launch(plan.blocks, kThreads, next_seed(), [=] {
      backward_kernel<scalar_t, acc_t, index_t, V, kVec, 900>(v, shapes, starts, lp, ap, go, gv, gl, ga, g);
    });
  } else {
    simt::launch(plan.blocks, kThreads, next_seed(), [=] {
      backward_kernel<scalar_t, acc_t, index_t, V, kVec, 800>(v, shapes, starts, lp, ap, go, gv, gl, ga, g);
    });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_emu(const at::Tensor& value_in, const at::Tensor& shapes_in,
                                                            const at::Tensor& starts_in, const at::Tensor& loc,
                                                            const at::Tensor& attn, const at::Tensor& grad_out_in) {
  check_cpu(value_in);
  const Inputs in = prepare_inputs(value_in, shapes_in, starts_in, loc, attn);
  Grads g = backward_buffers(in, loc, grad_out_in);
  if (g.grad_out.numel() > 0) {
    const Plan plan = plan_launch(in, loc, attn, {in.value.data_ptr(), g.grad_out.data_ptr(), g.value.data_ptr()},
                                  Pass::kBackward);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.value.scalar_type(), "msda_backward_emu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      with_variant<scalar_t, BackwardWidths<scalar_t>>(plan, [&](auto index, auto vec, auto kvec) {
        launch_backward<scalar_t, acc_t, decltype(index), decltype(vec)::value, decltype(kvec)::value>(plan, in, g);
      });
    });
  }
  return finish_backward(in, std::move(g));
}

// Which kernel variant a call would run (tests): "int32|int64 vector|scalar V=<channels per chunk>
// G=<lanes> loc in place|copied", for the forward or the backward (their scalar widths differ).
std::string plan_of(const at::Tensor& value_in, const at::Tensor& shapes_in, const at::Tensor& starts_in,
                    const at::Tensor& loc, const at::Tensor& attn, bool backward) {
  const Inputs in = prepare_inputs(value_in, shapes_in, starts_in, loc, attn);
  const at::Tensor out = at::empty({in.s.N, in.s.Lq, in.s.Mv * in.s.D}, in.value.options());
  const Plan plan = plan_launch(in, loc, attn, {in.value.data_ptr(), out.data_ptr()},
                                backward ? Pass::kBackward : Pass::kForward);
  return std::string(plan.wide ? "int64" : "int32") + (plan.vec ? " vector" : " scalar") +
         " V=" + std::to_string(plan.V) + " G=" + std::to_string(plan.G) +
         (plan.loc.data_ptr() == loc.data_ptr() ? " loc in place" : " loc copied");
}

// ---- the emulator's own checks: tiny kernels, each breaking (or keeping) one rule ----

// lane l offers l; out[i] receives what thread i got from __shfl_xor_sync(mask, ., lane_mask, width)
void bfly_kernel(int64_t* out, unsigned mask, int lane_mask, int width) {
  const int lane = threadIdx.x % warpSize;
  if (!(mask >> lane & 1u)) return;  // lanes outside the mask take no part
  out[threadIdx.x] = __shfl_xor_sync(mask, static_cast<int64_t>(lane), lane_mask, width);
}

// the two half-warps shuffle at once, each with its own mask and call site
void halves_kernel(int64_t* out) {
  const int lane = threadIdx.x % warpSize;
  if (lane < 16)
    out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, static_cast<int64_t>(lane), 1, 32);
  else
    out[threadIdx.x] = __shfl_xor_sync(0xffff0000u, static_cast<int64_t>(lane), 2, 32);
}

void divergent_kernel(int64_t* out) {
  const int lane = threadIdx.x % warpSize;
  int64_t x = lane;
  if (lane % 2) x = __shfl_xor_sync(0xffffffffu, x, 1);  // two call sites, one full mask
  else x = __shfl_xor_sync(0xffffffffu, x, 1);
  out[threadIdx.x] = x;
}

void early_exit_kernel(int64_t* out) {
  const int lane = threadIdx.x % warpSize;
  if (lane == 5) return;  // lane 5 returns; the others wait for it at the shuffle
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int64_t>(lane), 1);
}

// sm_90's float4 atomicAdd at `float_offset` floats into a 16-byte aligned buffer of 8 floats
void vector_atomic_kernel(float* buf, int float_offset) {
  atomicAdd(reinterpret_cast<float4*>(buf + float_offset), float4{1.0f, 2.0f, 3.0f, 4.0f});
}

// a 16-byte vector load of 4 floats at `float_offset` floats into a 16-byte aligned buffer
void vector_load_kernel(const float* buf, int float_offset, float* out) {
  float x[4];
  Chunk<float, float, 4, true>::load(buf + float_offset, x);
  for (int i = 0; i < 4; ++i) out[i] = x[i];
}

void order_kernel(int64_t* out, int64_t* counter) {  // records the order the blocks ran in
  if (threadIdx.x == 0) out[(*counter)++] = blockIdx.x;
  atomicAdd(reinterpret_cast<double*>(out + gridDim.x), 1.0);  // every thread adds 1 to one slot
}

at::Tensor shim_selftest(const std::string& name, int64_t seed) {
  const auto opts = at::TensorOptions().dtype(at::kLong);
  if (name == "bfly") {  // (6 widths, 32 lane masks, 32 lanes), full mask
    at::Tensor out = at::full({6, 32, 32}, -1, opts);
    int64_t* o = out.data_ptr<int64_t>();
    for (int wi = 0; wi < 6; ++wi)
      for (int lm = 0; lm < 32; ++lm) {
        int64_t* row = o + (wi * 32 + lm) * 32;
        simt::launch(1, 32, seed, [=] { bfly_kernel(row, 0xffffffffu, lm, 1 << wi); });
      }
    return out;
  }
  if (name.rfind("bfly_mask:", 0) == 0) {  // "bfly_mask:<mask>:<lane_mask>:<width>", one warp
    unsigned mask;
    int lm, width;
    TORCH_CHECK(std::sscanf(name.c_str(), "bfly_mask:%i:%i:%i", &mask, &lm, &width) == 3, "bad selftest ", name);
    at::Tensor out = at::full({32}, -1, opts);
    int64_t* o = out.data_ptr<int64_t>();
    simt::launch(1, 32, seed, [=] { bfly_kernel(o, mask, lm, width); });
    return out;
  }
  at::Tensor out = at::full({64}, -1, opts);
  int64_t* o = out.data_ptr<int64_t>();
  if (name == "halves") {
    simt::launch(1, 32, seed, [=] { halves_kernel(o); });
  } else if (name == "divergent") {
    simt::launch(1, 32, seed, [=] { divergent_kernel(o); });
  } else if (name == "early_exit") {
    simt::launch(1, 64, seed, [=] { early_exit_kernel(o); });
  } else if (name == "partial_block") {  // 40 threads: the second warp has 8 lanes
    simt::launch(1, 40, seed, [=] { bfly_kernel(o, 0xffffffffu, 1, 32); });
  } else if (name == "float4_atomic" || name == "float4_atomic_misaligned") {  // out[:8] as floats
    out.zero_();
    float* buf = reinterpret_cast<float*>(o);  // 16-byte aligned (torch's allocator)
    const int offset = name == "float4_atomic" ? 4 : 1;
    simt::launch(1, 1, seed, [=] { vector_atomic_kernel(buf, offset); });
  } else if (name == "vector_load" || name == "vector_load_misaligned") {  // out[:2] as 4 floats read
    float src[12] __attribute__((aligned(16))) = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    float* dst = reinterpret_cast<float*>(o);
    const float* from = src;
    const int offset = name == "vector_load" ? 4 : 1;
    simt::launch(1, 1, seed, [=] { vector_load_kernel(from, offset, dst); });
  } else if (name == "order") {  // out[:16] = block order, out[16] (as double) = thread count
    int64_t counter = 0;
    int64_t* c = &counter;
    out.zero_();
    simt::launch(16, 96, seed, [=] { order_kernel(o, c); });
  } else {
    TORCH_CHECK(false, "msda_emu.shim_selftest: unknown test ", name);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(msda_emu, m) {
  m.def("ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
        "Tensor sampling_loc, Tensor attn_weight) -> Tensor");
  m.def("ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
        "Tensor sampling_loc, Tensor attn_weight, Tensor grad_output) -> (Tensor, Tensor, Tensor)");
  m.def("set_seed(int seed) -> ()", &set_seed);
  m.def("set_arch(int arch) -> ()", &set_arch);
  m.def("get_arch() -> int", &get_arch);
  m.def("plan_of(Tensor value, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_loc, "
        "Tensor attn_weight, bool backward=False) -> str", &plan_of);
  m.def("shim_selftest(str name, int seed) -> Tensor", &shim_selftest);
}

TORCH_LIBRARY_IMPL(msda_emu, CPU, m) {
  m.impl("ms_deform_attn_forward", &forward_emu);
  m.impl("ms_deform_attn_backward", &backward_emu);
}

}  // namespace msda
