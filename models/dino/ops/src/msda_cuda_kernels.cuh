// Device code of the msda CUDA kernels, and the launch plan they assume.
//
// Included unchanged by msda_cuda.cu (nvcc, the GPU build) and by emu/msda_emu.cpp (the
// host C++ compiler, test-only): there the shim (emu/simt_shim.h, emu/simt_vector_types.h,
// included first) supplies __global__, threadIdx, __shfl_xor_sync, atomicAdd, float4, the
// half / bfloat16 pair intrinsics, ... and runs every warp as 32 lanes on the CPU. So these
// files may use only what that shim provides: no shared memory, no __syncthreads.
//
// Work split: a group of G <= 32 lanes (a power of two in the backward) handles one (n, query,
// value head) task; each lane owns a chunk of V adjacent channels of the head at a time and steps
// by G * V channels.
// A chunk is one 16-byte vector (4 fp32, 8 fp16 / bf16, 2 fp64) when D is a multiple of that and
// the pointers are aligned, else V elements read one by one (the scalar path, V chosen on the host
// from D). Per sampling point a lane computes the corners, bilinear weights and validity once and
// uses them for its V channels. Scalar path, D not a multiple of V: the forward moves the last
// chunk back to end at the head's last channel (its first channels, computed twice, are stored by
// the chunk before it); the backward masks the channels past the head's end instead (they must
// not be scattered twice). Corners outside the map are not read (they count as zeros, as in
// grid_sample's zero padding) and not written.
// Index arithmetic is int32 when every offset fits (index_t, decided on the host), else int64;
// locations and weights are read through their strides, which the point loop adds to its
// pointers (no multiplications there). There is no batch chunking (im2col_step).
// Backward: grad_value is scattered with atomics into an fp32 / fp64 buffer (vector atomics on
// sm_90, see scatter_add); each lane forms its channels' share of grad_attn and grad_loc for a
// point, the group sums the three numbers with warp shuffles, and lane 0 writes them.
#pragma once

#include <cstdlib>
#include <limits>
#include <utility>

#include "msda_common.h"
#include "msda_cuda_vec.cuh"

