// Shared input checks and the bilinear corner helper for the CPU and CUDA kernels.
//
// Shapes: value (N, S, Mv, D) contiguous; spatial_shapes (L, 2) int64 (H, W);
// level_start_index (L,) int64; sampling_loc (N, Lq, Ml, L, P, 2) and attn_weight
// (N, Lq, Ml, L, P), any strides (stride-0 expanded views are read in place).
// Ml == Mv normally; Ml may also divide Mv ("EMCA layout": K value maps stacked
// k-major on the head axis share locations), then value head h reads location head h % Ml.
// sampling_loc / attn_weight hold the accumulation type of value (fp32 for
// fp16/bf16/fp32 value, fp64 for fp64) so locations never lose precision.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#ifdef __CUDACC__
#define MSDA_HD __host__ __device__ __forceinline__
#define MSDA_UNROLL _Pragma("unroll")
#else
#define MSDA_UNROLL
#define MSDA_HD inline
#endif

namespace msda {

struct Sizes {
  int64_t N, S, Mv, D, Lq, Ml, L, P;
};

inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline Sizes check_inputs(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
                          const at::Tensor& loc, const at::Tensor& attn) {
  TORCH_CHECK(value.dim() == 4, "msda: value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(loc.dim() == 6 && loc.size(5) == 2, "msda: sampling_locations must be (N, Lq, M, L, P, 2), got ",
              loc.sizes());
  TORCH_CHECK(attn.dim() == 5, "msda: attention_weights must be (N, Lq, M, L, P), got ", attn.sizes());
  TORCH_CHECK(shapes.dim() == 2 && shapes.size(1) == 2 && shapes.scalar_type() == at::kLong,
              "msda: spatial_shapes must be an int64 (L, 2) tensor, got ", shapes.sizes(), " ", shapes.scalar_type());
  TORCH_CHECK(starts.dim() == 1 && starts.scalar_type() == at::kLong,
              "msda: level_start_index must be an int64 (L,) tensor, got ", starts.sizes(), " ", starts.scalar_type());
  Sizes s{value.size(0), value.size(1), value.size(2), value.size(3), loc.size(1), loc.size(2), loc.size(3), loc.size(4)};
  TORCH_CHECK(loc.size(0) == s.N && attn.size(0) == s.N, "msda: batch sizes differ: value ", s.N, ", locations ",
              loc.size(0), ", weights ", attn.size(0));
  TORCH_CHECK(attn.sizes() == loc.sizes().slice(0, 5), "msda: attention_weights ", attn.sizes(),
              " must match sampling_locations ", loc.sizes(), " without the last dim");
  TORCH_CHECK(s.Ml > 0 && s.Mv % s.Ml == 0, "msda: value has ", s.Mv, " heads, locations have ", s.Ml,
              "; they must be equal (or the location heads must divide the value heads, EMCA layout)");
  TORCH_CHECK(shapes.size(0) == s.L && starts.size(0) == s.L, "msda: spatial_shapes / level_start_index have ",
              shapes.size(0), " / ", starts.size(0), " levels but the locations have ", s.L);
  const auto want = acc_dtype(value.scalar_type());
  TORCH_CHECK(loc.scalar_type() == want && attn.scalar_type() == want, "msda: value is ", value.scalar_type(),
              " so sampling_locations and attention_weights must be ", want, ", got ", loc.scalar_type(), " and ",
              attn.scalar_type(), " (cast them with .to(", want, "))");
  TORCH_CHECK(value.device() == loc.device() && value.device() == attn.device() &&
                  value.device() == shapes.device() && value.device() == starts.device(),
              "msda: all inputs must be on one device (value is on ", value.device(), ")");
  // Every level must lie inside value's S tokens, else the kernels read out of bounds (found by
  // the ASan build of the emulator). Checked where it is free: on CPU tensors; on the GPU it would
  // cost a device-to-host copy (a sync) per call.
  if (shapes.device().is_cpu()) {
    const at::Tensor sh = shapes.contiguous(), st = starts.contiguous();
    const int64_t* hw = sh.data_ptr<int64_t>();
    const int64_t* start = st.data_ptr<int64_t>();
    for (int64_t l = 0; l < s.L; ++l)
      TORCH_CHECK(hw[2 * l] >= 0 && hw[2 * l + 1] >= 0 && start[l] >= 0 && start[l] + hw[2 * l] * hw[2 * l + 1] <= s.S,
                  "msda: level ", l, " (", hw[2 * l], " x ", hw[2 * l + 1], " starting at token ", start[l],
                  ") does not fit in value's ", s.S, " tokens: spatial_shapes / level_start_index do not match value");
  }
  return s;
}

// Inputs as the kernels read them: checked sizes, contiguous value / shapes / starts
// (no copy in the usual case; locations and weights keep their strides).
struct Inputs {
  Sizes s;
  at::Tensor value, shapes, starts;
};

inline Inputs prepare_inputs(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
                             const at::Tensor& loc, const at::Tensor& attn) {
  return {check_inputs(value, shapes, starts, loc, attn), value.contiguous(), shapes.contiguous(), starts.contiguous()};
}

// Output buffers of one backward call. grad_value is kept in the accumulation type;
// grad_loc / grad_attn have one entry per value head (Mv) until finish_backward.
struct Grads {
  at::Tensor grad_out, value, loc, attn;
};

// zero_filled: the CUDA kernels add into zeroed buffers and read a contiguous grad_output. The
// CPU kernel (zero_filled = false) writes every location / weight gradient and zeroes each slice
// of grad_value in the thread that accumulates it, and reads grad_output through its strides, so
// it gets uninitialised buffers and no copy (the stride-0 gradient of out.sum() stays 1 element).
inline Grads backward_buffers(const Inputs& in, const at::Tensor& loc, const at::Tensor& grad_out_in,
                              bool zero_filled = true) {
  const Sizes& s = in.s;
  TORCH_CHECK(grad_out_in.numel() == s.N * s.Lq * s.Mv * s.D, "msda: grad_output has shape ", grad_out_in.sizes(),
              ", expected (", s.N, ", ", s.Lq, ", ", s.Mv * s.D, ")");
  const at::Tensor grad_out = grad_out_in.to(in.value.scalar_type());
  const auto acc = loc.options().memory_format(at::MemoryFormat::Contiguous);
  auto buffer = [&](at::IntArrayRef sizes) { return zero_filled ? at::zeros(sizes, acc) : at::empty(sizes, acc); };
  return {zero_filled ? grad_out.contiguous() : grad_out.reshape({s.N, s.Lq, s.Mv * s.D}), buffer(in.value.sizes()),
          buffer({s.N, s.Lq, s.Mv, s.L, s.P, 2}), buffer({s.N, s.Lq, s.Mv, s.L, s.P})};
}

// EMCA layout: value head h used location head h % Ml, so its location and weight
// gradients are summed over the K stacked maps; grad_value goes back to value's dtype.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_backward(const Inputs& in, Grads g) {
  const Sizes& s = in.s;
  if (s.Ml != s.Mv) {
    const int64_t K = s.Mv / s.Ml;
    g.loc = g.loc.view({s.N, s.Lq, K, s.Ml, s.L, s.P, 2}).sum(2);
    g.attn = g.attn.view({s.N, s.Lq, K, s.Ml, s.L, s.P}).sum(2);
  }
  return {g.value.to(in.value.scalar_type()), g.loc, g.attn};
}

