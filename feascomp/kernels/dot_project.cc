// The dot projection (Theorem 7, weighted) as one fused pass: an XLA FFI custom call for CPU.
//
// The same arithmetic as feascomp/primitives/dot.py (project_dot, _solve, _coefficients),
// which is its reference: the rotated norms A2 = |a0 + b0|^2 / 2, B2 = |a0 - b0|^2 / 2, the
// root in (-1, 1) of f(l) = (A2/(1-l)^2 - B2/(1+l)^2)/2 + l/w - z0 by Newton safeguarded by
// a bracket (same start, same stopping rules), the degenerate branches, and the outputs
// a = ks (a0 + b0) + kd (a0 - b0) + ke e1 (b likewise). What XLA on CPU cannot do is done
// here: rows are processed in blocks that stay in cache, so each input is read from memory
// once and each output written once (XLA writes a and b in two loop fusions that each read
// both inputs, after reductions that read materialized a0 + b0 and a0 - b0).
//
// Inputs: a0, b0 [..., n]; z0, w [...] (w: per-node weight). Outputs: a, b [..., n]; z [...].
// Rows are split over threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 256;  // rows per block: 2 x 256 x n values stay in L2 for n <= 256

// Edge storage (the DR kernels' za, zb; --edge-dtype): the compute type T itself, or a
// 16-bit type held as its bits -- `half` (IEEE binary16) or `bf16` (bfloat16) -- with the
// arithmetic in float. The conversions are integer and float operations the compiler
// vectorises (GCC 12 does not vectorise _Float16 conversions), rounding to nearest even
// and keeping infinities and NaNs; no float subnormal is formed, so they do not depend on
// the thread's flush-to-zero mode.
struct half {};
struct bf16 {};
template <typename S>
struct Raw {
  using type = S;
};
template <>
struct Raw<half> {
  using type = uint16_t;
};
template <>
struct Raw<bf16> {
  using type = uint16_t;
};
template <typename S>
using R = typename Raw<S>::type;

inline float bits_float(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t float_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  return u;
}

template <typename T, typename S>
struct Conv {
  static T load(R<S> v) { return T(v); }
  static R<S> store(T v) { return R<S>(v); }
};
template <>
struct Conv<float, bf16> {
  static float load(uint16_t v) { return bits_float(uint32_t(v) << 16); }
  static uint16_t store(float f) {
    const uint32_t u = float_bits(f);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t nan = (u >> 16) | 0x40u;  // quiet, never rounded into an infinity
    return uint16_t((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
  }
};
template <>
struct Conv<float, half> {
  static float load(uint16_t h) {
    const uint32_t em = uint32_t(h & 0x7fffu) << 13;  // exponent and mantissa in float's place
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = em & (0x7c00u << 13);
    const uint32_t normal = em + ((127u - 15u) << 23);
    const uint32_t special = normal + ((128u - 16u) << 23);  // infinity, NaN
    // a subnormal half: renormalised by a float subtraction of normal numbers
    const uint32_t sub = float_bits(bits_float(normal + (1u << 23)) - bits_float(113u << 23));
    const uint32_t out = exp == (0x7c00u << 13) ? special : exp == 0 ? sub : normal;
    return bits_float(out | sign);
  }
  static uint16_t store(float f) {
    uint32_t u = float_bits(f);
    const uint32_t sign = u & 0x80000000u;
    u ^= sign;
    const uint32_t big = u > 0x7f800000u ? 0x7e00u : 0x7c00u;  // NaN, or infinity (overflow)
    // below half's smallest normal: float addition of 0.5 rounds at the subnormal's step
    const uint32_t sub = float_bits(bits_float(u) + 0.5f) - (126u << 23);
    const uint32_t normal = (u + ((15u - 127u) << 23) + 0xfffu + ((u >> 13) & 1u)) >> 13;
    const uint32_t out = u >= (143u << 23) ? big : u < (113u << 23) ? sub : normal;
    return uint16_t(out | (sign >> 16));
  }
};

// A row of edges for the arithmetic: the stored row itself when it is stored in T, else
// widened into ``scratch`` (n values).
template <typename T, typename S>
inline const T* widened(const R<S>* row, T* scratch, int64_t n) {
  if constexpr (std::is_same_v<R<S>, T>) {
    return row;
  } else {
    int64_t t = 0;
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<S, half> && std::is_same_v<T, float>) {
      for (; t + 16 <= n; t += 16) {
        _mm512_storeu_ps(scratch + t, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + t))));
      }
    }
#endif
#pragma omp simd
    for (int64_t u = t; u < n; ++u) scratch[u] = Conv<T, S>::load(row[u]);
    return scratch;
  }
}

// Where the arithmetic writes a row of new edges: the stored row when it is stored in T, else
// ``scratch`` (then :func:`store_row`).
template <typename T, typename S>
inline T* output_row(R<S>* row, T* scratch) {
  if constexpr (std::is_same_v<R<S>, T>) {
    return row;
  } else {
    return scratch;
  }
}

// The new edges computed into ``scratch`` stored into ``row``, rounded, and ``scratch`` left
// holding the values as stored (the sums the producers read are of those).
template <typename T, typename S>
inline void store_row(T* scratch, R<S>* row, int64_t n) {
  if constexpr (!std::is_same_v<R<S>, T>) {
    int64_t t = 0;
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<S, half> && std::is_same_v<T, float>) {
      for (; t + 16 <= n; t += 16) {
        const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(scratch + t), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + t), h);
        _mm512_storeu_ps(scratch + t, _mm512_cvtph_ps(h));
      }
    }
#endif
#pragma omp simd
    for (int64_t u = t; u < n; ++u) {
      row[u] = Conv<T, S>::store(scratch[u]);
      scratch[u] = Conv<T, S>::load(row[u]);
    }
  }
}

template <typename T>
struct Consts {
  T eps = std::numeric_limits<T>::epsilon();
  T tol = 8 * std::numeric_limits<T>::epsilon();
  T tiny_sqrt = std::sqrt(std::numeric_limits<T>::min());
  T tiny = std::numeric_limits<T>::min();
};

// Roots for m nodes, several at a time in GCC/Clang vector types (the compiler does not
// if-convert the safeguarded step by itself): each lane follows _solve in dot.py exactly;
// a converged lane keeps its root; the block stops when no lane is active. m is padded to
// whole vectors with a node whose root is 0 at once (A2 = B2 = z0 = 0).
template <typename T>
void solve_block(int64_t m, T* __restrict A2, T* __restrict B2, T* __restrict z0, T* __restrict winv,
                 T* __restrict lam, const Consts<T>& c) {
  typedef T V __attribute__((vector_size(32)));
  constexpr int L = 32 / sizeof(T);
  const int64_t mv = (m + L - 1) / L;
  for (int64_t r = m; r < mv * L; ++r) {
    A2[r] = 0;
    B2[r] = 0;
    z0[r] = 0;
    winv[r] = 1;
  }
  const V one = V{} + 1, half = V{} + T(0.5), zero = V{};
  const V tiny = V{} + c.tiny_sqrt, tol = V{} + c.tol, eps4 = V{} + 4 * c.eps;
  auto vmax = [](V a, V b) { return a > b ? a : b; };
  auto vabs = [](V a) { return a < 0 ? -a : a; };
  for (int64_t v = 0; v < mv; ++v) {
    V a2, b2, zz, wi;
    __builtin_memcpy(&a2, A2 + v * L, sizeof(V));
    __builtin_memcpy(&b2, B2 + v * L, sizeof(V));
    __builtin_memcpy(&zz, z0 + v * L, sizeof(V));
    __builtin_memcpy(&wi, winv + v * L, sizeof(V));
    auto f_df = [&](V l, V& f, V& df, V& noise) {
      const V om = vmax(one - l, tiny), op = vmax(one + l, tiny);
      const V ta = a2 / (om * om), tb = b2 / (op * op);
      f = half * (ta - tb) + l * wi - zz;
      df = ta / om + tb / op + wi;
      noise = eps4 * (half * (ta + tb) + vabs(l * wi) + vabs(zz));
    };
    V f, df, noise;
    f_df(zero, f, df, noise);
    V l = -f / df;
    l = l < -half ? -half : l;
    l = l > half ? half : l;
    V lo = zero - one, hi = one;
    auto active = (l == l);  // all lanes
    for (int it = 0; it < 100; ++it) {
      f_df(l, f, df, noise);
      lo = f < 0 ? l : lo;
      hi = f > 0 ? l : hi;
      const V newton = l - f / df;
      V nxt = ((newton > lo) & (newton < hi)) ? newton : half * (lo + hi);
      nxt = f == 0 ? l : nxt;
      const auto small = vabs(f) <= noise;
      const auto done = (vabs(nxt - l) <= tol * vmax(one, vabs(l))) | (hi - lo <= tol) | small;
      nxt = small ? l : nxt;
      l = active ? nxt : l;
      active = active & ~done;
      bool any = false;
      for (int k = 0; k < L; ++k) any |= active[k] != 0;
      if (!any) break;
    }
    __builtin_memcpy(lam + v * L, &l, sizeof(V));
  }
}

