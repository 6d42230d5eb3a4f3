// Kernel gradients of 3x3 convolutions (stride 1, zero padding 1), NHWC, float32,
// as XLA FFI handlers for the CPU. Built and loaded by sfmnet_jax/cpu_kernels.py.
//
//   dense:     dK[i, j, c, d] = sum_{n, h, w} x[n, h + i - 1, w + j - 1, c] * g[n, h, w, d]
//   depthwise: dk[i, j, c]    = sum_{n, h, w} x[n, h + i - 1, w + j - 1, c] * g[n, h, w, c]
//
// XLA:CPU computes these as convolutions over the batch, for which it first
// transposes x and g to batch-minor layout, fused with the elementwise op that
// produced x; those transposes read with a stride of one image and cost more
// than the arithmetic. These handlers read x and g where they lie, one output
// row at a time: dense, a GEMM per tap over the row's pixels with a 6 x 16
// register tile, in blocks of 32 pixels that stay in L1; depthwise, nine
// multiply-adds per pixel vectorised over channels.
//
// Deterministic: the rows are split into a fixed number of chunks (a function
// of the shape only), each summed into its own buffer, and the buffers added in
// order; the result does not depend on the thread count or on scheduling.

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));

constexpr long kPixelsPerBlock = 32;  // pixels of a row per register-tile pass
constexpr long kMaxChunks = 16;       // partial sums; fixed, so results are reproducible

inline v8 load(const float* p) { return *reinterpret_cast<const v8u*>(p); }
inline void store(float* p, v8 v) { *reinterpret_cast<v8u*>(p) = v; }