namespace msda {

constexpr int kThreads = 256;  // threads per block, a multiple of the warp size

// Sizes and strides as the kernels read them, in the index type of the launch.
template <typename index_t>
struct Geometry {
  index_t tasks;  // N * Lq * Mv
  index_t Lq, Mv, Ml, D, S;
  int row;        // Mv * D: elements between two tokens of value (< 2^31, checked on the host)
  index_t sl[5];  // sampling_loc strides over (N, Lq, Ml, L, P), in (x, y) pairs
  index_t sa[5];  // attention_weights strides over (N, Lq, Ml, L, P)
  int lp, ap;     // sl[4], sa[4] as int (the host copies a view whose point stride does not fit): the
                  // point loop's pointer steps are then 32 x 32 -> 64-bit multiply-adds on either path
  int L, P;       // levels, points per level (int: the loop counters stay 32-bit on the int64 path)
  int G, log2G;   // lanes per task: the backward's a power of two (log2G), the forward's any number
};

// The (n, query, value head) task t: where its value head, locations and weights start.
template <typename index_t>
struct Task {
  index_t value, loc, attn;
};

template <typename index_t>
MSDA_DEV Task<index_t> task_of(index_t t, const Geometry<index_t>& g) {
  const index_t m = t % g.Mv, nq = t / g.Mv;
  const index_t q = nq % g.Lq, n = nq / g.Lq, ml = m % g.Ml;
  return {(n * g.S * g.Mv + m) * g.D, n * g.sl[0] + q * g.sl[1] + ml * g.sl[2],
          n * g.sa[0] + q * g.sa[1] + ml * g.sa[2]};
}

// One level of the value pyramid as seen by one lane.
template <typename acc_t, typename index_t>
struct Level {
  int H, W;      // rows and columns for the bounds checks (H = 0: nothing is read or written)
  acc_t Hf, Wf;  // the true size, as a float
  index_t Wrow;  // W * row: elements between two rows of the map
  index_t base;  // element offset of the lane's first channel at the level's first token
};

// live = false: the lane has no channels here (or no task); all its corners count as outside.
template <typename acc_t, typename index_t>
MSDA_DEV Level<acc_t, index_t> level_of(const int64_t* shapes, const int64_t* starts, int l, index_t head,
                                        bool live, const Geometry<index_t>& g) {
  const int H = static_cast<int>(shapes[2 * l]), W = static_cast<int>(shapes[2 * l + 1]);
  return {live ? H : 0, W, static_cast<acc_t>(H), static_cast<acc_t>(W), static_cast<index_t>(W) * g.row,
          head + static_cast<index_t>(starts[l]) * g.row};
}

// One sampling point on one level: its four corners (h0,w0), (h0,w0+1), (h0+1,w0), (h0+1,w0+1) as
// element offsets of the lane's first channel (base included), whether each lies inside the map,
// and the bilinear factors of the rows (1 - lh, lh) and columns (1 - lw, lw). The corner weights
// are wy[k >> 1] * wx[k & 1].
template <typename acc_t, typename index_t>
struct Sample {
  index_t off[4];
  bool ok[4];
  acc_t wy[2], wx[2];
};

MSDA_DEV float max_(float a, float b) { return fmaxf(a, b); }
MSDA_DEV double max_(double a, double b) { return fmax(a, b); }
MSDA_DEV float min_(float a, float b) { return fminf(a, b); }
MSDA_DEV double min_(double a, double b) { return fmin(a, b); }

// Pixel coordinate kept in [-2, hi]: the conversion to int stays defined (fmax turns NaN into -2)
// and the corners of a clamped point all lie outside the map, as those of the unclamped point do.
template <typename acc_t>
MSDA_DEV acc_t clamp_pixel(acc_t v, acc_t hi) {
  return min_(max_(v, acc_t(-2)), hi);
}

// (x, y) in [0, 1], pixel centres at (i + 0.5) / W (grid_sample, align_corners=False).
template <typename acc_t, typename index_t>
MSDA_DEV Sample<acc_t, index_t> sample_at(acc_t x, acc_t y, const Level<acc_t, index_t>& lv, int row) {
  const acc_t w_im = clamp_pixel(x * lv.Wf - acc_t(0.5), lv.Wf);
  const acc_t h_im = clamp_pixel(y * lv.Hf - acc_t(0.5), lv.Hf);
  const acc_t fw = floor(w_im), fh = floor(h_im);
  const int w0 = static_cast<int>(fw), h0 = static_cast<int>(fh);
  Sample<acc_t, index_t> s;
  s.wx[1] = w_im - fw, s.wx[0] = acc_t(1) - s.wx[1];
  s.wy[1] = h_im - fh, s.wy[0] = acc_t(1) - s.wy[1];
  // unsigned compares: -1 and -2 become huge, so one compare checks both bounds
  const bool c0 = static_cast<unsigned>(w0) < static_cast<unsigned>(lv.W);
  const bool c1 = static_cast<unsigned>(w0 + 1) < static_cast<unsigned>(lv.W);
  const bool r0 = static_cast<unsigned>(h0) < static_cast<unsigned>(lv.H);
  const bool r1 = static_cast<unsigned>(h0 + 1) < static_cast<unsigned>(lv.H);
  // the pixel's index in the level, an int (the host keeps a level's pixels, and the rows just
  // outside it, in int range), times the token stride: one 32 x 32 -> 64-bit multiply on the int64
  // path. Unsigned arithmetic: a degenerate level (0 x huge) may wrap, defined, and is never read.
  const unsigned upixel = static_cast<unsigned>(h0) * static_cast<unsigned>(lv.W) + static_cast<unsigned>(w0);
  const int pixel = static_cast<int>(upixel);
  const index_t o = static_cast<index_t>(pixel) * static_cast<index_t>(row) + lv.base;
  s.off[0] = o, s.off[1] = o + row, s.off[2] = o + lv.Wrow, s.off[3] = o + lv.Wrow + row;
  s.ok[0] = r0 && c0, s.ok[1] = r0 && c1, s.ok[2] = r1 && c0, s.ok[3] = r1 && c1;
  return s;
}

template <typename acc_t>
struct PairOf;
template <>
struct PairOf<float> {
  using type = float2;
};
template <>
struct PairOf<double> {
  using type = double2;
};

// out[t, j : j + V] for the lane's channel chunks j; the point loop is kept rolled (unroll 1):
// one iteration is one point, which is what the static SASS report counts (sass_report.py).
template <typename scalar_t, typename acc_t, typename index_t, int V, bool kVec>
__global__ void forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                               const int64_t* __restrict__ starts, const acc_t* __restrict__ loc,
                               const acc_t* __restrict__ attn, scalar_t* __restrict__ out, Geometry<index_t> g) {
  using Pair = typename PairOf<acc_t>::type;
  using C = Chunk<scalar_t, acc_t, V, kVec>;
  const index_t gid = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const index_t t = gid / g.G;  // G lanes per task, a group of any size (no shuffles here)
  if (t >= g.tasks) return;     // no shuffles in the forward, early exit is safe
  const index_t lane = gid - t * g.G;
  const Task<index_t> task = task_of(t, g);
  for (index_t j = lane * V; j < g.D; j += index_t(V) * g.G) {
    // the chunk read: [j, j + V), or the head's last V channels when j + V passes D (scalar path;
    // the host picks V <= D), so every read channel lies in the head and no load needs a mask
    const index_t c = j + V <= g.D ? j : g.D - V;
    acc_t acc[V] = {};
    for (int l = 0; l < g.L; ++l) {
      const Level<acc_t, index_t> lv = level_of<acc_t>(shapes, starts, l, task.value + c, true, g);
      const Pair* xy = reinterpret_cast<const Pair*>(loc) + task.loc + l * g.sl[3];
      const acc_t* a = attn + task.attn + l * g.sa[3];
#pragma unroll 1
      for (int p = 0; p < g.P; ++p, xy += g.lp, a += g.ap) {
        const Pair xyp = *xy;
        const Sample<acc_t, index_t> s = sample_at(xyp.x, xyp.y, lv, g.row);
        const acc_t ay0 = *a * s.wy[0], ay1 = *a * s.wy[1];
        const acc_t w[4] = {ay0 * s.wx[0], ay0 * s.wx[1], ay1 * s.wx[0], ay1 * s.wx[1]};
        // corners outside the map add nothing and are not read (the pointer to one is never formed):
        // their loads and multiply-adds are predicated off, except for fp16 / bf16 vectors, whose 8
        // conversions per corner nvcc puts behind a branch (4 more instructions per corner, sm_90):
        // those read zeros instead of a missing corner and convert and add them unconditionally
        MSDA_UNROLL
        for (int k = 0; k < 4; ++k) {
          acc_t x[V];
          if constexpr (kVec && sizeof(scalar_t) == 2) {
            C::load_if(s.ok[k], value, s.off[k], x);
          } else {
            if (!s.ok[k]) continue;
            C::load(value + s.off[k], x);
          }
          MSDA_UNROLL
          for (int i = 0; i < V; ++i) acc[i] += w[k] * x[i];
        }
      }
    }
    C::store(out + t * g.D + c, acc, static_cast<int>(j - c));
  }
}

