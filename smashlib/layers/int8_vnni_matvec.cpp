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
#include <torch/csrc/inductor/aoti_torch/utils.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <utility>

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

// The activations of x [M, K] (float32, bf16, or anything converted to float32) as int16 blocks: (a, d).
std::pair<torch::Tensor, torch::Tensor> activation_blocks(const torch::Tensor& x_in) {
  const auto x = (x_in.scalar_type() == torch::kFloat32 || x_in.scalar_type() == torch::kBFloat16)
                     ? x_in.contiguous() : x_in.to(torch::kFloat32).contiguous();
  const int64_t M = x.size(0), K = x.size(1);
  auto a = torch::empty({M, K}, torch::kInt16);
  auto d = torch::empty({M, K / kBlock}, torch::kFloat32);
  if (x.scalar_type() == torch::kBFloat16) {
    quantize_blocks(x.data_ptr<at::BFloat16>(), M, K, a.data_ptr<int16_t>(), d.data_ptr<float>());
  } else {
    quantize_blocks(x.data_ptr<float>(), M, K, a.data_ptr<int16_t>(), d.data_ptr<float>());
  }
  return {a, d};
}

// acc + the pairwise int16 products of w and a, summed exactly in int32 (int8 weights: no pair overflows).
inline __m256i add_pair_products(__m256i acc, __m256i w, __m256i a) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpwssd_epi32(acc, w, a);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(w, a));
#endif
}

// Ask for the weight bytes kPrefetchBytes ahead of those being multiplied. A mat-vec reads each weight once,
// in order, so it is bound by how many cache lines are in flight per core: the hardware prefetcher alone
// kept one core at about 7 GB/s on an AVX2 EPYC, and this brings SmolLM2's 211 products of a decode step
// from 12.1 to 8.7 ms there (2 threads; 4 KB ahead: 9.0 ms, 8 KB: 13.4 ms, past the L1 it lands in).
// Prefetching past the end of the weight is harmless: a prefetch never faults.
constexpr int64_t kPrefetchBytes = 2048;
template <typename T>
inline void prefetch_ahead(const T* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0);
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
  const int64_t M = x_in.size(0), K = x_in.size(1), N = weight.size(0), blocks = K / kBlock;
  const auto [a, d] = activation_blocks(x_in);
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
          prefetch_ahead(wb);
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

// ---------------------------------------------------------------------------------------------- 2/3/4 bits
// The same product for weights of up to 4 bits, w = s * (q - z) with q in [0, 15] and one bf16 scale s and
// integer zero z per block of 32 weights of a row (GPTQ's groups of 32, or larger groups repeated per block).
// A block is 16 bytes: byte j holds q[j] in its low nibble and q[16 + j] in its high one, so the two halves
// unpack with one mask and one shift into the order the activations are in. q - z (in [-15, 15]) is formed in
// int16 before the pair products, so the int32 block sums are exact and no correction term is needed.
// PyTorch's int4 CPU kernel (_weight_int4pack_mm_for_cpu) is not at the memory bandwidth without AVX-512:
// measured on an AVX2 EPYC, a 1536x576 mat-vec takes 81 us there against 100 us in fp32.

// packed [N, K / 2] uint8, scales [N, K / 32] bf16, zeros [N, K / 32] uint8 (see above).
static void check_int4(const torch::Tensor& packed, const torch::Tensor& scales, const torch::Tensor& zeros, int64_t K) {
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == torch::kUInt8 && packed.is_contiguous() && packed.size(1) * 2 == K,
              "int4: packed must be contiguous uint8 [N, K / 2]");
  const int64_t N = packed.size(0), blocks = K / kBlock;
  TORCH_CHECK(scales.scalar_type() == torch::kBFloat16 && scales.is_contiguous() && scales.size(0) == N && scales.size(1) == blocks,
              "int4: scales must be contiguous bf16 [N, K / 32]");
  TORCH_CHECK(zeros.scalar_type() == torch::kUInt8 && zeros.is_contiguous() && zeros.size(0) == N && zeros.size(1) == blocks,
              "int4: zeros must be contiguous uint8 [N, K / 32]");
}

