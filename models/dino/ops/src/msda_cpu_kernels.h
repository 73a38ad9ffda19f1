// CPU kernel bodies, included twice by msda_cpu.cpp: once as built by default and once
// compiled for AVX2 + FMA (picked at run time when the CPU has them), so that the channel
// loops vectorise 8-wide without making the library require AVX2. No include guard on
// purpose; everything it needs is included by msda_cpu.cpp first.
//
// Both kernels walk (query, head) tasks in two phases, software-pipelined one task apart:
//  plan:  read the task's L * P locations and weights once, work out each point's four corner
//         rows and weights (Point) and prefetch those rows;
//  apply: the channel loops over the planned points.
// Planning task t + 1 before applying task t gives the prefetches a task's worth of work to
// arrive in: the gathers of scattered value rows, not arithmetic, bound these kernels.
// (With AVX2 and fp32 locations the plan does the corner arithmetic of 8 points at a time.)
// Corners outside the map read a row of zeros (and the backward adds their zero gradient to
// a scratch row), so the channel loops have no branches. The channel count is a template
// parameter DC (32, DINO's 256 / 8 heads; 256, EMCA's sample-first; 0 = any D at run time):
// with a compile-time width the channel loops unroll into straight SIMD and the accumulators
// live in registers.

// One sampling point of one (query, head), as the channel loops use it.
template <typename scalar_t, typename acc_t>
struct Point {
  const scalar_t* v[4];  // value rows of the corners (a zero row outside the map)
  acc_t* g[4];           // their grad_value rows (backward; a scratch row outside the map)
  acc_t w[4];            // bilinear corner weights, 0 outside the map
  acc_t a;               // attention weight, 0 when the point is entirely outside
  acc_t lh, lw;          // fractional position, for the location gradient
  bool any;              // false when the point is entirely outside (its gradients are 0)
};

// Per-thread rows that stand in for corners outside the map, and the planned points of two tasks.
template <typename scalar_t, typename acc_t>
struct Workspace {
  std::vector<scalar_t> zeros;  // read as the value of a corner outside the map
  std::vector<acc_t> scratch;   // absorbs the (zero) gradient of a corner outside the map
  std::vector<Point<scalar_t, acc_t>> cur, next;
  Workspace(int64_t D, int64_t points) : zeros(D, scalar_t(0)), scratch(D), cur(points), next(points) {}
};

// how many tasks ahead the forward prefetches its streamed locations, weights and output
constexpr int64_t kStreamAhead = 16;

inline void prefetch_row(const void* p, int64_t bytes, bool for_write) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) {
    if (for_write)
      __builtin_prefetch(c + b, 1);
    else
      __builtin_prefetch(c + b, 0);
  }
}

// Plans the L * P points of one (query, head). vb / gvb: the head's value / grad_value at
// token 0 of the image (gvb null in the forward); lb / ab: its locations and weights.
template <typename scalar_t, typename acc_t>
inline void plan_points(const scalar_t* vb, acc_t* gvb, Workspace<scalar_t, acc_t>& ws, const int64_t* shapes,
                        const int64_t* starts, const acc_t* lb, const acc_t* ab, const int64_t* ls,
                        const int64_t* as, int64_t L, int64_t P, int64_t row, int64_t D,
                        Point<scalar_t, acc_t>* pts) {
  for (int64_t l = 0; l < L; ++l) {
    const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
    for (int64_t p = 0; p < P; ++p) {
      Point<scalar_t, acc_t>& pt = pts[l * P + p];
      const acc_t* xy = lb + l * ls[3] + p * ls[4];
      const auto c = bilinear_corners<acc_t>(xy[0], xy[ls[5]], H, W);
      pt.any = c.any;
      pt.a = c.any ? ab[l * as[3] + p * as[4]] : acc_t(0);
      pt.lh = c.lh;
      pt.lw = c.lw;
      for (int k = 0; k < 4; ++k) {
        const bool in = c.idx[k] >= 0;
        const int64_t ofs = (start + c.idx[k]) * row;
        pt.w[k] = c.w[k];
        pt.v[k] = in ? vb + ofs : ws.zeros.data();
        if (in) prefetch_row(pt.v[k], D * int64_t(sizeof(scalar_t)), false);
        if (gvb != nullptr) {
          pt.g[k] = in ? gvb + ofs : ws.scratch.data();
          if (in) prefetch_row(pt.g[k], D * int64_t(sizeof(acc_t)), true);
        }
      }
    }
  }
}

