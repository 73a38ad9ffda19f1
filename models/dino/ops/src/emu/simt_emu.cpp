// The SIMT emulator's scheduler: warps as 32 fibres (ucontext) that meet at shuffles.
// See simt_shim.h for the model and the rules it enforces.
#include "simt_shim.h"

#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define SIMT_ASAN 1
#else
#define SIMT_ASAN 0
#endif

namespace simt {
namespace {

constexpr size_t kStackBytes = 256 * 1024;  // per lane; the kernels need a few KiB (ASan more)
constexpr int kMaxShuffleBytes = 16;

enum class State { kRunnable, kWaiting, kExited };

struct Lane {
  ucontext_t ctx;
  char* stack = nullptr;
  State state = State::kExited;
  uint3 tid{0, 0, 0};
  // the shuffle this lane waits at
  unsigned mask = 0;
  int lane_mask = 0, width = 0, bytes = 0;
  Site site{nullptr, 0};
  uint64_t count = 0;  // shuffles this lane has completed
  unsigned char offer[kMaxShuffleBytes], result[kMaxShuffleBytes];
  void* fake_stack = nullptr;  // ASan's fake stack of this fibre while it is switched out
};

struct Warp {
  uint3 grid_dim, block_dim, block_idx;
  const std::function<void()>* kernel = nullptr;
  Lane lanes[kWarpSize];
  int n_lanes = 0;    // lanes that exist (the last warp of a block may be partial)
  int index = 0;      // warp index within the block
  int current = -1;   // the lane running now
  ucontext_t sched;   // the scheduler's context
  std::string error;  // set when a rule is broken: the launch is abandoned
  const void* sched_bottom = nullptr;  // ASan: the scheduler's stack
  size_t sched_size = 0;
};

thread_local Warp* g_warp = nullptr;

[[noreturn]] void misuse(const char* what) {
  std::fprintf(stderr, "simt emulator: %s\n", what);
  std::abort();
}

std::string where(const Warp& w) {
  std::ostringstream os;
  os << "block " << w.block_idx.x << ", warp " << w.index;
  return os.str();
}

std::string site_str(const Site& s) {
  std::ostringstream os;
  os << s.file << ":" << s.line;
  return os.str();
}

std::string lanes_str(unsigned bits) {
  std::ostringstream os;
  const char* sep = "";
  for (int i = 0; i < kWarpSize; ++i)
    if (bits >> i & 1u) os << sep << i, sep = ",";
  return os.str();
}

// Lane fibre -> scheduler. `exiting`: the fibre is never resumed (ASan drops its fake stack).
void to_scheduler(Warp& w, Lane& me, bool exiting) {
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &me.fake_stack, w.sched_bottom, w.sched_size);
#else
  (void)exiting;
#endif
  swapcontext(&me.ctx, &w.sched);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(me.fake_stack, &w.sched_bottom, &w.sched_size);
#endif
}

void lane_main() {
  Warp& w = *g_warp;
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &w.sched_bottom, &w.sched_size);
#endif
  Lane& me = w.lanes[w.current];
  try {
    (*w.kernel)();
  } catch (const std::exception& e) {
    w.error = std::string("exception in the kernel: ") + e.what();
  }
  me.state = State::kExited;
  to_scheduler(w, me, true);
  std::abort();  // an exited fibre is never resumed
}

// Scheduler -> lane i, until it waits at a shuffle or returns.
void run_lane(Warp& w, int i) {
  w.current = i;
  Lane& lane = w.lanes[i];
#if SIMT_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, lane.stack, kStackBytes);
#endif
  swapcontext(&w.sched, &lane.ctx);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  w.current = -1;
}

bool valid_width(int width) { return width >= 1 && width <= kWarpSize && (width & (width - 1)) == 0; }

