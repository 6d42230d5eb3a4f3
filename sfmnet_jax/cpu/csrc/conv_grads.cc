// Kernel gradients of 3x3 convolutions (stride 1, zero padding 1), NHWC, float32:
//
//   dense:     dK[i, j, c, d] = sum_{n, h, w} x[n, h + i - 1, w + j - 1, c] * g[n, h, w, d]
//   depthwise: dk[i, j, c]    = sum_{n, h, w} x[n, h + i - 1, w + j - 1, c] * g[n, h, w, c]
//   bias:      db[d]          = sum_{n, h, w} g[n, h, w, d]
//
// XLA:CPU computes these as convolutions over the batch, for which it first
// transposes x and g to batch-minor layout, fused with the elementwise op that
// produced x; those transposes read with a stride of one image and cost more
// than the arithmetic. These handlers read x and g where they lie, one output
// row at a time: dense, a GEMM per tap over the row's pixels with a 6 x 16
// register tile (8 x 32 or 16 x 16 with AVX-512), in blocks of 32 pixels that stay in L1;
// depthwise, nine multiply-adds per pixel vectorised over channels.
//
// Deterministic: the rows are split into a fixed number of chunks (a function
// of the shape only), each summed into its own buffer, and the buffers added in
// order; the result does not depend on the thread count or on scheduling.

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels.h"

