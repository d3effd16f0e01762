// DO-Conv's kernel composition and its gradients on the CPU, one pass over memory each.
//
// Shapes (all contiguous): weight (O, Cg, MN), W_extra (O, Cg, E) or none (E = D_mul - MN),
// D (C, MN, S) with S = D_mul = MN + E, K and dL/dK (O, Cg, MN); groups G = C / Cg, and output
// row o of group g = o / (O / G) reads input channel c = g * Cg + i for its column i:
//
//   K[o, i, m]         = weight[o, i, m] + sum_s W[o, i, s] D[c, m, s],    W = [weight | W_extra]
//   dW[o, i, s]        = [s < MN] G[o, i, s] + sum_m G[o, i, m] D[c, m, s]
//   dD[c, m, s]        = sum_o G[o, i, m] W[o, i, s]
//
// Batched small matmuls (9-wide) run far below the machine's matmul rate; here every (o, i) pair
// is a few vector multiply-adds on data read once, and the backward pass computes dW and dD in
// the same sweep over G and W. MN and S are compile-time constants for 3x3 kernels with
// D_mul = 9, so the accumulators stay in registers. Two implementations: AVX-512 for float32
// (namespace avx512), portable loops for the rest.
#include <torch/extension.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

constexpr int64_t kMaxCols = 256;  // MN and D_mul above this take the PyTorch path
constexpr int64_t kLanes = 16;     // MN and D_mul up to this take the AVX-512 path (float32)
constexpr int64_t kPairsPerThread = 8192;  // less work than this per thread runs on one
constexpr int64_t kChannelBlock = 16;
constexpr int64_t kCacheBytes = 64 * 1024;  // the share of D kept in cache across rows

// at::parallel_for's grain for tasks of `pairs` (output, input channel) pairs each.
inline int64_t grain(int64_t pairs) {
  return std::max<int64_t>(1, kPairsPerThread / std::max<int64_t>(1, pairs));
}

// The forward pass runs down output rows (each thread a range of them), channel block by channel
// block so that the block's D stays in cache across the rows; every (o, i) pair reads its 9
// weights once and writes its 9 kernel values once.
template <typename T, int64_t MN_, int64_t S_>
void compose_rows(const T* w, const T* we, const T* Dt, T* K, int64_t O, int64_t Cg, int64_t G,
                  int64_t mn_rt, int64_t s_rt) {
  const int64_t MN = MN_ > 0 ? MN_ : mn_rt, S = S_ > 0 ? S_ : s_rt, E = S - MN, Og = O / G;
  const int64_t block = std::max<int64_t>(1, kCacheBytes / (S * MN * sizeof(T)));
  at::parallel_for(0, O, grain(Cg), [&](int64_t o0, int64_t o1) {
    T acc[kMaxCols];
    for (int64_t i0 = 0; i0 < Cg; i0 += block) {
      for (int64_t o = o0; o < o1; ++o) {
        const int64_t g = o / Og;
        for (int64_t i = i0; i < std::min(i0 + block, Cg); ++i) {
          const int64_t oi = o * Cg + i;
          const T* wr = w + oi * MN;
          const T* d = Dt + (g * Cg + i) * S * MN;  // D[c] transposed: (S, MN)
          for (int64_t m = 0; m < MN; ++m) acc[m] = wr[m];
          for (int64_t s = 0; s < MN; ++s) {
            const T ws = wr[s];
            for (int64_t m = 0; m < MN; ++m) acc[m] += ws * d[s * MN + m];
          }
          for (int64_t e = 0; e < E; ++e) {
            const T ws = we[oi * E + e];
            for (int64_t m = 0; m < MN; ++m) acc[m] += ws * d[(MN + e) * MN + m];
          }
          std::copy(acc, acc + MN, K + oi * MN);
        }
      }
    }
  });
}

