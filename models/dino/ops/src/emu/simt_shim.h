// A small SIMT emulator: just enough of CUDA for the host C++ compiler to build and run
// msda_cuda_kernels.cuh on the CPU, in tests only.
//
// Model. A launch runs its blocks one after another in a shuffled (seeded) order, the warps
// of a block in a shuffled order, and each warp as 32 lanes, each lane a fibre (ucontext)
// with its own stack. A lane runs until it reaches a warp shuffle or returns; lanes switch
// only there. When no lane can run, the lanes waiting at a shuffle are checked and released
// together:
//   - the lanes of one shuffle (its mask) must be at the same call site (file:line of
//     the __shfl_xor_sync call) after the same number of earlier shuffles;
//   - the waiting lanes must be exactly the lanes of the mask; a lane of the mask that has
//     returned (or does not exist: partial last warp) while others wait aborts the launch;
//   - the value follows PTX's shfl.sync.bfly rule (see shfl_bfly_source below).
// A broken rule aborts the launch: the launcher throws std::runtime_error naming the rule,
// the block, the warp and the lanes (a Python RuntimeError in the test).
// atomicAdd is a plain read-add-write (one lane runs at a time).
//
// Not modelled: shared memory, __syncthreads, other intrinsics (using them in the kernels
// fails to compile here, on purpose), the memory model, concurrent blocks, timing.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>

#ifndef __host__
#define __host__
#endif
#define __global__
#define __device__
#define __forceinline__ inline

namespace simt {

struct uint3 {
  unsigned x, y, z;
};

constexpr int kWarpSize = 32;

// Where a shuffle was called from (file and line: GCC has no __builtin_COLUMN, so two
// shuffles on one source line count as one site); compared between the lanes of a warp.
struct Site {
  const char* file;
  int line;
};

// The state of the launch, warp and lane currently running (defined in simt_emu.cpp).
const uint3& current_thread_idx();
const uint3& current_block_idx();
const uint3& current_block_dim();
const uint3& current_grid_dim();

// Runs one warp shuffle for the calling lane: offers `bytes` of `value`, suspends the lane
// until the warp meets there, and writes the value received into `result`.
void shuffle_xor(unsigned mask, const void* value, void* result, int bytes, int lane_mask, int width, Site site);

// PTX shfl.sync.bfly for lane `lane`, b = lane_mask, c = ((32 - width) << 8) | 0x1f as
// CUDA's __shfl_xor_sync passes it: returns the source lane j, or `lane` itself when j is
// past the end of the lane's segment (PTX: "if (!pval) j = lane").
inline int shfl_bfly_source(int lane, int lane_mask, int width) {
  const int c = ((kWarpSize - width) << 8) | 0x1f;
  const int cval = c & 0x1f, segmask = (c >> 8) & 0x1f;
  const int max_lane = (lane & segmask) | (cval & ~segmask);
  const int j = lane ^ (lane_mask & 0x1f);
  return j <= max_lane ? j : lane;
}

// Runs `kernel` (the body of a __global__ function, one call per thread) on a 1-D grid.
// `seed` picks the block, warp and lane orders.
void launch(int64_t grid, int block, uint64_t seed, const std::function<void()>& kernel);

}  // namespace simt

#define threadIdx (::simt::current_thread_idx())
#define blockIdx (::simt::current_block_idx())
#define blockDim (::simt::current_block_dim())
#define gridDim (::simt::current_grid_dim())
constexpr int warpSize = simt::kWarpSize;

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize,
                         const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  T result;
  simt::shuffle_xor(mask, &var, &result, static_cast<int>(sizeof(T)), laneMask, width, {file, line});
  return result;
}

// Plain add: lanes never run at the same time. Returns the old value, like CUDA.
template <typename T>
inline T atomicAdd(T* address, T val) {
  const T old = *address;
  *address = old + val;
  return old;
}