// Per-node coefficients from the rotated norms and roots (dot.py's _coefficients): on return
// Z0 holds the output z, and a = kas (a0 + b0) + kad (a0 - b0) + kae e1 (b likewise).
template <typename T>
struct Coefficients {
  alignas(64) T kas[kBlock], kad[kBlock], kae[kBlock], kbs[kBlock], kbd[kBlock], kbe[kBlock];

  void compute(int64_t m, const T* A2, const T* B2, T* Z0, const T* W, const T* lam, const Consts<T>& c) {
    const T r2 = std::sqrt(T(2));
    for (int64_t r = 0; r < m; ++r) {
      const T l = lam[r];
      const T zr = Z0[r] - l / W[r];
      const T A = std::sqrt(A2[r]), B = std::sqrt(B2[r]);
      const bool pos = l >= 0;
      const T nu_pos = pos ? B / (1 + l) : T(0);
      const T nu_neg = A / std::max(1 - l, T(1));
      const bool mid = std::abs(l) <= T(0.5);  // both direct formulas well conditioned
      const T nu_u = pos ? (mid ? A / std::max(1 - l, T(0.5)) : std::sqrt(std::max(2 * zr + nu_pos * nu_pos, T(0))))
                         : nu_neg;
      const T nu_v = pos ? nu_pos
                         : (mid ? B / std::max(1 + l, T(0.5)) : std::sqrt(std::max(nu_neg * nu_neg - 2 * zr, T(0))));
      const bool has_a = A2[r] > c.tiny, has_b = B2[r] > c.tiny;
      const T cu = nu_u / (r2 * (has_a ? r2 * A : (has_b ? r2 * B : T(1))));
      const T cv = nu_v / (r2 * (has_b ? r2 * B : (has_a ? r2 * A : T(1))));
      const T u_s = has_a ? T(1) : T(0), u_d = (!has_a && has_b) ? T(1) : T(0), u_e = (has_a || has_b) ? T(0) : T(1);
      const T v_s = (!has_b && has_a) ? T(1) : T(0), v_d = has_b ? T(1) : T(0), v_e = u_e;
      kas[r] = cu * u_s + cv * v_s;
      kad[r] = cu * u_d + cv * v_d;
      kae[r] = cu * u_e + cv * v_e;
      kbs[r] = cu * u_s - cv * v_s;
      kbd[r] = cu * u_d - cv * v_d;
      kbe[r] = cu * u_e - cv * v_e;
      Z0[r] = zr;
    }
  }
};

template <typename T>
void project_rows(int64_t r0, int64_t r1, int64_t n, const T* __restrict a0, const T* __restrict b0,
                  const T* __restrict z0, const T* __restrict w, T* __restrict a, T* __restrict b,
                  T* __restrict z) {
  const Consts<T> c;
  alignas(64) T A2[kBlock], B2[kBlock], Z0[kBlock], W[kBlock], winv[kBlock], lam[kBlock];
  Coefficients<T> k;
  for (int64_t s = r0; s < r1; s += kBlock) {
    const int64_t m = std::min(kBlock, r1 - s);
    for (int64_t r = 0; r < m; ++r) {
      const T* x = a0 + (s + r) * n;
      const T* y = b0 + (s + r) * n;
      T sa = 0, sb = 0;
      for (int64_t i = 0; i < n; ++i) {
        const T p = x[i] + y[i];
        const T q = x[i] - y[i];
        sa += p * p;
        sb += q * q;
      }
      A2[r] = T(0.5) * sa;
      B2[r] = T(0.5) * sb;
    }
    for (int64_t r = 0; r < m; ++r) {
      Z0[r] = z0[s + r];
      W[r] = w[s + r];
      winv[r] = T(1) / W[r];
    }
    solve_block<T>(m, A2, B2, Z0, winv, lam, c);
    k.compute(m, A2, B2, Z0, W, lam, c);
    for (int64_t r = 0; r < m; ++r) {
      const T* x = a0 + (s + r) * n;
      const T* y = b0 + (s + r) * n;
      T* xa = a + (s + r) * n;
      T* xb = b + (s + r) * n;
      const T as_ = k.kas[r], ad = k.kad[r], bs = k.kbs[r], bd = k.kbd[r];
      for (int64_t i = 0; i < n; ++i) {
        const T p = x[i] + y[i];
        const T q = x[i] - y[i];
        xa[i] = as_ * p + ad * q;
        xb[i] = bs * p + bd * q;
      }
      if (n > 0) {
        xa[0] += k.kae[r];
        xb[0] += k.kbe[r];
      }
      z[s + r] = Z0[r];
    }
  }
}

// One Douglas-Rachford step on a dense dot family's input edges (the materialized lowering's
// fused path, feascomp/backends/fused.py). The family has nodes [N, m] with ports of
// length n; its a-edges za[i, j, :] are copies of pa[i, :] and its b-edges zb[i, j, :] of
// pb[j, :] under the other colour's projection P0 (their producers' projected values, given).
// For every node: a0 = 2 pa - za, b0 = 2 pb - zb, (a, b, y) = the dot projection of
// (a0, b0, c0[i, j]) with weight w[i, j], then za += 2 r (a - pa), zb += 2 r (b - pb) in
// place. Also returned: y, the node's squared move |a - pa|^2 + |b - pb|^2 (the step
// residual's share), and the sums the producers' next projections read: sa[i, :] = sum_j of
// the new za[i, j, :], and sb[g, j, :] = the sum of the new zb[i, j, :] over the rows i of
// group g (G fixed groups of rows, summed by the caller: results do not depend on the
// thread count). Each big array is read once from memory and written once: nodes are
// taken in blocks of kNodes whose rows stay in L2 between the reduction and the update.
constexpr int64_t kNodes = 16;
template <typename T>
constexpr int64_t kLine = 64 / sizeof(T);  // values per cache line
template <typename T>
constexpr int64_t kAhead = 128 * kLine<T>;  // how far ahead a streaming pass prefetches (8 KB: measured best)

template <typename T, typename S>
void dr_rows(int64_t i0, int64_t i1, int64_t m, int64_t n, const R<S>* za, const R<S>* zb, const T* __restrict pa,
             const T* __restrict pb, const T* __restrict c0, const T* __restrict w, T two_r, R<S>* oa, R<S>* ob,
             T* __restrict y, T* __restrict res, T* __restrict sa, T* __restrict sb) {
  const Consts<T> c;
  alignas(64) T A2[kBlock], B2[kBlock], Z0[kBlock], W[kBlock], winv[kBlock], lam[kBlock];
  Coefficients<T> k;
  constexpr bool wide = std::is_same_v<R<S>, T>;  // edges stored as T: no scratch rows
  std::vector<T> scratch(wide ? 0 : 2 * n);
  T* const wx = scratch.data();
  T* const wv = wx + (wide ? 0 : n);
  for (int64_t i = i0; i < i1; ++i) {
    const T* pai = pa + i * n;
    T* sai = sa + i * n;
    for (int64_t t = 0; t < n; ++t) sai[t] = 0;
    for (int64_t j0 = 0; j0 < m; j0 += kNodes) {
      const int64_t cnt = std::min(kNodes, m - j0);
      for (int64_t r = 0; r < cnt; ++r) {
        const int64_t node = i * m + j0 + r;
        const T* x = widened<T, S>(za + node * n, wx, n);
        const T* v = widened<T, S>(zb + node * n, wv, n);
        const T* pbj = pb + (j0 + r) * n;
        T s_p = 0, s_q = 0;
#pragma omp simd reduction(+ : s_p, s_q)
        for (int64_t t = 0; t < n; ++t) {
          const T a0 = 2 * pai[t] - x[t];
          const T b0 = 2 * pbj[t] - v[t];
          const T p = a0 + b0, q = a0 - b0;
          s_p += p * p;
          s_q += q * q;
        }
        A2[r] = T(0.5) * s_p;
        B2[r] = T(0.5) * s_q;
        Z0[r] = c0[node];
        W[r] = w[node];
        winv[r] = T(1) / W[r];
      }
      solve_block<T>(cnt, A2, B2, Z0, winv, lam, c);
      k.compute(cnt, A2, B2, Z0, W, lam, c);
      for (int64_t r = 0; r < cnt; ++r) {
        const int64_t node = i * m + j0 + r;
        const T* x = widened<T, S>(za + node * n, wx, n);
        const T* v = widened<T, S>(zb + node * n, wv, n);
        T* xa = output_row<T, S>(oa + node * n, wx);  // in place over the widened row
        T* xb = output_row<T, S>(ob + node * n, wv);
        const T* pbj = pb + (j0 + r) * n;
        T* sbj = sb + (j0 + r) * n;
        const T as_ = k.kas[r], ad = k.kad[r], bs = k.kbs[r], bd = k.kbd[r];
        T moved = 0;
        if (n > 0) {  // e1's term: element 0 on its own, the rest vectorised
          const T a0 = 2 * pai[0] - x[0], b0 = 2 * pbj[0] - v[0];
          const T p = a0 + b0, q = a0 - b0;
          const T da = as_ * p + ad * q + k.kae[r] - pai[0];
          const T db = bs * p + bd * q + k.kbe[r] - pbj[0];
          const T na = x[0] + two_r * da, nb = v[0] + two_r * db;
          xa[0] = na;
          xb[0] = nb;
          if constexpr (wide) {
            sai[0] += na;
            sbj[0] += nb;
          }
          moved += da * da + db * db;
        }
        // while this block's rows are updated from cache, fetch the next block's (the same
        // rows cnt nodes on: nodes are contiguous), so memory and arithmetic overlap
        // (prefetched first, then one vector loop: a loop per cache line with its own
        // reduction was 3x slower, the horizontal sums dominating)
        const R<S>* nx = za + (node + cnt) * n;
        const R<S>* nv = zb + (node + cnt) * n;
        for (int64_t t0 = 0; t0 < n; t0 += kLine<T>) {
          __builtin_prefetch(nx + t0);
          __builtin_prefetch(nv + t0);
        }
#pragma omp simd reduction(+ : moved)
        for (int64_t t = 1; t < n; ++t) {
          const T a0 = 2 * pai[t] - x[t], b0 = 2 * pbj[t] - v[t];
          const T p = a0 + b0, q = a0 - b0;
          const T da = as_ * p + ad * q - pai[t];
          const T db = bs * p + bd * q - pbj[t];
          const T na = x[t] + two_r * da, nb = v[t] + two_r * db;
          xa[t] = na;
          xb[t] = nb;
          if constexpr (wide) {
            sai[t] += na;
            sbj[t] += nb;
          }
          moved += da * da + db * db;
        }
        if constexpr (!wide) {  // stored rounded; the sums are of the edges as stored
          store_row<T, S>(wx, oa + node * n, n);
          store_row<T, S>(wv, ob + node * n, n);
#pragma omp simd
          for (int64_t t = 0; t < n; ++t) {
            sai[t] += wx[t];
            sbj[t] += wv[t];
          }
        }
        y[node] = Z0[r];
        res[node] = moved;
      }
    }
  }
}