// The backward pass: one task per (group, block of input channels), which owns those channels'
// dD rows; it runs down the group's output rows once, computing dW and accumulating dD from the
// same reads of G and W.
template <typename T, int64_t MN_, int64_t S_>
void grads_blocks(const T* Gk, const T* w, const T* we, const T* D, T* gw, T* ge, T* gD,
                  int64_t O, int64_t Cg, int64_t G, int64_t mn_rt, int64_t s_rt) {
  const int64_t MN = MN_ > 0 ? MN_ : mn_rt, S = S_ > 0 ? S_ : s_rt, E = S - MN, Og = O / G;
  const int64_t blocks = (Cg + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, G * blocks, grain(Og * kChannelBlock), [&](int64_t t0, int64_t t1) {
    std::vector<T> accD(gD ? kChannelBlock * MN * S : 0);
    T row[kMaxCols], dw[kMaxCols];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / blocks, i0 = (t % blocks) * kChannelBlock;
      const int64_t i1 = std::min(i0 + kChannelBlock, Cg);
      std::fill(accD.begin(), accD.end(), T(0));
      for (int64_t o = g * Og; o < (g + 1) * Og; ++o) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t oi = o * Cg + i;
          const T* gr = Gk + oi * MN;
          const T* d = D + (g * Cg + i) * MN * S;  // D[c]: (MN, S)
          if (gw || ge) {
            for (int64_t s = 0; s < S; ++s) dw[s] = s < MN ? gr[s] : T(0);
            for (int64_t m = 0; m < MN; ++m) {
              const T gm = gr[m];
              for (int64_t s = 0; s < S; ++s) dw[s] += gm * d[m * S + s];
            }
            if (gw) std::copy(dw, dw + MN, gw + oi * MN);
            if (ge) std::copy(dw + MN, dw + S, ge + oi * E);
          }
          if (gD) {
            std::copy(w + oi * MN, w + oi * MN + MN, row);
            if (E) std::copy(we + oi * E, we + oi * E + E, row + MN);
            T* a = accD.data() + (i - i0) * MN * S;
            for (int64_t m = 0; m < MN; ++m) {
              const T gm = gr[m];
              for (int64_t s = 0; s < S; ++s) a[m * S + s] += gm * row[s];
            }
          }
        }
      }
      for (int64_t i = i0; gD && i < i1; ++i)
        std::copy(accD.begin() + (i - i0) * MN * S, accD.begin() + (i - i0 + 1) * MN * S,
                  gD + (g * Cg + i) * MN * S);
    }
  });
}

#if defined(__AVX512F__)
// float32 with MN and D_mul up to 16 (3x3 kernels up to D_mul = 16), on CPUs with AVX-512: each
// row of (D + I) is one 16-lane register, so an (o, i) pair costs MN (+ E) broadcast
// multiply-adds per direction.
//
// Both passes own tiles of kTile input channels (so dD needs no reduction across threads) and take
// one channel at a time, its (D + I) rows (and dD rows) in registers, down a chunk of kRows output
// rows; the chunk's cache lines stay in L1 for the tile's next channels. Output rows lie
// C_in/groups * MN floats apart, too far for the hardware prefetcher, so the chunk's first channel
// prefetches kAhead rows ahead.
namespace avx512 {

constexpr int64_t kTile = 8;
constexpr int64_t kRows = 8;
constexpr int64_t kAhead = 16;

inline __mmask16 lanes(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }

inline void prefetch(const float* p, int64_t lo, int64_t hi) {
  for (int64_t k = lo; k < hi; k += 16) _mm_prefetch(reinterpret_cast<const char*>(p + k), _MM_HINT_T0);
}

// Stores the first n lanes of v at p: exactly n floats for n = 9 (a masked store counts as a
// 64-byte store for memory ordering, which would stall the next pair's loads just beyond it).
template <int64_t N>
inline void store(float* p, __m512 v, int64_t n) {
  if (N == 9) {
    _mm256_storeu_ps(p, _mm512_castps512_ps256(v));
    _mm_store_ss(p + 8, _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x100, v)));
  } else {
    _mm512_mask_storeu_ps(p, lanes(n), v);
  }
}

// Row m of (D + I)[c] (lanes s < S) and row s of its transpose (lanes m < MN), zero beyond.
inline __m512 di_row(const float* D, int64_t c, int64_t m, int64_t MN, int64_t S) {
  const __m512 r = _mm512_maskz_loadu_ps(lanes(S), D + (c * MN + m) * S);
  return _mm512_mask_add_ps(r, static_cast<__mmask16>(1u << m), r, _mm512_set1_ps(1.f));
}

