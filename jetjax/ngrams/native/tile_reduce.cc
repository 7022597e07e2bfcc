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
#include <string>
#include <thread>
#include <utility>
#include <vector>

#ifdef __linux__
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#include <immintrin.h>
#define JETJAX_AMX 1
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
inline void prefetch(const void* base, int64_t offset) {
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

// Strips [q_lo, q_hi) of one tile (strips of kRows rows): logits block by block, nc_max columns at a
// time, formed by block(q, column, c, ldc) (strip q's logits for kCols columns from `column` into
// c[i * ldc + j]), each block folded into its rows' states while in L1.
template <int64_t kRows, int64_t kCols, typename Block>
void fold_strips(Block block, int64_t nc_max, const float* bias, int64_t t, int32_t offset, int64_t k, int64_t q_lo,
                 int64_t q_hi, float* m, float* s, float* tv, int32_t* ti) {
  std::vector<float> c(kRows * nc_max);
  for (int64_t jc = 0; jc < t; jc += nc_max) {
    int64_t nc = std::min(nc_max, t - jc);
    for (int64_t q = q_lo; q < q_hi; ++q) {
      for (int64_t jr = 0; jr < nc; jr += kCols) block(q, jc + jr, c.data() + jr, nc_max);
      for (int64_t i = 0; i < kRows; ++i) {
        int64_t row = q * kRows + i;
        fold_row(c.data() + i * nc_max, bias + jc, nc, offset + static_cast<int32_t>(jc), k, m[row], s[row],
                 tv + row * k, ti + row * k);
      }
    }
  }
}

// Strips [q_lo, q_hi) of one float32 tile.
void gemm_reduce_strips(const float* a, const float* w, const float* bias, int64_t d, int64_t t, int32_t offset,
                        int64_t k, int64_t q_lo, int64_t q_hi, float* m, float* s, float* tv, int32_t* ti) {
  auto block = [&](int64_t q, int64_t col, float* c, int64_t ldc) {
    micro_kernel(a + q * d * kMR, w + col * d, d, c, ldc);
  };
  fold_strips<kMR, kNR>(block, block_cols(d), bias, t, offset, k, q_lo, q_hi, m, s, tv, ti);
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

// The running state of `rows` rows (m, s [rows], top values and ids [rows, k]): its shapes checked
// (an error naming the kernel if they disagree) and k read off; then copied to the results, which the
// kernels update in place (aliased to the inputs by native.py: then nothing is copied).
ffi::Error take_state(const char* kernel, int64_t rows, ffi::Buffer<ffi::F32>& m, ffi::Buffer<ffi::F32>& s,
                      ffi::Buffer<ffi::F32>& top_v, ffi::Buffer<ffi::S32>& top_i, ffi::ResultBuffer<ffi::F32>& m_out,
                      ffi::ResultBuffer<ffi::F32>& s_out, ffi::ResultBuffer<ffi::F32>& top_v_out,
                      ffi::ResultBuffer<ffi::S32>& top_i_out, int64_t* k_out) {
  auto kd = top_v.dimensions();
  if (kd.size() != 2 || kd[0] != rows || kd[1] < 1 || m.element_count() != rows || s.element_count() != rows ||
      top_i.element_count() != rows * kd[1])
    return ffi::Error::InvalidArgument(std::string(kernel) + ": the running state must have one row per packed row");
  const int64_t k = *k_out = kd[1];
  if (m_out->typed_data() != m.typed_data()) std::copy_n(m.typed_data(), rows, m_out->typed_data());
  if (s_out->typed_data() != s.typed_data()) std::copy_n(s.typed_data(), rows, s_out->typed_data());
  if (top_v_out->typed_data() != top_v.typed_data()) std::copy_n(top_v.typed_data(), rows * k, top_v_out->typed_data());
  if (top_i_out->typed_data() != top_i.typed_data()) std::copy_n(top_i.typed_data(), rows * k, top_i_out->typed_data());
  return ffi::Error::Success();
}

ffi::Error GemmReduceImpl(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> bias,
                          ffi::Buffer<ffi::S32> valid, ffi::Buffer<ffi::S32> offset, ffi::Buffer<ffi::F32> m,
                          ffi::Buffer<ffi::F32> s, ffi::Buffer<ffi::F32> top_v, ffi::Buffer<ffi::S32> top_i,
                          ffi::ResultBuffer<ffi::F32> m_out, ffi::ResultBuffer<ffi::F32> s_out,
                          ffi::ResultBuffer<ffi::F32> top_v_out, ffi::ResultBuffer<ffi::S32> top_i_out,
                          int64_t threads) {
  auto ad = a.dimensions(), wd = w.dimensions(), bd = bias.dimensions();
  if (ad.size() != 3 || ad[2] != kMR)
    return ffi::Error::InvalidArgument("jetjax_gemm_reduce: rows must be packed as [strips, d, MR]");
  if (bd.size() != 2) return ffi::Error::InvalidArgument("jetjax_gemm_reduce: the bias must be [tiles, tile]");
  int64_t strips = ad[0], d = ad[1], rows = strips * kMR, n_tiles = bd[0], t = bd[1];
  if (wd.size() != 4 || wd[0] != n_tiles || wd[2] != d || wd[3] != kNR || wd[1] * kNR < t)
    return ffi::Error::InvalidArgument("jetjax_gemm_reduce: the tiles must be packed as [tiles, panels, d, NR]");
  int64_t k;
  if (auto err = take_state("jetjax_gemm_reduce", rows, m, s, top_v, top_i, m_out, s_out, top_v_out, top_i_out, &k);
      err.failure())
    return err;
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

// ---- the bfloat16 GEMM of JetjaxGemmReduceBf16 (Intel AMX) ---------------------------------------
//
// Logits C = A W (+ bias) from bfloat16 operands, accumulated in float32 by AMX's TDPBF16PS, in
// blocks of 32 rows x 32 columns held in four 16 x 16 float32 tile registers; A's two 16-row tiles
// and W's two 16-column tiles take the other four, 32 steps of d at a time. A [rows, d] is plain
// row-major (rows a multiple of 32, d of 32; zero padding); each tile of W is packed as panels of
// 32 columns in AMX's pair layout, [panels, d / 2, 32, 2] (W[2p + e][32 q + j] at [q][p][j][e]).
// Each C entry is computed the same way whatever its row, column or thread (so equal columns still
// give equal logits); its summation order is the hardware's, not a sequential chain. The logits are
// folded as the float32 kernel's are (fold_row), a block of columns at a time while in L1.
constexpr int kAR = 32, kAC = 32, kAK = 32;  // rows per strip, columns per panel, d per step

#ifdef JETJAX_AMX
// AMX's tile data needs the kernel's permission, asked for once per process (Linux >= 5.16).
bool amx_permitted() {
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
  return ok;
}

// Every tile register as 16 rows of 64 bytes (float32 C: 16 x 16; bfloat16 A: 16 x 32; W: 16 pairs
// x 16 columns). The configuration is per thread.
void amx_configure() {
  alignas(64) uint8_t cfg[64] = {};
  cfg[0] = 1;  // palette 1
  for (int t = 0; t < 8; ++t) {
    cfg[16 + 2 * t] = 64;  // bytes per row
    cfg[48 + t] = 16;      // rows
  }
  _tile_loadconfig(cfg);
}

// c[i * ldc + j] (i, j < 32) = sum_p a[i * lda + p] * w-panel[p][j] over p < d.
inline void amx_block(const uint16_t* a, int64_t lda, const uint16_t* w, int64_t d, float* c, int64_t ldc) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t p = 0; p < d; p += kAK) {
    // The next step's rows of A and the one after's pairs of W, asked for ahead as in micro_kernel:
    // without, 1220 GFLOP/s for this loop over a GPT-2-large block (d = 1280); with, 1610-1730.
    if (p + kAK < d)
      for (int r = 0; r < kAR; ++r) __builtin_prefetch(a + r * lda + p + kAK, 0, 3);
    if (p + 2 * kAK < d)
      for (int l = 0; l < kAK * kAC * 2 / 64; ++l) __builtin_prefetch(w + (p + 2 * kAK) * kAC + l * 32, 0, 3);
    _tile_loadd(4, a + p, lda * 2);
    _tile_loadd(5, a + 16 * lda + p, lda * 2);
    const uint16_t* wp = w + p * kAC;  // pairs p / 2 ... p / 2 + 15, 64 bfloat16 (128 bytes) each
    _tile_loadd(6, wp, kAC * 4);
    _tile_loadd(7, wp + 32, kAC * 4);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, ldc * 4);
  _tile_stored(1, c + 16, ldc * 4);
  _tile_stored(2, c + 16 * ldc, ldc * 4);
  _tile_stored(3, c + 16 * ldc + 16, ldc * 4);
}

// Columns per block: the block's W panels (d x nc bfloat16) stay in L2 while the thread's strips pass.
int64_t amx_block_cols(int64_t d) {
  int64_t nc = (512 * 1024 / 2 / std::max<int64_t>(d, 1)) / kAC * kAC;
  return std::max<int64_t>(kAC, std::min<int64_t>(nc, 16 * kAC));
}

// Strips [q_lo, q_hi) of one bfloat16 tile.
void amx_reduce_strips(const uint16_t* a, const uint16_t* w, const float* bias, int64_t d, int64_t t, int32_t offset,
                       int64_t k, int64_t q_lo, int64_t q_hi, float* m, float* s, float* tv, int32_t* ti) {
  auto block = [&](int64_t q, int64_t col, float* c, int64_t ldc) {
    amx_block(a + q * kAR * d, d, w + col * d, d, c, ldc);
  };
  fold_strips<kAR, kAC>(block, amx_block_cols(d), bias, t, offset, k, q_lo, q_hi, m, s, tv, ti);
}
#endif

ffi::Error GemmReduceBf16Impl(ffi::Buffer<ffi::U16> a, ffi::Buffer<ffi::U16> w, ffi::Buffer<ffi::F32> bias,
                              ffi::Buffer<ffi::S32> valid, ffi::Buffer<ffi::S32> offset, ffi::Buffer<ffi::F32> m,
                              ffi::Buffer<ffi::F32> s, ffi::Buffer<ffi::F32> top_v, ffi::Buffer<ffi::S32> top_i,
                              ffi::ResultBuffer<ffi::F32> m_out, ffi::ResultBuffer<ffi::F32> s_out,
                              ffi::ResultBuffer<ffi::F32> top_v_out, ffi::ResultBuffer<ffi::S32> top_i_out,
                              int64_t threads) {
#ifndef JETJAX_AMX
  return ffi::Error::Internal("jetjax_gemm_reduce_bf16: this build of the kernel has no AMX");
#else
  if (!amx_permitted()) return ffi::Error::Internal("jetjax_gemm_reduce_bf16: the OS refused AMX's tile data");
  auto ad = a.dimensions(), wd = w.dimensions(), bd = bias.dimensions();
  if (ad.size() != 2 || ad[0] % kAR != 0 || ad[1] % kAK != 0)
    return ffi::Error::InvalidArgument("jetjax_gemm_reduce_bf16: rows must be [32 r, 32 c] bfloat16 bits");
  if (bd.size() != 2) return ffi::Error::InvalidArgument("jetjax_gemm_reduce_bf16: the bias must be [tiles, tile]");
  int64_t rows = ad[0], d = ad[1], n_tiles = bd[0], t = bd[1];
  if (wd.size() != 5 || wd[0] != n_tiles || wd[2] * 2 != d || wd[3] != kAC || wd[4] != 2 || wd[1] * kAC < t)
    return ffi::Error::InvalidArgument(
        "jetjax_gemm_reduce_bf16: the tiles must be packed as [tiles, panels, d / 2, 32, 2]");
  int64_t k;
  if (auto err = take_state("jetjax_gemm_reduce_bf16", rows, m, s, top_v, top_i, m_out, s_out, top_v_out, top_i_out,
                            &k);
      err.failure())
    return err;
  int32_t off = offset.typed_data()[0];
  const int64_t panels = wd[1];
  const int64_t used = (std::clamp<int64_t>(valid.typed_data()[0], 0, rows) + kAR - 1) / kAR;
  parallel_for(used, 1, threads, [&](int64_t lo, int64_t hi) {
    amx_configure();
    for (int64_t tile = 0; tile < n_tiles; ++tile)
      amx_reduce_strips(a.typed_data(), w.typed_data() + tile * panels * d * kAC, bias.typed_data() + tile * t, d, t,
                        off + static_cast<int32_t>(tile * t), k, lo, hi, m_out->typed_data(), s_out->typed_data(),
                        top_v_out->typed_data(), top_i_out->typed_data());
    _tile_release();
  });
  return ffi::Error::Success();
#endif
}

}  // namespace