// The same step where the dot family is in the first colour (projected before its producers:
// DR reflects through the dot's own projection). Two passes, since the producers' projection
// of the reflected edges needs their sums before any edge can be updated:
//   dr_project: (a, b, y) = the dot projection of (za, zb, c0) per node; returns y, the
//     node's coefficients (a = kas (za + zb) + kad (za - zb) + kae e1, b likewise: six per
//     node), and with mix = (k1, k0) the sums of k1 a - k0 za over m (sa [N, n]) and of
//     k1 b - k0 zb over the rows of each group (sb [G, m, n]): (2, 1) the reflected edges,
//     which the producers' projection reads; (1, 0) the projected ones (the shadow's);
//   dr_update: with va [N, n], vb [m, n] the producers' projected values, a and b recomputed
//     from the coefficients: za += 2 r (va - a), zb += 2 r (vb - b) in place; returns the
//     node's squared move |va - a|^2 + |vb - b|^2.
template <typename T, typename S>
void first_rows(int64_t i0, int64_t i1, int64_t m, int64_t n, const R<S>* __restrict za, const R<S>* __restrict zb,
                const T* __restrict c0, const T* __restrict w, T k1, T k0, T* __restrict y, T* __restrict coef,
                T* __restrict sa, T* __restrict sb) {
  const Consts<T> c;
  alignas(64) T A2[kBlock], B2[kBlock], Z0[kBlock], W[kBlock], winv[kBlock], lam[kBlock];
  Coefficients<T> k;
  constexpr bool wide = std::is_same_v<R<S>, T>;
  std::vector<T> scratch(wide ? 0 : 2 * n);
  T* const wx = scratch.data();
  T* const wv = wx + (wide ? 0 : n);
  for (int64_t i = i0; i < i1; ++i) {
    T* sai = sa + i * n;
    for (int64_t t = 0; t < n; ++t) sai[t] = 0;
    for (int64_t j0 = 0; j0 < m; j0 += kNodes) {
      const int64_t cnt = std::min(kNodes, m - j0);
      for (int64_t r = 0; r < cnt; ++r) {
        const int64_t node = i * m + j0 + r;
        const T* x = widened<T, S>(za + node * n, wx, n);
        const T* v = widened<T, S>(zb + node * n, wv, n);
        T s_p = 0, s_q = 0;
#pragma omp simd reduction(+ : s_p, s_q)
        for (int64_t t = 0; t < n; ++t) {
          const T p = x[t] + v[t], q = x[t] - v[t];
          s_p += p * p;
          s_q += q * q;
        }
        A2[r] = T(0.5) * s_p;
        B2[r] = T(0.5) * s_q;
        Z0[r] = c0[node];
        W[r] = w[node];
        winv[r] = T(1) / W[r];
      }
      solve_block<T>(cnt, A2, B2, Z0, winv, lam, c);
      k.compute(cnt, A2, B2, Z0, W, lam, c);
      for (int64_t r = 0; r < cnt; ++r) {
        const int64_t node = i * m + j0 + r;
        const T* x = widened<T, S>(za + node * n, wx, n);
        const T* v = widened<T, S>(zb + node * n, wv, n);
        T* sbj = sb + (j0 + r) * n;
        const T as_ = k.kas[r], ad = k.kad[r], bs = k.kbs[r], bd = k.kbd[r];
        const R<S>* nx = za + (node + cnt) * n;  // the next block's rows, fetched meanwhile (as in dr_rows)
        const R<S>* nv = zb + (node + cnt) * n;
        for (int64_t t0 = 0; t0 < n; t0 += kLine<T>) {
          __builtin_prefetch(nx + t0);
          __builtin_prefetch(nv + t0);
        }
#pragma omp simd
        for (int64_t t = 0; t < n; ++t) {
          const T p = x[t] + v[t], q = x[t] - v[t];
          sai[t] += k1 * (as_ * p + ad * q) - k0 * x[t];
          sbj[t] += k1 * (bs * p + bd * q) - k0 * v[t];
        }
        if (n > 0) {
          sai[0] += k1 * k.kae[r];
          sbj[0] += k1 * k.kbe[r];
        }
        T* cf = coef + node * 6;
        cf[0] = as_;
        cf[1] = ad;
        cf[2] = k.kae[r];
        cf[3] = bs;
        cf[4] = bd;
        cf[5] = k.kbe[r];
        y[node] = Z0[r];
      }
    }
  }
}

template <typename T, typename S>
void update_rows(int64_t i0, int64_t i1, int64_t m, int64_t n, const R<S>* za, const R<S>* zb, const T* __restrict coef,
                 const T* __restrict va, const T* __restrict vb, T two_r, R<S>* oa, R<S>* ob, T* __restrict res) {
  constexpr bool wide = std::is_same_v<R<S>, T>;
  std::vector<T> scratch(wide ? 0 : 2 * n);
  T* const wx = scratch.data();
  T* const wv = wx + (wide ? 0 : n);
  for (int64_t i = i0; i < i1; ++i) {
    const T* vai = va + i * n;
    for (int64_t j = 0; j < m; ++j) {
      const int64_t node = i * m + j;
      const R<S>* sx = za + node * n;  // the stored rows (prefetched ahead)
      const R<S>* sv = zb + node * n;
      const T* x = widened<T, S>(sx, wx, n);
      const T* v = widened<T, S>(sv, wv, n);
      T* xa = output_row<T, S>(oa + node * n, wx);
      T* xb = output_row<T, S>(ob + node * n, wv);
      const T* vbj = vb + j * n;
      const T* cf = coef + node * 6;
      const T as_ = cf[0], ad = cf[1], bs = cf[3], bd = cf[4];
      T moved = 0;
      if (n > 0) {  // e1's term: element 0 on its own, the rest vectorised
        const T p = x[0] + v[0], q = x[0] - v[0];
        const T da = vai[0] - (as_ * p + ad * q + cf[2]);
        const T db = vbj[0] - (bs * p + bd * q + cf[5]);
        xa[0] = x[0] + two_r * da;
        xb[0] = v[0] + two_r * db;
        moved += da * da + db * db;
      }
      for (int64_t t0 = 0; t0 < n; t0 += kLine<T>) {  // prefetching ahead: 24 -> 18 ms on one core
        __builtin_prefetch(sx + t0 + kAhead<T>);
        __builtin_prefetch(sv + t0 + kAhead<T>);
      }
#pragma omp simd reduction(+ : moved)
      for (int64_t t = 1; t < n; ++t) {
        const T p = x[t] + v[t], q = x[t] - v[t];
        const T da = vai[t] - (as_ * p + ad * q);
        const T db = vbj[t] - (bs * p + bd * q);
        xa[t] = x[t] + two_r * da;
        xb[t] = v[t] + two_r * db;
        moved += da * da + db * db;
      }
      store_row<T, S>(wx, oa + node * n, n);
      store_row<T, S>(wv, ob + node * n, n);
      res[node] = moved;
    }
  }
}

