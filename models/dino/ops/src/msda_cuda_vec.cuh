// Channel chunks for the msda CUDA kernels: V adjacent channels of one head read, written or
// scattered together, converted to / from the accumulation type.
//
// Two kinds of chunk (kVec). Vector chunks move 16 bytes per access: 4 fp32, 2 fp64, or 8 fp16 / bf16
// (as 4 half / bfloat16 pairs, converted with the pair intrinsics); they need D a multiple of the
// vector width and 16-byte aligned pointers. Scalar chunks (the fallback for any other D or
// alignment) read V elements one by one: the kernel still computes a point's corners, weights and
// validity once for the V channels. A scalar chunk may hold fewer than V channels of the head
// (n < V): its loads and scatters then leave the channels past n alone (masked).
// Like msda_cuda_kernels.cuh, this file is compiled by nvcc and, for the SIMT emulator, by the host
// compiler; the emulator's emu/simt_vector_types.h supplies the CUDA types and intrinsics used here.
#pragma once

#include <cstring>
#include <type_traits>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#define MSDA_DEV __device__ __forceinline__

// The architecture this device code is compiled for (e.g. 800, 900); 0 in the host pass.
#ifdef __CUDA_ARCH__
#define MSDA_CUDA_ARCH __CUDA_ARCH__
#else
#define MSDA_CUDA_ARCH 0
#endif

// Called before every 16-byte vector load or store with its address. The GPU faults on a misaligned
// one; the host CPU would not, so the emulator defines this to fail the launch the same way
// (emu/simt_vector_types.h); the GPU build compiles it away.
#ifndef MSDA_VECTOR_ACCESS
#define MSDA_VECTOR_ACCESS(p, bytes)
#endif

namespace msda {

// Bits of a 32-bit word as a half / bfloat16 pair and back (memcpy: no aliasing assumptions).
template <typename T, typename U>
MSDA_DEV T bits_as(const U& u) {
  static_assert(sizeof(T) == sizeof(U), "bits_as: sizes differ");
  T t;
  memcpy(&t, &u, sizeof(T));
  return t;
}

// One 16-byte access of scalar_t: its raw register type, width and conversions.
template <typename scalar_t>
struct Vec16;

template <>
struct Vec16<float> {
  using raw_t = float4;
  static constexpr int width = 4;
  static MSDA_DEV void unpack(const raw_t& r, float (&x)[4]) {
    x[0] = r.x, x[1] = r.y, x[2] = r.z, x[3] = r.w;
  }
  static MSDA_DEV raw_t pack(const float (&x)[4]) {
    raw_t r;
    r.x = x[0], r.y = x[1], r.z = x[2], r.w = x[3];
    return r;
  }
};

template <>
struct Vec16<double> {
  using raw_t = double2;
  static constexpr int width = 2;
  static MSDA_DEV void unpack(const raw_t& r, double (&x)[2]) { x[0] = r.x, x[1] = r.y; }
  static MSDA_DEV raw_t pack(const double (&x)[2]) {
    raw_t r;
    r.x = x[0], r.y = x[1];
    return r;
  }
};

// fp16 / bf16: 8 values as 4 words, each a pair (pair_t) converted to / from float2 at once.
template <typename pair_t>
struct Vec16Pairs {
  using raw_t = uint4;
  static constexpr int width = 8;
  static MSDA_DEV float2 to_float2(pair_t h);
  static MSDA_DEV pair_t from_floats(float a, float b);
  static MSDA_DEV void unpack(const raw_t& r, float (&x)[8]) {
    const unsigned w[4] = {r.x, r.y, r.z, r.w};
    MSDA_UNROLL
    for (int i = 0; i < 4; ++i) {
      const float2 f = to_float2(bits_as<pair_t>(w[i]));
      x[2 * i] = f.x, x[2 * i + 1] = f.y;
    }
  }
  static MSDA_DEV raw_t pack(const float (&x)[8]) {
    unsigned w[4];
    MSDA_UNROLL
    for (int i = 0; i < 4; ++i) w[i] = bits_as<unsigned>(from_floats(x[2 * i], x[2 * i + 1]));
    raw_t r;
    r.x = w[0], r.y = w[1], r.z = w[2], r.w = w[3];
    return r;
  }
};

template <>
MSDA_DEV float2 Vec16Pairs<__half2>::to_float2(__half2 h) { return __half22float2(h); }
template <>
MSDA_DEV __half2 Vec16Pairs<__half2>::from_floats(float a, float b) { return __floats2half2_rn(a, b); }
template <>
MSDA_DEV float2 Vec16Pairs<__nv_bfloat162>::to_float2(__nv_bfloat162 h) { return __bfloat1622float2(h); }
template <>
MSDA_DEV __nv_bfloat162 Vec16Pairs<__nv_bfloat162>::from_floats(float a, float b) {
  return __floats2bfloat162_rn(a, b);
}

template <>
struct Vec16<at::Half> : Vec16Pairs<__half2> {};
template <>
struct Vec16<at::BFloat16> : Vec16Pairs<__nv_bfloat162> {};

// V channels of scalar_t starting at an element offset. load, load_if and scatter_add take n, the
// chunk's channels that belong to the head (element i is touched only when i < n; i = 0 always is,
// as a chunk is only used by a lane that has channels). Vector chunks are always full (n unused).
template <typename scalar_t, typename acc_t, int V, bool kVec>
struct Chunk;

template <typename scalar_t, typename acc_t, int V>
struct Chunk<scalar_t, acc_t, V, true> {
  using T = Vec16<scalar_t>;
  using raw_t = typename T::raw_t;
  static_assert(V == T::width, "a vector chunk is one 16-byte vector");

