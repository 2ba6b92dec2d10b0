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
#include <limits>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 256;  // rows per block: 2 x 256 x n values stay in L2 for n <= 256

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

template <typename T>
void project_rows(int64_t r0, int64_t r1, int64_t n, const T* __restrict a0, const T* __restrict b0,
                  const T* __restrict z0, const T* __restrict w, T* __restrict a, T* __restrict b,
                  T* __restrict z) {
  const Consts<T> c;
  const T r2 = std::sqrt(T(2));
  alignas(64) T A2[kBlock], B2[kBlock], Z0[kBlock], W[kBlock], winv[kBlock], lam[kBlock];
  alignas(64) T kas[kBlock], kad[kBlock], kae[kBlock], kbs[kBlock], kbd[kBlock], kbe[kBlock];
  for (int64_t s = r0; s < r1; s += kBlock) {
    const int64_t m = std::min(kBlock, r1 - s);
    for (int64_t r = 0; r < m; ++r) {
      const T* x = a0 + (s + r) * n;
      const T* y = b0 + (s + r) * n;
      T sa = 0, sb = 0;
      for (int64_t k = 0; k < n; ++k) {
        const T p = x[k] + y[k];
        const T q = x[k] - y[k];
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
    for (int64_t r = 0; r < m; ++r) {
      const T l = lam[r];
      const T zr = Z0[r] - l / W[r];
      const T A = std::sqrt(A2[r]), B = std::sqrt(B2[r]);
      const bool pos = l >= 0;
      const T nu_pos = pos ? B / (1 + l) : T(0);
      const T nu_neg = A / std::max(1 - l, T(1));
      const T nu_u = pos ? std::sqrt(std::max(2 * zr + nu_pos * nu_pos, T(0))) : nu_neg;
      const T nu_v = pos ? nu_pos : std::sqrt(std::max(nu_neg * nu_neg - 2 * zr, T(0)));
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
    for (int64_t r = 0; r < m; ++r) {
      const T* x = a0 + (s + r) * n;
      const T* y = b0 + (s + r) * n;
      T* xa = a + (s + r) * n;
      T* xb = b + (s + r) * n;
      const T as_ = kas[r], ad = kad[r], bs = kbs[r], bd = kbd[r];
      for (int64_t k = 0; k < n; ++k) {
        const T p = x[k] + y[k];
        const T q = x[k] - y[k];
        xa[k] = as_ * p + ad * q;
        xb[k] = bs * p + bd * q;
      }
      if (n > 0) {
        xa[0] += kae[r];
        xb[0] += kbe[r];
      }
      z[s + r] = Z0[r];
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

}  // namespace

// One handler per dtype: four [.., n] / [..] arguments, three results.
#define FEASCOMP_DOT_PROJECT_HANDLER(symbol, T, D)                                                        \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, (project<T, D>),                                                 \
                                ffi::Ffi::Bind()                                                          \
                                    .Arg<ffi::Buffer<D>>()                                                \
                                    .Arg<ffi::Buffer<D>>()                                                \
                                    .Arg<ffi::Buffer<D>>()                                                \
                                    .Arg<ffi::Buffer<D>>()                                                \
                                    .Ret<ffi::Buffer<D>>()                                                \
                                    .Ret<ffi::Buffer<D>>()                                                \
                                    .Ret<ffi::Buffer<D>>());

FEASCOMP_DOT_PROJECT_HANDLER(feascomp_dot_project_f32, float, ffi::F32)
FEASCOMP_DOT_PROJECT_HANDLER(feascomp_dot_project_f64, double, ffi::F64)
