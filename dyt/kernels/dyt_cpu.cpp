// Fused point-wise norms on the CPU: y = γ·f(α·x) + β, f = tanh (DyT) or the ISRU of DyISRU,
// f(z) = z/√(1 + k·z²) with k = 1/C (dyt/functional.py `isru`).
//
// Forward: one read of x, one write of y. Backward: one read of x and dy, tanh recomputed, one write of dx,
// and dγ, dβ, dα accumulated in the same pass into per-block partial sums that one small ordered reduction
// finishes. Blocks depend on the shape alone and each is summed by one thread in a fixed order, so the
// gradients are bitwise the same at any thread count (no atomics).
//
// Layouts: "rows" (channels-last: x is [N, C] with C contiguous) and "planes" (channels-first: x is
// [B, C, S], each (b, c) plane of S elements shares one α, γ, β), and channels-last tensors stored
// channels-first, read in transposed tiles (see "rows stored as planes"). Arithmetic and accumulation are
// fp32 whatever the storage type (fp32, bf16, fp16).
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <tuple>
#include <vector>

namespace {

using at::vec::Vectorized;
using Vec = Vectorized<float>;
constexpr int64_t VF = Vec::size();
constexpr int64_t W = 2 * VF;  // one step: two float vectors = one vector of a 16-bit type
constexpr int64_t kGrain = 32768;  // elements per parallel task: below this threads cost more than they give

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// n elements of T (n <= W) as two float vectors; missing lanes read as 0, which adds 0 to every partial sum
template <typename T>
inline void load2(const T* p, int64_t n, Vec& a, Vec& b) {
  if constexpr (std::is_same_v<T, float>) {
    if (n == W) {
      a = Vec::loadu(p);
      b = Vec::loadu(p + VF);
    } else {
      a = Vec::loadu(p, std::min(n, VF));
      b = n > VF ? Vec::loadu(p + VF, n - VF) : Vec(0.f);
    }
  } else {
    auto v = n == W ? Vectorized<T>::loadu(p) : Vectorized<T>::loadu(p, n);
    std::tie(a, b) = at::vec::convert_to_float<T>(v);
  }
}

template <typename T>
inline void store2(T* p, int64_t n, const Vec& a, const Vec& b) {
  if constexpr (std::is_same_v<T, float>) {
    if (n == W) {
      a.store(p);
      b.store(p + VF);
    } else {
      a.store(p, std::min(n, VF));
      if (n > VF) b.store(p + VF, n - VF);
    }
  } else {
    auto v = at::vec::convert_from_float<T>(a, b);
    n == W ? v.store(p) : v.store(p, n);
  }
}

#if DYT_TANH_SLEEF
inline Vec tanh_(const Vec& z) { return z.tanh(); }
#else
// tanh(z) = z·P(z²)/Q(z²), a rational minimax fit on [0, 9.1] (relative error 7e-9 in exact arithmetic,
// a few fp32 ulp once rounded); past 9.1 fp32 tanh is ±1. Nine FMAs and a division: several times faster
// than ATen's (Sleef's) tanh, and the same formula as the Triton kernels. (A reciprocal estimate with a
// Newton step instead of the division measured no faster on AVX-512.)
inline Vec tanh_(const Vec& z0) {
  const Vec z = at::vec::clamp(z0, Vec(-9.1f), Vec(9.1f));
  const Vec s = z * z;
  Vec p = at::vec::fmadd(s, Vec(-8.228851899e-14f), Vec(5.177840448e-11f));
  p = at::vec::fmadd(s, p, Vec(-2.001945809e-08f));
  p = at::vec::fmadd(s, p, Vec(1.110400535e-05f));
  p = at::vec::fmadd(s, p, Vec(3.099169582e-03f));
  p = at::vec::fmadd(s, p, Vec(1.307973117e-01f));
  p = at::vec::fmadd(s, p, Vec(1.0f));
  Vec q = at::vec::fmadd(s, Vec(2.539161651e-04f), Vec(2.447613515e-02f));
  q = at::vec::fmadd(s, q, Vec(4.641305804e-01f));
  q = at::vec::fmadd(s, q, Vec(1.0f));
  return at::vec::clamp(z * p / q, Vec(-1.f), Vec(1.f));
}
#endif

// The point-wise functions: value(z) = f(z), and value_slope(z, t, s) gives t = f(z) and s = f'(z). The
// kernels below are written once for any such f: the backward needs f and f' at α·x, nothing else.
struct Tanh {
  Vec value(const Vec& z) const { return tanh_(z); }
  void value_slope(const Vec& z, Vec& t, Vec& s) const {
    t = tanh_(z);
    s = at::vec::fnmadd(t, t, Vec(1.f));  // 1 − t²
  }
};

// DyISRU (arXiv 2503.21708) with k = 1/C: f(z) = z·r, r = 1/√(1 + k·z²), f'(z) = r³
struct Isru {
  Vec k;
  Vec value(const Vec& z) const { return z * at::vec::fmadd(k * z, z, Vec(1.f)).rsqrt(); }
  void value_slope(const Vec& z, Vec& t, Vec& s) const {
    const Vec r = at::vec::fmadd(k * z, z, Vec(1.f)).rsqrt();
    t = z * r;
    s = r * r * r;
  }
};

// One step of W elements of the forward: y = g·f(a·x) + b.
template <typename F, typename T, typename O>
inline void forward_step(const F& f, const T* x, O* y, int64_t n, const Vec (&a)[2], const Vec (&g)[2],
                         const Vec (&b)[2]) {
  Vec xv[2];
  load2(x, n, xv[0], xv[1]);
  store2(y, n, at::vec::fmadd(f.value(xv[0] * a[0]), g[0], b[0]), at::vec::fmadd(f.value(xv[1] * a[1]), g[1], b[1]));
}

// One step of W elements of the backward: dx = dy·γα·f'(αx), and into the running sums acc:
// Σ dy·t (→ dγ), Σ dy (→ dβ), Σ dy·x·f'(αx) (→ dα/γ), t = f(αx)
template <typename F, typename T, typename O>
inline void backward_step(const F& f, const T* x, const O* dy, T* dx, int64_t n, const Vec (&a)[2],
                          const Vec (&ga)[2], Vec (&acc)[3][2]) {
  Vec xv[2], dv[2], out[2];
  load2(x, n, xv[0], xv[1]);
  load2(dy, n, dv[0], dv[1]);
  for (int h = 0; h < 2; ++h) {
    Vec t, s;
    f.value_slope(xv[h] * a[h], t, s);
    out[h] = dv[h] * ga[h] * s;
    acc[0][h] = at::vec::fmadd(dv[h], t, acc[0][h]);
    acc[1][h] = acc[1][h] + dv[h];
    acc[2][h] = at::vec::fmadd(dv[h] * xv[h], s, acc[2][h]);
  }
  store2(dx, n, out[0], out[1]);
}

// Walk units [u0, u1) — rows or planes of `unit` elements, E elements in all — in pieces of about kPiece
// elements, first touching one element per page of the piece of the freshly allocated output `out`: the page
// faults (malloc maps big blocks afresh, glibc from 32 MiB) then come back to back and the zeroed pages are
// still in cache when written, instead of faults interleaved with the arithmetic. Measured up to 15% faster
// on such tensors; on memory already mapped it costs nothing.
#ifndef DYT_PIECE
#define DYT_PIECE 65536
#endif
constexpr int64_t kPiece = DYT_PIECE;

template <typename T, typename F>
inline void in_pieces(T* out, int64_t u0, int64_t u1, int64_t unit, int64_t E, const F& fn) {
  const int64_t step = std::max<int64_t>(1, kPiece / unit);
  for (int64_t p = u0; p < u1; p += step) {
    const int64_t q = std::min(u1, p + step);
#if !DYT_NO_PREFAULT
    for (int64_t k = p * unit; k < std::min(E, q * unit); k += 4096 / sizeof(T)) out[k] = T(0);
#endif
    for (int64_t u = p; u < q; ++u) fn(u);
  }
}

inline void load_pair(const float* p, Vec (&v)[2]) {
  v[0] = Vec::loadu(p);
  v[1] = Vec::loadu(p + VF);
}

// One row of len elements (a period, or a position's C channels): parameters per element from a, g, b.
template <typename F, typename T, typename O>
inline void forward_row(const F& f, const T* x, O* y, int64_t len, const float* a, const float* g, const float* b) {
  for (int64_t j = 0; j < len; j += W) {
    Vec av[2], gv[2], bv[2];
    load_pair(a + j, av);
    load_pair(g + j, gv);
    load_pair(b + j, bv);
    forward_step(f, x + j, y + j, std::min(W, len - j), av, gv, bv);
  }
}

// One row of the backward, its three sums added into sums (three rows of Lp floats, kept in L1).
template <typename F, typename T, typename O>
inline void backward_row(const F& f, const T* x, const O* dy, T* dx, int64_t len, const float* a, const float* ga,
                         float* sums, int64_t Lp) {
  for (int64_t j = 0; j < len; j += W) {
    Vec av[2], gav[2], acc[3][2];
    load_pair(a + j, av);
    load_pair(ga + j, gav);
    for (int q = 0; q < 3; ++q) load_pair(sums + q * Lp + j, acc[q]);
    backward_step(f, x + j, dy + j, dx + j, std::min(W, len - j), av, gav, acc);
    for (int q = 0; q < 3; ++q) {
      acc[q][0].store(sums + q * Lp + j);
      acc[q][1].store(sums + q * Lp + j + VF);
    }
  }
}

// ---------------------------------------------------------------- rows (channels-last)
// The rows kernels walk x in "periods" of L elements; the per-channel vectors a, g, b are repeated over a
// period (L = C, or lcm(C, W) for small C) so that small C still fills whole vectors. Parameter arrays are
// padded to a multiple of W.

template <typename F, typename T, typename O>
void forward_rows(const F& f, const T* x, O* y, int64_t E, int64_t L, const float* a, const float* g, const float* b) {
  const int64_t periods = ceil_div(E, L);
  at::parallel_for(0, periods, std::max<int64_t>(1, kGrain / L), [&](int64_t r0, int64_t r1) {
    in_pieces(y, r0, r1, L, E,
              [&](int64_t r) { forward_row(f, x + r * L, y + r * L, std::min(L, E - r * L), a, g, b); });
  });
}

// Partial sums per block of rows_per_block periods, three rows of Lp floats each (see backward_step), kept
// in L1 while the block's rows stream by one after another. (Two or four rows at a time, to load and store
// the sums less often, measured slower: more concurrent streams than the prefetchers follow.)
template <typename F, typename T, typename O>
void backward_rows(const F& f, const O* dy, const T* x, T* dx, int64_t E, int64_t L, int64_t Lp,
                   int64_t rows_per_block, const float* a, const float* ga, float* part) {
  const int64_t periods = ceil_div(E, L);
  const int64_t blocks = ceil_div(periods, rows_per_block);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      float* sums = part + blk * 3 * Lp;
      std::fill(sums, sums + 3 * Lp, 0.f);
      const int64_t r_end = std::min(periods, (blk + 1) * rows_per_block);
      in_pieces(dx, blk * rows_per_block, r_end, L, E, [&](int64_t r) {
        backward_row(f, x + r * L, dy + r * L, dx + r * L, std::min(L, E - r * L), a, ga, sums, Lp);
      });
    }
  });
}