// Per point j = l * P + p of a (query, head): its level's size and first token, and where its
// location / weight sit relative to the (query, head)'s first; padded to a multiple of 8 points.
struct Levels {
  int64_t points;
  std::vector<float> Hf, Wf;
  std::vector<int32_t> Hi, Wi, start;
  std::vector<int64_t> lofs, aofs;
  Levels(const int64_t* shapes, const int64_t* starts, const int64_t* ls, const int64_t* as, int64_t L, int64_t P)
      : points(L * P) {
    const int64_t padded = (points + 7) / 8 * 8;
    Hf.assign(padded, 0.f), Wf.assign(padded, 0.f), Hi.assign(padded, 0), Wi.assign(padded, 0);
    start.assign(padded, 0), lofs.assign(padded, 0), aofs.assign(padded, 0);
    for (int64_t j = 0; j < points; ++j) {
      const int64_t l = j / P, p = j % P;
      Hf[j] = static_cast<float>(shapes[2 * l]), Wf[j] = static_cast<float>(shapes[2 * l + 1]);
      Hi[j] = static_cast<int32_t>(shapes[2 * l]), Wi[j] = static_cast<int32_t>(shapes[2 * l + 1]);
      start[j] = static_cast<int32_t>(starts[l]);
      lofs[j] = l * ls[3] + p * ls[4];
      aofs[j] = l * as[3] + p * as[4];
    }
  }
};

