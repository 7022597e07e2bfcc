// One vocabulary tile of a jet n-gram sweep, reduced in one pass per row: jetjax's XLA:CPU kernel.
//
// For each row i of logits [B, T] (plus the tile's bias [T]) it updates the row's online logsumexp
// (running max m, running sum s of exp(x - m)) and its running top k (values descending; among equal
// values the lower token id first). Token id of column j is offset + j; every id held in the running
// top k is lower than the tile's, so a tile value enters only when strictly above the k-th value, and
// a later column never passes an equal earlier one. That is the rule of jetjax's pure-JAX step
// (lax.top_k over [running top k, tile candidates]), so the ids are the same; only the logsumexp's
// summation order, hence its last bits, differ. Rows are split over threads.
//
// A second entry point, JetjaxGemmReduce, also forms the tile's logits itself (float32 GEMM, a
// register-blocked micro-kernel over packed operands) and folds them into the row states a few
// hundred columns at a time while they are still in the L1 cache, so a float32 tile's logits never
// go to memory at all.
//
// Built on first use by jetjax/ngrams/native.py with the machine's own -march; see there.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#ifdef __linux__
#include <sched.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// 16 floats as one value: GCC/Clang vector extensions, lowered to whatever SIMD the build's -march
// has (one AVX-512 register, two AVX2 ones, four SSE ones). No -ffast-math: -inf and NaN keep
// their meaning, and nothing is reassociated behind our back; the lanes below are the order.
constexpr int kLanes = 16;
typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef int32_t vi __attribute__((vector_size(4 * kLanes)));

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline vf splat(float x) { return x - vf{}; }  // x - (+0) == x for every x, so it folds to a broadcast

inline bool any(vi mask) {
  uint64_t w[kLanes / 2];
  std::memcpy(w, &mask, sizeof w);
  uint64_t acc = 0;
  for (int l = 0; l < kLanes / 2; ++l) acc |= w[l];
  return acc != 0;
}

// exp(x) for x <= 0 (x may be -inf: 0): x = n ln2 + r with |r| <= ln2 / 2 (n rounded to nearest by
// the 1.5 * 2^23 trick), exp(r) by its degree-6 Taylor polynomial (relative error < 3e-7 over that
// range), 2^n through the exponent bits. Below -87 (exp < 1.7e-38) the result is 0.
inline vf exp_nonpos(vf x) {
  const vf lo = splat(-87.0f);
  vf xc = x < lo ? lo : x;
  const vf magic = splat(12582912.0f);
  vf n = (xc * 1.44269504088896341f + magic) - magic;
  vf r = xc - n * 0.693359375f;  // ln 2 in two parts: n * 0.693359375 is exact
  r = r + n * 2.12194440e-4f;
  vf p = splat(1.0f / 720.0f);
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale = (vf)bits;
  return x < lo ? splat(0.0f) : p * scale;
}

inline float scalar_exp_nonpos(float x) {
  float lanes[kLanes] = {x};
  vf e = exp_nonpos(load(lanes));
  return e[0];
}

// sum_j exp(c[j] + bias[j] - ref) over [0, t), in two levels (16 vectors into a partial, partials
// into the total), so a lane adds ~t / 256 + 16 terms in sequence rather than t / 16: float32
// rounding as small as XLA's own. Also the max and whether any value is NaN, if asked; with
// kSum = false only those (no exponentials).
template <bool kSum = true>
inline float exp_sum(const float* c, const float* bias, int64_t t, float ref, float* max_out, bool* nan_out) {
  const int64_t t_end = t - t % kLanes;  // whole vectors; the rest (t % 16 columns) one by one
  const vf ref_v = splat(ref);
  vf sum_v = vf{}, mx_v = splat(-INFINITY);
  vi nan_v = vi{};
  for (int64_t j0 = 0; j0 < t_end; j0 += kLanes * kLanes) {
    vf part = vf{};
    for (int64_t j = j0, j1 = std::min<int64_t>(t_end, j0 + kLanes * kLanes); j < j1; j += kLanes) {
      vf v = load(c + j) + load(bias + j);
      mx_v = v > mx_v ? v : mx_v;
      nan_v |= v != v;
      if constexpr (kSum) part += exp_nonpos(v - ref_v);
    }
    sum_v += part;
  }
  float sum = 0.0f, mx = -INFINITY;
  bool nan = false;
  for (int l = 0; l < kLanes; ++l) sum += sum_v[l], mx = mx_v[l] > mx ? mx_v[l] : mx, nan |= nan_v[l] != 0;
  for (int64_t j = t_end; j < t; ++j) {
    float v = c[j] + bias[j];
    mx = v > mx ? v : mx;
    nan |= v != v;
    if constexpr (kSum) sum += scalar_exp_nonpos(v - ref);
  }
  if (max_out) *max_out = mx;
  if (nan_out) *nan_out = nan;
  return sum;
}