// acc[r * ldc + d] += sum_k a[k * lda + r] * b[k * ldb + d] for r < MR, d < 8 * NV.
template <int MR, int NV>
inline void Tile(const float* a, long lda, const float* b, long ldb, long k_len,
                 float* acc, long ldc) {
  v8 s[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) s[r][v] = load(acc + r * ldc + 8 * v);
  for (long k = 0; k < k_len; ++k) {
    v8 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load(b + k * ldb + 8 * v);
    for (int r = 0; r < MR; ++r) {
      const float av = a[k * lda + r];
      for (int v = 0; v < NV; ++v) s[r][v] += av * bv[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store(acc + r * ldc + 8 * v, s[r][v]);
}

// The same over all m rows of a (in tiles of 6) for 8 * NV columns.
template <int NV>
inline void Panel(const float* a, long lda, const float* b, long ldb, long k_len,
                  float* acc, long ldc, long m) {
  long r = 0;
  for (; r + 6 <= m; r += 6) Tile<6, NV>(a + r, lda, b, ldb, k_len, acc + r * ldc, ldc);
  const float* ar = a + r;
  float* cr = acc + r * ldc;
  switch (m - r) {
    case 5: Tile<5, NV>(ar, lda, b, ldb, k_len, cr, ldc); break;
    case 4: Tile<4, NV>(ar, lda, b, ldb, k_len, cr, ldc); break;
    case 3: Tile<3, NV>(ar, lda, b, ldb, k_len, cr, ldc); break;
    case 2: Tile<2, NV>(ar, lda, b, ldb, k_len, cr, ldc); break;
    case 1: Tile<1, NV>(ar, lda, b, ldb, k_len, cr, ldc); break;
    default: break;
  }
}

// acc[c, d] += sum_k a[k * ci + c] * b[k * co + d] for all c < ci, d < co.
void Gemm(const float* a, const float* b, long k_len, long ci, long co, float* acc) {
  long d = 0;
  for (; d + 16 <= co; d += 16) Panel<2>(a, ci, b + d, co, k_len, acc + d, co, ci);
  if (d + 8 <= co) {
    Panel<1>(a, ci, b + d, co, k_len, acc + d, co, ci);
    d += 8;
  }
  if (d == co) return;
  // Fewer than 8 output channels left (a conv to RGB): the transposed product
  // t[e, c] = sum_k b[k * co + d + e] * a[k * ci + c], vectorised over c.
  const long rest = co - d;
  thread_local std::vector<float> t;
  t.assign(rest * ci, 0.0f);
  long c = 0;
  for (; c + 16 <= ci; c += 16) Panel<2>(b + d, co, a + c, ci, k_len, t.data() + c, ci, rest);
  for (; c + 8 <= ci; c += 8) Panel<1>(b + d, co, a + c, ci, k_len, t.data() + c, ci, rest);
  for (; c < ci; ++c)
    for (long e = 0; e < rest; ++e) {
      float s = 0.0f;
      for (long k = 0; k < k_len; ++k) s += a[k * ci + c] * b[k * co + d + e];
      t[e * ci + c] += s;
    }
  for (long e = 0; e < rest; ++e)
    for (c = 0; c < ci; ++c) acc[c * co + d + e] += t[e * ci + c];
}

struct Shape {
  long n, h, w, ci, co;
};

// Adds output row `row` (image row / h, row % h)'s contribution to acc[3, 3, ci, co].
void AddRow(const float* x, const float* g, const Shape& s, long row, float* acc) {
  const long y = row % s.h;
  const float* grow = g + row * s.w * s.co;
  for (int i = 0; i < 3; ++i) {
    const long yx = y + i - 1;
    if (yx < 0 || yx >= s.h) continue;
    const float* xrow = x + (row + i - 1) * s.w * s.ci;
    for (long p0 = 0; p0 < s.w; p0 += kPixelsPerBlock) {
      for (int j = 0; j < 3; ++j) {
        const long w0 = std::max(p0, 1L - j);
        const long w1 = std::min({s.w, s.w + 1 - j, p0 + kPixelsPerBlock});
        if (w1 <= w0) continue;
        Gemm(xrow + (w0 + j - 1) * s.ci, grow + w0 * s.co, w1 - w0, s.ci, s.co,
             acc + (i * 3 + j) * s.ci * s.co);
      }
    }
  }
}

// Adds output row `row`'s contribution to the depthwise gradient acc[3, 3, c]
// (x and g both (N, H, W, C)); vectorised over channels.
void AddRowDepthwise(const float* x, const float* g, const Shape& s, long row, float* acc) {
  const long y = row % s.h, c_len = s.ci, w_len = s.w;
  const float* grow = g + row * w_len * c_len;
  for (int i = 0; i < 3; ++i) {
    const long yx = y + i - 1;
    if (yx < 0 || yx >= s.h) continue;
    const float* xrow = x + (row + i - 1) * w_len * c_len;
    float* out = acc + i * 3 * c_len;
    long c = 0;
    for (; c + 8 <= c_len; c += 8) {
      v8 s0 = {}, s1 = {}, s2 = {};  // taps j = 0, 1, 2: x at w - 1, w, w + 1
      for (long w = 0; w < w_len; ++w) {
        const v8 gv = load(grow + w * c_len + c);
        if (w > 0) s0 += load(xrow + (w - 1) * c_len + c) * gv;
        s1 += load(xrow + w * c_len + c) * gv;
        if (w + 1 < w_len) s2 += load(xrow + (w + 1) * c_len + c) * gv;
      }
      store(out + c, load(out + c) + s0);
      store(out + c_len + c, load(out + c_len + c) + s1);
      store(out + 2 * c_len + c, load(out + 2 * c_len + c) + s2);
    }
    for (; c < c_len; ++c)
      for (long w = 0; w < w_len; ++w) {
        const float gv = grow[w * c_len + c];
        if (w > 0) out[c] += xrow[(w - 1) * c_len + c] * gv;
        out[c_len + c] += xrow[w * c_len + c] * gv;
        if (w + 1 < w_len) out[2 * c_len + c] += xrow[(w + 1) * c_len + c] * gv;
      }
  }
}

using RowFn = void (*)(const float*, const float*, const Shape&, long, float*);

struct Job {
  RowFn add_row;
  const float* x;
  const float* g;
  Shape s;
  long rows_per_chunk, chunks, size;
  std::vector<float> partial;  // chunks x size
  std::atomic<long> next{0};
  std::atomic<int> active{0};

  // Sums chunks until none is left. Helpers that start late find none and touch nothing.
  void Work() {
    active.fetch_add(1);
    for (long c; (c = next.fetch_add(1)) < chunks;) {
      float* acc = partial.data() + c * size;
      const long end = std::min(s.n * s.h, (c + 1) * rows_per_chunk);
      for (long row = c * rows_per_chunk; row < end; ++row) add_row(x, g, s, row, acc);
    }
    active.fetch_sub(1);
  }
};

// Sums add_row over all rows into result[size], on the calling thread and XLA's pool.
void Run(ffi::ThreadPool& pool, RowFn add_row, const float* x, const float* g, Shape s,
         long size, float* result) {
  const long rows = s.n * s.h;
  if (rows == 0 || size == 0) {
    std::fill(result, result + size, 0.0f);
    return;
  }
  auto job = std::make_shared<Job>();
  job->add_row = add_row;
  job->x = x;
  job->g = g;
  job->s = s;
  job->size = size;
  job->rows_per_chunk = (rows + kMaxChunks - 1) / kMaxChunks;
  job->chunks = (rows + job->rows_per_chunk - 1) / job->rows_per_chunk;
  job->partial.assign(job->chunks * size, 0.0f);
  const long helpers = std::min<long>(pool.num_threads(), job->chunks) - 1;
  for (long t = 0; t < helpers; ++t) pool.Schedule([job] { job->Work(); });
  job->Work();
  while (job->active.load() != 0) std::this_thread::yield();
  std::memcpy(result, job->partial.data(), sizeof(float) * size);
  for (long c = 1; c < job->chunks; ++c) {
    const float* p = job->partial.data() + c * size;
    for (long k = 0; k < size; ++k) result[k] += p[k];
  }
}

// x and g are both (N, H, W, channels) with the same N, H and W.
template <typename Dims>
bool SameImages(const Dims& xd, const Dims& gd) {
  return xd.size() == 4 && gd.size() == 4 && xd[0] == gd[0] && xd[1] == gd[1] &&
         xd[2] == gd[2];
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                      ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions();
  const auto gd = g.dimensions();
  const auto od = out->dimensions();
  if (!SameImages(xd, gd) || od.size() != 4 || od[0] != 3 || od[1] != 3 || od[2] != xd[3] ||
      od[3] != gd[3])
    return ffi::Error::InvalidArgument(
        "sfmnet_conv3x3_kernel_grad: x (N, H, W, Ci), g (N, H, W, Co) -> (3, 3, Ci, Co)");
  Run(pool, AddRow, x.typed_data(), g.typed_data(), Shape{xd[0], xd[1], xd[2], xd[3], gd[3]},
      9 * xd[3] * gd[3], out->typed_data());
  return ffi::Error::Success();
}

ffi::Error DepthwiseKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions();
  const auto gd = g.dimensions();
  const auto od = out->dimensions();
  if (!SameImages(xd, gd) || xd[3] != gd[3] || od.size() != 3 || od[0] != 3 || od[1] != 3 ||
      od[2] != xd[3])
    return ffi::Error::InvalidArgument(
        "sfmnet_depthwise3x3_kernel_grad: x, g (N, H, W, C) -> (3, 3, C)");
  Run(pool, AddRowDepthwise, x.typed_data(), g.typed_data(),
      Shape{xd[0], xd[1], xd[2], xd[3], xd[3]}, 9 * xd[3], out->typed_data());
  return ffi::Error::Success();
}

}  // namespace

#define SFMNET_BIND                                  \
  ffi::Ffi::Bind()                                   \
      .Ctx<ffi::ThreadPool>()                        \
      .Arg<ffi::Buffer<ffi::F32>>()                  \
      .Arg<ffi::Buffer<ffi::F32>>()                  \
      .Ret<ffi::Buffer<ffi::F32>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(SfmnetConv3x3KernelGrad, KernelGrad, SFMNET_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SfmnetDepthwise3x3KernelGrad, DepthwiseKernelGrad, SFMNET_BIND);