// ---------------------------------------------------------------- rows stored as planes
// A channels-last tensor whose memory is channels-first, [B, S, C] stored as [B, C, S]: timm's ViTs
// (`flatten(2).transpose(1, 2)` after the patch convolution, kept by every residual add) and ConvNeXt blocks
// (`permute(0, 2, 3, 1)`). Read in tiles of kTile positions × C channels, transposed into a small buffer in
// L1, and run as rows from there; y and dx come out contiguous, as from a copy, without the copy's pass over
// memory.
constexpr int64_t kTile = 16;

struct Tiles {
  int64_t B, C, S, per_b, count;
  Tiles(int64_t B_, int64_t C_, int64_t S_) : B(B_), C(C_), S(S_), per_b(ceil_div(S_, kTile)), count(B_ * per_b) {}
  int64_t first_row(int64_t t) const { return (t / per_b) * S + (t % per_b) * kTile; }  // rows: [B·S, C]
  int64_t rows(int64_t t) const { return std::min(kTile, S - (t % per_b) * kTile); }
  // tile t of x ([B, C, S] in memory) as rows(t) × C in buf
  template <typename T>
  void gather(const T* x, int64_t t, T* buf) const {
    const T* src = x + (t / per_b) * C * S + (t % per_b) * kTile;
    for (int64_t c = 0; c < C; c += kTile)
      at::vec::transpose_mxn<T>(src + c * S, S, buf + c, C, std::min(kTile, C - c), rows(t));
  }
};