#ifdef MSDA_KERNELS_AVX2
// plan_points for fp32 locations, 8 points at a time (the corner arithmetic of bilinear_corners
// in AVX2 lanes; token indices in int32, so value must have fewer than 2^31 tokens).
template <typename scalar_t>
inline void plan_points_avx2(const scalar_t* vb, float* gvb, Workspace<scalar_t, float>& ws, const Levels& lv,
                             const float* lb, const float* ab, int64_t ls5, int64_t row, int64_t D,
                             Point<scalar_t, float>* pts) {
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.f), minus_one = _mm256_set1_ps(-1.f);
  const __m256i ione = _mm256_set1_epi32(1), iminus_one = _mm256_set1_epi32(-1);
  for (int64_t j0 = 0; j0 < lv.points; j0 += 8) {
    const int64_t nj = std::min<int64_t>(8, lv.points - j0);
    alignas(32) float xs[8] = {0}, ys[8] = {0}, at[8] = {0};
    for (int64_t i = 0; i < nj; ++i) {
      xs[i] = lb[lv.lofs[j0 + i]], ys[i] = lb[lv.lofs[j0 + i] + ls5], at[i] = ab[lv.aofs[j0 + i]];
    }
    const __m256 Hf = _mm256_loadu_ps(&lv.Hf[j0]), Wf = _mm256_loadu_ps(&lv.Wf[j0]);
    const __m256 h_im = _mm256_sub_ps(_mm256_mul_ps(_mm256_load_ps(ys), Hf), half);
    const __m256 w_im = _mm256_sub_ps(_mm256_mul_ps(_mm256_load_ps(xs), Wf), half);
    const __m256 any = _mm256_and_ps(
        _mm256_and_ps(_mm256_cmp_ps(h_im, minus_one, _CMP_GT_OQ), _mm256_cmp_ps(w_im, minus_one, _CMP_GT_OQ)),
        _mm256_and_ps(_mm256_cmp_ps(h_im, Hf, _CMP_LT_OQ), _mm256_cmp_ps(w_im, Wf, _CMP_LT_OQ)));
    const __m256 fh = _mm256_floor_ps(h_im), fw = _mm256_floor_ps(w_im);
    const __m256 lh = _mm256_sub_ps(h_im, fh), lw = _mm256_sub_ps(w_im, fw);
    const __m256 hh = _mm256_sub_ps(one, lh), hw = _mm256_sub_ps(one, lw);
    const __m256i Hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&lv.Hi[j0]));
    const __m256i Wi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&lv.Wi[j0]));
    const __m256i anyi = _mm256_castps_si256(any);
    // outside the map the floors may not fit an int32; those lanes are masked by `any`
    const __m256i h0 = _mm256_and_si256(anyi, _mm256_cvttps_epi32(fh));
    const __m256i w0 = _mm256_and_si256(anyi, _mm256_cvttps_epi32(fw));
    // with `any`, h0 in [-1, H - 1]: row h0 is in the map iff h0 >= 0, row h0 + 1 iff h0 + 1 < H
    const __m256i in_h[2] = {_mm256_and_si256(anyi, _mm256_cmpgt_epi32(h0, iminus_one)),
                             _mm256_and_si256(anyi, _mm256_cmpgt_epi32(Hi, _mm256_add_epi32(h0, ione)))};
    const __m256i in_w[2] = {_mm256_cmpgt_epi32(w0, iminus_one), _mm256_cmpgt_epi32(Wi, _mm256_add_epi32(w0, ione))};
    const __m256i tok = _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(&lv.start[j0])),
                                         _mm256_add_epi32(_mm256_mullo_epi32(h0, Wi), w0));
    const __m256i step[4] = {_mm256_setzero_si256(), ione, Wi, _mm256_add_epi32(Wi, ione)};
    const __m256 wk[4] = {_mm256_mul_ps(hh, hw), _mm256_mul_ps(hh, lw), _mm256_mul_ps(lh, hw), _mm256_mul_ps(lh, lw)};
    alignas(32) int32_t toks[4][8];
    alignas(32) float ws_[4][8], lhs[8], lws[8], as_[8];
    alignas(32) int32_t anys[8];
    for (int k = 0; k < 4; ++k) {
      const __m256i in = _mm256_and_si256(in_h[k >> 1], in_w[k & 1]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(toks[k]),
                         _mm256_blendv_epi8(iminus_one, _mm256_add_epi32(tok, step[k]), in));
      _mm256_store_ps(ws_[k], _mm256_and_ps(_mm256_castsi256_ps(in), wk[k]));
    }
    _mm256_store_ps(lhs, lh), _mm256_store_ps(lws, lw);
    _mm256_store_si256(reinterpret_cast<__m256i*>(anys), anyi);
    _mm256_store_ps(as_, _mm256_and_ps(any, _mm256_load_ps(at)));
    for (int64_t i = 0; i < nj; ++i) {
      Point<scalar_t, float>& pt = pts[j0 + i];
      pt.any = anys[i] != 0;
      pt.a = as_[i], pt.lh = lhs[i], pt.lw = lws[i];
      for (int k = 0; k < 4; ++k) {
        const int32_t t = toks[k][i];
        pt.w[k] = ws_[k][i];
        pt.v[k] = t >= 0 ? vb + int64_t(t) * row : ws.zeros.data();
        if (t >= 0) prefetch_row(pt.v[k], D * int64_t(sizeof(scalar_t)), false);
        if (gvb != nullptr) {
          pt.g[k] = t >= 0 ? gvb + int64_t(t) * row : ws.scratch.data();
          if (t >= 0) prefetch_row(pt.g[k], D * int64_t(sizeof(float)), true);
        }
      }
    }
  }
}
#endif

// plan_points, vectorised where it can be.
template <typename scalar_t, typename acc_t>
inline void plan_task(const scalar_t* vb, acc_t* gvb, Workspace<scalar_t, acc_t>& ws, const Levels& lv,
                 const int64_t* shapes, const int64_t* starts, const acc_t* lb, const acc_t* ab, const int64_t* ls,
                 const int64_t* as, const Sizes& s, int64_t row, Point<scalar_t, acc_t>* pts) {
#ifdef MSDA_KERNELS_AVX2
  if constexpr (std::is_same_v<acc_t, float>) {
    if (s.S < (int64_t(1) << 31)) return plan_points_avx2<scalar_t>(vb, gvb, ws, lv, lb, ab, ls[5], row, s.D, pts);
  }
#endif
  plan_points<scalar_t, acc_t>(vb, gvb, ws, shapes, starts, lb, ab, ls, as, s.L, s.P, row, s.D, pts);
}

