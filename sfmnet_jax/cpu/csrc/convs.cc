// 3x3 convolutions (stride 1, zero padding 1), NHWC, float32:
//
//   dense:     out[n, y, x, d] = sum_{i, j, c} x[n, y + i - 1, x + j - 1, c] * k[i, j, c, d]
//   depthwise: out[n, y, x, c] = sum_{i, j}    x[n, y + i - 1, x + j - 1, c] * k[i, j, c]
//
// Dense, two algorithms (cpu_kernels.py picks):
// - direct: the kernel packed into blocks of 16 output channels [i][j][c][16];
//   each output row from a zero-padded copy of its three input rows, 6 pixels x
//   16 channels at a time (with AVX-512 8 x 32 or 16 x 16), accumulated in
//   registers over all 9 * Ci products;
// - Winograd F(M x M, 3x3), M = 2 or 4 (F2, F4 in kernels.h): each M x M output
//   tile from an N x N input window (N = M + 2), A^T [(G k G^T) . (B^T d B)] A,
//   N * N products per tile and channel pair instead of 9 M^2 (16 for 36; 36 for
//   144). Per tile row and block of kTiles tiles: the input transform
//   V[N * N][tiles][ci], N * N GEMMs M[p] = V[p] U[p] (U = G k G^T, packed
//   [p][d / 16][c][16], computed in double), the output transform. Channel
//   counts must be multiples of 8. F(2x2, 3x3)'s rounding differs from the direct
//   sum by a few ulps of the largest term, as between any two conv algorithms;
//   F(4x4, 3x3)'s larger coefficients round ~15x more.
// Depthwise: nine multiply-adds per pixel, vectorised over channels.
// Every output row is computed by one task: no reduction across threads.

#include <cstring>
#include <string>
#include <vector>

#include "kernels.h"