// tiles [t0, t1) in pieces of about kPiece elements, the pages of the output's rows of a piece first, as
// in_pieces does (consecutive tiles cover consecutive rows)
template <typename T, typename F>
inline void in_tile_pieces(T* out, int64_t t0, int64_t t1, const Tiles& tl, const F& fn) {
  const int64_t step = std::max<int64_t>(1, kPiece / (kTile * tl.C));
  for (int64_t p = t0; p < t1; p += step) {
    const int64_t q = std::min(t1, p + step);
#if !DYT_NO_PREFAULT
    const int64_t end = (tl.first_row(q - 1) + tl.rows(q - 1)) * tl.C;
    for (int64_t k = tl.first_row(p) * tl.C; k < end; k += 4096 / sizeof(T)) out[k] = T(0);
#endif
    for (int64_t t = p; t < q; ++t) fn(t);
  }
}

template <typename F, typename T, typename O>
void forward_tiles(const F& f, const T* x, O* y, const Tiles& tl, const float* a, const float* g, const float* b) {
  const int64_t C = tl.C;
  at::parallel_for(0, tl.count, std::max<int64_t>(1, kGrain / (kTile * C)), [&](int64_t t0, int64_t t1) {
    std::vector<T> buf(kTile * C);
    in_tile_pieces(y, t0, t1, tl, [&](int64_t t) {
      tl.gather(x, t, buf.data());
      for (int64_t i = 0; i < tl.rows(t); ++i)
        forward_row(f, buf.data() + i * C, y + (tl.first_row(t) + i) * C, C, a, g, b);
    });
  });
}