inline __m512 dt_row(const float* D, int64_t c, int64_t s, int64_t MN, int64_t S) {
  const __m512i m_times_S = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
      _mm512_set1_epi32(static_cast<int>(S)));
  const __m512 r = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes(MN), m_times_S,
                                            D + c * MN * S + s, 4);
  return s < MN ? _mm512_mask_add_ps(r, static_cast<__mmask16>(1u << s), r, _mm512_set1_ps(1.f))
                : r;
}

template <int64_t MN_, int64_t S_>
void compose(const float* w, const float* we, const float* D, float* K, int64_t O, int64_t Cg,
             int64_t G, int64_t mn_rt, int64_t s_rt) {
  const int64_t MN = MN_ > 0 ? MN_ : mn_rt, S = S_ > 0 ? S_ : s_rt, E = S - MN, Og = O / G;
  const int64_t tiles = (Cg + kTile - 1) / kTile;
  at::parallel_for(0, G * tiles, grain(Og * kTile), [&](int64_t t0, int64_t t1) {
    __m512 tile_rows[kTile * kLanes];  // (D + I)^T of the tile's channels
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / tiles, i0 = (t % tiles) * kTile, i1 = std::min(i0 + kTile, Cg);
      const int64_t end = (g + 1) * Og;
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t s = 0; s < S; ++s) tile_rows[(i - i0) * kLanes + s] = dt_row(D, g * Cg + i, s, MN, S);
      for (int64_t r0 = g * Og; r0 < end; r0 += kRows) {
        const int64_t r1 = std::min(r0 + kRows, end);
        for (int64_t i = i0; i < i1; ++i) {
          __m512 rows[kLanes];  // in registers
          for (int64_t s = 0; s < S; ++s) rows[s] = tile_rows[(i - i0) * kLanes + s];
          for (int64_t o = r0; o < r1; ++o) {
            const int64_t oi = o * Cg + i;
            if (i == i0 && o + kAhead < end) {  // the chunk's first channel brings the lines in
              const int64_t row = (o + kAhead) * Cg;
              prefetch(w, (row + i0) * MN, (row + i1) * MN);
              prefetch(K, (row + i0) * MN, (row + i1) * MN);
              if (E) prefetch(we, (row + i0) * E, (row + i1) * E);
            }
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();  // two chains for latency
            for (int64_t s = 0; s < S; ++s) {
              const __m512 ws = _mm512_set1_ps(s < MN ? w[oi * MN + s] : we[oi * E + s - MN]);
              if (s & 1) a1 = _mm512_fmadd_ps(ws, rows[s], a1);
              else a0 = _mm512_fmadd_ps(ws, rows[s], a0);
            }
            store<MN_>(K + oi * MN, _mm512_add_ps(a0, a1), MN);
          }
        }
      }
    }
  });
}