// The same steps where port a is the input, folded into the node (backends/storage.py,
// FoldedInputs): the a-row of node (i, j) is x[i, :] in every state, so only the b-edges are
// stored, and the projection is onto the hyperplane <x_i, b> = y: with b0 and z0 the node's
// point, mu = (<x_i, b0> - z0) / (|x_i|^2 + 1/w), b = b0 - mu x_i, y = z0 + mu / w
// (primitives/dot.py, fixed_dot). x_i is read once per row of nodes and stays in cache.
//   dr_fixed_rows (second colour): b0 = 2 pb - zb, zb += 2 r (b - pb); returns y, the move
//     |b - pb|^2 and the groups' sums of the new zb (as dr_rows; no sa: the input has no sum);
//   fixed_first_rows (first colour): b0 = zb; returns y, mu per node, and with mix (k1, k0) the
//     groups' sums of k1 b - k0 zb;
//   fixed_update_rows: b = zb - mu x_i recomputed, zb += 2 r (vb - b); returns the move.
template <typename T>
inline T sq_norm(const T* __restrict x, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t t = 0; t < n; ++t) s += x[t] * x[t];
  return s;
}

template <typename T, typename S>
void dr_fixed_rows(int64_t i0, int64_t i1, int64_t m, int64_t n, const T* __restrict xs, const R<S>* zb,
                   const T* __restrict pb, const T* __restrict c0, const T* __restrict w, T two_r, R<S>* ob,
                   T* __restrict y, T* __restrict res, T* __restrict sb) {
  constexpr bool wide = std::is_same_v<R<S>, T>;
  std::vector<T> scratch(wide ? 0 : n);
  T* const wv = scratch.data();
  for (int64_t i = i0; i < i1; ++i) {
    const T* xi = xs + i * n;
    const T xx = sq_norm(xi, n);
    for (int64_t j = 0; j < m; ++j) {
      const int64_t node = i * m + j;
      const R<S>* sv = zb + node * n;
      const T* v = widened<T, S>(sv, wv, n);
      const T* pbj = pb + j * n;
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t t = 0; t < n; ++t) dot += xi[t] * (2 * pbj[t] - v[t]);
      const T winv = T(1) / w[node];
      const T mu = (dot - c0[node]) / (xx + winv);
      T* xb = output_row<T, S>(ob + node * n, wv);
      T* sbj = sb + j * n;
      for (int64_t t0 = 0; t0 < n; t0 += kLine<T>) __builtin_prefetch(sv + n + t0);  // the next node's row
      T moved = 0;
#pragma omp simd reduction(+ : moved)
      for (int64_t t = 0; t < n; ++t) {
        const T db = (2 * pbj[t] - v[t]) - mu * xi[t] - pbj[t];
        const T nb = v[t] + two_r * db;
        xb[t] = nb;
        if constexpr (wide) sbj[t] += nb;
        moved += db * db;
      }
      if constexpr (!wide) {
        store_row<T, S>(wv, ob + node * n, n);
#pragma omp simd
        for (int64_t t = 0; t < n; ++t) sbj[t] += wv[t];
      }
      y[node] = c0[node] + mu * winv;
      res[node] = moved;
    }
  }
}

// Short rows (a conv's 9-long patches): per-node vector loops over n elements cost more than
// the arithmetic (masked remainders, a horizontal sum per node), so a row of m nodes is taken
// as its m*n contiguous values: the node sums as plain loops, the multipliers vectorised
// across the m nodes, the update as one pass over the row with each node's mu and the input
// tiled along it.
constexpr int64_t kShort = 16;

template <typename T>
void fixed_first_short(int64_t i0, int64_t i1, int64_t m, int64_t n, const T* __restrict xs, const T* __restrict zb,
                       const T* __restrict c0, const T* __restrict w, T k1, T k0, T* __restrict y, T* __restrict mus,
                       T* __restrict sb) {
  // sb += k1 (V - mu x) - k0 V, summed over the rows: (k1 - k0) V per row, and the sum of
  // the rows' outer products mu x^T kept apart with the nodes innermost (acc[t * m + j]),
  // subtracted once at the end -- no per-row m x n copies of mu and x
  std::vector<T> dots(m), acc(n * m, T(0));
  const T kv = k1 - k0;
  for (int64_t i = i0; i < i1; ++i) {
    const T* xi = xs + i * n;
    const T* V = zb + i * m * n;
    const T xx = sq_norm(xi, n);
    // node sums with the nodes innermost: independent accumulators, not a chain per node
    for (int64_t j = 0; j < m; ++j) dots[j] = 0;
    for (int64_t t = 0; t < n; ++t) {
      const T xt = xi[t];
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) dots[j] += xt * V[j * n + t];
    }
    const T* ci = c0 + i * m;
    const T* wi = w + i * m;
    T* mi = mus + i * m;
    T* yi = y + i * m;
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) {
      const T winv = T(1) / wi[j];
      const T mu = (dots[j] - ci[j]) / (xx + winv);
      mi[j] = mu;
      yi[j] = ci[j] + mu * winv;
    }
#pragma omp simd
    for (int64_t k = 0; k < m * n; ++k) sb[k] += kv * V[k];
    for (int64_t t = 0; t < n; ++t) {
      const T xt = xi[t];
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) acc[t * m + j] += xt * mi[j];
    }
  }
  for (int64_t j = 0; j < m; ++j) {
    for (int64_t t = 0; t < n; ++t) sb[j * n + t] -= k1 * acc[t * m + j];
  }
}

template <typename T>
void fixed_update_short(int64_t i0, int64_t i1, int64_t m, int64_t n, const T* __restrict xs, const T* zb,
                        const T* __restrict mus, const T* __restrict vb, T two_r, T* ob, T* __restrict res) {
  std::vector<T> murep(m * n), xrep(m * n), moved(m * n);
  for (int64_t i = i0; i < i1; ++i) {
    const T* xi = xs + i * n;
    const T* V = zb + i * m * n;
    T* O = ob + i * m * n;
    const T* mi = mus + i * m;
    for (int64_t j = 0; j < m; ++j) {
      for (int64_t t = 0; t < n; ++t) {
        murep[j * n + t] = mi[j];
        xrep[j * n + t] = xi[t];
      }
    }
#pragma omp simd
    for (int64_t k = 0; k < m * n; ++k) {
      const T db = vb[k] - (V[k] - murep[k] * xrep[k]);
      O[k] = V[k] + two_r * db;
      moved[k] = db * db;
    }
    T* ri = res + i * m;
    for (int64_t j = 0; j < m; ++j) ri[j] = 0;
    for (int64_t t = 0; t < n; ++t) {
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) ri[j] += moved[j * n + t];
    }
  }
}

template <typename T, typename S>
void fixed_first_rows(int64_t i0, int64_t i1, int64_t m, int64_t n, const T* __restrict xs, const R<S>* zb,
                      const T* __restrict c0, const T* __restrict w, T k1, T k0, T* __restrict y, T* __restrict mus,
                      T* __restrict sb) {
  constexpr bool wide = std::is_same_v<R<S>, T>;
  if constexpr (wide) {
    if (n <= kShort) return fixed_first_short<T>(i0, i1, m, n, xs, zb, c0, w, k1, k0, y, mus, sb);
  }
  std::vector<T> scratch(wide ? 0 : n);
  T* const wv = scratch.data();
  for (int64_t i = i0; i < i1; ++i) {
    const T* xi = xs + i * n;
    const T xx = sq_norm(xi, n);
    for (int64_t j = 0; j < m; ++j) {
      const int64_t node = i * m + j;
      const R<S>* sv = zb + node * n;
      const T* v = widened<T, S>(sv, wv, n);
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t t = 0; t < n; ++t) dot += xi[t] * v[t];
      const T winv = T(1) / w[node];
      const T mu = (dot - c0[node]) / (xx + winv);
      T* sbj = sb + j * n;
      for (int64_t t0 = 0; t0 < n; t0 += kLine<T>) __builtin_prefetch(sv + n + t0);
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) sbj[t] += k1 * (v[t] - mu * xi[t]) - k0 * v[t];
      mus[node] = mu;
      y[node] = c0[node] + mu * winv;
    }
  }
}

template <typename T, typename S>
void fixed_update_rows(int64_t i0, int64_t i1, int64_t m, int64_t n, const T* __restrict xs, const R<S>* zb,
                       const T* __restrict mus, const T* __restrict vb, T two_r, R<S>* ob, T* __restrict res) {
  constexpr bool wide = std::is_same_v<R<S>, T>;
  if constexpr (wide) {
    if (n <= kShort) return fixed_update_short<T>(i0, i1, m, n, xs, zb, mus, vb, two_r, ob, res);
  }
  std::vector<T> scratch(wide ? 0 : n);
  T* const wv = scratch.data();
  for (int64_t i = i0; i < i1; ++i) {
    const T* xi = xs + i * n;
    for (int64_t j = 0; j < m; ++j) {
      const int64_t node = i * m + j;
      const R<S>* sv = zb + node * n;
      const T* v = widened<T, S>(sv, wv, n);
      T* xb = output_row<T, S>(ob + node * n, wv);
      const T* vbj = vb + j * n;
      const T mu = mus[node];
      T moved = 0;
      for (int64_t t0 = 0; t0 < n; t0 += kLine<T>) __builtin_prefetch(sv + t0 + kAhead<T>);
#pragma omp simd reduction(+ : moved)
      for (int64_t t = 0; t < n; ++t) {
        const T db = vbj[t] - (v[t] - mu * xi[t]);
        xb[t] = v[t] + two_r * db;
        moved += db * db;
      }
      store_row<T, S>(wv, ob + node * n, n);
      res[node] = moved;
    }
  }
}