// Sum of x[0..2] over the G lanes of a group (G a power of two, groups aligned to G lanes). The
// xor offsets stay below G, so a butterfly never leaves the group and the shuffles can use the full
// warp width (a constant operand, where width G would be recomputed in every iteration).
template <typename acc_t>
MSDA_DEV void group_sum3(acc_t (&x)[3], int G) {
  for (int off = G >> 1; off > 0; off >>= 1) {
    x[0] += __shfl_xor_sync(0xffffffffu, x[0], off);
    x[1] += __shfl_xor_sync(0xffffffffu, x[1], off);
    x[2] += __shfl_xor_sync(0xffffffffu, x[2], off);
  }
}

// One point's share of the lane's channels in grad_attn and grad_loc, from the dot products
// dot[k] = sum_c grad_out[c] * value[corner k, c] (0 for corners outside the map):
//   grad_attn = sum_k w_k dot_k; d sample / d lw = sum over rows of wy * (dot_right - dot_left);
//   d sample / d lh = (row 1 - row 0) of the column-weighted dots. Linear in the dots, so the
// lanes' shares add up to the totals.
template <typename acc_t, typename index_t>
MSDA_DEV void point_grads(const Sample<acc_t, index_t>& s, const acc_t (&dot)[4], acc_t (&out)[3]) {
  const acc_t row0 = s.wx[0] * dot[0] + s.wx[1] * dot[1], row1 = s.wx[0] * dot[2] + s.wx[1] * dot[3];
  out[0] = s.wy[0] * row0 + s.wy[1] * row1;
  out[1] = s.wy[0] * (dot[1] - dot[0]) + s.wy[1] * (dot[3] - dot[2]);
  out[2] = row1 - row0;
}

// Channels of the chunk at j that belong to the head: V on the vector path (a constant, so no
// masks), D - j (< V) for the scalar path's last chunk.
template <int V, bool kVec, typename index_t>
MSDA_DEV int channels_in_head(index_t j, index_t D) {
  if (kVec || V == 1) return V;
  return D - j < V ? static_cast<int>(D - j) : V;
}