#ifdef MSDA_KERNELS_AVX2
// 8 fp32 channels per AVX2 register; bf16 widens exactly (its bits are the top half of an fp32).
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
// the register path: fp32 accumulation of fp32 / bf16 values, D a multiple of 8
template <typename scalar_t, int DC>
constexpr bool in_registers = DC > 0 && DC % 8 == 0 && !std::is_same_v<scalar_t, double>;
#endif

// out = sum over the planned points and their corners of attn * corner weight * value corner.
// acc: D accumulators for the run-time-width path (DC = 0).
template <typename scalar_t, typename acc_t, int DC>
inline void forward_apply(const Point<scalar_t, acc_t>* pts, int64_t n_pts, int64_t D_rt, acc_t* __restrict acc,
                          scalar_t* __restrict out) {
#ifdef MSDA_KERNELS_AVX2
  if constexpr (in_registers<scalar_t, DC>) {
    // at most 64 channels (8 of the 16 registers) per pass over the points, so that wide heads
    // (EMCA's sample-first reads all 256 channels) keep their sums in registers too
    constexpr int CH = DC > 64 ? 64 : DC, R = CH / 8;
    static_assert(DC % CH == 0, "the register path takes D = 8, 16, ..., 64 or a multiple of 64");
    for (int c0 = 0; c0 < DC; c0 += CH) {
      __m256 sum[R];
      for (int r = 0; r < R; ++r) sum[r] = _mm256_setzero_ps();
      for (int64_t j = 0; j < n_pts; ++j) {
        const Point<scalar_t, acc_t>& pt = pts[j];
        for (int k = 0; k < 4; ++k) {
          const __m256 cw = _mm256_set1_ps(pt.a * pt.w[k]);
          const scalar_t* vp = pt.v[k] + c0;
          for (int r = 0; r < R; ++r) sum[r] = _mm256_fmadd_ps(cw, load8(vp + 8 * r), sum[r]);
        }
      }
      if constexpr (std::is_same_v<scalar_t, float>) {
        for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + c0 + 8 * r, sum[r]);
      } else {
        float tmp[CH];
        for (int r = 0; r < R; ++r) _mm256_storeu_ps(tmp + 8 * r, sum[r]);
        for (int d = 0; d < CH; ++d) out[c0 + d] = static_cast<scalar_t>(tmp[d]);
      }
    }
    return;
  }
#endif
  const int64_t D = DC > 0 ? DC : D_rt;
  for (int64_t d = 0; d < D; ++d) acc[d] = acc_t(0);
  for (int64_t j = 0; j < n_pts; ++j) {
    const Point<scalar_t, acc_t>& pt = pts[j];
    for (int k = 0; k < 4; ++k) {
      const acc_t cw = pt.a * pt.w[k];
      const scalar_t* __restrict vp = pt.v[k];
      for (int64_t d = 0; d < D; ++d) acc[d] += cw * static_cast<acc_t>(vp[d]);
    }
  }
  for (int64_t d = 0; d < D; ++d) out[d] = static_cast<scalar_t>(acc[d]);
}