template <typename T, ffi::DataType D>
ffi::Error project(ffi::Buffer<D> a0, ffi::Buffer<D> b0, ffi::Buffer<D> z0, ffi::Buffer<D> w, ffi::ResultBuffer<D> a,
                   ffi::ResultBuffer<D> b, ffi::ResultBuffer<D> z) {
  // leading axes are rows (vmap adds one): a0, b0 [..., n], z0 and w [...]
  auto dims = a0.dimensions();
  if (dims.size() < 1 || b0.dimensions().size() != dims.size()) {
    return ffi::Error::InvalidArgument("dot_project: a0 and b0 must be [..., n] of one shape");
  }
  const int64_t n = dims.back();
  const int64_t N = n > 0 ? static_cast<int64_t>(a0.element_count()) / n : static_cast<int64_t>(z0.element_count());
  if (b0.element_count() != a0.element_count() || static_cast<int64_t>(z0.element_count()) != N ||
      static_cast<int64_t>(w.element_count()) != N) {
    return ffi::Error::InvalidArgument("dot_project: shapes disagree");
  }
  const T* pa = a0.typed_data();
  const T* pb = b0.typed_data();
  const T* pz = z0.typed_data();
  const T* pw = w.typed_data();
  T* oa = a->typed_data();
  T* ob = b->typed_data();
  T* oz = z->typed_data();
  // threads: enough work per thread to pay for starting it (~50 us)
  int64_t threads = std::max<int64_t>(1, std::min<int64_t>(std::thread::hardware_concurrency(), 16));
  threads = std::min<int64_t>(threads, std::max<int64_t>(1, N * std::max<int64_t>(n, 1) / (1 << 16)));
  if (threads <= 1) {
    project_rows<T>(0, N, n, pa, pb, pz, pw, oa, ob, oz);
    return ffi::Error::Success();
  }
  std::vector<std::thread> pool;
  const int64_t per = (N + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t r0 = std::min(N, t * per), r1 = std::min(N, (t + 1) * per);
    pool.emplace_back([=] { project_rows<T>(r0, r1, n, pa, pb, pz, pw, oa, ob, oz); });
  }
  project_rows<T>(0, std::min(N, per), n, pa, pb, pz, pw, oa, ob, oz);
  for (auto& th : pool) th.join();
  return ffi::Error::Success();
}


// The edge arrays' rows: [..., m, n] as N = prod(...) rows of m nodes (a conv's [B, Ho, Wo,
// Co, k] edges are taken as they are stored: a reshape to 3-D before an in-place call made
// XLA copy them); false if the rank is below 3.
template <typename Dims>
bool edge_rows(const Dims& dims, int64_t& N, int64_t& m, int64_t& n) {
  const size_t r = dims.size();
  if (r < 3) return false;
  N = 1;
  for (size_t k = 0; k + 2 < r; ++k) N *= dims[k];
  m = dims[r - 2];
  n = dims[r - 1];
  return true;
}

// An edge operand returned as a result: the same buffer when aliased (nothing to do), else copied.
template <ffi::DataType DS>
void pass_through(const ffi::Buffer<DS>& in, ffi::ResultBuffer<DS>& out) {
  if (static_cast<const void*>(in.typed_data()) != static_cast<const void*>(out->typed_data())) {
    std::memcpy(out->typed_data(), in.typed_data(), in.size_bytes());
  }
}

// threads for a pass over N rows of m x n values taken in G groups (at most one per group)
inline int64_t group_threads(int64_t N, int64_t m, int64_t n, int64_t G) {
  int64_t threads = std::max<int64_t>(1, std::min<int64_t>(std::thread::hardware_concurrency(), 16));
  return std::min<int64_t>({threads, G, std::max<int64_t>(1, N * m * std::max<int64_t>(n, 1) / (1 << 16))});
}