// partial sums per block of tiles_per_block tiles, three rows of Lp floats each, as backward_rows
template <typename F, typename T, typename O>
void backward_tiles(const F& f, const O* dy, const T* x, T* dx, const Tiles& tl, int64_t Lp, int64_t tiles_per_block,
                    const float* a, const float* ga, float* part) {
  const int64_t C = tl.C, blocks = ceil_div(tl.count, tiles_per_block);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> buf(kTile * C);
    for (int64_t blk = b0; blk < b1; ++blk) {
      float* sums = part + blk * 3 * Lp;
      std::fill(sums, sums + 3 * Lp, 0.f);
      const int64_t t0 = blk * tiles_per_block, t1 = std::min(tl.count, t0 + tiles_per_block);
      in_tile_pieces(dx, t0, t1, tl, [&](int64_t t) {
        tl.gather(x, t, buf.data());
        for (int64_t i = 0; i < tl.rows(t); ++i) {
          const int64_t r = tl.first_row(t) + i;
          backward_row(f, buf.data() + i * C, dy + r * C, dx + r * C, C, a, ga, sums, Lp);
        }
      });
    }
  });
}

// ---------------------------------------------------------------- planes (channels-first)

template <typename F, typename T, typename O>
void forward_planes(const F& f, const T* x, O* y, int64_t planes, int64_t C, int64_t S, const float* a,
                    const float* g, const float* b) {
  at::parallel_for(0, planes, std::max<int64_t>(1, kGrain / S), [&](int64_t p0, int64_t p1) {
    in_pieces(y, p0, p1, S, planes * S, [&](int64_t p) {
      const int64_t c = p % C;
      const Vec av[2] = {Vec(a[c]), Vec(a[c])}, gv[2] = {Vec(g[c]), Vec(g[c])}, bv[2] = {Vec(b[c]), Vec(b[c])};
      for (int64_t j = 0; j < S; j += W) forward_step(f, x + p * S + j, y + p * S + j, std::min(W, S - j), av, gv, bv);
    });
  });
}