// gw may be Gk itself (each pair's G is read before its dW is written in its place).
template <int64_t MN_, int64_t S_>
void grads(const float* Gk, const float* w, const float* we, const float* D, float* gw, float* ge,
           float* gD, int64_t O, int64_t Cg, int64_t G, int64_t mn_rt, int64_t s_rt) {
  const int64_t MN = MN_ > 0 ? MN_ : mn_rt, S = S_ > 0 ? S_ : s_rt, E = S - MN, Og = O / G;
  const __mmask16 mn = lanes(MN), extra = static_cast<__mmask16>(lanes(S) & ~lanes(MN));
  const int64_t tiles = (Cg + kTile - 1) / kTile;
  at::parallel_for(0, G * tiles, grain(Og * kTile), [&](int64_t t0, int64_t t1) {
    __m512 tile_acc[kTile * kLanes];  // dD of the tile's channels between row chunks
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / tiles, i0 = (t % tiles) * kTile, i1 = std::min(i0 + kTile, Cg);
      const int64_t end = (g + 1) * Og;
      for (int64_t k = 0; k < (i1 - i0) * MN; ++k) tile_acc[k] = _mm512_setzero_ps();
      for (int64_t r0 = g * Og; r0 < end; r0 += kRows) {
        const int64_t r1 = std::min(r0 + kRows, end);
        for (int64_t i = i0; i < i1; ++i) {
          __m512 rows[kLanes], acc[kLanes];  // (D + I)[c, m, :] and dD[c, m, :], in registers
          for (int64_t m = 0; m < MN; ++m) {
            rows[m] = di_row(D, g * Cg + i, m, MN, S);
            acc[m] = tile_acc[(i - i0) * MN + m];
          }
          for (int64_t o = r0; o < r1; ++o) {
            const int64_t oi = o * Cg + i;
            if (i == i0 && o + kAhead < end) {  // the chunk's first channel brings the lines in
              const int64_t row = (o + kAhead) * Cg;
              prefetch(Gk, (row + i0) * MN, (row + i1) * MN);
              if (gD) prefetch(w, (row + i0) * MN, (row + i1) * MN);
              if (gD && E) prefetch(we, (row + i0) * E, (row + i1) * E);
            }
            const float* gr = Gk + oi * MN;
            __m512 wr = _mm512_setzero_ps();
            if (gD) {
              wr = _mm512_maskz_loadu_ps(mn, w + oi * MN);
              if (E) wr = _mm512_mask_expandloadu_ps(wr, extra, we + oi * E);
            }
            __m512 d0 = _mm512_setzero_ps(), d1 = _mm512_setzero_ps();
            for (int64_t m = 0; m < MN; ++m) {
              const __m512 gm = _mm512_set1_ps(gr[m]);
              if (gD) acc[m] = _mm512_fmadd_ps(gm, wr, acc[m]);
              if (m & 1) d1 = _mm512_fmadd_ps(gm, rows[m], d1);
              else d0 = _mm512_fmadd_ps(gm, rows[m], d0);
            }
            const __m512 dw = _mm512_add_ps(d0, d1);
            if (gw) store<MN_>(gw + oi * MN, dw, MN);
            if (ge) _mm512_mask_compressstoreu_ps(ge + oi * E, extra, dw);
          }
          for (int64_t m = 0; m < MN; ++m) tile_acc[(i - i0) * MN + m] = acc[m];
        }
      }
      for (int64_t i = i0; gD && i < i1; ++i)
        for (int64_t m = 0; m < MN; ++m)
          _mm512_mask_storeu_ps(gD + ((g * Cg + i) * MN + m) * S, lanes(S), tile_acc[(i - i0) * MN + m]);
    }
  });
}

}  // namespace avx512
#endif

void check(const torch::Tensor& weight, const torch::Tensor& D, const c10::optional<torch::Tensor>& W_extra) {
  TORCH_CHECK(weight.device().is_cpu() && D.device().is_cpu(), "compose: CPU tensors only");
  TORCH_CHECK(weight.scalar_type() == D.scalar_type(), "compose: weight and D differ in dtype");
  TORCH_CHECK(D.size(1) <= kMaxCols && D.size(2) <= kMaxCols, "compose: D too wide");
  if (W_extra.has_value())
    TORCH_CHECK(W_extra->scalar_type() == D.scalar_type(), "compose: W_extra dtype");
}

#define DOCONV_DISPATCH(MN, S, ...)                                            \
  if ((MN) == 9 && (S) == 9) {                                                 \
    constexpr int64_t kMN = 9, kS = 9;                                         \
    __VA_ARGS__();                                                             \
  } else {                                                                     \
    constexpr int64_t kMN = 0, kS = 0;                                         \
    __VA_ARGS__();                                                             \
  }

// Whether the AVX-512 float32 path takes this composition.
bool vectorized(const torch::Tensor& weight, int64_t MN, int64_t S) {
#if defined(__AVX512F__)
  return weight.scalar_type() == torch::kFloat && MN <= kLanes && S <= kLanes;
#else
  return false;
#endif
}