// run(g) for the groups g = 0 .. G-1, spread over the threads
template <typename F>
void over_groups(int64_t G, int64_t threads, F run) {
  auto worker = [&](int64_t first) {
    for (int64_t g = first; g < G; g += threads) run(g);
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(worker, t);
  worker(0);
  for (auto& th : pool) th.join();
}

// rows(r0, r1, g) for G groups of the N rows, spread over the threads, after zeroing the
// groups' partial sums (``sums`` [G, m, n], or none)
template <typename T, typename F>
void by_groups(int64_t N, int64_t m, int64_t n, int64_t G, T* sums, F rows) {
  if (sums != nullptr) std::fill(sums, sums + G * m * n, T(0));
  const int64_t per = (N + G - 1) / G;
  over_groups(G, group_threads(N, m, n, G),
              [=](int64_t g) { rows(std::min(N, g * per), std::min(N, (g + 1) * per), g); });
}

template <typename T, typename S, ffi::DataType D, ffi::DataType DS>
ffi::Error dr_step(ffi::Buffer<DS> za, ffi::Buffer<DS> zb, ffi::Buffer<D> pa, ffi::Buffer<D> pb, ffi::Buffer<D> c0,
                   ffi::Buffer<D> w, ffi::Buffer<D> relax, ffi::ResultBuffer<DS> oa, ffi::ResultBuffer<DS> ob,
                   ffi::ResultBuffer<D> y, ffi::ResultBuffer<D> res, ffi::ResultBuffer<D> sa,
                   ffi::ResultBuffer<D> sb) {
  // za, zb [N, m, n]; pa [N, n]; pb [m, n]; c0, w [N, m]; relax []; sb [G, m, n]
  auto dims = za.dimensions();
  auto gdims = sb->dimensions();
  int64_t N, m, n;
  if (!edge_rows(dims, N, m, n) || gdims.size() != 3) {
    return ffi::Error::InvalidArgument("dot_dr_step: za, zb and sb must be [..., m, n]");
  }
  const int64_t G = gdims[0];
  if (zb.element_count() != za.element_count() || static_cast<int64_t>(pa.element_count()) != N * n ||
      static_cast<int64_t>(pb.element_count()) != m * n || static_cast<int64_t>(c0.element_count()) != N * m ||
      static_cast<int64_t>(w.element_count()) != N * m || relax.element_count() != 1 || G < 1 ||
      gdims[1] != m || gdims[2] != n) {
    return ffi::Error::InvalidArgument("dot_dr_step: shapes disagree");
  }
  const T two_r = 2 * relax.typed_data()[0];
  const R<S> *pza = reinterpret_cast<const R<S>*>(za.typed_data()), *pzb = reinterpret_cast<const R<S>*>(zb.typed_data());
  const T *ppa = pa.typed_data(), *ppb = pb.typed_data();
  const T *pc = c0.typed_data(), *pw = w.typed_data();
  R<S> *qa = reinterpret_cast<R<S>*>(oa->typed_data()), *qb = reinterpret_cast<R<S>*>(ob->typed_data());
  T *py = y->typed_data(), *pr = res->typed_data();
  T *psa = sa->typed_data(), *psb = sb->typed_data();
  by_groups(N, m, n, G, psb, [=](int64_t r0, int64_t r1, int64_t g) {
    dr_rows<T, S>(r0, r1, m, n, pza, pzb, ppa, ppb, pc, pw, two_r, qa, qb, py, pr, psa,
         psb + g * m * n);
  });
  return ffi::Error::Success();
}

template <typename T, typename S, ffi::DataType D, ffi::DataType DS>
ffi::Error dr_project(ffi::Buffer<DS> za, ffi::Buffer<DS> zb, ffi::Buffer<D> c0, ffi::Buffer<D> w, ffi::Buffer<D> mix,
                      ffi::ResultBuffer<D> y, ffi::ResultBuffer<D> coef, ffi::ResultBuffer<D> sa,
                      ffi::ResultBuffer<D> sb) {
  auto dims = za.dimensions();
  auto gdims = sb->dimensions();
  int64_t N, m, n;
  if (!edge_rows(dims, N, m, n) || gdims.size() != 3) {
    return ffi::Error::InvalidArgument("dot_dr_project: za and sb must be [..., m, n]");
  }
  const int64_t G = gdims[0];
  if (zb.element_count() != za.element_count() || static_cast<int64_t>(c0.element_count()) != N * m ||
      static_cast<int64_t>(w.element_count()) != N * m || static_cast<int64_t>(coef->element_count()) != N * m * 6 ||
      static_cast<int64_t>(sa->element_count()) != N * n || mix.element_count() != 2 || G < 1 || gdims[1] != m ||
      gdims[2] != n) {
    return ffi::Error::InvalidArgument("dot_dr_project: shapes disagree");
  }
  const R<S> *pza = reinterpret_cast<const R<S>*>(za.typed_data()), *pzb = reinterpret_cast<const R<S>*>(zb.typed_data());
  const T *pc = c0.typed_data(), *pw = w.typed_data();
  const T k1 = mix.typed_data()[0], k0 = mix.typed_data()[1];
  T *py = y->typed_data(), *pcf = coef->typed_data(), *psa = sa->typed_data(), *psb = sb->typed_data();
  by_groups(N, m, n, G, psb, [=](int64_t r0, int64_t r1, int64_t g) {
    first_rows<T, S>(r0, r1, m, n, pza, pzb, pc, pw, k1, k0, py, pcf, psa,
                  psb + g * m * n);
  });
  return ffi::Error::Success();
}

template <typename T, typename S, ffi::DataType D, ffi::DataType DS>
ffi::Error dr_update(ffi::Buffer<DS> za, ffi::Buffer<DS> zb, ffi::Buffer<D> coef, ffi::Buffer<D> va,
                     ffi::Buffer<D> vb, ffi::Buffer<D> relax, ffi::ResultBuffer<DS> oa, ffi::ResultBuffer<DS> ob,
                     ffi::ResultBuffer<D> res) {
  auto dims = za.dimensions();
  int64_t N, m, n;
  if (!edge_rows(dims, N, m, n)) return ffi::Error::InvalidArgument("dot_dr_update: za must be [..., m, n]");
  if (zb.element_count() != za.element_count() || static_cast<int64_t>(coef.element_count()) != N * m * 6 ||
      static_cast<int64_t>(va.element_count()) != N * n || static_cast<int64_t>(vb.element_count()) != m * n ||
      relax.element_count() != 1 || static_cast<int64_t>(res->element_count()) != N * m) {
    return ffi::Error::InvalidArgument("dot_dr_update: shapes disagree");
  }
  const T two_r = 2 * relax.typed_data()[0];
  const R<S> *pza = reinterpret_cast<const R<S>*>(za.typed_data()), *pzb = reinterpret_cast<const R<S>*>(zb.typed_data());
  const T *pcf = coef.typed_data(), *pva = va.typed_data(), *pvb = vb.typed_data();
  R<S> *qa = reinterpret_cast<R<S>*>(oa->typed_data()), *qb = reinterpret_cast<R<S>*>(ob->typed_data());
  T *pr = res->typed_data();
  by_groups(N, m, n, std::min<int64_t>(N, 16), static_cast<T*>(nullptr), [=](int64_t r0, int64_t r1, int64_t) {
    update_rows<T, S>(r0, r1, m, n, pza, pzb, pcf, pva, pvb, two_r, qa, qb, pr);
  });
  return ffi::Error::Success();
}

// The folded steps' handlers: zb [N, m, n]; x [N, n]; pb, vb [m, n]; c0, w, mu [N, m]; sb [G, m, n].
template <typename T, typename S, ffi::DataType D, ffi::DataType DS>
ffi::Error dr_step_fixed(ffi::Buffer<DS> zb, ffi::Buffer<D> x, ffi::Buffer<D> pb, ffi::Buffer<D> c0, ffi::Buffer<D> w,
                         ffi::Buffer<D> relax, ffi::ResultBuffer<DS> ob, ffi::ResultBuffer<D> y,
                         ffi::ResultBuffer<D> res, ffi::ResultBuffer<D> sb) {
  auto dims = zb.dimensions();
  auto gdims = sb->dimensions();
  int64_t N, m, n;
  if (!edge_rows(dims, N, m, n) || gdims.size() != 3) {
    return ffi::Error::InvalidArgument("dot_dr_step_fixed: zb and sb must be [..., m, n]");
  }
  const int64_t G = gdims[0];
  if (static_cast<int64_t>(x.element_count()) != N * n || static_cast<int64_t>(pb.element_count()) != m * n ||
      static_cast<int64_t>(c0.element_count()) != N * m || static_cast<int64_t>(w.element_count()) != N * m ||
      relax.element_count() != 1 || G < 1 || gdims[1] != m || gdims[2] != n) {
    return ffi::Error::InvalidArgument("dot_dr_step_fixed: shapes disagree");
  }
  const T two_r = 2 * relax.typed_data()[0];
  const R<S>* pzb = reinterpret_cast<const R<S>*>(zb.typed_data());
  R<S>* qb = reinterpret_cast<R<S>*>(ob->typed_data());
  const T *px = x.typed_data(), *ppb = pb.typed_data(), *pc = c0.typed_data(), *pw = w.typed_data();
  T *py = y->typed_data(), *pr = res->typed_data(), *psb = sb->typed_data();
  by_groups(N, m, n, G, psb, [=](int64_t r0, int64_t r1, int64_t g) {
    dr_fixed_rows<T, S>(r0, r1, m, n, px, pzb, ppb, pc, pw, two_r, qb, py, pr,
                        psb + g * m * n);
  });
  return ffi::Error::Success();
}

template <typename T, typename S, ffi::DataType D, ffi::DataType DS>
ffi::Error dr_project_fixed(ffi::Buffer<DS> zb, ffi::Buffer<D> x, ffi::Buffer<D> c0, ffi::Buffer<D> w,
                            ffi::Buffer<D> mix, ffi::ResultBuffer<D> y, ffi::ResultBuffer<D> mu,
                            ffi::ResultBuffer<D> sb) {
  auto dims = zb.dimensions();
  auto gdims = sb->dimensions();
  int64_t N, m, n;
  if (!edge_rows(dims, N, m, n) || gdims.size() != 3) {
    return ffi::Error::InvalidArgument("dot_dr_project_fixed: zb and sb must be [..., m, n]");
  }
  const int64_t G = gdims[0];
  if (static_cast<int64_t>(x.element_count()) != N * n || static_cast<int64_t>(c0.element_count()) != N * m ||
      static_cast<int64_t>(w.element_count()) != N * m || static_cast<int64_t>(mu->element_count()) != N * m ||
      mix.element_count() != 2 || G < 1 || gdims[1] != m || gdims[2] != n) {
    return ffi::Error::InvalidArgument("dot_dr_project_fixed: shapes disagree");
  }
  const R<S>* pzb = reinterpret_cast<const R<S>*>(zb.typed_data());
  const T *px = x.typed_data(), *pc = c0.typed_data(), *pw = w.typed_data();
  const T k1 = mix.typed_data()[0], k0 = mix.typed_data()[1];
  T *py = y->typed_data(), *pmu = mu->typed_data(), *psb = sb->typed_data();
  by_groups(N, m, n, G, psb, [=](int64_t r0, int64_t r1, int64_t g) {
    fixed_first_rows<T, S>(r0, r1, m, n, px, pzb, pc, pw, k1, k0, py, pmu,
                           psb + g * m * n);
  });
  return ffi::Error::Success();
}

template <typename T, typename S, ffi::DataType D, ffi::DataType DS>
ffi::Error dr_update_fixed(ffi::Buffer<DS> zb, ffi::Buffer<D> mu, ffi::Buffer<D> x, ffi::Buffer<D> vb,
                           ffi::Buffer<D> relax, ffi::ResultBuffer<DS> ob, ffi::ResultBuffer<D> res) {
  auto dims = zb.dimensions();
  int64_t N, m, n;
  if (!edge_rows(dims, N, m, n)) return ffi::Error::InvalidArgument("dot_dr_update_fixed: zb must be [..., m, n]");
  if (static_cast<int64_t>(mu.element_count()) != N * m || static_cast<int64_t>(x.element_count()) != N * n ||
      static_cast<int64_t>(vb.element_count()) != m * n || relax.element_count() != 1 ||
      static_cast<int64_t>(res->element_count()) != N * m) {
    return ffi::Error::InvalidArgument("dot_dr_update_fixed: shapes disagree");
  }
  const T two_r = 2 * relax.typed_data()[0];
  const R<S>* pzb = reinterpret_cast<const R<S>*>(zb.typed_data());
  R<S>* qb = reinterpret_cast<R<S>*>(ob->typed_data());
  const T *pmu = mu.typed_data(), *px = x.typed_data(), *pvb = vb.typed_data();
  T* pr = res->typed_data();
  by_groups(N, m, n, std::min<int64_t>(N, 16), static_cast<T*>(nullptr), [=](int64_t r0, int64_t r1, int64_t) {
    fixed_update_rows<T, S>(r0, r1, m, n, px, pzb, pmu, pvb, two_r, qb, pr);
  });
  return ffi::Error::Success();
}

// The first passes inside a step, chained into the update: the edges also returned unchanged
// (aliased to the inputs), so that the update's in-place call takes this call's result and
// XLA need not copy the edges to keep them for it (it did: a copy of the port per step).
// The shadow, whose edges live on, calls the plain passes.
template <typename T, typename S, ffi::DataType D, ffi::DataType DS>
ffi::Error dr_project_chain(ffi::Buffer<DS> za, ffi::Buffer<DS> zb, ffi::Buffer<D> c0, ffi::Buffer<D> w,
                            ffi::Buffer<D> mix, ffi::ResultBuffer<DS> oa, ffi::ResultBuffer<DS> ob,
                            ffi::ResultBuffer<D> y, ffi::ResultBuffer<D> coef, ffi::ResultBuffer<D> sa,
                            ffi::ResultBuffer<D> sb) {
  pass_through(za, oa);
  pass_through(zb, ob);
  return dr_project<T, S, D, DS>(za, zb, c0, w, mix, y, coef, sa, sb);
}

template <typename T, typename S, ffi::DataType D, ffi::DataType DS>
ffi::Error dr_project_fixed_chain(ffi::Buffer<DS> zb, ffi::Buffer<D> x, ffi::Buffer<D> c0, ffi::Buffer<D> w,
                                  ffi::Buffer<D> mix, ffi::ResultBuffer<DS> ob, ffi::ResultBuffer<D> y,
                                  ffi::ResultBuffer<D> mu, ffi::ResultBuffer<D> sb) {
  pass_through(zb, ob);
  return dr_project_fixed<T, S, D, DS>(zb, x, c0, w, mix, y, mu, sb);
}

// out[i, j, :] = src[i, :] (src [N, n], rows = 1) or src[j, :] (src [m, n], rows = 0), written
// into ``donor``'s buffer (aliased: the previous update's edges, so that a fresh update's
// forward-pass edges do not pay for new memory's page faults).
template <typename T, typename S, ffi::DataType D, ffi::DataType DS>
ffi::Error fill(ffi::Buffer<DS> donor, ffi::Buffer<D> src, ffi::Buffer<D> rows, ffi::ResultBuffer<DS> out) {
  auto dims = donor.dimensions();
  if (dims.size() != 3 || rows.element_count() != 1) return ffi::Error::InvalidArgument("fill: donor must be [N, m, n]");
  const int64_t N = dims[0], m = dims[1], n = dims[2];
  const bool by_row = rows.typed_data()[0] != 0;
  if (static_cast<int64_t>(src.element_count()) != (by_row ? N : m) * n) {
    return ffi::Error::InvalidArgument("fill: shapes disagree");
  }
  const T* ps = src.typed_data();
  R<S>* po = reinterpret_cast<R<S>*>(out->typed_data());
  const int64_t G = std::min<int64_t>(N, 16), per = (N + G - 1) / G;
  over_groups(G, group_threads(N, m, n, G), [=](int64_t g) {
    // a narrower storage: each source row rounded once (into ``stored``), then copied
    std::vector<R<S>> stored(std::is_same_v<R<S>, T> ? 0 : n);
    std::vector<T> scratch(stored.size());
    for (int64_t i = std::min(N, g * per); i < std::min(N, (g + 1) * per); ++i) {
      for (int64_t j = 0; j < m; ++j) {
        const T* row = ps + (by_row ? i : j) * n;
        R<S>* to = po + (i * m + j) * n;
        if constexpr (std::is_same_v<R<S>, T>) {
          std::copy(row, row + n, to);
        } else {
          if (j == 0 || !by_row) {
            std::copy(row, row + n, scratch.begin());
            store_row<T, S>(scratch.data(), stored.data(), n);
          }
          std::copy(stored.begin(), stored.end(), to);
        }
      }
    }
  });
  return ffi::Error::Success();
}

// The max projection (Theorem 8, weighted; feascomp/primitives/maxmin.py is its reference):
// per row, its kMaxTop + 1 largest values (repeats counted) in one pass -- blocks of 32
// values whose maximum does not reach the current (kMaxTop + 1)-th are skipped in one
// vector comparison, the rest inserted into a sorted list -- then the smallest valid active
// set among them (maxmin._smallest_valid, same arithmetic); a row whose active set is larger
// finds it by iteration on a copy of itself (maxmin._by_iteration), a row of at most
// kMaxTop + 1 values by sorting one (maxmin._by_sort). The output: the active entries (all above the
// cut value t, then the first of those equal to t by index) set to y, the rest copied.
// Inputs: x0 [N, n], y0 [N], w [N]. Outputs: x [N, n], y [N].
constexpr int kMaxTop = 8;  // maxmin.TOP

// the smallest m = k + 1 <= c with xs[m] (or ``after`` for m = c) <= y_m; false if none
template <typename T>
bool smallest_valid(const T* xs, int64_t c, T after, T y0, T w, int64_t& k, T& y) {
  T cum = 0;
  for (int64_t m = 1; m <= c; ++m) {
    cum += xs[m - 1];
    const T ym = (cum + w * y0) / (T(m) + w);
    if ((m < c ? xs[m] : after) <= ym) {
      k = m - 1;
      y = ym;
      return true;
    }
  }
  return false;
}

template <typename T>
void max_rows(int64_t r0, int64_t r1, int64_t n, const T* x0, const T* y0, const T* w, T* x, T* y) {
  constexpr int64_t kChunk = 32;
  constexpr T kInf = std::numeric_limits<T>::infinity();
  std::vector<T> sorted;
  for (int64_t i = r0; i < r1; ++i) {
    const T* row = x0 + i * n;
    T* out = x + i * n;
    T top[kMaxTop + 1];  // the candidates, descending
    int64_t k = 0;
    T yv = 0;
    bool found = false;
    if (n > kMaxTop + 1) {
      std::fill(top, top + kMaxTop + 1, -kInf);
      for (int64_t j0 = 0; j0 < n; j0 += kChunk) {
        const int64_t j1 = std::min(n, j0 + kChunk);
        T cmax = -kInf;
#pragma omp simd reduction(max : cmax)
        for (int64_t j = j0; j < j1; ++j) cmax = std::max(cmax, row[j]);
        if (!(cmax > top[kMaxTop])) continue;
        for (int64_t j = j0; j < j1; ++j) {
          const T v = row[j];
          if (!(v > top[kMaxTop])) continue;
          int p = kMaxTop;
          for (; p > 0 && top[p - 1] < v; --p) top[p] = top[p - 1];
          top[p] = v;
        }
      }
      found = smallest_valid<T>(top, kMaxTop, top[kMaxTop], y0[i], w[i], k, yv);
    }
    T t;
    int64_t need;  // entries equal to t that join the ones above it
    if (found) {
      t = top[k];
      need = k + 1;
      for (int64_t p = 0; p < k; ++p) need -= top[p] > t;
    } else if (n <= kMaxTop + 1) {
      sorted.assign(row, row + n);
      std::sort(sorted.begin(), sorted.end(), [](T a, T b) { return a > b; });
      smallest_valid<T>(sorted.data(), n, -kInf, y0[i], w[i], k, yv);  // m = n is always valid
      t = sorted[k];
      need = k + 1;
      for (int64_t p = 0; p < k; ++p) need -= sorted[p] > t;
    } else {
      // a larger active set (maxmin._by_iteration): all active, y = (sum + w y0) / (m + w),
      // keep the entries above y, repeat until the set stops changing (y never decreases)
      sorted.assign(row, row + n);
      int64_t m = n;
      for (;;) {
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t p = 0; p < m; ++p) sum += sorted[p];
        yv = (sum + w[i] * y0[i]) / (T(m) + w[i]);
        int64_t kept = 0;
        for (int64_t p = 0; p < m; ++p) {
          if (sorted[p] > yv) sorted[kept++] = sorted[p];
        }
        if (kept == m) break;
        m = kept;
        if (m == 0) break;
      }
      if (m == 0) {  // y0 lies above the max, which alone is raised
        T top1 = -kInf;
        for (int64_t j = 0; j < n; ++j) top1 = std::max(top1, row[j]);
        yv = (top1 + w[i] * y0[i]) / (T(1) + w[i]);
        t = top1;
        need = 1;
      } else {
        t = *std::min_element(sorted.begin(), sorted.begin() + m);
        need = 0;  // the set was cut at a level below t: every entry equal to t is in it
        for (int64_t p = 0; p < m; ++p) need += sorted[p] == t;
      }
    }
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] = row[j] > t ? yv : row[j];
    for (int64_t j = 0; j < n && need > 0; ++j) {
      if (row[j] == t) {
        out[j] = yv;
        --need;
      }
    }
    y[i] = yv;
  }
}