namespace sfmnet {
namespace {

constexpr long kPixelsPerBlock = 32;  // pixels of a row per register-tile pass
constexpr long kMaxChunks = 16;       // partial sums; fixed, so results are reproducible

// acc[r * ldc + d] += sum_k a[k * lda + r] * b[k * ldb + d] for r < MR, d < L * NV.
template <int MR, int NV, typename V>
inline void Tile(const float* a, long lda, const float* b, long ldb, long k_len,
                 float* acc, long ldc) {
  constexpr int L = kLanes<V>;
  V s[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) s[r][v] = Load<V>(acc + r * ldc + L * v);
  MultiplyAdd(s, a, 1, lda, b, ldb, k_len);
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store(acc + r * ldc + L * v, s[r][v]);
}

// The same over all m rows of a (in register tiles of MR rows) for L * NV columns.
template <int NV, typename V, int MR = kTileRows>
inline void Panel(const float* a, long lda, const float* b, long ldb, long k_len,
                  float* acc, long ldc, long m) {
  RowTiles<MR>(m, [&](auto mr, long r) {
    Tile<decltype(mr)::value, NV, V>(a + r, lda, b, ldb, k_len, acc + r * ldc, ldc);
  });
}

// acc[c, d] += sum_k a[k * ci + c] * b[k * co + d] for all c < ci, d < co.
void Gemm(const float* a, const float* b, long k_len, long ci, long co, float* acc) {
  long d = 0;
  if (kPairTiles)
    for (; d + 32 <= co; d += 32)
      Panel<2, BlockVec, kPairRows>(a, ci, b + d, co, k_len, acc + d, co, ci);
  for (; d + 16 <= co; d += 16)
    Panel<kBlockVecs, BlockVec>(a, ci, b + d, co, k_len, acc + d, co, ci);
  if (d + 8 <= co) {
    Panel<1, v8>(a, ci, b + d, co, k_len, acc + d, co, ci);
    d += 8;
  }
  if (d == co) return;
  // Fewer than 8 output channels left (a conv to RGB): the transposed product
  // t[e, c] = sum_k b[k * co + d + e] * a[k * ci + c], vectorised over c.
  const long rest = co - d;
  thread_local std::vector<float> t;
  t.assign(rest * ci, 0.0f);
  long c = 0;
  if (kPairTiles)
    for (; c + 32 <= ci; c += 32)
      Panel<2, BlockVec, kPairRows>(b + d, co, a + c, ci, k_len, t.data() + c, ci, rest);
  for (; c + 16 <= ci; c += 16)  // two 8-lane vectors: twice the accumulators of one 16-lane
    Panel<2, v8>(b + d, co, a + c, ci, k_len, t.data() + c, ci, rest);
  for (; c + 8 <= ci; c += 8) Panel<1, v8>(b + d, co, a + c, ci, k_len, t.data() + c, ci, rest);
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
    auto channels = [&](auto vec, long c) {  // channels c .. c + lanes - 1
      using V = decltype(vec);
      V s0 = {}, s1 = {}, s2 = {};  // taps j = 0, 1, 2: x at w - 1, w, w + 1
      for (long w = 0; w < w_len; ++w) {
        const V gv = Load<V>(grow + w * c_len + c);
        if (w > 0) s0 += Load<V>(xrow + (w - 1) * c_len + c) * gv;
        s1 += Load<V>(xrow + w * c_len + c) * gv;
        if (w + 1 < w_len) s2 += Load<V>(xrow + (w + 1) * c_len + c) * gv;
      }
      store(out + c, Load<V>(out + c) + s0);
      store(out + c_len + c, Load<V>(out + c_len + c) + s1);
      store(out + 2 * c_len + c, Load<V>(out + 2 * c_len + c) + s2);
    };
    long c = 0;
    for (; c + kLanes<BlockVec> <= c_len; c += kLanes<BlockVec>) channels(BlockVec{}, c);
    for (; c + 8 <= c_len; c += 8) channels(v8{}, c);
    for (; c < c_len; ++c)
      for (long w = 0; w < w_len; ++w) {
        const float gv = grow[w * c_len + c];
        if (w > 0) out[c] += xrow[(w - 1) * c_len + c] * gv;
        out[c_len + c] += xrow[w * c_len + c] * gv;
        if (w + 1 < w_len) out[2 * c_len + c] += xrow[(w + 1) * c_len + c] * gv;
      }
  }
}

// Adds image row `row`'s pixels' x^T g to acc[ci, co] (a 1x1 conv's kernel gradient).
void AddRowPointwise(const float* x, const float* g, const Shape& s, long row, float* acc) {
  for (long p0 = 0; p0 < s.w; p0 += kPixelsPerBlock)
    Gemm(x + (row * s.w + p0) * s.ci, g + (row * s.w + p0) * s.co,
         std::min(kPixelsPerBlock, s.w - p0), s.ci, s.co, acc);
}

// Adds image row `row`'s pixels of g (N, H, W, Co) to acc[co]: a bias gradient
// (x is unused). Up to 32 channels summed in registers per pass over the row.
void AddRowSum(const float*, const float* g, const Shape& s, long row, float* acc) {
  const float* grow = g + row * s.w * s.co;
  long c = 0;
  for (; c + 32 <= s.co; c += 32) {
    v8 a0 = load(acc + c), a1 = load(acc + c + 8), a2 = load(acc + c + 16),
       a3 = load(acc + c + 24);
    for (long w = 0; w < s.w; ++w) {
      const float* p = grow + w * s.co + c;
      a0 += load(p);
      a1 += load(p + 8);
      a2 += load(p + 16);
      a3 += load(p + 24);
    }
    store(acc + c, a0);
    store(acc + c + 8, a1);
    store(acc + c + 16, a2);
    store(acc + c + 24, a3);
  }
  for (; c + 8 <= s.co; c += 8) {
    v8 a = load(acc + c);
    for (long w = 0; w < s.w; ++w) a += load(grow + w * s.co + c);
    store(acc + c, a);
  }
  for (; c < s.co; ++c) {
    float a = acc[c];
    for (long w = 0; w < s.w; ++w) a += grow[w * s.co + c];
    acc[c] = a;
  }
}

using RowFn = void (*)(const float*, const float*, const Shape&, long, float*);

// Partial sums over items [0, items): chunk c (a fixed, shape-only split into at
// most kMaxChunks runs of items) is summed by add(item, acc) into its own
// buffer, one task per chunk. Returns chunks x size floats (none for no items).
std::vector<float> ChunkSums(ffi::ThreadPool& pool, long items, long size,
                             const std::function<void(long, float*)>& add) {
  if (items <= 0 || size == 0) return {};
  const long per_chunk = (items + kMaxChunks - 1) / kMaxChunks;
  const long chunks = (items + per_chunk - 1) / per_chunk;
  std::vector<float> partial(chunks * size, 0.0f);
  ParallelFor(pool, chunks, 1, [&](long begin, long end) {
    for (long c = begin; c < end; ++c)
      for (long i = c * per_chunk; i < std::min(items, (c + 1) * per_chunk); ++i)
        add(i, partial.data() + c * size);
  });
  return partial;
}

// Sums add_row over all rows into result[size]: ChunkSums' buffers added in order.
void Run(ffi::ThreadPool& pool, RowFn add_row, const float* x, const float* g, Shape s,
         long size, float* result) {
  const std::vector<float> partial = ChunkSums(
      pool, s.n * s.h, size, [&](long row, float* acc) { add_row(x, g, s, row, acc); });
  std::fill(result, result + size, 0.0f);
  if (partial.empty()) return;
  std::memcpy(result, partial.data(), sizeof(float) * size);
  for (long c = 1; c < static_cast<long>(partial.size()) / size; ++c) {
    const float* p = partial.data() + c * size;
    for (long k = 0; k < size; ++k) result[k] += p[k];
  }
}

// x (N, H, W, Ci) and g (N, H, W, Co) -> a 3x3 kernel gradient (3, 3, Ci, Co).
template <typename Dims>
bool KernelGradDims(const Dims& xd, const Dims& gd, const Dims& od) {
  return SameImages(xd, gd) && od.size() == 4 && od[0] == 3 && od[1] == 3 && od[2] == xd[3] &&
         od[3] == gd[3];
}

// Winograd F(M x M, 3x3) kernel gradient. Per tile, the forward is
// y = A^T [(G k G^T) . (B^T d B)] A, so dk = G^T [sum_tiles (A g A^T) . (B^T d B)] G:
// N * N GEMMs dU[p] += V[p]^T M[p] over the tiles (V the input transform, M the
// output gradient's), then one transform of dU, in double.
constexpr long kGradTiles = 16;

// Adds tile row `tile_row` (image tile_row / tiles_h, output rows M ty .. M ty + M - 1)
// to du[N * N][ci][co]; pad holds N rows of (M tiles_w + 2) pixels of x, gpad M
// rows of M tiles_w pixels of g, v and m kGradTiles tiles of N * N positions.
template <typename F>
void AddTileRow(const float* x, const float* g, const Shape& s, long tile_row, float* du,
                float* pad, float* gpad, float* v, float* m) {
  constexpr int M = F::M, N = F::N;
  const long tiles_h = TileCount<F>(s.h), tiles_w = TileCount<F>(s.w);
  const long n = tile_row / tiles_h, y0 = M * (tile_row % tiles_h);
  const long ci = s.ci, co = s.co, stride = (M * tiles_w + 2) * ci;
  PadRows(x, n, s.h, s.w, ci, y0 - 1, N, stride, pad);
  // g's M rows, read in place where they fill whole tiles, else zero-padded in gpad.
  const long gstride = M * tiles_w * co;
  const float* grows = g + ((n * s.h + y0) * s.w) * co;
  if (s.w % M != 0 || y0 + M > s.h) {
    std::fill(gpad, gpad + M * gstride, 0.0f);
    for (int r = 0; r < M; ++r)
      if (y0 + r < s.h)
        std::memcpy(gpad + r * gstride, grows + r * s.w * co, sizeof(float) * s.w * co);
    grows = gpad;
  }
  for (long t0 = 0; t0 < tiles_w; t0 += kGradTiles) {
    const long nt = std::min(kGradTiles, tiles_w - t0);
    WinogradInput<F>(pad + M * t0 * ci, stride, nt, ci, v);
    ForChannelVectors(co, [&](auto vec) {
      using V = decltype(vec);
      for (long t = 0; t < nt; ++t) {
        const float* g0 = grows + M * (t0 + t) * co;
        for (long d = 0; d < co; d += kLanes<V>) {
          V ag[N][M];  // A g
          for (int j = 0; j < M; ++j) {
            V col[M], y[N];
            for (int i = 0; i < M; ++i) col[i] = Load<V>(g0 + i * gstride + j * co + d);
            F::A(col, y);
            for (int i = 0; i < N; ++i) ag[i][j] = y[i];
          }
          for (int i = 0; i < N; ++i) {  // (A g) A^T
            V y[N];
            F::A(ag[i], y);
            float* mi = m + (N * i * nt + t) * co + d;
            for (int j = 0; j < N; ++j) store(mi + j * nt * co, y[j]);
          }
        }
      }
    });
    for (int p = 0; p < N * N; ++p)
      Gemm(v + p * nt * ci, m + p * nt * co, nt, ci, co, du + p * ci * co);
  }
}

template <typename F>
ffi::Error KernelGradWinograd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> out) {
  constexpr int M = F::M, N = F::N;
  const auto xd = x.dimensions();
  const auto gd = g.dimensions();
  if (!KernelGradDims(xd, gd, out->dimensions()) || xd[3] % 8 != 0 || gd[3] % 8 != 0)
    return ffi::Error::InvalidArgument(
        std::string("sfmnet_conv3x3_kernel_grad_winograd") + F::kSuffix +
        ": x (N, H, W, Ci), g (N, H, W, Co) -> (3, 3, Ci, Co), Ci and Co multiples of 8");
  const Shape s{xd[0], xd[1], xd[2], xd[3], gd[3]};
  const long ci = s.ci, co = s.co, size = N * N * ci * co;
  const float* xp = x.typed_data();
  const float* gp = g.typed_data();
  const std::vector<float> partial = ChunkSums(
      pool, s.w > 0 ? s.n * TileCount<F>(s.h) : 0, size, [&](long tile_row, float* du) {
        thread_local std::vector<float> pad, gpad, v, m;
        const long tiles_w = TileCount<F>(s.w);
        pad.resize(N * (M * tiles_w + 2) * ci);
        gpad.resize(M * M * tiles_w * co);
        v.resize(N * N * kGradTiles * ci);
        m.resize(N * N * kGradTiles * co);
        AddTileRow<F>(xp, gp, s, tile_row, du, pad.data(), gpad.data(), v.data(), m.data());
      });
  // The chunks' sums, in order, in double; loops over contiguous k innermost (vectorised).
  std::vector<double> du(size, 0.0);
  for (size_t c = 0; c < partial.size() / size; ++c) {
    const float* p = partial.data() + c * size;
    for (long k = 0; k < size; ++k) du[k] += p[k];
  }
  // dK[i, j] = sum_{a, b} G[a, i] G[b, j] dU[N a + b].
  float* dk = out->typed_data();
  const long cc = ci * co;
  std::vector<double> sum(cc);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      std::fill(sum.begin(), sum.end(), 0.0);
      for (int a = 0; a < N; ++a)
        for (int b = 0; b < N; ++b) {
          const double* dup = du.data() + (N * a + b) * cc;
          for (long k = 0; k < cc; ++k) sum[k] += F::G[a][i] * F::G[b][j] * dup[k];
        }
      for (long k = 0; k < cc; ++k) dk[(i * 3 + j) * cc + k] = static_cast<float>(sum[k]);
    }
  return ffi::Error::Success();
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                      ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions();
  const auto gd = g.dimensions();
  if (!KernelGradDims(xd, gd, out->dimensions()))
    return ffi::Error::InvalidArgument(
        "sfmnet_conv3x3_kernel_grad: x (N, H, W, Ci), g (N, H, W, Co) -> (3, 3, Ci, Co)");
  Run(pool, AddRow, x.typed_data(), g.typed_data(), Shape{xd[0], xd[1], xd[2], xd[3], gd[3]},
      9 * xd[3] * gd[3], out->typed_data());
  return ffi::Error::Success();
}