// partial sums per plane: part[p] = the three sums of backward_step over the plane
template <typename F, typename T, typename O>
void backward_planes(const F& f, const O* dy, const T* x, T* dx, int64_t planes, int64_t C, int64_t S,
                     const float* a, const float* ga, float* part) {
  at::parallel_for(0, planes, std::max<int64_t>(1, kGrain / S), [&](int64_t p0, int64_t p1) {
    in_pieces(dx, p0, p1, S, planes * S, [&](int64_t p) {
      const int64_t c = p % C;
      const Vec av[2] = {Vec(a[c]), Vec(a[c])}, gav[2] = {Vec(ga[c]), Vec(ga[c])};
      Vec acc[3][2] = {{Vec(0.f), Vec(0.f)}, {Vec(0.f), Vec(0.f)}, {Vec(0.f), Vec(0.f)}};
      for (int64_t j = 0; j < S; j += W)
        backward_step(f, x + p * S + j, dy + p * S + j, dx + p * S + j, std::min(W, S - j), av, gav, acc);
      for (int q = 0; q < 3; ++q)
        part[3 * p + q] = at::vec::vec_reduce_all<float>([](Vec u, Vec v) { return u + v; }, acc[q][0] + acc[q][1]);
    });
  });
}

// ---------------------------------------------------------------- entry points

struct Params {
  int64_t C, L, Lp;
  std::vector<float> a, g, b;  // length Lp: per channel, repeated over a period, zero-padded
};

// α, γ, β as fp32 per-channel vectors repeated over a period of L elements (γ = 1, β = 0 when absent)
Params make_params(const at::Tensor& alpha, const c10::optional<at::Tensor>& weight,
                   const c10::optional<at::Tensor>& bias, int64_t C, bool rows) {
  Params P;
  P.C = C;
  P.L = !rows || C >= 256 || C % W == 0 ? C : std::lcm(C, W);
  P.Lp = ceil_div(P.L, W) * W;
  auto fill = [&](std::vector<float>& dst, const c10::optional<at::Tensor>& src, float absent) {
    dst.assign(P.Lp, 0.f);
    at::Tensor v = src.has_value() && src->defined() ? src->detach().to(at::kFloat).contiguous().reshape(-1)
                                                     : at::full({1}, absent, at::kFloat);
    TORCH_CHECK(v.numel() == 1 || v.numel() == C, "dyt: α, γ, β must have 1 or C = ", C, " elements");
    const float* src_p = v.data_ptr<float>();
    for (int64_t i = 0; i < P.L; ++i) dst[i] = src_p[v.numel() == 1 ? 0 : i % C];
  };
  fill(P.a, alpha, 1.f);
  fill(P.g, weight, 1.f);
  fill(P.b, bias, 0.f);
  return P;
}

// channels-first NCHW tensors stored channels-last in memory (NHWC) run as rows, without a copy
bool planes_stored_as_rows(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// channels-last [B, ..., C] tensors stored channels-first ([B, C, ...] contiguous) run as transposed tiles
bool rows_stored_as_planes(const at::Tensor& x) {
  return x.dim() >= 3 && !x.is_contiguous() && x.movedim(-1, 1).is_contiguous();
}

Tiles tiles_of(const at::Tensor& x) {
  const int64_t B = x.size(0), C = x.size(-1);
  return Tiles(B, C, B * C == 0 ? 0 : x.numel() / (B * C));
}

#define DISPATCH_DYT_TYPES(TYPE, NAME, ...)                                                     \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__)          \
                                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__) \
                                         AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__))

// The function by its number (dyt/kernels/cpu.py FUNCTIONS: 0 tanh, 1 isru), handed to body as a functor
template <typename Body>
void with_function(int64_t fn, double k, const Body& body) {
  switch (fn) {
    case 0:
      body(Tanh{});
      break;
    case 1:
      body(Isru{Vec(static_cast<float>(k))});
      break;
    default:
      TORCH_CHECK(false, "dyt: unknown point-wise function ", fn);
  }
}