template <typename T, ffi::DataType D>
ffi::Error max_project(ffi::Buffer<D> x0, ffi::Buffer<D> y0, ffi::Buffer<D> w, ffi::ResultBuffer<D> x,
                       ffi::ResultBuffer<D> y) {
  auto dims = x0.dimensions();
  if (dims.size() < 1 || dims.back() < 1) return ffi::Error::InvalidArgument("max_project: x0 must be [..., n], n >= 1");
  const int64_t n = dims.back();
  const int64_t N = static_cast<int64_t>(x0.element_count()) / n;
  if (static_cast<int64_t>(y0.element_count()) != N || static_cast<int64_t>(w.element_count()) != N) {
    return ffi::Error::InvalidArgument("max_project: shapes disagree");
  }
  const T* px = x0.typed_data();
  const T* py = y0.typed_data();
  const T* pw = w.typed_data();
  T* ox = x->typed_data();
  T* oy = y->typed_data();
  int64_t threads = std::max<int64_t>(1, std::min<int64_t>(std::thread::hardware_concurrency(), 16));
  threads = std::min<int64_t>(threads, std::max<int64_t>(1, N * n / (1 << 16)));
  const int64_t per = (N + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t r0 = std::min(N, t * per), r1 = std::min(N, (t + 1) * per);
    pool.emplace_back([=] { max_rows<T>(r0, r1, n, px, py, pw, ox, oy); });
  }
  max_rows<T>(0, std::min(N, per), n, px, py, pw, ox, oy);
  for (auto& th : pool) th.join();
  return ffi::Error::Success();
}

// A fusion boundary: the operand materialized once and returned as the result (aliased, so
// nothing to do; copied if XLA gave another buffer). XLA on CPU otherwise recomputes a
// shared elementwise producer -- a projection, a transposed read -- in every consumer's
// loop fusion (it drops optimization barriers before fusing).
ffi::Error keep(ffi::AnyBuffer in, ffi::Result<ffi::AnyBuffer> out) {
  if (in.untyped_data() != out->untyped_data()) std::memcpy(out->untyped_data(), in.untyped_data(), in.size_bytes());
  return ffi::Error::Success();
}

}  // namespace