// All lanes are waiting or have returned: check the rules and hand out the shuffled
// values. Returns false when no lane waits (the warp is done); sets w.error on a broken rule.
bool release(Warp& w) {
  unsigned waiting = 0, exited = 0;
  for (int i = 0; i < w.n_lanes; ++i) {
    if (w.lanes[i].state == State::kWaiting) waiting |= 1u << i;
    if (w.lanes[i].state == State::kExited) exited |= 1u << i;
  }
  if (waiting == 0) return false;
  const unsigned existing = w.n_lanes == kWarpSize ? ~0u : (1u << w.n_lanes) - 1u;
  std::ostringstream err;
  for (int i = 0; i < w.n_lanes && err.tellp() == 0; ++i) {
    const Lane& a = w.lanes[i];
    if (a.state != State::kWaiting) continue;
    if (!(a.mask >> i & 1u)) {
      err << "lane " << i << " calls __shfl_xor_sync at " << site_str(a.site) << " with a mask 0x" << std::hex
          << a.mask << std::dec << " that leaves itself out";
    } else if (a.mask & ~existing) {
      err << "the mask 0x" << std::hex << a.mask << std::dec << " of the shuffle at " << site_str(a.site)
          << " names lanes that do not exist in this warp (" << lanes_str(a.mask & ~existing) << ")";
    } else if (a.mask & exited) {
      err << "lane(s) " << lanes_str(a.mask & exited) << " returned while lane(s) " << lanes_str(a.mask & waiting)
          << " wait at the shuffle at " << site_str(a.site) << " with mask 0x" << std::hex << a.mask;
    } else if (!valid_width(a.width)) {
      err << "lane " << i << " calls __shfl_xor_sync at " << site_str(a.site) << " with width " << a.width
          << " (it must be a power of two <= 32)";
    }
    for (int j = 0; j < w.n_lanes && err.tellp() == 0; ++j) {
      const Lane& b = w.lanes[j];
      if (!(a.mask >> j & 1u) || b.state != State::kWaiting) continue;
      if (b.mask != a.mask) {
        err << "lanes " << i << " and " << j << " wait at shuffles with different masks (0x" << std::hex << a.mask
            << ", 0x" << b.mask << std::dec << ")";
      } else if (b.site.line != a.site.line || std::strcmp(b.site.file, a.site.file) != 0) {
        err << "lanes reach __shfl_xor_sync from different call sites: lane " << i << " at " << site_str(a.site)
            << ", lane " << j << " at " << site_str(b.site);
      } else if (b.count != a.count || b.bytes != a.bytes) {
        err << "lanes " << i << " and " << j << " meet at the shuffle at " << site_str(a.site) << " after "
            << a.count << " and " << b.count << " earlier shuffles (different iterations)";
      }
    }
  }
  for (int i = 0; i < w.n_lanes && err.tellp() == 0; ++i) {
    Lane& a = w.lanes[i];
    if (a.state != State::kWaiting) continue;
    const int j = shfl_bfly_source(i, a.lane_mask, a.width);
    if (!(a.mask >> j & 1u)) {  // PTX: the value of a lane outside the mask is unpredictable
      err << "lane " << i << " reads lane " << j << " (laneMask " << a.lane_mask << ", width " << a.width
          << "), which is not in the shuffle's mask 0x" << std::hex << a.mask << std::dec << " at "
          << site_str(a.site);
      break;
    }
    std::memcpy(a.result, w.lanes[j].offer, a.bytes);
  }
  if (err.tellp() != 0) {
    w.error = err.str();
    return false;
  }
  for (int i = 0; i < w.n_lanes; ++i) {
    if (w.lanes[i].state != State::kWaiting) continue;
    w.lanes[i].state = State::kRunnable;
    ++w.lanes[i].count;
  }
  return true;
}

void run_warp(Warp& w, std::mt19937_64& rng) {
  for (int i = 0; i < w.n_lanes; ++i) {
    Lane& lane = w.lanes[i];
#if SIMT_ASAN
    ASAN_UNPOISON_MEMORY_REGION(lane.stack, kStackBytes);  // frames left by the previous warp's fibres
#endif
    lane.ctx.uc_stack.ss_sp = lane.stack;
    lane.ctx.uc_stack.ss_size = kStackBytes;
    lane.ctx.uc_link = nullptr;
    makecontext(&lane.ctx, lane_main, 0);
    lane.state = State::kRunnable;
    lane.count = 0;
    lane.tid = {static_cast<unsigned>(w.index * kWarpSize + i), 0, 0};
  }
  std::vector<int> order(w.n_lanes);
  do {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int i : order) {
      if (w.lanes[i].state != State::kRunnable) continue;
      run_lane(w, i);
      if (!w.error.empty()) return;
    }
  } while (release(w));
}

}  // namespace