// The four bilinear neighbours of (x, y) in [0, 1] on an H x W map, pixel centres at
// (i + 0.5) / W (grid_sample align_corners=False). Corner order: (h0,w0), (h0,w0+1),
// (h0+1,w0), (h0+1,w0+1). Invalid corners (outside the map) get index -1 and weight 0.
template <typename acc_t>
struct Corners {
  int64_t idx[4];
  acc_t w[4];
  acc_t lh, lw;  // fractional parts, needed by the location gradient
  bool any;      // false when the point is entirely outside (all weights 0)
};

template <typename acc_t>
MSDA_HD Corners<acc_t> bilinear_corners(acc_t x, acc_t y, int64_t H, int64_t W) {
  Corners<acc_t> c;
  const acc_t h_im = y * static_cast<acc_t>(H) - acc_t(0.5);
  const acc_t w_im = x * static_cast<acc_t>(W) - acc_t(0.5);
  c.any = h_im > acc_t(-1) && w_im > acc_t(-1) && h_im < static_cast<acc_t>(H) && w_im < static_cast<acc_t>(W);
  const acc_t fh = floor(h_im), fw = floor(w_im);
  c.lh = h_im - fh;
  c.lw = w_im - fw;
  const acc_t hh = acc_t(1) - c.lh, hw = acc_t(1) - c.lw;
  const int64_t h0 = c.any ? static_cast<int64_t>(fh) : -2, w0 = c.any ? static_cast<int64_t>(fw) : -2;
  const acc_t ws[4] = {hh * hw, hh * c.lw, c.lh * hw, c.lh * c.lw};
MSDA_UNROLL
  for (int k = 0; k < 4; ++k) {
    const int64_t hk = h0 + (k >> 1), wk = w0 + (k & 1);
    const bool ok = c.any && hk >= 0 && wk >= 0 && hk < H && wk < W;
    c.idx[k] = ok ? hk * W + wk : -1;
    c.w[k] = ok ? ws[k] : acc_t(0);
  }
  return c;
}

}  // namespace msda
