// Shared pieces of SFMNet's CPU kernels (XLA FFI handlers, float32, NHWC):
// 8- and 16-lane vectors, the register-tiled multiply-add loop, a row-parallel
// loop on XLA's thread pool. Built and loaded by sfmnet_jax/cpu_kernels.py.

#ifndef SFMNET_JAX_CSRC_KERNELS_H_
#define SFMNET_JAX_CSRC_KERNELS_H_

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>

#include "xla/ffi/api/ffi.h"

namespace sfmnet {

namespace ffi = xla::ffi;

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));

inline v8 load(const float* p) { return *reinterpret_cast<const v8u*>(p); }
inline void store(float* p, v8 v) { *reinterpret_cast<v8u*>(p) = v; }

template <typename V>
constexpr int kLanes = sizeof(V) / sizeof(float);

template <typename V>
inline V Load(const float* p) {
  return load(p);
}

// The register tile for 16 output channels (one packed kernel block): with
// AVX-512 (32 vector registers), 16 rows x one 16-lane vector; otherwise 6 rows x
// two 8-lane vectors (12 of 16 registers). Each output is summed over the same
// products in the same order either way: results are identical.
#ifdef __AVX512F__
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
inline void store(float* p, v16 v) { *reinterpret_cast<v16u*>(p) = v; }
template <>
inline v16 Load<v16>(const float* p) {
  return *reinterpret_cast<const v16u*>(p);
}
typedef v16 BlockVec;
constexpr int kTileRows = 16;
#else
typedef v8 BlockVec;
constexpr int kTileRows = 6;
#endif
constexpr int kBlockVecs = 16 / kLanes<BlockVec>;
// With 16-lane vectors, 32 columns (two packed blocks) per register tile where there
// are that many: 8 rows x two vectors, 10 loads per 16 multiply-adds instead of 17.
constexpr bool kPairTiles = kLanes<BlockVec> == 16;
constexpr int kPairRows = 8;
// Rows that may join a last whole tile (see RowTiles): up to 24 accumulators with
// AVX-512's 32 registers; none with AVX2's 16 (6 x 2 already take 12).
constexpr int kPairExtra = 4;
constexpr int kTileExtra = kPairTiles ? 8 : 0;

// s[r][v] += sum_{k < k_len} a[r * a_row + k * a_k] * b[k * ldb + vstride * v + lane]:
// MR rows of a (broadcast) times NV vectors V of b (vstride floats apart: kLanes<V>
// for adjacent columns), accumulated in registers.
template <int MR, int NV, typename V>
inline void MultiplyAdd(V (&s)[MR][NV], const float* a, long a_row, long a_k,
                        const float* b, long ldb, long k_len, long vstride = kLanes<V>) {
  for (long k = 0; k < k_len; ++k) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = Load<V>(b + k * ldb + vstride * v);
    for (int r = 0; r < MR; ++r) {
      const float av = a[r * a_row + k * a_k];
      for (int v = 0; v < NV; ++v) s[r][v] += av * bv[v];
    }
  }
}

template <int R>
using RowCount = std::integral_constant<int, R>;

template <int R, typename F>
inline void TailTile(long left, long r, F& f) {
  if constexpr (R > 0) {
    if (left == R) f(RowCount<R>{}, r);
    else TailTile<R - 1>(left, r, f);
  }
}

// f(RowCount<MR>{}, r) for each whole tile of MR rows in [0, m), then once for the
// m % MR rows left: f is a generic lambda, called with its tile height as a type.
// Up to `Extra` rows left join the last whole tile instead (one tile of MR + left
// rows, where the registers allow): a tile of one or two rows is latency-bound, a
// chain of dependent multiply-adds per register (width 65, the half spectrum of 128:
// 8 tiles of 8 and one of 1 took 19% longer than 64 pixels). Each output's sum is
// the same whatever its tile.
template <int MR, int Extra = 0, typename F>
inline void RowTiles(long m, F f) {
  const long whole = m / MR, left = m % MR;
  const bool merge = Extra > 0 && whole > 0 && left > 0 && left <= Extra;
  long r = 0;
  for (long t = 0; t < whole - merge; ++t, r += MR) f(RowCount<MR>{}, r);
  if (merge) TailTile<MR + Extra>(m - r, r, f);
  else TailTile<MR - 1>(left, r, f);
}