  static MSDA_DEV void load(const scalar_t* p, acc_t (&x)[V], int = V) {
    MSDA_VECTOR_ACCESS(p, sizeof(raw_t));
    T::unpack(*reinterpret_cast<const raw_t*>(p), x);
  }
  // Zeros when !ok, without touching memory.
  template <typename index_t>
  static MSDA_DEV void load_if(bool ok, const scalar_t* base, index_t off, acc_t (&x)[V], int = V) {
    raw_t r{};
    if (ok) {
      MSDA_VECTOR_ACCESS(base + off, sizeof(raw_t));
      r = *reinterpret_cast<const raw_t*>(base + off);
    }
    T::unpack(r, x);
  }
  static MSDA_DEV void store(scalar_t* p, const acc_t (&x)[V], int = 0) {
    MSDA_VECTOR_ACCESS(p, sizeof(raw_t));
    *reinterpret_cast<raw_t*>(p) = T::pack(x);
  }
};

template <typename scalar_t, typename acc_t, int V>
struct Chunk<scalar_t, acc_t, V, false> {
  // Channels i >= n read as zeros (element 0 is always read).
  static MSDA_DEV void load(const scalar_t* p, acc_t (&x)[V], int n = V) {
    MSDA_UNROLL
    for (int i = 0; i < V; ++i) x[i] = i == 0 || i < n ? static_cast<acc_t>(p[i]) : acc_t(0);
  }
  template <typename index_t>
  static MSDA_DEV void load_if(bool ok, const scalar_t* base, index_t off, acc_t (&x)[V], int n = V) {
    MSDA_UNROLL
    for (int i = 0; i < V; ++i) x[i] = ok && (i == 0 || i < n) ? static_cast<acc_t>(base[off + i]) : acc_t(0);
  }
  // Elements i >= skip: the first skip channels of a chunk moved back to end at the head's last
  // channel belong to the chunk before it (forward_kernel).
  static MSDA_DEV void store(scalar_t* p, const acc_t (&x)[V], int skip = 0) {
    MSDA_UNROLL
    for (int i = 0; i < V; ++i)
      if (i >= skip) p[i] = static_cast<scalar_t>(x[i]);
  }
};

// float4 for float; a template so that the name is looked up only where the sm_90 branch is kept.
template <typename acc_t>
struct Float4Of {
  using type = float4;
};

// grad_value[p + i] += w * g[i], i < n, atomically (other queries scatter into the same pixels).
// fp32 vector chunks on sm_90 and later: one 16-byte vector atomic (RED.E.ADD.F32x4) per 4 channels;
// before sm_90 and for fp64 the architecture has no vector float atomics, and scalar chunks are not
// 16-byte aligned, so one atomic per channel. fp16 / bf16 values also scatter into fp32: a pixel
// collects hundreds of contributions per image, which an 8-bit (bf16) or 11-bit (fp16) mantissa
// would round away, so the pair atomics of those types are not used. kArch: the emulator's choice
// (800, 900); 0 = the architecture being compiled.
template <int kArch, bool kVec, typename acc_t, int V>
MSDA_DEV void scatter_add(acc_t* p, acc_t w, const acc_t (&g)[V], int n) {
  constexpr int arch = kArch ? kArch : MSDA_CUDA_ARCH;
  if constexpr (kVec && arch >= 900 && std::is_same<acc_t, float>::value && V % 4 == 0) {
    using F4 = typename Float4Of<acc_t>::type;
    MSDA_UNROLL
    for (int i = 0; i < V; i += 4) atomicAdd(reinterpret_cast<F4*>(p + i), F4{w * g[i], w * g[i + 1], w * g[i + 2],
                                                                               w * g[i + 3]});
  } else {
    MSDA_UNROLL
    for (int i = 0; i < V; ++i)
      if (kVec || i == 0 || i < n) atomicAdd(p + i, w * g[i]);
  }
}

}  // namespace msda