// Folds t values c[j] + bias[j] (token ids offset + j, j < t) into one row's running state: max m,
// sum s of exp(x - m), top k values tv (descending) and ids ti. One pass in the common case: the
// exponentials are taken against the running max m, and taken again only where the values pass it.
void fold_row(const float* c, const float* bias, int64_t t, int32_t offset, int64_t k, float& m, float& s, float* tv,
              int32_t* ti) {
  const float m_old = m;
  float mx, sum;
  bool nan;
  if (m_old > -INFINITY) {  // (a NaN m_old fails this too)
    sum = exp_sum(c, bias, t, m_old, &mx, &nan);
    if (mx > m_old) sum = exp_sum(c, bias, t, mx, nullptr, nullptr);  // exp_nonpos needs x - ref <= 0
  } else {
    exp_sum<false>(c, bias, t, 0.0f, &mx, &nan);  // the max alone
    sum = exp_sum(c, bias, t, mx, nullptr, nullptr);
  }
  const float m_new = mx > m_old ? mx : m_old;
  // (m_old == m_new also covers a row still at -inf, where m_old - m_new would be NaN)
  float s_new = (m_old == m_new ? s : s * std::exp(m_old - m_new)) + sum;
  if (nan || m_old != m_old || s != s) {
    m = NAN;
    s = NAN;
  } else {
    m = m_new;
    s = s_new;
  }
  float thr = tv[k - 1];
  if (!(mx > thr)) return;  // nothing here enters the top k
  for (int64_t j0 = 0; j0 < t; j0 += kLanes) {
    const int64_t n = std::min<int64_t>(kLanes, t - j0);
    uint32_t hits;  // bit l: column j0 + l is above the k-th value as it stood at the start of the run
    if (n == kLanes) {
      vi above = load(c + j0) + load(bias + j0) > splat(thr);
      if (!any(above)) continue;
      hits = 0;
      for (int l = 0; l < kLanes; ++l) hits |= static_cast<uint32_t>(above[l] != 0) << l;
    } else {
      hits = (1u << n) - 1;
    }
    for (; hits; hits &= hits - 1) {
      const int64_t j = j0 + __builtin_ctz(hits);
      const float v = c[j] + bias[j];
      if (!(v > thr)) continue;  // (the k-th value may have risen since)
      // The new value goes after every held value >= it (tv is descending and tv[k - 1] < v, so that
      // position is < k); the rest moves down one place. The position is counted, not bisected: a
      // compare over all k values vectorizes and has no branch to mispredict (bisection's branches
      // were a third of this function's time at k = 100).
      int64_t lo = 0;
      for (int64_t q = 0; q < k; ++q) lo += tv[q] >= v;
      std::memmove(tv + lo + 1, tv + lo, (k - 1 - lo) * sizeof(float));
      std::memmove(ti + lo + 1, ti + lo, (k - 1 - lo) * sizeof(int32_t));
      tv[lo] = v;
      ti[lo] = offset + static_cast<int32_t>(j);
      thr = tv[k - 1];
    }
  }
}

void reduce_rows(const float* logits, const float* bias, int64_t t, int32_t offset, int64_t k, int64_t row_lo,
                 int64_t row_hi, const float* m_in, const float* s_in, const float* tv_in, const int32_t* ti_in,
                 float* m_out, float* s_out, float* tv_out, int32_t* ti_out) {
  std::vector<float> top_v(k);
  std::vector<int32_t> top_i(k);
  for (int64_t i = row_lo; i < row_hi; ++i) {
    float m = m_in[i], s = s_in[i];
    std::copy(tv_in + i * k, tv_in + (i + 1) * k, top_v.begin());
    std::copy(ti_in + i * k, ti_in + (i + 1) * k, top_i.begin());
    fold_row(logits + i * t, bias, t, offset, k, m, s, top_v.data(), top_i.data());
    m_out[i] = m;
    s_out[i] = s;
    std::copy(top_v.begin(), top_v.end(), tv_out + i * k);
    std::copy(top_i.begin(), top_i.end(), ti_out + i * k);
  }
}