// One pass over the points per chunk of G * V channels (one pass when D <= G * V, as for DINO's
// D = 32): the grad_output chunk is loaded once per pass, and every lane of the group runs the
// same passes (uniform shuffles). Lanes with no channels in a pass (j >= D) and lanes past the
// last task (inactive: they replay the last task) read and scatter nothing (level_of's live).
// Lane 0 of the group owns the task's grad_loc / grad_attn and adds each pass's share to them.
// A scalar chunk past the head's end masks its channels from n on: they read zeros (so they add
// nothing to the dot products, even where value is infinite) and scatter nothing.
template <typename scalar_t, typename acc_t, typename index_t, int V, bool kVec, int kArch = 0>
__global__ void backward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                                const int64_t* __restrict__ starts, const acc_t* __restrict__ loc,
                                const acc_t* __restrict__ attn, const scalar_t* __restrict__ grad_out,
                                acc_t* grad_value, acc_t* __restrict__ grad_loc, acc_t* __restrict__ grad_attn,
                                Geometry<index_t> g) {
  using Pair = typename PairOf<acc_t>::type;
  using C = Chunk<scalar_t, acc_t, V, kVec>;
  const index_t gid = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = (gid >> g.log2G) < g.tasks;
  const index_t t = active ? gid >> g.log2G : g.tasks - 1;
  const index_t lane = gid & ((index_t(1) << g.log2G) - 1);
  const bool writer = active && lane == 0;
  const Task<index_t> task = task_of(t, g);
  Pair* gl = reinterpret_cast<Pair*>(grad_loc);  // (N, Lq, Mv, L, P) of (x, y), contiguous
  for (index_t j0 = 0; j0 < g.D; j0 += index_t(V) << g.log2G) {
    const index_t j = j0 + lane * V;
    const bool live = active && j < g.D;
    const int n = channels_in_head<V, kVec>(j, g.D);
    acc_t gd[V];
    C::load_if(live, grad_out, t * g.D + j, gd, n);
    index_t o = t * g.L * g.P;  // this task's (level, point) entries of grad_loc / grad_attn
    for (int l = 0; l < g.L; ++l) {
      const Level<acc_t, index_t> lv = level_of<acc_t>(shapes, starts, l, task.value + j, live, g);
      const Pair* xy = reinterpret_cast<const Pair*>(loc) + task.loc + l * g.sl[3];
      const acc_t* a = attn + task.attn + l * g.sa[3];
#pragma unroll 1
      for (int p = 0; p < g.P; ++p, xy += g.lp, a += g.ap, ++o) {
        const Pair xyp = *xy;
        const acc_t wa = *a;
        const Sample<acc_t, index_t> s = sample_at(xyp.x, xyp.y, lv, g.row);
        const acc_t ay[2] = {wa * s.wy[0], wa * s.wy[1]};
        acc_t dot[4] = {0, 0, 0, 0};
        MSDA_UNROLL
        for (int k = 0; k < 4; ++k) {
          if (!s.ok[k]) continue;  // outside the map: nothing read, nothing scattered
          acc_t x[V];
          C::load(value + s.off[k], x, n);
          MSDA_UNROLL
          for (int i = 0; i < V; ++i) dot[k] += gd[i] * x[i];
          scatter_add<kArch, kVec>(grad_value + s.off[k], ay[k >> 1] * s.wx[k & 1], gd, n);
        }
        acc_t sums[3];
        point_grads(s, dot, sums);
        group_sum3(sums, g.G);
        // the buffers start zeroed and only this lane adds to its entries, so an add serves the first
        // pass and the later ones alike (one code path, no load of the previous pass's value)
        if (writer) {
          atomicAdd(grad_attn + o, sums[0]);
          atomicAdd(&gl[o].x, wa * lv.Wf * sums[1]);
          atomicAdd(&gl[o].y, wa * lv.Hf * sums[2]);
        }
      }
    }
  }
}

// ---- host side: the launch plan both launchers (CUDA and emulator) use ----

// Every offset of an int32 launch stays below 2^29: the corner offsets of points just outside a
// map reach about three times a level's size past its start, so a quarter of int32's range is kept.
constexpr int64_t kInt32Limit = int64_t(1) << 29;