static inline float bf16_to_float(const at::BFloat16 value) { return static_cast<float>(value); }

// One block's 32 weights q - zero as two vectors of 16 int16 lanes (exact small integers), in column order:
// one widening of the 16 bytes to 16-bit lanes, then each lane's low nibble (q[j]) and high nibble (q[16 + j]).
static inline std::pair<__m256i, __m256i> int4_block_weights(const uint8_t* block, uint8_t zero_point) {
  const __m256i bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block)));
  const __m256i zero = _mm256_set1_epi16(static_cast<int16_t>(zero_point));
  return {_mm256_sub_epi16(_mm256_and_si256(bytes, _mm256_set1_epi16(0x0F)), zero),
          _mm256_sub_epi16(_mm256_srli_epi16(bytes, 4), zero)};
}

// The int32 pair sums (8 lanes) of one block: its 32 weights q - zero times the block's 32 int16 activations.
static inline __m256i int4_block_sums(const uint8_t* block, uint8_t zero_point, const int16_t* activations) {
  const auto [w0, w1] = int4_block_weights(block, zero_point);
  const __m256i sums = add_pair_products(_mm256_setzero_si256(), w0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(activations)));
  return add_pair_products(sums, w1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(activations + 16)));
}

// x: [M, K] float32 or bfloat16. Returns [M, N] float32.
torch::Tensor int4_matvec(const torch::Tensor& x_in, const torch::Tensor& packed, const torch::Tensor& scales, const torch::Tensor& zeros) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) % kBlock == 0, "int4_matvec: x [M, K] with K a multiple of 32");
  const int64_t M = x_in.size(0), K = x_in.size(1), blocks = K / kBlock;
  check_int4(packed, scales, zeros, K);
  const int64_t N = packed.size(0);
  const auto [a, d] = activation_blocks(x_in);
  auto y = torch::empty({M, N}, torch::kFloat32);
  const uint8_t* P = packed.data_ptr<uint8_t>();
  const at::BFloat16* S = scales.data_ptr<at::BFloat16>();
  const uint8_t* Z = zeros.data_ptr<uint8_t>();
  const int16_t* A = a.data_ptr<int16_t>();
  const float* D = d.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; ++m) {
      const int16_t* a_row = A + m * K;
      const float* d_row = D + m * blocks;
      int64_t n = n0;
      // two rows at a time: each block's activations and scale are loaded once for both, and the two rows'
      // multiply-adds do not wait on each other
      for (; n + 1 < n1; n += 2) {
        const uint8_t* p0 = P + n * (K / 2);
        const uint8_t* p1 = p0 + K / 2;
        const at::BFloat16* s0 = S + n * blocks;
        const uint8_t* z0 = Z + n * blocks;
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        for (int64_t b = 0; b < blocks; ++b) {
          const int16_t* ab = a_row + b * kBlock;
          prefetch_ahead(p0 + b * (kBlock / 2));
          prefetch_ahead(p1 + b * (kBlock / 2));
          const __m256i sums0 = int4_block_sums(p0 + b * (kBlock / 2), z0[b], ab);
          const __m256i sums1 = int4_block_sums(p1 + b * (kBlock / 2), z0[blocks + b], ab);
          acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums0), _mm256_set1_ps(d_row[b] * bf16_to_float(s0[b])), acc0);
          acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums1), _mm256_set1_ps(d_row[b] * bf16_to_float(s0[blocks + b])), acc1);
        }
        Y[m * N + n] = horizontal_sum(acc0);
        Y[m * N + n + 1] = horizontal_sum(acc1);
      }
      for (; n < n1; ++n) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < blocks; ++b) {
          const __m256i sums = int4_block_sums(P + n * (K / 2) + b * (kBlock / 2), Z[n * blocks + b], a_row + b * kBlock);
          acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(d_row[b] * bf16_to_float(S[n * blocks + b])), acc);
        }
        Y[m * N + n] = horizontal_sum(acc);
      }
    }
  });
  return y;
}