template <typename scalar_t, int DC>
void forward_impl(const at::Tensor& value, const int64_t* shapes, const int64_t* starts, const at::Tensor& loc,
                  const at::Tensor& attn, at::Tensor& out, const Sizes& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* v = value.data_ptr<scalar_t>();
  const acc_t* lp = loc.data_ptr<acc_t>();
  const acc_t* ap = attn.data_ptr<acc_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  const int64_t* ls = loc.strides().data();
  const int64_t* as = attn.strides().data();
  const int64_t D = s.D, Mv = s.Mv, row = Mv * D, LP = s.L * s.P;
  const int64_t tasks = s.N * s.Lq * Mv;  // (n, q, m), m fastest: a query's heads read neighbouring rows
  const Levels lv(shapes, starts, ls, as, s.L, s.P);
  at::parallel_for(0, tasks, 16, [&](int64_t begin, int64_t end) {
    Workspace<scalar_t, acc_t> ws(D, LP);
    std::vector<acc_t> acc(D);  // accumulators of the loop path
    auto plan = [&](int64_t t, Point<scalar_t, acc_t>* pts) {
      const int64_t m = t % Mv, q = (t / Mv) % s.Lq, n = t / (Mv * s.Lq), ml = m % s.Ml;
      plan_task<scalar_t, acc_t>(v + n * s.S * row + m * D, nullptr, ws, lv, shapes, starts,
                            lp + n * ls[0] + q * ls[1] + ml * ls[2], ap + n * as[0] + q * as[1] + ml * as[2], ls, as,
                            s, row, pts);
    };
    // the streamed inputs and output of a task further ahead (the hardware prefetchers fall
    // behind while the corner prefetches keep the memory system busy)
    auto prefetch_stream = [&](int64_t t) {
      const int64_t m = t % Mv, q = (t / Mv) % s.Lq, n = t / (Mv * s.Lq), ml = m % s.Ml;
      prefetch_row(lp + n * ls[0] + q * ls[1] + ml * ls[2], 2 * LP * int64_t(sizeof(acc_t)), false);
      prefetch_row(ap + n * as[0] + q * as[1] + ml * as[2], LP * int64_t(sizeof(acc_t)), false);
      prefetch_row(o + t * D, D * int64_t(sizeof(scalar_t)), true);
    };
    plan(begin, ws.cur.data());
    for (int64_t t = begin; t < end; ++t) {
      if (t + kStreamAhead < end) prefetch_stream(t + kStreamAhead);
      if (t + 1 < end) plan(t + 1, ws.next.data());
      forward_apply<scalar_t, acc_t, DC>(ws.cur.data(), LP, D, acc.data(), o + t * D);
      std::swap(ws.cur, ws.next);
    }
  });
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& value, const int64_t* shapes, const int64_t* starts, const at::Tensor& loc,
                    const at::Tensor& attn, at::Tensor& out, const Sizes& s) {
  switch (s.D) {
    case 32: return forward_impl<scalar_t, 32>(value, shapes, starts, loc, attn, out, s);
    case 256: return forward_impl<scalar_t, 256>(value, shapes, starts, loc, attn, out, s);  // EMCA sample-first
    default: return forward_impl<scalar_t, 0>(value, shapes, starts, loc, attn, out, s);
  }
}

// The four dot products <gq, value corner k> of one point.
template <typename scalar_t, typename acc_t, int DC>
inline void corner_dots(const Point<scalar_t, acc_t>& pt, const acc_t* __restrict gq, int64_t D_rt, acc_t* dots) {
#ifdef MSDA_KERNELS_AVX2
  if constexpr (in_registers<scalar_t, DC>) {
    constexpr int R = DC / 8;
    __m256 part[4];  // 8 lane-wise partial sums per corner
    for (int k = 0; k < 4; ++k) {
      const scalar_t* vp = pt.v[k];
      __m256 p = _mm256_mul_ps(_mm256_loadu_ps(gq), load8(vp));
      for (int r = 1; r < R; ++r) p = _mm256_fmadd_ps(_mm256_loadu_ps(gq + 8 * r), load8(vp + 8 * r), p);
      part[k] = p;
    }
    // the four horizontal sums at once: after the hadds, lane k of each 128-bit half holds half of corner k
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(part[0], part[1]), _mm256_hadd_ps(part[2], part[3]));
    _mm_storeu_ps(dots, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    return;
  }
#endif
  const int64_t D = DC > 0 ? DC : D_rt;
  for (int k = 0; k < 4; ++k) {
    const scalar_t* __restrict vp = pt.v[k];
    acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < D; ++d) dot += gq[d] * static_cast<acc_t>(vp[d]);
    dots[k] = dot;
  }
}

