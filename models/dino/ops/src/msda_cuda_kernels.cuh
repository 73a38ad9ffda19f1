// Device code of the msda CUDA kernels, and the launch geometry they assume.
//
// Included unchanged by msda_cuda.cu (nvcc, the GPU build) and by emu/msda_emu.cpp (the
// host C++ compiler, test-only): there a small shim (emu/simt_shim.h, included first)
// supplies __global__, threadIdx, __shfl_xor_sync, atomicAdd, ... and runs every warp
// as 32 lanes on the CPU. So this file may use only what that shim provides: no shared
// memory, no __syncthreads, no other intrinsics.
//
// Work split: a group of G lanes (G = next power of two of D, at most 32) handles one
// (n, query, value head) task; lane i handles channels i, i+G, ... . All index maths is
// int64, there is no batch chunking (im2col_step), any batch size works.
// Backward: grad_value is scattered with fp32/fp64 atomicAdd into an accumulation buffer;
// grad_loc / grad_attn are reduced over the group's lanes with warp shuffles and written
// once by lane 0 (no atomics, no shared memory).
#pragma once

#include "msda_common.h"

namespace msda {

constexpr int kThreads = 256;  // threads per block, a multiple of the warp size

struct Strides {
  int64_t l[6];
  int64_t a[5];
};

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ v, const int64_t* __restrict__ shapes,
                               const int64_t* __restrict__ starts, const acc_t* __restrict__ lp,
                               const acc_t* __restrict__ ap, scalar_t* __restrict__ out, Sizes s, Strides st, int G) {
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t t = gid / G;
  const int lane = static_cast<int>(gid % G);
  if (t >= s.N * s.Lq * s.Mv) return;  // no shuffles in the forward, early exit is safe
  const int64_t m = t % s.Mv, q = (t / s.Mv) % s.Lq, n = t / (s.Mv * s.Lq);
  const int64_t ml = m % s.Ml, row = s.Mv * s.D;
  const acc_t* lb = lp + n * st.l[0] + q * st.l[1] + ml * st.l[2];
  const acc_t* ab = ap + n * st.a[0] + q * st.a[1] + ml * st.a[2];
  const scalar_t* vb = v + n * s.S * row + m * s.D;
  for (int64_t d = lane; d < s.D; d += G) {
    acc_t acc = 0;
    for (int64_t l = 0; l < s.L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
      const scalar_t* vl = vb + starts[l] * row + d;
      for (int64_t p = 0; p < s.P; ++p) {
        const acc_t* xy = lb + l * st.l[3] + p * st.l[4];
        const auto c = bilinear_corners<acc_t>(xy[0], xy[st.l[5]], H, W);
        if (!c.any) continue;
        const acc_t a = ab[l * st.a[3] + p * st.a[4]];
#pragma unroll
        for (int k = 0; k < 4; ++k)
          if (c.idx[k] >= 0) acc += a * c.w[k] * static_cast<acc_t>(vl[c.idx[k] * row]);
      }
    }
    out[t * s.D + d] = static_cast<scalar_t>(acc);
  }
}

// Sum over the G lanes of a group (G a power of two <= 32, groups aligned to G lanes).
template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t x, int G) {
  for (int off = G / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off, G);
  return x;
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ v, const int64_t* __restrict__ shapes,
                                const int64_t* __restrict__ starts, const acc_t* __restrict__ lp,
                                const acc_t* __restrict__ ap, const scalar_t* __restrict__ g, acc_t* gv,
                                acc_t* __restrict__ gl, acc_t* __restrict__ ga, Sizes s, Strides st, int G) {
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t tasks = s.N * s.Lq * s.Mv;
  const bool active = gid / G < tasks;
  // Inactive lanes replay the last task without writing, so every lane of a warp takes
  // part in the shuffles.
  const int64_t t = active ? gid / G : tasks - 1;
  const int lane = static_cast<int>(gid % G);
  const int64_t m = t % s.Mv, q = (t / s.Mv) % s.Lq, n = t / (s.Mv * s.Lq);
  const int64_t ml = m % s.Ml, row = s.Mv * s.D;
  const acc_t* lb = lp + n * st.l[0] + q * st.l[1] + ml * st.l[2];
  const acc_t* ab = ap + n * st.a[0] + q * st.a[1] + ml * st.a[2];
  const int64_t vofs = n * s.S * row + m * s.D;
  const scalar_t* gp = g + t * s.D;
  for (int64_t l = 0; l < s.L; ++l) {
    const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
    const int64_t lofs = vofs + starts[l] * row;
    for (int64_t p = 0; p < s.P; ++p) {
      const acc_t* xy = lb + l * st.l[3] + p * st.l[4];
      const auto c = bilinear_corners<acc_t>(xy[0], xy[st.l[5]], H, W);
      const acc_t a = ab[l * st.a[3] + p * st.a[4]];
      acc_t dots[4] = {0, 0, 0, 0};
      if (c.any) {
        for (int64_t d = lane; d < s.D; d += G) {
          const acc_t gd = static_cast<acc_t>(gp[d]);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (c.idx[k] < 0) continue;
            const int64_t off = lofs + c.idx[k] * row + d;
            dots[k] += gd * static_cast<acc_t>(v[off]);
            if (active) atomicAdd(gv + off, a * c.w[k] * gd);
          }
        }
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) dots[k] = group_sum(dots[k], G);
      if (active && lane == 0 && c.any) {
        const int64_t o = ((t * s.L) + l) * s.P + p;
        const acc_t hh = acc_t(1) - c.lh, hw = acc_t(1) - c.lw;
        ga[o] = c.w[0] * dots[0] + c.w[1] * dots[1] + c.w[2] * dots[2] + c.w[3] * dots[3];
        const acc_t dw = hh * (dots[1] - dots[0]) + c.lh * (dots[3] - dots[2]);
        const acc_t dh = hw * (dots[2] - dots[0]) + c.lw * (dots[3] - dots[1]);
        gl[2 * o] = a * dw * static_cast<acc_t>(W);
        gl[2 * o + 1] = a * dh * static_cast<acc_t>(H);
      }
    }
  }
}

// ---- host side: the launch geometry both launchers (CUDA and emulator) use ----

inline int group_size(int64_t D) {
  int G = 1;
  while (G < D && G < 32) G *= 2;
  return G;
}

inline Strides strides_of(const at::Tensor& loc, const at::Tensor& attn) {
  Strides st;
  for (int i = 0; i < 6; ++i) st.l[i] = loc.stride(i);
  for (int i = 0; i < 5; ++i) st.a[i] = attn.stride(i);
  return st;
}

inline int64_t num_blocks(const Sizes& s, int G) {
  return (s.N * s.Lq * s.Mv * G + kThreads - 1) / kThreads;
}

}  // namespace msda