// out: where to write K (contiguous, the weight's shape and dtype), else a new tensor.
torch::Tensor compose(const torch::Tensor& weight, const torch::Tensor& D,
                      const c10::optional<torch::Tensor>& W_extra,
                      const c10::optional<torch::Tensor>& out) {
  check(weight, D, W_extra);
  const int64_t O = weight.size(0), Cg = weight.size(1), C = D.size(0), MN = D.size(1),
                S = D.size(2);
  auto w = weight.contiguous();
  auto we = W_extra.has_value() ? W_extra->contiguous() : torch::Tensor();
  auto K = out.has_value() ? *out
                           : torch::empty(weight.sizes(),
                                          weight.options().memory_format(at::MemoryFormat::Contiguous));
  TORCH_CHECK(K.sizes() == weight.sizes() && K.is_contiguous() && K.device().is_cpu() &&
                  K.scalar_type() == weight.scalar_type(),
              "compose: out must be a contiguous CPU tensor of the weight's shape and dtype");
#if defined(__AVX512F__)
  if (vectorized(weight, MN, S)) {
    auto Dc = D.contiguous();
    const float* wep = we.defined() ? we.data_ptr<float>() : nullptr;
    DOCONV_DISPATCH(MN, S, [&] {
      avx512::compose<kMN, kS>(w.data_ptr<float>(), wep, Dc.data_ptr<float>(),
                               K.data_ptr<float>(), O, Cg, C / Cg, MN, S);
    });
    return K;
  }
#endif
  auto Dt = D.transpose(1, 2).contiguous();
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "doconv_compose", [&] {
    const scalar_t* wep = we.defined() ? we.data_ptr<scalar_t>() : nullptr;
    DOCONV_DISPATCH(MN, S, [&] {
      compose_rows<scalar_t, kMN, kS>(w.data_ptr<scalar_t>(), wep, Dt.data_ptr<scalar_t>(),
                                      K.data_ptr<scalar_t>(), O, Cg, C / Cg, MN, S);
    });
  });
  return K;
}

// reuse_grad: dL/dweight may be written over grad_K (when it is contiguous and of the weight's
// dtype), for a caller that owns grad_K; it saves one kernel-sized allocation.
std::vector<torch::Tensor> compose_grads(const torch::Tensor& grad_K, const torch::Tensor& weight,
                                         const torch::Tensor& D,
                                         const c10::optional<torch::Tensor>& W_extra,
                                         bool need_weight, bool need_D, bool need_extra,
                                         bool reuse_grad) {
  check(weight, D, W_extra);
  const int64_t O = weight.size(0), Cg = weight.size(1), C = D.size(0), MN = D.size(1),
                S = D.size(2);
  auto Gk = grad_K.to(weight.scalar_type()).contiguous();
  auto w = weight.contiguous();
  auto Dc = D.contiguous();
  auto we = W_extra.has_value() ? W_extra->contiguous() : torch::Tensor();
  need_extra = need_extra && we.defined();
  const bool fast = vectorized(weight, MN, S);
  auto gw = !need_weight ? torch::Tensor()
            : (fast && reuse_grad) ? Gk.view(weight.sizes())
                                   : torch::empty(weight.sizes(), w.options());
  auto gD = need_D ? torch::empty(D.sizes(), Dc.options()) : torch::Tensor();
  auto ge = need_extra ? torch::empty(we.sizes(), we.options()) : torch::Tensor();
#if defined(__AVX512F__)
  if (fast) {
    auto ptr = [](const torch::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; };
    DOCONV_DISPATCH(MN, S, [&] {
      avx512::grads<kMN, kS>(Gk.data_ptr<float>(), w.data_ptr<float>(), ptr(we),
                             Dc.data_ptr<float>(), ptr(gw), ptr(ge), ptr(gD), O, Cg, C / Cg, MN, S);
    });
    return {gw, gD, ge};
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "doconv_compose_grads", [&] {
    auto ptr = [](const torch::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    DOCONV_DISPATCH(MN, S, [&] {
      grads_blocks<scalar_t, kMN, kS>(Gk.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), ptr(we),
                                      Dc.data_ptr<scalar_t>(), ptr(gw), ptr(ge), ptr(gD), O, Cg,
                                      C / Cg, MN, S);
    });
  });
  return {gw, gD, ge};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("compose", &compose, "K from weight, D, W_extra", py::arg("weight"), py::arg("D"),
        py::arg("W_extra"), py::arg("out") = py::none());
  m.def("compose_grads", &compose_grads, "dL/d(weight, D, W_extra) from dL/dK");
#if defined(__AVX512F__)
  m.attr("avx512") = true;
#else
  m.attr("avx512") = false;
#endif
}