// grad_value corner rows += attn * corner weight * gq, for the four corners of one point.
template <typename scalar_t, typename acc_t, int DC>
inline void corner_scatter(const Point<scalar_t, acc_t>& pt, const acc_t* __restrict gq, int64_t D_rt) {
#ifdef MSDA_KERNELS_AVX2
  if constexpr (in_registers<scalar_t, DC>) {
    constexpr int R = DC / 8;
    for (int k = 0; k < 4; ++k) {
      const __m256 cw = _mm256_set1_ps(pt.a * pt.w[k]);
      float* gp = pt.g[k];
      for (int r = 0; r < R; ++r)
        _mm256_storeu_ps(gp + 8 * r, _mm256_fmadd_ps(cw, _mm256_loadu_ps(gq + 8 * r), _mm256_loadu_ps(gp + 8 * r)));
    }
    return;
  }
#endif
  const int64_t D = DC > 0 ? DC : D_rt;
  for (int k = 0; k < 4; ++k) {
    acc_t* __restrict gvp = pt.g[k];
    const acc_t cw = pt.a * pt.w[k];
    for (int64_t d = 0; d < D; ++d) gvp[d] += cw * gq[d];
  }
}

// One (query, head) of the backward over its planned points. gq: the D channels of its output
// gradient. Adds attn * corner weight * gq to the corners' grad_value rows and writes all
// L * P location (gl, 2 each) and weight (ga) gradients, zero for points outside the map.
template <typename scalar_t, typename acc_t, int DC>
inline void backward_apply(const Point<scalar_t, acc_t>* pts, int64_t n_pts, int64_t D, const int64_t* shapes,
                           int64_t P, const acc_t* __restrict gq, acc_t* __restrict gl, acc_t* __restrict ga) {
  for (int64_t j = 0; j < n_pts; ++j) {
    const Point<scalar_t, acc_t>& pt = pts[j];
    acc_t dots[4];  // <grad_out, value corner k>
    corner_dots<scalar_t, acc_t, DC>(pt, gq, D, dots);
    corner_scatter<scalar_t, acc_t, DC>(pt, gq, D);
    if (!pt.any) {
      ga[j] = gl[2 * j] = gl[2 * j + 1] = acc_t(0);
      continue;
    }
    const int64_t l = j / P;
    const acc_t a = pt.a, lh = pt.lh, lw = pt.lw, hh = acc_t(1) - lh, hw = acc_t(1) - lw;
    ga[j] = pt.w[0] * dots[0] + pt.w[1] * dots[1] + pt.w[2] * dots[2] + pt.w[3] * dots[3];
    // d(sample)/d(w_im) and d(sample)/d(h_im), then chain rule through x*W and y*H
    const acc_t dw = hh * (dots[1] - dots[0]) + lh * (dots[3] - dots[2]);
    const acc_t dh = hw * (dots[2] - dots[0]) + lw * (dots[3] - dots[1]);
    gl[2 * j] = a * dw * static_cast<acc_t>(shapes[2 * l + 1]);
    gl[2 * j + 1] = a * dh * static_cast<acc_t>(shapes[2 * l]);
  }
}

