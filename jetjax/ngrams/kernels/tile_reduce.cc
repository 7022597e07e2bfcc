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
// Built on first use by jetjax/ngrams/native.py with the machine's own -march; see there.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
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

inline vf splat(float x) { return vf{} + x; }

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

void reduce_rows(const float* logits, const float* bias, int64_t t, int32_t offset, int64_t k, int64_t row_lo,
                 int64_t row_hi, const float* m_in, const float* s_in, const float* tv_in, const int32_t* ti_in,
                 float* m_out, float* s_out, float* tv_out, int32_t* ti_out) {
  std::vector<float> x(t);
  std::vector<float> top_v(k);
  std::vector<int32_t> top_i(k);
  for (int64_t i = row_lo; i < row_hi; ++i) {
    const float* row = logits + i * t;
    int64_t tv = t - t % kLanes;  // whole vectors; the rest (t % 16 columns) one by one
    vf mx_v = splat(-INFINITY);
    vi nan_v = vi{};
    for (int64_t j = 0; j < tv; j += kLanes) {
      vf v = load(row + j) + load(bias + j);
      std::memcpy(x.data() + j, &v, sizeof v);
      mx_v = v > mx_v ? v : mx_v;
      nan_v |= v != v;
    }
    float mx = -INFINITY;
    bool nan = false;
    for (int64_t j = tv; j < t; ++j) {
      float v = row[j] + bias[j];
      x[j] = v;
      mx = v > mx ? v : mx;
      nan |= v != v;
    }
    for (int l = 0; l < kLanes; ++l) mx = mx_v[l] > mx ? mx_v[l] : mx, nan |= nan_v[l] != 0;
    float m_old = m_in[i];
    float m_new = mx > m_old ? mx : m_old;
    // Summed in two levels (16 vectors into a partial, partials into the total), so a lane adds
    // ~t / 256 + 16 terms in sequence rather than t / 16: float32 rounding as small as XLA's own.
    vf sum_v = vf{};
    const vf m_v = splat(m_new);
    for (int64_t j0 = 0; j0 < tv; j0 += kLanes * kLanes) {
      vf part = vf{};
      for (int64_t j = j0, j1 = std::min<int64_t>(tv, j0 + kLanes * kLanes); j < j1; j += kLanes)
        part += exp_nonpos(load(x.data() + j) - m_v);
      sum_v += part;
    }
    float sum = 0.0f;
    for (int l = 0; l < kLanes; ++l) sum += sum_v[l];
    for (int64_t j = tv; j < t; ++j) sum += scalar_exp_nonpos(x[j] - m_new);
    float s_new = s_in[i] * std::exp(m_old - m_new) + sum;
    if (nan || m_old != m_old || s_in[i] != s_in[i]) {
      m_new = NAN;
      s_new = NAN;
    }
    std::copy(tv_in + i * k, tv_in + (i + 1) * k, top_v.begin());
    std::copy(ti_in + i * k, ti_in + (i + 1) * k, top_i.begin());
    float thr = top_v[k - 1];
    for (int64_t j0 = 0; j0 < t; j0 += kLanes) {
      int64_t j1 = std::min<int64_t>(j0 + kLanes, t);
      if (j1 - j0 == kLanes && !any(load(x.data() + j0) > splat(thr))) continue;
      for (int64_t j = j0; j < j1; ++j) {
        float v = x[j];
        if (!(v > thr)) continue;
        int64_t p = k - 1;  // the new value goes after every held value >= it
        while (p > 0 && top_v[p - 1] < v) {
          top_v[p] = top_v[p - 1];
          top_i[p] = top_i[p - 1];
          --p;
        }
        top_v[p] = v;
        top_i[p] = offset + static_cast<int32_t>(j);
        thr = top_v[k - 1];
      }
    }
    m_out[i] = m_new;
    s_out[i] = s_new;
    std::copy(top_v.begin(), top_v.end(), tv_out + i * k);
    std::copy(top_i.begin(), top_i.end(), ti_out + i * k);
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

ffi::Error TileReduceImpl(ffi::Buffer<ffi::F32> logits, ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::S32> offset,
                          ffi::Buffer<ffi::F32> m, ffi::Buffer<ffi::F32> s, ffi::Buffer<ffi::F32> top_v,
                          ffi::Buffer<ffi::S32> top_i, ffi::ResultBuffer<ffi::F32> m_out,
                          ffi::ResultBuffer<ffi::F32> s_out, ffi::ResultBuffer<ffi::F32> top_v_out,
                          ffi::ResultBuffer<ffi::S32> top_i_out) {
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
  int64_t n_threads = std::max<int64_t>(1, std::min<int64_t>(usable_cores(), rows / 64));
  auto run = [&](int64_t lo, int64_t hi) {
    reduce_rows(logits.typed_data(), bias.typed_data(), t, off, k, lo, hi, m.typed_data(), s.typed_data(),
                top_v.typed_data(), top_i.typed_data(), m_out->typed_data(), s_out->typed_data(),
                top_v_out->typed_data(), top_i_out->typed_data());
  };
  std::vector<std::thread> pool;
  int64_t per = (rows + n_threads - 1) / n_threads;
  for (int64_t w = 1; w < n_threads; ++w) {
    int64_t lo = w * per, hi = std::min(rows, lo + per);
    if (lo < hi) pool.emplace_back(run, lo, hi);
  }
  run(0, std::min(rows, per));
  for (auto& th : pool) th.join();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JetjaxTileReduce, TileReduceImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