// Calls fn(begin, end) over [0, items) in tasks of `per_task` items, on the
// calling thread and up to pool.num_threads() - 1 of XLA's pool threads. The
// caller works too and never waits for a helper that has not started (a late
// helper finds no task and touches nothing), so a busy pool cannot deadlock it.
// Each item is computed by exactly one task: results never depend on scheduling.
struct Tasks {
  std::function<void(long, long)> fn;
  long items, per_task;
  std::atomic<long> next{0};
  std::atomic<int> active{0};

  void Work() {
    active.fetch_add(1);
    for (long t; (t = next.fetch_add(1)) * per_task < items;)
      fn(t * per_task, std::min(items, (t + 1) * per_task));
    active.fetch_sub(1);
  }
};

inline void ParallelFor(ffi::ThreadPool& pool, long items, long per_task,
                        std::function<void(long, long)> fn) {
  if (items <= 0) return;
  auto tasks = std::make_shared<Tasks>();
  tasks->fn = std::move(fn);
  tasks->items = items;
  tasks->per_task = std::max(1L, per_task);
  const long n_tasks = (items + tasks->per_task - 1) / tasks->per_task;
  const long helpers = std::min<long>(pool.num_threads(), n_tasks) - 1;
  for (long t = 0; t < helpers; ++t) pool.Schedule([tasks] { tasks->Work(); });
  tasks->Work();
  while (tasks->active.load() != 0) std::this_thread::yield();
}

// About eight tasks per thread: balance without much scheduling.
inline long TaskSize(ffi::ThreadPool& pool, long items) {
  return std::max(1L, items / (8 * std::max(1L, static_cast<long>(pool.num_threads()))));
}

// Zeroed, then rows y0 + r (r < count) of image n copied at pixel offset 1 of
// row r of `pad` (stride `stride` floats): the zero-padded input rows.
inline void PadRows(const float* x, long n, long h, long w, long c, long y0, int count,
                    long stride, float* pad) {
  std::fill(pad, pad + count * stride, 0.0f);
  for (int r = 0; r < count; ++r) {
    const long y = y0 + r;
    if (y >= 0 && y < h)
      std::memcpy(pad + r * stride + c, x + (n * h + y) * w * c, sizeof(float) * w * c);
  }
}

// Calls f(V{}) with V the widest vector type whose lanes divide `channels`
// (16-lane vectors with AVX-512, else 8-lane ones: channel counts here are
// multiples of 8). Elementwise work, so the result is the same either way.
template <typename F>
inline void ForChannelVectors(long channels, F f) {
  if (channels % kLanes<BlockVec> == 0) f(BlockVec{});
  else f(v8{});
}

// Winograd's F(M x M, 3x3): each M x M output tile from an N x N input window
// (N = M + 2), A^T [(G k G^T) . (B^T d B)] A. The 1-D transforms, on vectors:
// B^T (input), A^T (output), A (the kernel gradient's output-gradient transform).
// F2 (M = 2) needs 16 products per 4 outputs and channel pair, F4 (M = 4) 36 per 16;
// F4's transforms have larger coefficients, so it rounds a few times worse.
struct F2 {
  static constexpr int M = 2, N = 4;
  static constexpr const char* kSuffix = "";  // of the FFI target names
  static constexpr double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  template <typename V>
  static void BT(const V (&x)[4], V (&y)[4]) {
    y[0] = x[0] - x[2];
    y[1] = x[1] + x[2];
    y[2] = x[2] - x[1];
    y[3] = x[1] - x[3];
  }
  template <typename V>
  static void AT(const V (&x)[4], V (&y)[2]) {
    y[0] = x[0] + x[1] + x[2];
    y[1] = x[1] - x[2] - x[3];
  }
  template <typename V>
  static void A(const V (&x)[2], V (&y)[4]) {
    y[0] = x[0];
    y[1] = x[0] + x[1];
    y[2] = x[0] - x[1];
    y[3] = -x[1];
  }
};