// Whether this build has the AMX GEMM and the OS lets this process use it: read by native.py.
extern "C" int jetjax_amx() {
#ifdef JETJAX_AMX
  return amx_permitted() ? 1 : 0;
#else
  return 0;
#endif
}

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

// (bfloat16 rows, packed bfloat16 tiles, bias, valid rows, ...state)
XLA_FFI_DEFINE_HANDLER_SYMBOL(JetjaxGemmReduceBf16, GemmReduceBf16Impl,
                              with_state(ffi::Ffi::Bind()
                                             .Arg<ffi::Buffer<ffi::U16>>()
                                             .Arg<ffi::Buffer<ffi::U16>>()
                                             .Arg<ffi::Buffer<ffi::F32>>()
                                             .Arg<ffi::Buffer<ffi::S32>>()));

// (packed rows, packed tiles, bias, valid rows, ...state)
XLA_FFI_DEFINE_HANDLER_SYMBOL(JetjaxGemmReduce, GemmReduceImpl,
                              with_state(ffi::Ffi::Bind()
                                             .Arg<ffi::Buffer<ffi::F32>>()
                                             .Arg<ffi::Buffer<ffi::F32>>()
                                             .Arg<ffi::Buffer<ffi::F32>>()
                                             .Arg<ffi::Buffer<ffi::S32>>()));