// Tasks are (image, head) pairs; a thread's contiguous range of them owns those heads' slice
// of grad_value (uninitialised on entry: the thread zeroes it first), so the scatter needs no
// atomics and every element sums its terms in the same order (query, level, point, corner)
// whatever the number of threads. Within an image the thread walks queries, then its heads,
// like the forward, so neighbouring heads' value rows are read together.
template <typename scalar_t, int DC>
void backward_impl(const at::Tensor& value, const int64_t* shapes, const int64_t* starts, const at::Tensor& loc,
                   const at::Tensor& attn, const at::Tensor& grad_out, at::Tensor& grad_value,
                   at::Tensor& grad_loc, at::Tensor& grad_attn, const Sizes& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* v = value.data_ptr<scalar_t>();
  const scalar_t* g = grad_out.data_ptr<scalar_t>();  // (N, Lq, Mv * D), any strides
  const int64_t* gs = grad_out.strides().data();
  const acc_t* lp = loc.data_ptr<acc_t>();
  const acc_t* ap = attn.data_ptr<acc_t>();
  acc_t* gv = grad_value.data_ptr<acc_t>();  // accumulation-type buffer (N, S, Mv, D)
  acc_t* gl = grad_loc.data_ptr<acc_t>();    // contiguous (N, Lq, Mv, L, P, 2)
  acc_t* ga = grad_attn.data_ptr<acc_t>();   // contiguous (N, Lq, Mv, L, P)
  const int64_t* ls = loc.strides().data();
  const int64_t* as = attn.strides().data();
  const int64_t D = s.D, Mv = s.Mv, row = Mv * D, LP = s.L * s.P;
  const Levels lv(shapes, starts, ls, as, s.L, s.P);
  at::parallel_for(0, s.N * Mv, 1, [&](int64_t begin, int64_t end) {
    Workspace<scalar_t, acc_t> ws(D, LP);
    std::vector<acc_t> gq_buf(D);  // the output gradient of the current (query, head)
    acc_t* gq = gq_buf.data();
    for (int64_t n = begin / Mv; n * Mv < end; ++n) {
      const int64_t m0 = std::max(begin - n * Mv, int64_t(0)), m1 = std::min(end - n * Mv, Mv), heads = m1 - m0;
      acc_t* gvn = gv + n * s.S * row;
      for (int64_t i = 0; i < s.S; ++i) std::fill_n(gvn + i * row + m0 * D, heads * D, acc_t(0));
      // task i of this image: query i / heads, head m0 + i % heads
      auto plan = [&](int64_t i, Point<scalar_t, acc_t>* pts) {
        const int64_t q = i / heads, m = m0 + i % heads, ml = m % s.Ml;
        plan_task<scalar_t, acc_t>(v + n * s.S * row + m * D, gvn + m * D, ws, lv, shapes, starts,
                              lp + n * ls[0] + q * ls[1] + ml * ls[2], ap + n * as[0] + q * as[1] + ml * as[2], ls,
                              as, s, row, pts);
      };
      const int64_t n_tasks = s.Lq * heads;
      if (n_tasks > 0) plan(0, ws.cur.data());
      for (int64_t i = 0; i < n_tasks; ++i) {
        if (i + 1 < n_tasks) plan(i + 1, ws.next.data());
        const int64_t nqm = (n * s.Lq + i / heads) * Mv + m0 + i % heads;
        // the query's output gradient is read once and used for every level and point
        const scalar_t* gp = g + n * gs[0] + (i / heads) * gs[1] + (m0 + i % heads) * D * gs[2];
        if (gs[2] == 1) {
          for (int64_t d = 0; d < D; ++d) gq[d] = static_cast<acc_t>(gp[d]);
        } else {
          for (int64_t d = 0; d < D; ++d) gq[d] = static_cast<acc_t>(gp[d * gs[2]]);
        }
        backward_apply<scalar_t, acc_t, DC>(ws.cur.data(), LP, D, shapes, s.P, gq, gl + nqm * LP * 2, ga + nqm * LP);
        std::swap(ws.cur, ws.next);
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& value, const int64_t* shapes, const int64_t* starts, const at::Tensor& loc,
                     const at::Tensor& attn, const at::Tensor& grad_out, at::Tensor& grad_value,
                     at::Tensor& grad_loc, at::Tensor& grad_attn, const Sizes& s) {
  switch (s.D) {
    case 32: return backward_impl<scalar_t, 32>(value, shapes, starts, loc, attn, grad_out, grad_value, grad_loc,
                                                grad_attn, s);
    case 256: return backward_impl<scalar_t, 256>(value, shapes, starts, loc, attn, grad_out, grad_value, grad_loc,
                                                  grad_attn, s);
    default: return backward_impl<scalar_t, 0>(value, shapes, starts, loc, attn, grad_out, grad_value, grad_loc,
                                               grad_attn, s);
  }
}