// x^T g over pixels: (Ci, Co), or per image (N, Ci, Co) (the channel attention's q^T k).
ffi::Error PointwiseKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions();
  const auto gd = g.dimensions();
  const auto od = out->dimensions();
  const bool per_image = od.size() == 3;
  if (!SameImages(xd, gd) || !SharedOrPerImage(od, xd[0], xd[3], gd[3]))
    return ffi::Error::InvalidArgument(
        "sfmnet_conv1x1_kernel_grad: x (N, H, W, Ci), g (N, H, W, Co) -> (Ci, Co) or "
        "(N, Ci, Co)");
  const Shape s{xd[0], xd[1], xd[2], xd[3], gd[3]};
  if (!per_image) {
    Run(pool, AddRowPointwise, x.typed_data(), g.typed_data(), s, s.ci * s.co,
        out->typed_data());
    return ffi::Error::Success();
  }
  const Shape one{1, s.h, s.w, s.ci, s.co};  // each image's rows, in its own chunks
  for (long n = 0; n < s.n; ++n)
    Run(pool, AddRowPointwise, x.typed_data() + n * s.h * s.w * s.ci,
        g.typed_data() + n * s.h * s.w * s.co, one, s.ci * s.co,
        out->typed_data() + n * s.ci * s.co);
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