struct F4 {
  static constexpr int M = 4, N = 6;
  static constexpr const char* kSuffix = "4";
  static constexpr double G[6][3] = {{0.25, 0, 0},
                                     {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                     {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                     {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                     {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                     {0, 0, 1}};
  template <typename V>
  static void BT(const V (&x)[6], V (&y)[6]) {
    const V a = x[4] - 4.0f * x[2], b = x[3] - 4.0f * x[1];
    const V c = x[4] - x[2], e = 2.0f * (x[3] - x[1]);
    y[0] = 4.0f * x[0] - 5.0f * x[2] + x[4];
    y[1] = a + b;
    y[2] = a - b;
    y[3] = c + e;
    y[4] = c - e;
    y[5] = 4.0f * x[1] - 5.0f * x[3] + x[5];
  }
  template <typename V>
  static void AT(const V (&x)[6], V (&y)[4]) {
    const V s = x[1] + x[2], t = x[1] - x[2], u = x[3] + x[4], w = x[3] - x[4];
    y[0] = x[0] + s + u;
    y[1] = t + 2.0f * w;
    y[2] = s + 4.0f * u;
    y[3] = t + 8.0f * w + x[5];
  }
  template <typename V>
  static void A(const V (&x)[4], V (&y)[6]) {
    const V e = x[0] + x[2], o = x[1] + x[3];
    const V e2 = x[0] + 4.0f * x[2], o2 = 2.0f * x[1] + 8.0f * x[3];
    y[0] = x[0];
    y[1] = e + o;
    y[2] = e - o;
    y[3] = e2 + o2;
    y[4] = e2 - o2;
    y[5] = x[3];
  }
};

// Tiles of F covering `len` pixels (the last one partial where M does not divide it).
template <typename F>
inline long TileCount(long len) {
  return (len + F::M - 1) / F::M;
}

// Input transform of nt tiles: tile t's N x N window starts at d + M t * ci (rows
// `stride` floats apart, pixels ci apart); writes v[p = N r + q][t][c] = (B^T d B)[r, q]
// for c < ci (a multiple of 8). Neighbouring windows share two columns, so each
// column's B^T d is computed once.
template <typename F>
inline void WinogradInput(const float* d, long stride, long nt, long ci, float* v) {
  constexpr int M = F::M, N = F::N;
  ForChannelVectors(ci, [&](auto vec) {
    using V = decltype(vec);
    auto column = [&](const float* p, V (&b)[N]) {  // b = B^T (the column at p)
      V x[N];
      for (int r = 0; r < N; ++r) x[r] = Load<V>(p + r * stride);
      F::BT(x, b);
    };
    for (long c = 0; c < ci; c += kLanes<V>) {
      V bd[N][N];  // bd[q][r] = (B^T d)[r, q] of the current window
      for (int q = 0; q < N - M; ++q) column(d + q * ci + c, bd[q]);
      for (long t = 0; t < nt; ++t) {
        const float* d0 = d + M * t * ci + c;
        for (int q = N - M; q < N; ++q) column(d0 + q * ci, bd[q]);
        for (int r = 0; r < N; ++r) {  // (B^T d) B
          V row[N], out[N];
          for (int q = 0; q < N; ++q) row[q] = bd[q][r];
          F::BT(row, out);
          float* vr = v + (N * r * nt + t) * ci + c;
          for (int q = 0; q < N; ++q) store(vr + q * nt * ci, out[q]);
        }
        for (int q = 0; q < N - M; ++q)  // the next window's first columns
          for (int r = 0; r < N; ++r) bd[q][r] = bd[q + M][r];
      }
    }
  });
}

// Two (N, H, W, channels) shapes with the same N, H and W.
template <typename Dims>
bool SameImages(const Dims& a, const Dims& b) {
  return a.size() == 4 && b.size() == 4 && a[0] == b[0] && a[1] == b[1] && a[2] == b[2];
}

// A (rows, cols) matrix shared by all n images, or one per image: (n, rows, cols).
template <typename Dims>
bool SharedOrPerImage(const Dims& d, long n, long rows, long cols) {
  return (d.size() == 2 || (d.size() == 3 && d[0] == n)) && d[d.size() - 2] == rows &&
         d[d.size() - 1] == cols;
}

}  // namespace sfmnet

// Handlers take (x, second operand) and return one buffer, with XLA's thread pool.
#define SFMNET_BIND                                  \
  xla::ffi::Ffi::Bind()                              \
      .Ctx<xla::ffi::ThreadPool>()                   \
      .Arg<xla::ffi::Buffer<xla::ffi::F32>>()        \
      .Arg<xla::ffi::Buffer<xla::ffi::F32>>()        \
      .Ret<xla::ffi::Buffer<xla::ffi::F32>>()

#endif  // SFMNET_JAX_CSRC_KERNELS_H_
