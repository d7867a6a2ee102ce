// Matrix-vector products of int8 weights on x86 CPUs with AVX512-VNNI or AVX2 (smashlib.layers.int8_vnni_kernel).
//
// y[m, n] = scale[n] * sum_b d[m, b] * dot(a[m, block b], w[n, block b])
//
// w is the layer's int8 weight [N, K] with one scale per output row (GPTQ's 8-bit grid). The activations
// x [M, K] are written as int16 per block of 32 values, a with one float scale d per block: a rounding
// of 1/65534 of the block's largest magnitude, finer than bf16's 8-bit mantissa, so the product is the
// weight-only one (a relative difference of about 2e-5). VNNI's dpwssd sums pairs of int16 products exactly
// into int32, 16 weights an instruction; only the block sums are scaled and added in float. Reading one byte
// per weight with that little arithmetic is what brings a decode step's products to the memory bandwidth,
// where PyTorch's weight-only kernel (``_weight_int8pack_mm``) converts every weight to float first.
// Without VNNI (AVX2 CPUs: AMD before Zen 4, Intel before Ice Lake) the same pair sums are vpmaddwd + vpaddd,
// two instructions instead of one and exactly the same int32 sums, so both builds give the same outputs.
#include <torch/extension.h>
#include <torch/library.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>

namespace {

constexpr int64_t kBlock = 32;

// x [M, K] (float or bf16) -> a [M, K] int16, d [M, K / 32]: each block scaled by its largest magnitude / 32767.
template <typename T>
void quantize_blocks(const T* x, int64_t M, int64_t K, int16_t* a, float* d) {
  const int64_t blocks = K / kBlock;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < blocks; ++b) {
      float xb[kBlock];
      for (int64_t i = 0; i < kBlock; ++i) xb[i] = static_cast<float>(x[m * K + b * kBlock + i]);
      float amax = 0.f;
      for (int64_t i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float scale = amax / 32767.f;
      const float inverse = scale > 0.f ? 1.f / scale : 0.f;
      d[m * blocks + b] = scale;
      for (int64_t i = 0; i < kBlock; ++i) a[m * K + b * kBlock + i] = static_cast<int16_t>(std::nearbyint(xb[i] * inverse));
    }
  }
}

// acc + the pairwise int16 products of w and a, summed exactly in int32 (int8 weights: no pair overflows).
inline __m256i add_pair_products(__m256i acc, __m256i w, __m256i a) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpwssd_epi32(acc, w, a);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(w, a));
#endif
}

inline float horizontal_sum(__m256 v) {
  __m128 low = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  low = _mm_hadd_ps(low, low);
  low = _mm_hadd_ps(low, low);
  return _mm_cvtss_f32(low);
}

}  // namespace

// x: [M, K] float32 or bfloat16; weight: [N, K] int8; scales: [N] float32. Returns [M, N] float32.
torch::Tensor int8_vnni_matvec(const torch::Tensor& x_in, const torch::Tensor& weight, const torch::Tensor& scales) {
  TORCH_CHECK(x_in.dim() == 2 && weight.dim() == 2 && x_in.size(1) == weight.size(1), "int8_vnni_matvec: x [M, K], weight [N, K]");
  TORCH_CHECK(weight.scalar_type() == torch::kInt8 && weight.is_contiguous(), "int8_vnni_matvec: weight must be contiguous int8");
  TORCH_CHECK(scales.scalar_type() == torch::kFloat32 && scales.is_contiguous() && scales.numel() == weight.size(0),
              "int8_vnni_matvec: scales must be contiguous float32 [N]");
  TORCH_CHECK(x_in.size(1) % kBlock == 0, "int8_vnni_matvec: K must be a multiple of 32");
  const auto x = (x_in.scalar_type() == torch::kFloat32 || x_in.scalar_type() == torch::kBFloat16)
                     ? x_in.contiguous() : x_in.to(torch::kFloat32).contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0), blocks = K / kBlock;
  auto a = torch::empty({M, K}, torch::kInt16);
  auto d = torch::empty({M, blocks}, torch::kFloat32);
  if (x.scalar_type() == torch::kBFloat16) {
    quantize_blocks(x.data_ptr<at::BFloat16>(), M, K, a.data_ptr<int16_t>(), d.data_ptr<float>());
  } else {
    quantize_blocks(x.data_ptr<float>(), M, K, a.data_ptr<int16_t>(), d.data_ptr<float>());
  }
  auto y = torch::empty({M, N}, torch::kFloat32);
  const int8_t* W = weight.data_ptr<int8_t>();
  const int16_t* A = a.data_ptr<int16_t>();
  const float* D = d.data_ptr<float>();
  const float* S = scales.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const int8_t* w_row = W + n * K;
      for (int64_t m = 0; m < M; ++m) {
        const int16_t* a_row = A + m * K;
        const float* d_row = D + m * blocks;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < blocks; ++b) {
          const int8_t* wb = w_row + b * kBlock;
          const int16_t* ab = a_row + b * kBlock;
          const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb)));
          const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + 16)));
          __m256i sums = add_pair_products(_mm256_setzero_si256(), w0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab)));
          sums = add_pair_products(sums, w1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab + 16)));
          acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(d_row[b]), acc);
        }
        Y[m * N + n] = horizontal_sum(acc) * S[n];
      }
    }
  });
  return y;
}

// Registered with the dispatcher (not bound as a Python function), so an eager call costs what an aten op
// costs and torch.compile sees one op; its shape function is registered in int8_vnni_kernel.py.
TORCH_LIBRARY(smashlib, m) { m.def("int8_vnni_matvec(Tensor x, Tensor weight, Tensor scales) -> Tensor"); }
TORCH_LIBRARY_IMPL(smashlib, CPU, m) { m.impl("int8_vnni_matvec", &int8_vnni_matvec); }