at::Tensor run_forward(const at::Tensor& x_in, const at::Tensor& alpha, const c10::optional<at::Tensor>& weight,
                       const c10::optional<at::Tensor>& bias, bool channels_last, bool out_float, int64_t fn,
                       double k) {
  const bool tiles = channels_last && rows_stored_as_planes(x_in);
  const bool rows = !tiles && (channels_last || planes_stored_as_rows(x_in));
  const at::Tensor x = channels_last && !tiles ? x_in.contiguous() : rows || tiles ? x_in : x_in.contiguous();
  const int64_t C = channels_last ? x.size(-1) : x.size(1);
  const Params P = make_params(alpha, weight, bias, C, rows);
  at::Tensor y = tiles ? at::empty(x.sizes(), x.options().dtype(out_float ? at::kFloat : x.scalar_type()))
                       : at::empty_like(x, out_float ? at::kFloat : x.scalar_type());
  const int64_t E = x.numel();
  if (E == 0) return y;
  with_function(fn, k, [&](const auto& f) {
    DISPATCH_DYT_TYPES(x.scalar_type(), "dyt_forward", [&] {
      auto run = [&](auto* out) {
        if (tiles) {
          forward_tiles(f, x.const_data_ptr<scalar_t>(), out, tiles_of(x), P.a.data(), P.g.data(), P.b.data());
        } else if (rows) {
          forward_rows(f, x.const_data_ptr<scalar_t>(), out, E, P.L, P.a.data(), P.g.data(), P.b.data());
        } else {
          const int64_t planes = x.size(0) * C;
          forward_planes(f, x.const_data_ptr<scalar_t>(), out, planes, C, E / planes, P.a.data(), P.g.data(),
                         P.b.data());
        }
      };
      out_float ? run(y.mutable_data_ptr<float>()) : run(y.mutable_data_ptr<scalar_t>());
    });
  });
  return y;
}

// returns dx (x's dtype and layout) and the fp32 per-channel sums [3, C]: dγ, dβ, dα (the caller sums dα
// over channels for a scalar α and casts to the parameters' dtypes)
std::vector<at::Tensor> run_backward(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& alpha,
                                     const c10::optional<at::Tensor>& weight, bool channels_last, int64_t fn,
                                     double k) {
  const bool tiles = channels_last && rows_stored_as_planes(x_in);
  const bool rows = !tiles && (channels_last || planes_stored_as_rows(x_in));
  const at::Tensor x = channels_last && !tiles ? x_in.contiguous() : rows || tiles ? x_in : x_in.contiguous();
  // dy in x's memory order (contiguous, or NHWC), so that element i of one is element i of the other; with
  // tiles, dy and dx are contiguous and x is read transposed
  const at::Tensor dy = dy_in.contiguous(x.is_contiguous() || tiles ? at::MemoryFormat::Contiguous
                                                                    : at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(dy.scalar_type() == x.scalar_type() || dy.scalar_type() == at::kFloat, "dyt: dy dtype");
  const int64_t C = channels_last ? x.size(-1) : x.size(1);
  const Params P = make_params(alpha, weight, c10::nullopt, C, rows);
  at::Tensor dx = tiles ? at::empty(x.sizes(), x.options()) : at::empty_like(x);
  const int64_t E = x.numel();
  at::Tensor sums = at::zeros({3, C}, x.options().dtype(at::kFloat));  // dγ, dβ, dα per channel
  float* out = sums.mutable_data_ptr<float>();
  if (E > 0) {
    std::vector<float> ga(P.Lp);  // γ·α, the factor of dx
    std::unique_ptr<float[]> part;  // partial sums, every entry written by the kernels: no zeroing
    for (int64_t i = 0; i < P.Lp; ++i) ga[i] = P.g[i] * P.a[i];
    // the blocks' partial sums in order, then the period folded onto the channels
    auto finish = [&](int64_t blocks) {
      at::parallel_for(0, 3 * P.Lp, 1024, [&](int64_t e0, int64_t e1) {
        for (int64_t blk = 1; blk < blocks; ++blk)
          for (int64_t e = e0; e < e1; ++e) part[e] += part[blk * 3 * P.Lp + e];
      });
      for (int q = 0; q < 3; ++q)
        for (int64_t i = 0; i < P.L; ++i) out[q * C + i % C] += part[q * P.Lp + i];
    };
    with_function(fn, k, [&](const auto& f) {
      DISPATCH_DYT_TYPES(x.scalar_type(), "dyt_backward", [&] {
        const bool dy_float = dy.scalar_type() != x.scalar_type();
        auto run = [&](const auto* dyp) {
          if (tiles) {
            const Tiles tl = tiles_of(x);
            // blocks as the rows path's: ~64, at most 256K elements each
            const int64_t tpb =
                std::clamp<int64_t>(ceil_div(tl.count, 64), 1, std::max<int64_t>(1, 262144 / (kTile * C)));
            const int64_t blocks = ceil_div(tl.count, tpb);
            part.reset(new float[blocks * 3 * P.Lp]);
            backward_tiles(f, dyp, x.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), tl, P.Lp, tpb,
                           P.a.data(), ga.data(), part.get());
            finish(blocks);
          } else if (rows) {
            const int64_t periods = ceil_div(E, P.L);
            // ~64 blocks when the tensor is large enough, each at most 256K elements: enough blocks for many
            // threads, few enough that the partial sums stay a few % of the data
            const int64_t rpb = std::clamp<int64_t>(ceil_div(periods, 64), 1, std::max<int64_t>(1, 262144 / P.L));
            const int64_t blocks = ceil_div(periods, rpb);
            part.reset(new float[blocks * 3 * P.Lp]);
            backward_rows(f, dyp, x.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), E, P.L, P.Lp, rpb,
                          P.a.data(), ga.data(), part.get());
            finish(blocks);
          } else {
            const int64_t planes = x.size(0) * C;
            part.reset(new float[planes * 3]);
            backward_planes(f, dyp, x.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), planes, C,
                            E / planes, P.a.data(), ga.data(), part.get());
            for (int64_t p = 0; p < planes; ++p)
              for (int q = 0; q < 3; ++q) out[q * C + p % C] += part[3 * p + q];
          }
        };
        dy_float ? run(dy.const_data_ptr<float>()) : run(dy.const_data_ptr<scalar_t>());
      });
    });
  }
  for (int64_t c = 0; c < C; ++c) out[2 * C + c] *= P.g[c];  // Σ dy·γ·x·f'(αx) = γ · Σ dy·x·f'(αx)
  return {dx, sums};
}

