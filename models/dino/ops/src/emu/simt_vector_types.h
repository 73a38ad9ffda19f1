// CUDA's vector types, the half / bfloat16 pair intrinsics and the sm_90 float4 atomicAdd, for the
// host compiler: what msda_cuda_vec.cuh uses, as the SIMT emulator runs it (tests only).
// Include after the torch headers (the conversions are c10's) and after simt_shim.h.
//
// The vector types carry CUDA's alignment (8 / 16 bytes), so the UBSan build reports a vector
// load or store through a misaligned pointer, as the GPU would fault on it; the kernels' 16-byte
// loads and stores (MSDA_VECTOR_ACCESS) and the float4 atomic check their alignment themselves in
// every build (an exception aborts the launch with a message). may_alias:
// the kernels read value / gradient buffers of float, c10::Half, ... through these types.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>

struct __attribute__((may_alias, aligned(8))) float2 {
  float x, y;
};
struct __attribute__((may_alias, aligned(16))) float4 {
  float x, y, z, w;
};
struct __attribute__((may_alias, aligned(16))) double2 {
  double x, y;
};
struct __attribute__((may_alias, aligned(16))) uint4 {
  unsigned x, y, z, w;
};
// a pair of fp16 / bf16 values as their bits (element 0 in the low half, as on the GPU)
struct __attribute__((aligned(4))) __half2 {
  uint16_t x, y;
};
struct __attribute__((aligned(4))) __nv_bfloat162 {
  uint16_t x, y;
};

namespace simt {

inline float half_to_float(uint16_t bits) { return static_cast<float>(c10::Half(bits, c10::Half::from_bits())); }
inline float bf16_to_float(uint16_t bits) {
  return static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits()));
}

// The GPU faults on a vector access that is not aligned to its size.
inline void check_vector_address(const void* p, size_t bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % bytes == 0) return;
  std::ostringstream os;
  os << what << " at " << p << ", which is not " << bytes << "-byte aligned (misaligned address on a GPU)";
  throw std::runtime_error(os.str());
}

}  // namespace simt

// msda_cuda_vec.cuh's hook before each 16-byte vector load / store: a misaligned one fails the launch
#define MSDA_VECTOR_ACCESS(p, bytes) simt::check_vector_address(p, bytes, "16-byte vector access")

// round to nearest even, like the device intrinsics (c10's conversions round that way too)
inline float2 __half22float2(__half2 h) { return {simt::half_to_float(h.x), simt::half_to_float(h.y)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {c10::Half(a).x, c10::Half(b).x}; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {simt::bf16_to_float(h.x), simt::bf16_to_float(h.y)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {c10::BFloat16(a).x, c10::BFloat16(b).x}; }

// sm_90's vector atomic (the one the kernels use): a plain add (one lane runs at a time); return the old value, like CUDA.
inline float4 atomicAdd(float4* p, float4 v) {
  simt::check_vector_address(p, sizeof(float4), "atomicAdd(float4*)");
  const float4 old = *p;
  *p = {old.x + v.x, old.y + v.y, old.z + v.z, old.w + v.w};
  return old;
}
