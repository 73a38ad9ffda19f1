// CPU kernel bodies, included twice by msda_cpu.cpp: once as built by default and once
// compiled for AVX2 + FMA (picked at run time when the CPU has them), so that the channel
// loops vectorise 8-wide without making the library require AVX2. No include guard on
// purpose; everything it needs is included by msda_cpu.cpp first.

template <typename scalar_t>
void forward_kernel(const at::Tensor& value, const int64_t* shapes, const int64_t* starts, const at::Tensor& loc,
                    const at::Tensor& attn, at::Tensor& out, const Sizes& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* v = value.data_ptr<scalar_t>();
  const acc_t* lp = loc.data_ptr<acc_t>();
  const acc_t* ap = attn.data_ptr<acc_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  const auto ls = loc.strides();
  const auto as = attn.strides();
  const int64_t D = s.D, Mv = s.Mv, row = Mv * D;
  const int64_t tasks = s.N * s.Lq * Mv;
  at::parallel_for(0, tasks, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(D);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t m = t % Mv, q = (t / Mv) % s.Lq, n = t / (Mv * s.Lq);
      const int64_t ml = m % s.Ml;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const acc_t* lb = lp + n * ls[0] + q * ls[1] + ml * ls[2];
      const acc_t* ab = ap + n * as[0] + q * as[1] + ml * as[2];
      const scalar_t* vb = v + n * s.S * row + m * D;
      for (int64_t l = 0; l < s.L; ++l) {
        const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
        const scalar_t* vl = vb + starts[l] * row;
        for (int64_t p = 0; p < s.P; ++p) {
          const acc_t* xy = lb + l * ls[3] + p * ls[4];
          const auto c = bilinear_corners<acc_t>(xy[0], xy[ls[5]], H, W);
          if (!c.any) continue;
          const acc_t a = ab[l * as[3] + p * as[4]];
          for (int k = 0; k < 4; ++k) {
            if (c.idx[k] < 0) continue;
            const acc_t cw = a * c.w[k];
            const scalar_t* vp = vl + c.idx[k] * row;
            for (int64_t d = 0; d < D; ++d) acc[d] += cw * static_cast<acc_t>(vp[d]);
          }
        }
      }
      scalar_t* op = o + t * D;
      for (int64_t d = 0; d < D; ++d) op[d] = static_cast<scalar_t>(acc[d]);
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& value, const int64_t* shapes, const int64_t* starts, const at::Tensor& loc,
                     const at::Tensor& attn, const at::Tensor& grad_out, at::Tensor& grad_value,
                     at::Tensor& grad_loc, at::Tensor& grad_attn, const Sizes& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* v = value.data_ptr<scalar_t>();
  const scalar_t* g = grad_out.data_ptr<scalar_t>();
  const acc_t* lp = loc.data_ptr<acc_t>();
  const acc_t* ap = attn.data_ptr<acc_t>();
  acc_t* gv = grad_value.data_ptr<acc_t>();  // accumulation-type buffer (N, S, Mv, D)
  acc_t* gl = grad_loc.data_ptr<acc_t>();    // contiguous (N, Lq, Mv, L, P, 2)
  acc_t* ga = grad_attn.data_ptr<acc_t>();   // contiguous (N, Lq, Mv, L, P)
  const auto ls = loc.strides();
  const auto as = attn.strides();
  const int64_t D = s.D, Mv = s.Mv, L = s.L, P = s.P, row = Mv * D;
  const int64_t tasks = s.N * Mv;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gq(D);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t m = t % Mv, n = t / Mv;
      const int64_t ml = m % s.Ml;
      const int64_t vofs = n * s.S * row + m * D;
      const scalar_t* vb = v + vofs;
      acc_t* gvb = gv + vofs;
      for (int64_t q = 0; q < s.Lq; ++q) {
        // the query's output gradient is read once and used for every level and point
        const scalar_t* gp = g + ((n * s.Lq + q) * Mv + m) * D;
        for (int64_t d = 0; d < D; ++d) gq[d] = static_cast<acc_t>(gp[d]);
        const acc_t* lb = lp + n * ls[0] + q * ls[1] + ml * ls[2];
        const acc_t* ab = ap + n * as[0] + q * as[1] + ml * as[2];
        const int64_t out_ofs = ((n * s.Lq + q) * Mv + m) * L * P;
        for (int64_t l = 0; l < L; ++l) {
          const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
          const scalar_t* vl = vb + starts[l] * row;
          acc_t* gvl = gvb + starts[l] * row;
          for (int64_t p = 0; p < P; ++p) {
            const acc_t* xy = lb + l * ls[3] + p * ls[4];
            const auto c = bilinear_corners<acc_t>(xy[0], xy[ls[5]], H, W);
            if (!c.any) continue;  // grads stay zero
            const acc_t a = ab[l * as[3] + p * as[4]];
            acc_t dots[4] = {0, 0, 0, 0};  // <grad_out, value corner k>
            for (int k = 0; k < 4; ++k) {
              if (c.idx[k] < 0) continue;
              const scalar_t* vp = vl + c.idx[k] * row;
              acc_t* gvp = gvl + c.idx[k] * row;
              const acc_t cw = a * c.w[k];
              acc_t dot = 0;
              // simd reduction: lets the compiler reorder the sum so that the loop vectorises
#pragma omp simd reduction(+ : dot)
              for (int64_t d = 0; d < D; ++d) {
                dot += gq[d] * static_cast<acc_t>(vp[d]);
                gvp[d] += cw * gq[d];
              }
              dots[k] = dot;
            }
            const acc_t hh = acc_t(1) - c.lh, hw = acc_t(1) - c.lw;
            const int64_t o = out_ofs + l * P + p;
            ga[o] = c.w[0] * dots[0] + c.w[1] * dots[1] + c.w[2] * dots[2] + c.w[3] * dots[3];
            // d(sample)/d(w_im) and d(sample)/d(h_im), then chain rule through x*W and y*H
            const acc_t dw = hh * (dots[1] - dots[0]) + c.lh * (dots[3] - dots[2]);
            const acc_t dh = hw * (dots[2] - dots[0]) + c.lw * (dots[3] - dots[1]);
            gl[2 * o] = a * dw * static_cast<acc_t>(W);
            gl[2 * o + 1] = a * dh * static_cast<acc_t>(H);
          }
        }
      }
    }
  });
}