// The eager entry point: autograd in C++, so a call costs about what a native norm's call costs.
struct Pointwise : public torch::autograd::Function<Pointwise> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& alpha,
                            const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                            bool channels_last, bool out_float, int64_t fn, double k) {
    ctx->save_for_backward({x, alpha, weight.value_or(at::Tensor())});
    ctx->saved_data["channels_last"] = channels_last;
    ctx->saved_data["fn"] = fn;
    ctx->saved_data["k"] = k;
    ctx->saved_data["bias_dtype"] = bias.has_value() ? c10::IValue(bias->scalar_type()) : c10::IValue();
    return run_forward(x, alpha, weight, bias, channels_last, out_float, fn, k);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &alpha = saved[1], &weight = saved[2];
    const auto out = run_backward(grads[0], x, alpha, weight.defined() ? c10::optional<at::Tensor>(weight) : c10::nullopt,
                                  ctx->saved_data["channels_last"].toBool(), ctx->saved_data["fn"].toInt(),
                                  ctx->saved_data["k"].toDouble());
    const at::Tensor& sums = out[1];  // dγ, dβ, dα per channel
    at::Tensor d_alpha = alpha.numel() == 1 ? sums[2].sum() : sums[2];
    const c10::IValue bias_dtype = ctx->saved_data["bias_dtype"];
    return {out[0], d_alpha.reshape(alpha.sizes()).to(alpha.scalar_type()),
            weight.defined() ? sums[0].to(weight.scalar_type()) : at::Tensor(),
            bias_dtype.isNone() ? at::Tensor() : sums[1].to(bias_dtype.toScalarType()), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor pointwise(const at::Tensor& x, const at::Tensor& alpha, const c10::optional<at::Tensor>& weight,
                     const c10::optional<at::Tensor>& bias, bool channels_last, bool out_float, int64_t fn, double k) {
  return Pointwise::apply(x, alpha, weight, bias, channels_last, out_float, fn, k);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &run_forward, "forward: y = γ·f(α·x) + β");
  m.def("backward", &run_backward, "backward: dx and the per-channel sums [3, C] (dγ, dβ, dα)");
  m.def("pointwise", &pointwise, "γ·f(α·x) + β with autograd (the eager path)");
}