// ---- the float32 GEMM of JetjaxGemmReduce ----------------------------------------------------------
//
// A tile's logits C = A W (+ bias): A [rows, d] packed as strips of kMR rows ([strips, d, kMR], row
// i of strip q is row q * kMR + i), W packed as panels of kNR columns ([panels, d, kNR]). The micro-
// kernel keeps a kMR x kNR block of C in registers (kMR * kNR / kG accumulators) and walks d once:
// per step, kNR / kG vector loads of W and kMR broadcasts of A. Every C entry is one sequential
// fused multiply-add chain over d, whatever its row or column, so equal columns of W give equal
// logits (exact ties stay ties) and the thread count changes nothing. AVX-512: 12 x 32 (24 of the
// 32 vector registers); otherwise 6 x 16 in 8-float vectors (12 of 16 AVX2 registers).
#if defined(__AVX512F__)
constexpr int kG = 16, kMR = 12;
#else
constexpr int kG = 8, kMR = 6;
#endif
constexpr int kNV = 2, kNR = kNV * kG;
typedef float vg __attribute__((vector_size(4 * kG)));

inline vg load_g(const float* p) {
  vg v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// How far ahead (in steps over d) the micro-kernel asks for the cache lines of W's panel and of A's
// strip. Panels come from L2 (d x kNR floats: 160 KB at d = 1280, more than L1), and so does a strip
// at large d (61 KB at d = 1280); the hardware prefetchers alone left the GEMM at ~88% of its rate
// with everything in L1. Measured on a 2-core AVX-512 Xeon, the fused kernel's loop over a GPT-2-
// sized block: W ahead, GFLOP/s without -> with: d = 576 322 -> 356..384, 768 350 -> 360..392,
// 1280 330 -> 385..392 (16 to 64 steps within noise); A ahead too: +3..5% more at d = 576 ... 1280
// (two builds alternating step by step in one process; 8 to 32 steps within noise).
constexpr int64_t kPrefetchW = 32, kPrefetchA = 16;

// A prefetch of the cache line holding byte `offset` of `base`. The address is formed as an integer,
// not as a pointer: it may lie past the end of the array (a prefetch never faults).
inline void prefetch(const float* base, int64_t offset) {
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(base) + offset), 0, 3);
}

// c[i * ldc + j] = sum_p a[p * kMR + i] * w[p * kNR + j] for i < kMR, j < kNR.
inline void micro_kernel(const float* __restrict a, const float* __restrict w, int64_t d, float* __restrict c,
                         int64_t ldc) {
  vg acc[kMR][kNV] = {};
  for (int64_t p = 0; p < d; ++p) {
    // (past the panel's end these ask for the next panel, the next call's, and the next strip)
    for (int64_t line = 0; line < kNR * 4; line += 64) prefetch(w, (p + kPrefetchW) * kNR * 4 + line);
    prefetch(a, (p + kPrefetchA) * kMR * 4);
    vg b[kNV];
    for (int v = 0; v < kNV; ++v) b[v] = load_g(w + p * kNR + v * kG);
    for (int i = 0; i < kMR; ++i) {
      vg ai = a[p * kMR + i] - vg{};  // a broadcast (x - 0 == x exactly, so it folds away)
      for (int v = 0; v < kNV; ++v) acc[i][v] += ai * b[v];
    }
  }
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < kNV; ++v) std::memcpy(c + i * ldc + v * kG, &acc[i][v], sizeof(vg));
}

// Columns per block: the block's W panels (d x nc floats) stay in the L2 cache while every strip of
// the thread's rows passes over them; ~600 KB measured best on a 2 MB-L2 Xeon for d = 576 ... 1280.
int64_t block_cols(int64_t d) {
  int64_t nc = (600 * 1024 / 4 / std::max<int64_t>(d, 1)) / kNR * kNR;
  return std::max<int64_t>(kNR, std::min<int64_t>(nc, 8 * kNR));
}