// The handlers' bindings: A buffer arguments and R buffer results of dtype D, the edge
// buffers (E of each, first) of dtype DS (written out by the preprocessor: a Binding is
// only built in one chained expression).
#define FEASCOMP_ARG(D) .Arg<ffi::Buffer<D>>()
#define FEASCOMP_RET(D) .Ret<ffi::Buffer<D>>()
#define FEASCOMP_REP0(X, D)
#define FEASCOMP_REP1(X, D) X(D)
#define FEASCOMP_REP2(X, D) FEASCOMP_REP1(X, D) X(D)
#define FEASCOMP_REP3(X, D) FEASCOMP_REP2(X, D) X(D)
#define FEASCOMP_REP4(X, D) FEASCOMP_REP3(X, D) X(D)
#define FEASCOMP_REP5(X, D) FEASCOMP_REP4(X, D) X(D)
#define FEASCOMP_REP6(X, D) FEASCOMP_REP5(X, D) X(D)
#define FEASCOMP_REP7(X, D) FEASCOMP_REP6(X, D) X(D)

// One handler per kernel and dtype: symbol, implementation, arguments, results.
#define FEASCOMP_HANDLER(symbol, impl, T, D, A, R) \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, (impl<T, D>),    \
                                ffi::Ffi::Bind() FEASCOMP_REP##A(FEASCOMP_ARG, D) FEASCOMP_REP##R(FEASCOMP_RET, D));
// ... and per edge storage S (dtype DS): E edge arguments then A others, E edge results then R.
#define FEASCOMP_EDGES(symbol, impl, T, S, D, DS, EA, A, ER, R)                                        \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, (impl<T, S, D, DS>),                                         \
                                ffi::Ffi::Bind() FEASCOMP_REP##EA(FEASCOMP_ARG, DS) FEASCOMP_REP##A(FEASCOMP_ARG, D) \
                                    FEASCOMP_REP##ER(FEASCOMP_RET, DS) FEASCOMP_REP##R(FEASCOMP_RET, D));

FEASCOMP_HANDLER(feascomp_dot_project_f32, project, float, ffi::F32, 4, 3)
FEASCOMP_HANDLER(feascomp_dot_project_f64, project, double, ffi::F64, 4, 3)
FEASCOMP_EDGES(feascomp_dot_dr_step_f32, dr_step, float, float, ffi::F32, ffi::F32, 2, 5, 2, 4)
FEASCOMP_EDGES(feascomp_dot_dr_step_f64, dr_step, double, double, ffi::F64, ffi::F64, 2, 5, 2, 4)
FEASCOMP_EDGES(feascomp_dot_dr_step_f32_f16, dr_step, float, half, ffi::F32, ffi::F16, 2, 5, 2, 4)
FEASCOMP_EDGES(feascomp_dot_dr_step_f32_bf16, dr_step, float, bf16, ffi::F32, ffi::BF16, 2, 5, 2, 4)
FEASCOMP_EDGES(feascomp_dot_dr_project_f32, dr_project, float, float, ffi::F32, ffi::F32, 2, 3, 0, 4)
FEASCOMP_EDGES(feascomp_dot_dr_project_chain_f32, dr_project_chain, float, float, ffi::F32, ffi::F32, 2, 3, 2, 4)
FEASCOMP_EDGES(feascomp_dot_dr_project_f64, dr_project, double, double, ffi::F64, ffi::F64, 2, 3, 0, 4)
FEASCOMP_EDGES(feascomp_dot_dr_project_chain_f64, dr_project_chain, double, double, ffi::F64, ffi::F64, 2, 3, 2, 4)
FEASCOMP_EDGES(feascomp_dot_dr_project_f32_f16, dr_project, float, half, ffi::F32, ffi::F16, 2, 3, 0, 4)
FEASCOMP_EDGES(feascomp_dot_dr_project_chain_f32_f16, dr_project_chain, float, half, ffi::F32, ffi::F16, 2, 3, 2, 4)
FEASCOMP_EDGES(feascomp_dot_dr_project_f32_bf16, dr_project, float, bf16, ffi::F32, ffi::BF16, 2, 3, 0, 4)
FEASCOMP_EDGES(feascomp_dot_dr_project_chain_f32_bf16, dr_project_chain, float, bf16, ffi::F32, ffi::BF16, 2, 3, 2, 4)
FEASCOMP_EDGES(feascomp_dot_dr_update_f32, dr_update, float, float, ffi::F32, ffi::F32, 2, 4, 2, 1)
FEASCOMP_EDGES(feascomp_dot_dr_update_f64, dr_update, double, double, ffi::F64, ffi::F64, 2, 4, 2, 1)
FEASCOMP_EDGES(feascomp_dot_dr_update_f32_f16, dr_update, float, half, ffi::F32, ffi::F16, 2, 4, 2, 1)
FEASCOMP_EDGES(feascomp_dot_dr_update_f32_bf16, dr_update, float, bf16, ffi::F32, ffi::BF16, 2, 4, 2, 1)
FEASCOMP_EDGES(feascomp_fill_f32, fill, float, float, ffi::F32, ffi::F32, 1, 2, 1, 0)
FEASCOMP_EDGES(feascomp_fill_f64, fill, double, double, ffi::F64, ffi::F64, 1, 2, 1, 0)
FEASCOMP_EDGES(feascomp_fill_f32_f16, fill, float, half, ffi::F32, ffi::F16, 1, 2, 1, 0)
FEASCOMP_EDGES(feascomp_fill_f32_bf16, fill, float, bf16, ffi::F32, ffi::BF16, 1, 2, 1, 0)
FEASCOMP_EDGES(feascomp_dot_dr_step_fixed_f32, dr_step_fixed, float, float, ffi::F32, ffi::F32, 1, 5, 1, 3)
FEASCOMP_EDGES(feascomp_dot_dr_step_fixed_f64, dr_step_fixed, double, double, ffi::F64, ffi::F64, 1, 5, 1, 3)
FEASCOMP_EDGES(feascomp_dot_dr_step_fixed_f32_f16, dr_step_fixed, float, half, ffi::F32, ffi::F16, 1, 5, 1, 3)
FEASCOMP_EDGES(feascomp_dot_dr_step_fixed_f32_bf16, dr_step_fixed, float, bf16, ffi::F32, ffi::BF16, 1, 5, 1, 3)
FEASCOMP_EDGES(feascomp_dot_dr_project_fixed_f32, dr_project_fixed, float, float, ffi::F32, ffi::F32, 1, 4, 0, 3)
FEASCOMP_EDGES(feascomp_dot_dr_project_fixed_chain_f32, dr_project_fixed_chain, float, float, ffi::F32, ffi::F32, 1, 4, 1, 3)
FEASCOMP_EDGES(feascomp_dot_dr_project_fixed_f64, dr_project_fixed, double, double, ffi::F64, ffi::F64, 1, 4, 0, 3)
FEASCOMP_EDGES(feascomp_dot_dr_project_fixed_chain_f64, dr_project_fixed_chain, double, double, ffi::F64, ffi::F64, 1, 4, 1, 3)
FEASCOMP_EDGES(feascomp_dot_dr_project_fixed_f32_f16, dr_project_fixed, float, half, ffi::F32, ffi::F16, 1, 4, 0, 3)
FEASCOMP_EDGES(feascomp_dot_dr_project_fixed_chain_f32_f16, dr_project_fixed_chain, float, half, ffi::F32, ffi::F16, 1, 4, 1, 3)
FEASCOMP_EDGES(feascomp_dot_dr_project_fixed_f32_bf16, dr_project_fixed, float, bf16, ffi::F32, ffi::BF16, 1, 4, 0, 3)
FEASCOMP_EDGES(feascomp_dot_dr_project_fixed_chain_f32_bf16, dr_project_fixed_chain, float, bf16, ffi::F32, ffi::BF16, 1, 4, 1, 3)
FEASCOMP_EDGES(feascomp_dot_dr_update_fixed_f32, dr_update_fixed, float, float, ffi::F32, ffi::F32, 1, 4, 1, 1)
FEASCOMP_EDGES(feascomp_dot_dr_update_fixed_f64, dr_update_fixed, double, double, ffi::F64, ffi::F64, 1, 4, 1, 1)
FEASCOMP_EDGES(feascomp_dot_dr_update_fixed_f32_f16, dr_update_fixed, float, half, ffi::F32, ffi::F16, 1, 4, 1, 1)
FEASCOMP_EDGES(feascomp_dot_dr_update_fixed_f32_bf16, dr_update_fixed, float, bf16, ffi::F32, ffi::BF16, 1, 4, 1, 1)
FEASCOMP_HANDLER(feascomp_max_project_f32, max_project, float, ffi::F32, 3, 2)
FEASCOMP_HANDLER(feascomp_max_project_f64, max_project, double, ffi::F64, 3, 2)
XLA_FFI_DEFINE_HANDLER_SYMBOL(feascomp_keep, keep, ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