// Largest element offset + 1 that a strided view reaches (0 when empty).
inline int64_t extent(const at::Tensor& t) {
  if (t.numel() == 0) return 0;
  int64_t e = 1;
  for (int64_t i = 0; i < t.dim(); ++i) e += (t.size(i) - 1) * std::abs(t.stride(i));
  return e;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// MSDA_FORCE_INDEX64=1 picks the int64 path for any size (tests; the int32 path is the default).
inline bool index64_forced() {
  const char* e = std::getenv("MSDA_FORCE_INDEX64");
  return e != nullptr && e[0] == '1';
}

// Which kernel a plan is for: the scalar path picks its chunk width per kernel (scalar_width).
enum class Pass { kForward, kBackward };

// How one call runs: which kernel variant, how many blocks, and the locations / weights as read.
struct Plan {
  Sizes s;
  bool wide = false;  // int64 index arithmetic
  bool vec = false;   // 16-byte vector chunks, else scalar chunks
  int V = 1;          // channels per chunk
  int G = 1, log2G = 0;  // lanes per task; log2G: the backward's (G = 1 << log2G)
  int64_t blocks = 0;
  at::Tensor loc, attn;
};

// The kernels read each (x, y) location as one 8-byte (fp64: 16-byte) pair: x and y adjacent,
// the pair aligned. Views that break this (x and y in separate planes, an odd storage offset) are
// copied, which costs one pass over the small location tensor; all others, stride-0 expanded
// heads included, are read in place.
inline at::Tensor pairable_locations(const at::Tensor& loc) {
  bool ok = loc.stride(5) == 1 && reinterpret_cast<uintptr_t>(loc.data_ptr()) % (2 * loc.element_size()) == 0;
  for (int64_t i = 0; i < 5; ++i) ok = ok && (loc.size(i) <= 1 || loc.stride(i) % 2 == 0);
  return ok ? loc : at::empty(loc.sizes(), loc.options()).copy_(loc);
}

inline int ceil_log2(int64_t n) {
  int k = 0;
  while ((int64_t(1) << k) < n) ++k;
  return k;
}

// Scalar chunk widths. A point's own work (its location and weight, corners, bilinear weights,
// bounds: about 50-80 instructions) is shared by the chunk's channels, each of which adds a load,
// a conversion (fp16 / bf16) and a multiply-add per corner; 4 channels bring the forward under issue
// 24's 30 instructions per (point, channel), 8 for fp16 / bf16 (their conversions). The forward takes
// the widest built width <= D (ForwardWidths), the backward a masked chunk of 4 for D >= 2 and 1
// for D = 1 (BackwardWidths). Heads of 1-3 channels cannot share a point's work enough: their
// forward stays above 30 per (point, channel) (README, "Work per sampled point").
inline int scalar_width(int64_t D, int64_t element_size, Pass pass) {
  if (pass == Pass::kBackward) return D >= 2 ? 4 : 1;
  for (int w : {8, 4, 2})
    if (w <= D && (w < 8 || element_size == 2)) return w;
  return 1;
}

// Lanes per task for a head of `chunks` chunks, at most a warp. The backward's groups sum with
// butterfly shuffles, so they are a power of two (lanes past the last chunk idle). The forward's
// need not be: it spreads the chunks evenly over the fewest passes (a lane per chunk up to 32),
// so that no lane of a group idles in the point loop, e.g. 9 lanes for 9 chunks, not 16.
inline int lanes_per_task(int64_t chunks, Pass pass) {
  chunks = std::max<int64_t>(chunks, 1);
  if (pass == Pass::kBackward) return 1 << ceil_log2(std::min<int64_t>(chunks, 32));
  const int64_t passes = (chunks + 31) / 32;
  return static_cast<int>((chunks + passes - 1) / passes);
}

// vector_ptrs: every pointer the kernel reads or writes in V-channel vectors (value, output or
// grad_output, grad_value), which must be 16-byte aligned for the vector path.
inline Plan plan_launch(const Inputs& in, const at::Tensor& loc, const at::Tensor& attn,
                        std::initializer_list<const void*> vector_ptrs, Pass pass) {
  Plan p;
  p.s = in.s;
  const Sizes& s = in.s;
  const int64_t width = 16 / in.value.element_size();
  p.vec = s.D % width == 0;
  for (const void* ptr : vector_ptrs) p.vec = p.vec && aligned16(ptr);
  p.V = p.vec ? static_cast<int>(width) : scalar_width(s.D, in.value.element_size(), pass);
  p.G = lanes_per_task((s.D + p.V - 1) / p.V, pass);
  p.log2G = ceil_log2(p.G);
  const int64_t threads = s.N * s.Lq * s.Mv * p.G;
  p.blocks = (threads + kThreads - 1) / kThreads;
  TORCH_CHECK(p.blocks < (int64_t(1) << 31), "msda: ", threads, " threads exceed the CUDA grid limit");
  TORCH_CHECK(s.L < (int64_t(1) << 31) && s.P < (int64_t(1) << 31), "msda: too many levels or points");
  // sample_at's int pixel index: a level's pixels, plus the two rows and columns around it, stay
  // below 2^31 when an image has fewer than 2^30 tokens (a level's width and height are at most S)
  TORCH_CHECK(s.S < (int64_t(1) << 30) && s.Mv * s.D < (int64_t(1) << 31), "msda: value has ", s.S,
              " tokens per image and ", s.Mv * s.D, " channels per token; the CUDA kernels handle fewer than 2^30 ",
              "and 2^31");
  p.loc = s.N * s.Lq > 0 ? pairable_locations(loc) : loc;
  p.attn = attn;
  // the kernels step over points with int strides (Geometry::lp, ap); a view whose point stride is
  // larger (a huge tensor transposed point-axis-first) is read from a contiguous copy
  const int64_t int_max = std::numeric_limits<int>::max();
  if (std::abs(p.loc.stride(4)) / 2 > int_max) p.loc = p.loc.contiguous();
  if (std::abs(p.attn.stride(4)) > int_max) p.attn = p.attn.contiguous();
  const int64_t largest = std::max({in.value.numel(), s.N * s.Lq * s.Mv * s.D, extent(p.loc), extent(attn),
                                    s.N * s.Lq * s.Mv * s.L * s.P * 2, p.blocks * kThreads});
  p.wide = index64_forced() || largest > kInt32Limit;
  return p;
}

template <typename index_t>
Geometry<index_t> geometry(const Plan& p) {
  const Sizes& s = p.s;
  auto stride = [](const at::Tensor& t, int64_t i, int64_t unit) {
    return static_cast<index_t>(t.size(i) <= 1 ? 0 : t.stride(i) / unit);  // a size-1 axis is never stepped
  };
  Geometry<index_t> g;
  g.tasks = static_cast<index_t>(s.N * s.Lq * s.Mv);
  g.Lq = s.Lq, g.Mv = s.Mv, g.Ml = s.Ml, g.D = s.D, g.S = s.S;
  g.L = static_cast<int>(s.L), g.P = static_cast<int>(s.P);
  g.row = static_cast<int>(s.Mv * s.D);
  for (int i = 0; i < 5; ++i) g.sl[i] = stride(p.loc, i, 2), g.sa[i] = stride(p.attn, i, 1);
  g.lp = static_cast<int>(g.sl[4]), g.ap = static_cast<int>(g.sa[4]);
  g.G = p.G, g.log2G = p.log2G;
  return g;
}

// The scalar chunk widths each kernel is built for: what scalar_width can return for that pass.
template <typename scalar_t>
using ForwardWidths = std::conditional_t<sizeof(scalar_t) == 2, std::integer_sequence<int, 8, 4, 2, 1>,
                                         std::integer_sequence<int, 4, 2, 1>>;
template <typename scalar_t>
using BackwardWidths = std::integer_sequence<int, 4, 1>;

// f(integral_constant<int, W>) for the width W among the built ones that equals v.
template <typename F, int W, int... Ws>
void with_width(int v, std::integer_sequence<int, W, Ws...>, F&& f) {
  if (v == W) return f(std::integral_constant<int, W>{});
  if constexpr (sizeof...(Ws) > 0) return with_width(v, std::integer_sequence<int, Ws...>{}, std::forward<F>(f));
  TORCH_CHECK(false, "msda: no kernel built for scalar chunks of ", v, " channels");
}

// Calls f(index_t{}, integral_constant<int, V>, bool_constant<kVec>) for the plan's kernel variant;
// Widths: the scalar chunk widths built for the kernel (ForwardWidths or BackwardWidths of scalar_t).
template <typename scalar_t, typename Widths, typename F>
void with_variant(const Plan& p, F&& f) {
  constexpr int kVecWidth = Vec16<scalar_t>::width;
  auto with_index = [&](auto vec, auto kvec) {
    if (p.wide) return f(int64_t{}, vec, kvec);
    f(int32_t{}, vec, kvec);
  };
  if (p.vec) return with_index(std::integral_constant<int, kVecWidth>{}, std::true_type{});
  with_width(p.V, Widths{}, [&](auto vec) { with_index(vec, std::false_type{}); });
}

}  // namespace msda