// Strips [q_lo, q_hi) of one tile: logits block by block, each folded into its rows' states.
void gemm_reduce_strips(const float* a, const float* w, const float* bias, int64_t d, int64_t t, int32_t offset,
                        int64_t k, int64_t q_lo, int64_t q_hi, float* m, float* s, float* tv, int32_t* ti) {
  const int64_t nc_max = block_cols(d);
  std::vector<float> c(kMR * nc_max);
  for (int64_t jc = 0; jc < t; jc += nc_max) {
    int64_t nc = std::min(nc_max, t - jc);
    for (int64_t q = q_lo; q < q_hi; ++q) {
      const float* aq = a + q * d * kMR;
      for (int64_t jr = 0; jr < nc; jr += kNR) micro_kernel(aq, w + (jc + jr) * d, d, c.data() + jr, nc_max);
      for (int64_t i = 0; i < kMR; ++i) {
        int64_t row = q * kMR + i;
        fold_row(c.data() + i * nc_max, bias + jc, nc, offset + static_cast<int32_t>(jc), k, m[row], s[row],
                 tv + row * k, ti + row * k);
      }
    }
  }
}

// The cores this process may run on (its affinity mask where the OS tells it).
int64_t usable_cores() {
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  unsigned hw = std::thread::hardware_concurrency();
  return hw ? hw : 1;
}

// Runs fn(lo, hi) over [0, n) split into one range per thread, at least `grain` items each: at most
// `max_threads` threads (0: one per usable core; native.py passes the cores per device of the mesh, so
// that devices running their shards at once do not oversubscribe the cores).
template <typename Fn>
void parallel_for(int64_t n, int64_t grain, int64_t max_threads, Fn fn) {
  int64_t cap = max_threads > 0 ? max_threads : usable_cores();
  int64_t n_threads = std::max<int64_t>(1, std::min<int64_t>(cap, n / grain));
  int64_t per = (n + n_threads - 1) / n_threads;
  std::vector<std::thread> pool;
  for (int64_t w = 1; w < n_threads; ++w) {
    int64_t lo = w * per, hi = std::min(n, lo + per);
    if (lo < hi) pool.emplace_back(fn, lo, hi);
  }
  fn(0, std::min(n, per));
  for (auto& th : pool) th.join();
}

ffi::Error TileReduceImpl(ffi::Buffer<ffi::F32> logits, ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::S32> offset,
                          ffi::Buffer<ffi::F32> m, ffi::Buffer<ffi::F32> s, ffi::Buffer<ffi::F32> top_v,
                          ffi::Buffer<ffi::S32> top_i, ffi::ResultBuffer<ffi::F32> m_out,
                          ffi::ResultBuffer<ffi::F32> s_out, ffi::ResultBuffer<ffi::F32> top_v_out,
                          ffi::ResultBuffer<ffi::S32> top_i_out, int64_t threads) {
  auto dims = logits.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("jetjax_tile_reduce: logits must be [rows, tile]");
  int64_t rows = dims[0], t = dims[1];
  auto kd = top_v.dimensions();
  if (kd.size() != 2 || kd[0] != rows || kd[1] < 1)
    return ffi::Error::InvalidArgument("jetjax_tile_reduce: top values must be [rows, k], k >= 1");
  if (bias.element_count() != t || m.element_count() != rows || s.element_count() != rows ||
      top_i.element_count() != rows * kd[1])
    return ffi::Error::InvalidArgument("jetjax_tile_reduce: operand shapes disagree");
  int64_t k = kd[1];
  int32_t off = offset.typed_data()[0];
  parallel_for(rows, 64, threads, [&](int64_t lo, int64_t hi) {
    reduce_rows(logits.typed_data(), bias.typed_data(), t, off, k, lo, hi, m.typed_data(), s.typed_data(),
                top_v.typed_data(), top_i.typed_data(), m_out->typed_data(), s_out->typed_data(),
                top_v_out->typed_data(), top_i_out->typed_data());
  });
  return ffi::Error::Success();
}