// Row n of the weight [N, K] in float32: each block's q - zero as the mat-vec unpacks it, times its scale.
static void int4_dequantize_row(const uint8_t* P, const at::BFloat16* S, const uint8_t* Z, int64_t K, int64_t n, float* out) {
  const int64_t blocks = K / kBlock;
  for (int64_t b = 0; b < blocks; ++b) {
    const auto [w0, w1] = int4_block_weights(P + n * (K / 2) + b * (kBlock / 2), Z[n * blocks + b]);
    const __m256i halves[2] = {w0, w1};
    const __m256 scale = _mm256_set1_ps(bf16_to_float(S[n * blocks + b]));
    float* wb = out + b * kBlock;
    for (int half = 0; half < 2; ++half) {
      const __m256i low = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(halves[half]));
      const __m256i high = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(halves[half], 1));
      _mm256_storeu_ps(wb + half * 16, _mm256_mul_ps(_mm256_cvtepi32_ps(low), scale));
      _mm256_storeu_ps(wb + half * 16 + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(high), scale));
    }
  }
}

// The weight [N, K] in float32, for prefill's matrix-matrix products in bf16 (a GEMM on it beats any mat-vec kernel).
torch::Tensor int4_dequantize(const torch::Tensor& packed, const torch::Tensor& scales, const torch::Tensor& zeros) {
  const int64_t N = packed.size(0), K = packed.size(1) * 2;
  check_int4(packed, scales, zeros, K);
  auto w = torch::empty({N, K}, torch::kFloat32);
  const uint8_t* P = packed.data_ptr<uint8_t>();
  const at::BFloat16* S = scales.data_ptr<at::BFloat16>();
  const uint8_t* Z = zeros.data_ptr<uint8_t>();
  float* W = w.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) int4_dequantize_row(P, S, Z, K, n, W + n * K);
  });
  return w;
}

// ------------------------------------------------------------------------------------ prefill: GEMMs
// Long calls (prefill) on CPUs without bf16 units multiply in float32: a GEMM beats any mat-vec kernel once
// each weight serves many tokens. The weight is dequantized here, scales folded in, rows in parallel, and the
// product computed as y^T = W x^T (the orientation that measured fastest here), then laid out as [M, N].
// One prefill's 210 products of SmolLM2-135M (128 tokens, an AVX2 EPYC, median of 15 alternating rounds):
// 373 ms at 8 bits against 473 ms converting in PyTorch and scaling after (int8_float_gemm.py); 352 against
// 426 ms at 4 bits; 386 ms on fp32 weights. ``dequantize(n0, n1, out)`` writes rows n0..n1.
template <typename Dequantize>
torch::Tensor dequantized_gemm(const torch::Tensor& x_in, int64_t N, int64_t K, Dequantize dequantize) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) == K, "the activations must be [M, K] with the weight's K");
  const auto x = x_in.to(torch::kFloat32).contiguous();
  auto weight = torch::empty({N, K}, torch::kFloat32);
  float* W = weight.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) { dequantize(n0, n1, W + n0 * K); });
  return at::mm(weight, x.t()).t().contiguous();
}