ffi::Error ChannelSum(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                      ffi::ResultBuffer<ffi::F32> out) {
  const auto gd = g.dimensions();
  const auto od = out->dimensions();
  if (gd.size() != 4 || od.size() != 1 || od[0] != gd[3])
    return ffi::Error::InvalidArgument("sfmnet_channel_sum: g (N, H, W, C) -> (C,)");
  Run(pool, AddRowSum, nullptr, g.typed_data(), Shape{gd[0], gd[1], gd[2], gd[3], gd[3]},
      gd[3], out->typed_data());
  return ffi::Error::Success();
}

}  // namespace
}  // namespace sfmnet

XLA_FFI_DEFINE_HANDLER_SYMBOL(SfmnetConv3x3KernelGrad, sfmnet::KernelGrad, SFMNET_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SfmnetConv3x3KernelGradWinograd,
                              sfmnet::KernelGradWinograd<sfmnet::F2>, SFMNET_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SfmnetConv3x3KernelGradWinograd4,
                              sfmnet::KernelGradWinograd<sfmnet::F4>, SFMNET_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SfmnetConv1x1KernelGrad, sfmnet::PointwiseKernelGrad, SFMNET_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SfmnetDepthwise3x3KernelGrad, sfmnet::DepthwiseKernelGrad,
                              SFMNET_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SfmnetChannelSum, sfmnet::ChannelSum,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>());