ffi::Error GemmReduceImpl(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> bias,
                          ffi::Buffer<ffi::S32> valid, ffi::Buffer<ffi::S32> offset, ffi::Buffer<ffi::F32> m,
                          ffi::Buffer<ffi::F32> s, ffi::Buffer<ffi::F32> top_v, ffi::Buffer<ffi::S32> top_i,
                          ffi::ResultBuffer<ffi::F32> m_out, ffi::ResultBuffer<ffi::F32> s_out,
                          ffi::ResultBuffer<ffi::F32> top_v_out, ffi::ResultBuffer<ffi::S32> top_i_out,
                          int64_t threads) {
  auto ad = a.dimensions(), wd = w.dimensions(), bd = bias.dimensions(), kd = top_v.dimensions();
  if (ad.size() != 3 || ad[2] != kMR)
    return ffi::Error::InvalidArgument("jetjax_gemm_reduce: rows must be packed as [strips, d, MR]");
  if (bd.size() != 2) return ffi::Error::InvalidArgument("jetjax_gemm_reduce: the bias must be [tiles, tile]");
  int64_t strips = ad[0], d = ad[1], rows = strips * kMR, n_tiles = bd[0], t = bd[1];
  if (wd.size() != 4 || wd[0] != n_tiles || wd[2] != d || wd[3] != kNR || wd[1] * kNR < t)
    return ffi::Error::InvalidArgument("jetjax_gemm_reduce: the tiles must be packed as [tiles, panels, d, NR]");
  if (kd.size() != 2 || kd[0] != rows || kd[1] < 1 || m.element_count() != rows || s.element_count() != rows ||
      top_i.element_count() != rows * kd[1])
    return ffi::Error::InvalidArgument("jetjax_gemm_reduce: the running state must have strips * MR rows");
  int64_t k = kd[1];
  // The state is updated in place in the results (aliased to the inputs by native.py; copied if not).
  if (m_out->typed_data() != m.typed_data()) std::copy_n(m.typed_data(), rows, m_out->typed_data());
  if (s_out->typed_data() != s.typed_data()) std::copy_n(s.typed_data(), rows, s_out->typed_data());
  if (top_v_out->typed_data() != top_v.typed_data()) std::copy_n(top_v.typed_data(), rows * k, top_v_out->typed_data());
  if (top_i_out->typed_data() != top_i.typed_data()) std::copy_n(top_i.typed_data(), rows * k, top_i_out->typed_data());
  int32_t off = offset.typed_data()[0];
  const int64_t panels = wd[1];
  // Rows from `valid` on are a block's padding: their strips are skipped and their state left as it came.
  const int64_t used = (std::clamp<int64_t>(valid.typed_data()[0], 0, rows) + kMR - 1) / kMR;
  parallel_for(used, 4, threads, [&](int64_t lo, int64_t hi) {  // each thread walks every tile for its rows
    for (int64_t tile = 0; tile < n_tiles; ++tile)
      gemm_reduce_strips(a.typed_data(), w.typed_data() + tile * panels * d * kNR, bias.typed_data() + tile * t, d, t,
                         off + static_cast<int32_t>(tile * t), k, lo, hi, m_out->typed_data(), s_out->typed_data(),
                         top_v_out->typed_data(), top_i_out->typed_data());
  });
  return ffi::Error::Success();
}

}  // namespace

// The packing the GEMM expects (rows per strip, columns per panel): read by native.py through ctypes.
extern "C" int jetjax_gemm_layout(int* mr, int* nr) {
  *mr = kMR;
  *nr = kNR;
  return 0;
}

// Both entry points end with (offset, m, s, top values, top ids), return the four updated states and
// take the attribute `threads` (the most threads to use; 0: one per usable core).
template <typename Binding>
auto with_state(Binding binding) {
  return std::move(binding).template Arg<ffi::Buffer<ffi::S32>>()  // (the builder methods take an rvalue)
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Arg<ffi::Buffer<ffi::S32>>()
      .template Ret<ffi::Buffer<ffi::F32>>()
      .template Ret<ffi::Buffer<ffi::F32>>()
      .template Ret<ffi::Buffer<ffi::F32>>()
      .template Ret<ffi::Buffer<ffi::S32>>()
      .template Attr<int64_t>("threads");
}

// (logits, bias, ...state)
XLA_FFI_DEFINE_HANDLER_SYMBOL(JetjaxTileReduce, TileReduceImpl,
                              with_state(ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()));

// (packed rows, packed tiles, bias, valid rows, ...state)
XLA_FFI_DEFINE_HANDLER_SYMBOL(JetjaxGemmReduce, GemmReduceImpl,
                              with_state(ffi::Ffi::Bind()
                                             .Arg<ffi::Buffer<ffi::F32>>()
                                             .Arg<ffi::Buffer<ffi::F32>>()
                                             .Arg<ffi::Buffer<ffi::F32>>()
                                             .Arg<ffi::Buffer<ffi::S32>>()));
