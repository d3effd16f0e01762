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
// D_mul = 9, so the accumulators stay in registers.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

constexpr int64_t kMaxCols = 256;  // MN and D_mul above this take the PyTorch path
constexpr int64_t kChannelBlock = 16;
constexpr int64_t kCacheBytes = 64 * 1024;  // the share of D kept in cache across rows

// The forward pass runs down output rows (each thread a range of them), channel block by channel
// block so that the block's D stays in cache across the rows; every (o, i) pair reads its 9
// weights once and writes its 9 kernel values once.
template <typename T, int64_t MN_, int64_t S_>
void compose_rows(const T* w, const T* we, const T* Dt, T* K, int64_t O, int64_t Cg, int64_t G,
                  int64_t mn_rt, int64_t s_rt) {
  const int64_t MN = MN_ > 0 ? MN_ : mn_rt, S = S_ > 0 ? S_ : s_rt, E = S - MN, Og = O / G;
  const int64_t block = std::max<int64_t>(1, kCacheBytes / (S * MN * sizeof(T)));
  at::parallel_for(0, O, 1, [&](int64_t o0, int64_t o1) {
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
  at::parallel_for(0, G * blocks, 1, [&](int64_t t0, int64_t t1) {
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

torch::Tensor compose(const torch::Tensor& weight, const torch::Tensor& D,
                      const c10::optional<torch::Tensor>& W_extra) {
  check(weight, D, W_extra);
  const int64_t O = weight.size(0), Cg = weight.size(1), C = D.size(0), MN = D.size(1),
                S = D.size(2);
  auto w = weight.contiguous();
  auto Dt = D.transpose(1, 2).contiguous();
  auto we = W_extra.has_value() ? W_extra->contiguous() : torch::Tensor();
  auto K = torch::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "doconv_compose", [&] {
    const scalar_t* wep = we.defined() ? we.data_ptr<scalar_t>() : nullptr;
    DOCONV_DISPATCH(MN, S, [&] {
      compose_rows<scalar_t, kMN, kS>(w.data_ptr<scalar_t>(), wep, Dt.data_ptr<scalar_t>(),
                                      K.data_ptr<scalar_t>(), O, Cg, C / Cg, MN, S);
    });
  });
  return K;
}

std::vector<torch::Tensor> compose_grads(const torch::Tensor& grad_K, const torch::Tensor& weight,
                                         const torch::Tensor& D,
                                         const c10::optional<torch::Tensor>& W_extra,
                                         bool need_weight, bool need_D, bool need_extra) {
  check(weight, D, W_extra);
  const int64_t O = weight.size(0), Cg = weight.size(1), C = D.size(0), MN = D.size(1),
                S = D.size(2);
  auto Gk = grad_K.to(weight.scalar_type()).contiguous();
  auto w = weight.contiguous();
  auto Dc = D.contiguous();
  auto we = W_extra.has_value() ? W_extra->contiguous() : torch::Tensor();
  need_extra = need_extra && we.defined();
  auto gw = need_weight ? torch::empty(weight.sizes(), w.options()) : torch::Tensor();
  auto gD = need_D ? torch::empty(D.sizes(), Dc.options()) : torch::Tensor();
  auto ge = need_extra ? torch::empty(we.sizes(), we.options()) : torch::Tensor();
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
  m.def("compose", &compose, "K from weight, D, W_extra");
  m.def("compose_grads", &compose_grads, "dL/d(weight, D, W_extra) from dL/dK");
}