namespace sfmnet {
namespace {

constexpr long kBlock = 16;  // output channels per packed kernel block
constexpr long kTiles = 12;  // Winograd tiles per block (V and M stay in L1/L2)

// Stores s (MR rows of L * NV) at out (row stride ldo), only `lanes` columns.
template <int MR, int NV, typename V>
inline void StoreTile(V (&s)[MR][NV], float* out, long ldo, int lanes) {
  constexpr int L = kLanes<V>;
  for (int r = 0; r < MR; ++r) {
    if (lanes == L * NV) {
      for (int v = 0; v < NV; ++v) store(out + r * ldo + L * v, s[r][v]);
    } else {
      float tmp[L * NV];
      for (int v = 0; v < NV; ++v) store(tmp + L * v, s[r][v]);
      std::memcpy(out + r * ldo, tmp, sizeof(float) * lanes);
    }
  }
}

// Direct: MR output pixels (a: padded rows at the first pixel, `taps` of them)
// times NV vectors of packed kernel rows from kb, `vstride` floats apart.
template <int MR, int NV, typename V>
void DirectTile(const float* const* rows, const int* tap_i, int taps, const float* kb,
                long vstride, long ci, float* out, long ldo, int lanes) {
  V s[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) s[r][v] = V{};
  for (int t = 0; t < taps; ++t)
    for (int j = 0; j < 3; ++j)
      MultiplyAdd(s, rows[t] + j * ci, ci, 1, kb + (tap_i[t] * 3 + j) * ci * kBlock, kBlock,
                  ci, vstride);
  StoreTile(s, out, ldo, lanes);
}

// A GEMM tile: out[r, :] = a[r, :] @ b for r < MR (a rows of ci, b packed ci x 16, NV
// vectors `vstride` floats apart).
template <int MR, int NV, typename V>
void GemmTile(const float* a, long ci, const float* b, long vstride, float* out, long ldo,
              int lanes) {
  V s[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) s[r][v] = V{};
  MultiplyAdd(s, a, ci, 1, b, kBlock, ci, vstride);
  StoreTile(s, out, ldo, lanes);
}

struct Dims {
  long n, h, w, ci, co, blocks;
};

// Calls tile(mr, nv, vec, b, r, vstride, lanes) for every register tile of m output
// rows against all packed kernel blocks (block_size floats each): rows r .. r + MR - 1
// (mr a RowCount), NV vectors of type V (nv an integral_constant, vec a V) from block
// b on, `vstride` floats apart in the packed kernel, `lanes` output channels stored.
// With 16-lane vectors blocks go in pairs; a block of up to 8 channels (a conv to RGB;
// the rest is zero padding) takes one 8-lane vector per row.
template <typename F>
void ForBlockTiles(long m, const Dims& s, long block_size, F tile) {
  long b = 0;
  if (kPairTiles)
    for (; b + 1 < s.blocks; b += 2) {
      const int lanes = static_cast<int>(std::min(2 * kBlock, s.co - b * kBlock));
      RowTiles<kPairRows, kPairExtra>(m, [&](auto mr, long r) {
        tile(mr, std::integral_constant<int, 2>{}, BlockVec{}, b, r, block_size, lanes);
      });
    }
  for (; b < s.blocks; ++b) {
    const int lanes = static_cast<int>(std::min(kBlock, s.co - b * kBlock));
    RowTiles<kTileRows, kTileExtra>(m, [&](auto mr, long r) {
      if (lanes > 8)
        tile(mr, std::integral_constant<int, kBlockVecs>{}, BlockVec{}, b, r,
             long{kLanes<BlockVec>}, lanes);
      else
        tile(mr, std::integral_constant<int, 1>{}, v8{}, b, r, 8L, lanes);
    });
  }
}

// Packs k (taps, ci, co) as kp[d / 16][t][c][d % 16], zero-padded to whole blocks.
std::vector<float> Pack(const float* k, long taps, const Dims& s) {
  std::vector<float> kp(s.blocks * taps * s.ci * kBlock, 0.0f);
  for (long t = 0; t < taps; ++t)
    for (long c = 0; c < s.ci; ++c)
      for (long d = 0; d < s.co; ++d)
        kp[((d / kBlock) * taps + t) * s.ci * kBlock + c * kBlock + d % kBlock] =
            k[(t * s.ci + c) * s.co + d];
  return kp;
}

// U[p = N a + b][d / 16][c][d % 16] = (G k[:, :, c, d] G^T)[a, b], in double. The loops
// run over d innermost (contiguous in k and u; the compiler vectorises them): packing
// one element at a time took 7% of a batch-1 64 -> 64 F(4x4, 3x3) call and 11% of
// SFMNet's C=64 forward at batch 1 (splitting channels across threads gained no more).
template <typename F>
std::vector<float> PackWinograd(const float* k, const Dims& s) {
  constexpr int N = F::N;
  const auto& g = F::G;
  const long co = s.co;
  std::vector<float> u(N * N * s.blocks * s.ci * kBlock, 0.0f);
  std::vector<double> gk(N * 3 * co), sum(co);  // gk[a][j][d] = (G k[:, j, c, d])[a]
  for (long c = 0; c < s.ci; ++c) {
    for (int a = 0; a < N; ++a)
      for (int j = 0; j < 3; ++j) {
        double* out = gk.data() + (a * 3 + j) * co;
        std::fill(out, out + co, 0.0);
        for (int i = 0; i < 3; ++i) {
          const float* kij = k + ((i * 3 + j) * s.ci + c) * co;
          for (long d = 0; d < co; ++d) out[d] += g[a][i] * kij[d];
        }
      }
    for (int a = 0; a < N; ++a)
      for (int b = 0; b < N; ++b) {
        std::fill(sum.begin(), sum.end(), 0.0);
        for (int j = 0; j < 3; ++j) {
          const double* gkj = gk.data() + (a * 3 + j) * co;
          for (long d = 0; d < co; ++d) sum[d] += gkj[d] * g[b][j];
        }
        float* up = u.data() + ((N * a + b) * s.blocks * s.ci + c) * kBlock;
        for (long d = 0; d < co; ++d)
          up[(d / kBlock) * s.ci * kBlock + d % kBlock] = static_cast<float>(sum[d]);
      }
  }
  return u;
}

// Direct: output row `row` (image row / h, row % h); pad holds 3 * (w + 2) * ci floats.
void DirectRow(const float* x, const float* kp, const Dims& s, long row, float* out,
               float* pad) {
  const long n = row / s.h, y = row % s.h, stride = (s.w + 2) * s.ci;
  PadRows(x, n, s.h, s.w, s.ci, y - 1, 3, stride, pad);
  const float* rows[3];
  int tap_i[3], taps = 0;
  for (int i = 0; i < 3; ++i)
    if (y + i - 1 >= 0 && y + i - 1 < s.h) {
      rows[taps] = pad + i * stride;
      tap_i[taps++] = i;
    }
  float* orow = out + row * s.w * s.co;
  const float* at[3];
  const long block_size = 9 * s.ci * kBlock;
  ForBlockTiles(s.w, s, block_size,
                [&](auto mr, auto nv, auto vec, long b, long r, long vstride, int lanes) {
    for (int t = 0; t < taps; ++t) at[t] = rows[t] + r * s.ci;
    DirectTile<decltype(mr)::value, decltype(nv)::value, decltype(vec)>(
        at, tap_i, taps, kp + b * block_size, vstride, s.ci, orow + b * kBlock + r * s.co,
        s.co, lanes);
  });
}

// out[r, :] = a[r, :] @ kp for r < m (a rows of ci floats, out rows of co), all blocks.
void GemmRows(const float* a, long m, const float* kp, const Dims& s, float* out) {
  const long ci = s.ci, co = s.co, block_size = ci * kBlock;
  ForBlockTiles(m, s, block_size,
                [&](auto mr, auto nv, auto vec, long b, long r, long vstride, int lanes) {
    GemmTile<decltype(mr)::value, decltype(nv)::value, decltype(vec)>(
        a + r * ci, ci, kp + b * block_size, vstride, out + b * kBlock + r * co, co, lanes);
  });
}

struct WinogradScratch {
  std::vector<float> pad, v, m;
};

// Winograd: output rows M ty .. M ty + M - 1 of image n, for tile row n * tiles_h + ty.
template <typename F>
void WinogradRow(const float* x, const float* u, const Dims& s, long tile_row, float* out,
                 WinogradScratch& w) {
  constexpr int M = F::M, N = F::N;
  const long tiles_h = TileCount<F>(s.h), tiles_w = TileCount<F>(s.w);
  const long n = tile_row / tiles_h, y0 = M * (tile_row % tiles_h);
  const long ci = s.ci, co = s.co, stride = (M * tiles_w + 2) * ci;
  PadRows(x, n, s.h, s.w, ci, y0 - 1, N, stride, w.pad.data());
  const long rows = std::min<long>(M, s.h - y0);
  for (long t0 = 0; t0 < tiles_w; t0 += kTiles) {
    const long nt = std::min(kTiles, tiles_w - t0);
    float* v = w.v.data();  // [N * N][nt][ci]
    WinogradInput<F>(w.pad.data() + M * t0 * ci, stride, nt, ci, v);
    float* m = w.m.data();  // [N * N][nt][co]
    for (int p = 0; p < N * N; ++p)
      GemmRows(v + p * nt * ci, nt, u + p * s.blocks * ci * kBlock, s, m + p * nt * co);
    ForChannelVectors(co, [&](auto vec) {
      using V = decltype(vec);
      for (long t = 0; t < nt; ++t) {
        const long x0 = M * (t0 + t), cols = std::min<long>(M, s.w - x0);
        float* o = out + ((n * s.h + y0) * s.w + x0) * co;
        for (long d = 0; d < co; d += kLanes<V>) {
          V am[M][N];  // A^T M
          for (int q = 0; q < N; ++q) {
            V col[N], y[M];
            for (int r = 0; r < N; ++r) col[r] = Load<V>(m + ((N * r + q) * nt + t) * co + d);
            F::AT(col, y);
            for (int i = 0; i < M; ++i) am[i][q] = y[i];
          }
          for (int i = 0; i < rows; ++i) {  // (A^T M) A
            V y[M];
            F::AT(am[i], y);
            for (int j = 0; j < cols; ++j) store(o + (i * s.w + j) * co + d, y[j]);
          }
        }
      }
    });
  }
}

// Depthwise: output row `row`, k (3, 3, c).
void DepthwiseRow(const float* x, const float* k, const Dims& s, long row, float* out) {
  const long y = row % s.h, c_len = s.ci, w_len = s.w;
  const float* rows[3] = {nullptr, nullptr, nullptr};
  for (int i = 0; i < 3; ++i)
    if (y + i - 1 >= 0 && y + i - 1 < s.h) rows[i] = x + (row + i - 1) * w_len * c_len;
  float* orow = out + row * w_len * c_len;
  for (long w = 0; w < w_len; ++w) {
    auto channels = [&](auto vec, long c) {  // channels c .. c + lanes - 1
      using V = decltype(vec);
      V acc = {};
      for (int i = 0; i < 3; ++i) {
        if (!rows[i]) continue;
        const float* r = rows[i] + w * c_len + c;
        const float* kk = k + i * 3 * c_len + c;
        if (w > 0) acc += Load<V>(r - c_len) * Load<V>(kk);
        acc += Load<V>(r) * Load<V>(kk + c_len);
        if (w + 1 < w_len) acc += Load<V>(r + c_len) * Load<V>(kk + 2 * c_len);
      }
      store(orow + w * c_len + c, acc);
    };
    long c = 0;
    for (; c + kLanes<BlockVec> <= c_len; c += kLanes<BlockVec>) channels(BlockVec{}, c);
    for (; c + 8 <= c_len; c += 8) channels(v8{}, c);
    for (; c < c_len; ++c) {
      float acc = 0.0f;
      for (int i = 0; i < 3; ++i) {
        if (!rows[i]) continue;
        const float* r = rows[i] + w * c_len + c;
        const float* kk = k + i * 3 * c_len + c;
        if (w > 0) acc += r[-c_len] * kk[0];
        acc += r[0] * kk[c_len];
        if (w + 1 < w_len) acc += r[c_len] * kk[2 * c_len];
      }
      orow[w * c_len + c] = acc;
    }
  }
}

// Checks x (N, H, W, Ci), k (3, 3, Ci, Co) and out (N, H, W, Co); fills dims.
bool DenseDims(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& k,
               ffi::ResultBuffer<ffi::F32>& out, Dims* s) {
  const auto xd = x.dimensions(), kd = k.dimensions(), od = out->dimensions();
  if (xd.size() != 4 || kd.size() != 4 || kd[0] != 3 || kd[1] != 3 || kd[2] != xd[3] ||
      !SameImages(xd, od) || od[3] != kd[3])
    return false;
  *s = Dims{xd[0], xd[1], xd[2], xd[3], kd[3], (kd[3] + kBlock - 1) / kBlock};
  return true;
}

ffi::Error Direct(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                  ffi::ResultBuffer<ffi::F32> out) {
  Dims s;
  if (!DenseDims(x, k, out, &s))
    return ffi::Error::InvalidArgument(
        "sfmnet_conv3x3: x (N, H, W, Ci), k (3, 3, Ci, Co) -> (N, H, W, Co)");
  if (s.w == 0 || s.co == 0) return ffi::Error::Success();
  const std::vector<float> kp = Pack(k.typed_data(), 9, s);
  const float* xp = x.typed_data();
  float* op = out->typed_data();
  const long rows = s.n * s.h;
  ParallelFor(pool, rows, TaskSize(pool, rows), [&](long begin, long end) {
    thread_local std::vector<float> pad;
    pad.resize(3 * (s.w + 2) * s.ci);
    for (long row = begin; row < end; ++row) DirectRow(xp, kp.data(), s, row, op, pad.data());
  });
  return ffi::Error::Success();
}

template <typename F>
ffi::Error Winograd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                    ffi::ResultBuffer<ffi::F32> out) {
  constexpr int M = F::M, N = F::N;
  Dims s;
  if (!DenseDims(x, k, out, &s) || s.ci % 8 != 0 || s.co % 8 != 0)
    return ffi::Error::InvalidArgument(
        std::string("sfmnet_conv3x3_winograd") + F::kSuffix +
        ": x (N, H, W, Ci), k (3, 3, Ci, Co) -> (N, H, W, Co), Ci and Co multiples of 8");
  if (s.n * s.h * s.w == 0 || s.co == 0) return ffi::Error::Success();
  const std::vector<float> u = PackWinograd<F>(k.typed_data(), s);
  const float* xp = x.typed_data();
  float* op = out->typed_data();
  const long tile_rows = s.n * TileCount<F>(s.h);
  ParallelFor(pool, tile_rows, TaskSize(pool, tile_rows), [&](long begin, long end) {
    thread_local WinogradScratch w;
    w.pad.resize(N * (M * TileCount<F>(s.w) + 2) * s.ci);
    w.v.resize(N * N * kTiles * s.ci);
    w.m.resize(N * N * kTiles * s.co);
    for (long t = begin; t < end; ++t) WinogradRow<F>(xp, u.data(), s, t, op, w);
  });
  return ffi::Error::Success();
}

ffi::Error Depthwise(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                     ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions(), kd = k.dimensions(), od = out->dimensions();
  if (!SameImages(xd, od) || xd[3] != od[3] || kd.size() != 3 || kd[0] != 3 || kd[1] != 3 ||
      kd[2] != xd[3])
    return ffi::Error::InvalidArgument(
        "sfmnet_depthwise3x3: x (N, H, W, C), k (3, 3, C) -> (N, H, W, C)");
  const Dims s{xd[0], xd[1], xd[2], xd[3], xd[3], 0};
  const float* xp = x.typed_data();
  const float* kp = k.typed_data();
  float* op = out->typed_data();
  const long rows = s.n * s.h;
  ParallelFor(pool, rows, TaskSize(pool, rows), [&](long begin, long end) {
    for (long row = begin; row < end; ++row) DepthwiseRow(xp, kp, s, row, op);
  });
  return ffi::Error::Success();
}

// 1x1: x (N, H, W, Ci), k (Ci, Co) -> (N, H, W, Co), a GEMM over pixels; with k
// (N, Ci, Co), image n's own kernel k[n] (the channel attention's products).
ffi::Error Pointwise(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                     ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions(), kd = k.dimensions(), od = out->dimensions();
  const bool per_image = kd.size() == 3;
  if (!SameImages(xd, od) || !SharedOrPerImage(kd, xd[0], xd[3], od[3]))
    return ffi::Error::InvalidArgument(
        "sfmnet_conv1x1: x (N, H, W, Ci), k (Ci, Co) or (N, Ci, Co) -> (N, H, W, Co)");
  const Dims s{xd[0], xd[1], xd[2], xd[3], od[3], (od[3] + kBlock - 1) / kBlock};
  if (s.co == 0 || s.n == 0) return ffi::Error::Success();
  const long kernels = per_image ? s.n : 1, kernel_size = s.ci * s.co;
  std::vector<float> kp;  // the packed kernels, one after another
  for (long n = 0; n < kernels; ++n) {
    const std::vector<float> one = Pack(k.typed_data() + n * kernel_size, 1, s);
    kp.insert(kp.end(), one.begin(), one.end());
  }
  const long packed = static_cast<long>(kp.size()) / kernels;
  const float* xp = x.typed_data();
  float* op = out->typed_data();
  constexpr long kPixels = 96;  // pixels per item; an item lies within one image
  const long image = s.h * s.w, per = (image + kPixels - 1) / kPixels, items = s.n * per;
  ParallelFor(pool, items, TaskSize(pool, items), [&](long begin, long end) {
    for (long i = begin; i < end; ++i) {
      const long n = i / per, p0 = n * image + (i % per) * kPixels;
      const long m = std::min(kPixels, (n + 1) * image - p0);
      GemmRows(xp + p0 * s.ci, m, kp.data() + (per_image ? n * packed : 0), s,
               op + p0 * s.co);
    }
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace sfmnet

XLA_FFI_DEFINE_HANDLER_SYMBOL(SfmnetConv3x3, sfmnet::Direct, SFMNET_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SfmnetConv3x3Winograd, sfmnet::Winograd<sfmnet::F2>, SFMNET_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SfmnetConv3x3Winograd4, sfmnet::Winograd<sfmnet::F4>, SFMNET_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SfmnetDepthwise3x3, sfmnet::Depthwise, SFMNET_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SfmnetConv1x1, sfmnet::Pointwise, SFMNET_BIND);