const uint3& current_thread_idx() {
  if (g_warp == nullptr || g_warp->current < 0) misuse("threadIdx used outside a kernel launch");
  return g_warp->lanes[g_warp->current].tid;
}
const uint3& current_block_idx() {
  if (g_warp == nullptr) misuse("blockIdx used outside a kernel launch");
  return g_warp->block_idx;
}
const uint3& current_block_dim() {
  if (g_warp == nullptr) misuse("blockDim used outside a kernel launch");
  return g_warp->block_dim;
}
const uint3& current_grid_dim() {
  if (g_warp == nullptr) misuse("gridDim used outside a kernel launch");
  return g_warp->grid_dim;
}

void shuffle_xor(unsigned mask, const void* value, void* result, int bytes, int lane_mask, int width, Site site) {
  Warp* w = g_warp;
  if (w == nullptr || w->current < 0) misuse("__shfl_xor_sync used outside a kernel launch");
  if (bytes > kMaxShuffleBytes) misuse("__shfl_xor_sync of a type larger than 16 bytes");
  Lane& me = w->lanes[w->current];
  me.mask = mask;
  me.lane_mask = lane_mask;
  me.width = width;
  me.bytes = bytes;
  me.site = site;
  std::memcpy(me.offer, value, bytes);
  me.state = State::kWaiting;
  to_scheduler(*w, me, false);
  std::memcpy(result, me.result, bytes);
}

void launch(int64_t grid, int block, uint64_t seed, const std::function<void()>& kernel) {
  if (grid < 1 || grid > 2147483647LL || block < 1 || block > 1024) {
    std::ostringstream os;
    os << "simt emulator: invalid launch <<<" << grid << ", " << block << ">>> (CUDA allows 1..2^31-1 blocks "
       << "of 1..1024 threads)";
    throw std::runtime_error(os.str());
  }
  if (g_warp != nullptr) throw std::runtime_error("simt emulator: a kernel launch inside a kernel");
  Warp w;
  w.grid_dim = {static_cast<unsigned>(grid), 1, 1};
  w.block_dim = {static_cast<unsigned>(block), 1, 1};
  w.kernel = &kernel;
  std::vector<char> stacks(kStackBytes * kWarpSize);
  for (int i = 0; i < kWarpSize; ++i) {
    w.lanes[i].stack = stacks.data() + i * kStackBytes;
    getcontext(&w.lanes[i].ctx);
  }
  std::mt19937_64 rng(seed);
  std::vector<int64_t> blocks(grid);
  std::iota(blocks.begin(), blocks.end(), 0);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  const int n_warps = (block + kWarpSize - 1) / kWarpSize;
  std::vector<int> warps(n_warps);
  g_warp = &w;
  for (int64_t b : blocks) {
    w.block_idx = {static_cast<unsigned>(b), 0, 0};
    std::iota(warps.begin(), warps.end(), 0);
    std::shuffle(warps.begin(), warps.end(), rng);
    for (int wi : warps) {
      w.index = wi;
      w.n_lanes = std::min(kWarpSize, block - wi * kWarpSize);
      run_warp(w, rng);
      if (!w.error.empty()) break;
    }
    if (!w.error.empty()) break;
  }
  g_warp = nullptr;
#if SIMT_ASAN
  ASAN_UNPOISON_MEMORY_REGION(stacks.data(), stacks.size());  // abandoned fibres' frames
#endif
  if (!w.error.empty()) throw std::runtime_error("simt emulator, " + where(w) + ": " + w.error);
}

}  // namespace simt