torch::Tensor int8_gemm(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& scales) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kInt8 && weight.is_contiguous(),
              "int8_gemm: weight must be contiguous int8 [N, K]");
  TORCH_CHECK(scales.scalar_type() == torch::kFloat32 && scales.is_contiguous() && scales.numel() == weight.size(0),
              "int8_gemm: scales must be contiguous float32 [N]");
  const int64_t K = weight.size(1);
  const int8_t* Q = weight.data_ptr<int8_t>();
  const float* S = scales.data_ptr<float>();
  return dequantized_gemm(x, weight.size(0), K, [&](int64_t n0, int64_t n1, float* out) {
    for (int64_t n = n0; n < n1; ++n, out += K) {
      const int8_t* q = Q + n * K;
      const float s = S[n];
      for (int64_t k = 0; k < K; ++k) out[k] = static_cast<float>(q[k]) * s;
    }
  });
}

torch::Tensor int4_gemm(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& scales, const torch::Tensor& zeros) {
  const int64_t N = packed.size(0), K = packed.size(1) * 2;
  check_int4(packed, scales, zeros, K);
  const uint8_t* P = packed.data_ptr<uint8_t>();
  const at::BFloat16* S = scales.data_ptr<at::BFloat16>();
  const uint8_t* Z = zeros.data_ptr<uint8_t>();
  return dequantized_gemm(x, N, K, [&](int64_t n0, int64_t n1, float* out) {
    for (int64_t n = n0; n < n1; ++n, out += K) int4_dequantize_row(P, S, Z, K, n, out);
  });
}

// Registered with the dispatcher (not bound as Python functions), so an eager call costs what an aten op
// costs and torch.compile sees one op; their shape functions are registered in int8_vnni_kernel.py.
TORCH_LIBRARY(smashlib, m) {
  m.def("int8_vnni_matvec(Tensor x, Tensor weight, Tensor scales) -> Tensor");
  m.def("int4_matvec(Tensor x, Tensor packed, Tensor scales, Tensor zeros) -> Tensor");
  m.def("int4_dequantize(Tensor packed, Tensor scales, Tensor zeros) -> Tensor");
  m.def("int8_gemm(Tensor x, Tensor weight, Tensor scales) -> Tensor");
  m.def("int4_gemm(Tensor x, Tensor packed, Tensor scales, Tensor zeros) -> Tensor");
}
TORCH_LIBRARY_IMPL(smashlib, CPU, m) {
  m.impl("int8_vnni_matvec", &int8_vnni_matvec);
  m.impl("int4_matvec", &int4_matvec);
  m.impl("int4_dequantize", &int4_dequantize);
  m.impl("int8_gemm", &int8_gemm);
  m.impl("int4_gemm", &int4_gemm);
}

// The same ops as C functions for AOTInductor (smashlib.aot_decode): a library it builds calls these directly
// (``aot_inductor.custom_ops_to_c_shims``) instead of going through its proxy executor, which packs and
// unpacks every call's arguments through the dispatcher's boxed stack. The names are AOTInductor's:
// aoti_torch_<device>_<op>; the result is a new tensor handle that the caller owns.
extern "C" {
AOTI_TORCH_EXPORT AOTITorchError aoti_torch_cpu_int8_vnni_matvec(
    AtenTensorHandle x, AtenTensorHandle weight, AtenTensorHandle scales, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    using torch::aot_inductor::tensor_handle_to_tensor_pointer;
    *ret0 = torch::aot_inductor::new_tensor_handle(int8_vnni_matvec(
        *tensor_handle_to_tensor_pointer(x), *tensor_handle_to_tensor_pointer(weight),
        *tensor_handle_to_tensor_pointer(scales)));
  });
}

AOTI_TORCH_EXPORT AOTITorchError aoti_torch_cpu_int4_matvec(
    AtenTensorHandle x, AtenTensorHandle packed, AtenTensorHandle scales, AtenTensorHandle zeros, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    using torch::aot_inductor::tensor_handle_to_tensor_pointer;
    *ret0 = torch::aot_inductor::new_tensor_handle(int4_matvec(
        *tensor_handle_to_tensor_pointer(x), *tensor_handle_to_tensor_pointer(packed),
        *tensor_handle_to_tensor_pointer(scales), *tensor_handle_to_tensor_pointer(zeros)));
  });
}
}
