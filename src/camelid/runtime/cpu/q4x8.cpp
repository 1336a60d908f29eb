// q4x8: 2/3/4-bit GPTQ weights times int8-quantized activations with integer dot products, and a
// dequantizer into a dense matrix (for prefill, where a bf16/fp32 GEMM is faster than any GEMV).
//
// The approach is llama.cpp's Q4_0 x Q8_0 dot product (ggml/src/ggml-cpu/arch/x86/quants.c,
// ggml_vec_dot_q4_0_q8_0): activations are quantized to int8 per block at call time, weights stay
// 4-bit codes, products are summed in int32 (AVX2 `maddubs`+`madd`, AVX-VNNI / AVX512-VNNI `dpbusd`)
// and scaled once per block. This file is compiled once per host with flags chosen from its CPU
// features (camelid/runtime/cpu_kernels.py); the preprocessor picks the matching code path below.
//
// Weight layout (built by kernels.prepare_q4x8): uint8 [N, K/2]. For every 64-input chunk c of output
// row n, byte j (0..31) holds code(n, 64c+j) in its low nibble and code(n, 64c+32+j) in its high nibble,
// so one 32-byte load unpacks into inputs 64c..64c+31 (low) and 64c+32..64c+63 (high), in order.
// Blocks: kb inputs (a multiple of 64) share one weight scale s and zero z per output, and one
// activation scale dx per row. With xq the int8 activations, sx = sum(xq) over the block:
//   y[m, n] = sum_b dx*s * (sum_i q_i xq_i) - sum_b (dx*sx) * (s*z)
// so the kernel reads per block sw = s and wz = s*z (fp32, [N, K/kb]).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define Q4X8_PATH "avx512"
#if defined(__AVX512VNNI__)
#define Q4X8_DOT "avx512_vnni dpbusd"
#else
#define Q4X8_DOT "avx512bw maddubs"
#endif
#elif defined(__AVX2__)
#define Q4X8_PATH "avx2"
#if defined(__AVXVNNI__)
#define Q4X8_DOT "avx_vnni dpbusd"
#else
#define Q4X8_DOT "avx2 maddubs"
#endif
#else
#define Q4X8_PATH "generic"
#define Q4X8_DOT "scalar"
#endif

constexpr int kMaxRows = 4;  // activation rows per pass over a weight row (register blocking)
// A single core's bandwidth is bound by misses in flight; prefetching a few KB ahead of the weight stream
// (rows are contiguous) cut the 11008x4096 GEMV from ~1.5 to ~1.25 ms on one Xeon core.
constexpr int64_t kPrefetchBytes = 4096;
// Weight bytes per unit of work handed to a thread: a few hundred KB, so the hardware prefetcher's stream
// is long and the chunks are many (an 11008x4096 layer has 86).
constexpr int64_t kChunkBytes = 256 << 10;

void quantize_rows(const float* x, int64_t M, int64_t K, int64_t kb, int8_t* xq, float* dx, float* xs) {
  const int64_t nb = K / kb;
  at::parallel_for(0, M * nb, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* p = x + i * kb;  // blocks are contiguous: row m block b starts at (m * nb + b) * kb
      float amax = 0.f;
      for (int64_t j = 0; j < kb; ++j) amax = std::max(amax, std::fabs(p[j]));
      const float d = amax / 127.f;
      const float id = d > 0.f ? 1.f / d : 0.f;
      int8_t* q = xq + i * kb;
      int32_t sum = 0;
      for (int64_t j = 0; j < kb; ++j) {
        const int v = static_cast<int>(std::nearbyint(p[j] * id));
        q[j] = static_cast<int8_t>(v);
        sum += v;
      }
      dx[i] = d;
      xs[i] = d * static_cast<float>(sum);
    }
  });
}

#if defined(__AVX512F__) && defined(__AVX512BW__)

inline __m512i unpack64(const uint8_t* w) {
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(b), _mm256_srli_epi16(b, 4), 1);
  return _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
}

inline __m512i dot64(__m512i acc, __m512i w, const int8_t* x) {
  const __m512i xv = _mm512_loadu_si512(x);
#if defined(__AVX512VNNI__)
  return _mm512_dpbusd_epi32(acc, w, xv);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(w, xv), _mm512_set1_epi16(1)));
#endif
}

template <int R>
void dot_rows(const uint8_t* w, const float* sw, const float* wz, const int8_t* xq, const float* dx,
              const float* xs, int64_t K, int64_t kb, float* y, int64_t ldy) {
  const int64_t nb = K / kb;
  __m512 acc[R];
  float corr[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps(), corr[r] = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    __m512i ai[R];
    for (int r = 0; r < R; ++r) ai[r] = _mm512_setzero_si512();
    for (int64_t c = b * kb; c < (b + 1) * kb; c += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(w + c / 2 + kPrefetchBytes), _MM_HINT_T0);
      const __m512i wv = unpack64(w + c / 2);
      for (int r = 0; r < R; ++r) ai[r] = dot64(ai[r], wv, xq + r * K + c);
    }
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai[r]), _mm512_set1_ps(dx[r * nb + b] * sw[b]), acc[r]);
      corr[r] += xs[r * nb + b] * wz[b];
    }
  }
  for (int r = 0; r < R; ++r) y[r * ldy] = _mm512_reduce_add_ps(acc[r]) - corr[r];
}

#elif defined(__AVX2__)

inline __m256i dot32(__m256i acc, __m256i w, const int8_t* x) {
  const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
#if defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, w, xv);
#else
  // u8 codes <= 15 times s8: |pair sum| <= 2 * 15 * 128, no int16 saturation.
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, xv), _mm256_set1_epi16(1)));
#endif
}

inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int R>
void dot_rows(const uint8_t* w, const float* sw, const float* wz, const int8_t* xq, const float* dx,
              const float* xs, int64_t K, int64_t kb, float* y, int64_t ldy) {
  const int64_t nb = K / kb;
  const __m256i mask = _mm256_set1_epi8(0x0F);
  __m256 acc[R];
  float corr[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps(), corr[r] = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    __m256i ai[R];
    for (int r = 0; r < R; ++r) ai[r] = _mm256_setzero_si256();
    for (int64_t c = b * kb; c < (b + 1) * kb; c += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(w + c / 2 + kPrefetchBytes), _MM_HINT_T0);
      const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c / 2));
      const __m256i lo = _mm256_and_si256(bytes, mask);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask);
      for (int r = 0; r < R; ++r) {
        ai[r] = dot32(ai[r], lo, xq + r * K + c);
        ai[r] = dot32(ai[r], hi, xq + r * K + c + 32);
      }
    }
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ai[r]), _mm256_set1_ps(dx[r * nb + b] * sw[b]), acc[r]);
      corr[r] += xs[r * nb + b] * wz[b];
    }
  }
  for (int r = 0; r < R; ++r) y[r * ldy] = hsum256(acc[r]) - corr[r];
}

#else

template <int R>
void dot_rows(const uint8_t* w, const float* sw, const float* wz, const int8_t* xq, const float* dx,
              const float* xs, int64_t K, int64_t kb, float* y, int64_t ldy) {
  const int64_t nb = K / kb;
  for (int r = 0; r < R; ++r) {
    float acc = 0.f;
    for (int64_t b = 0; b < nb; ++b) {
      int32_t dot = 0;
      for (int64_t c = b * kb; c < (b + 1) * kb; c += 64) {
        const int8_t* x = xq + r * K + c;
        for (int j = 0; j < 32; ++j) {
          const uint8_t v = w[c / 2 + j];
          dot += (v & 15) * x[j] + (v >> 4) * x[j + 32];
        }
      }
      acc += dx[r * nb + b] * sw[b] * static_cast<float>(dot) - xs[r * nb + b] * wz[b];
    }
    y[r * ldy] = acc;
  }
}

#endif

// y[:, n0:n1] for output rows n0..n1, activation rows in register blocks of kMaxRows.
void rows_range(const uint8_t* wp, const float* swp, const float* wzp, const int8_t* xqp, const float* dxp,
                const float* xsp, int64_t M, int64_t N, int64_t K, int64_t kb, int64_t n0, int64_t n1, float* yp) {
  const int64_t nb = K / kb;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* wr = wp + n * (K / 2);
    const float *s = swp + n * nb, *z = wzp + n * nb;
    for (int64_t m = 0; m < M; m += kMaxRows) {
      const int8_t* xr = xqp + m * K;
      const float *d = dxp + m * nb, *e = xsp + m * nb;
      float* yr = yp + m * N + n;
      switch (std::min<int64_t>(kMaxRows, M - m)) {
        case 4: dot_rows<4>(wr, s, z, xr, d, e, K, kb, yr, N); break;
        case 3: dot_rows<3>(wr, s, z, xr, d, e, K, kb, yr, N); break;
        case 2: dot_rows<2>(wr, s, z, xr, d, e, K, kb, yr, N); break;
        default: dot_rows<1>(wr, s, z, xr, d, e, K, kb, yr, N); break;
      }
    }
  }
}

void check_weights(const at::Tensor& w, const at::Tensor& sw, const at::Tensor& wz, int64_t K, int64_t kb) {
  TORCH_CHECK(w.dtype() == at::kByte && w.dim() == 2 && w.is_contiguous() && w.size(1) * 2 == K,
              "q4x8: weight must be contiguous uint8 [N, K/2]");
  TORCH_CHECK(kb > 0 && kb % 64 == 0 && K % kb == 0, "q4x8: block size must be a multiple of 64 dividing K");
  const int64_t N = w.size(0), nb = K / kb;
  for (const auto* t : {&sw, &wz})
    TORCH_CHECK(t->dtype() == at::kFloat && t->is_contiguous() && t->size(0) == N && t->size(1) == nb,
                "q4x8: scales must be contiguous float32 [N, K/kb]");
}

// y [M, N] float32 = x [M, K] float32 @ W^T, W given by (w, sw, wz, kb) as described at the top.
at::Tensor q4x8_mm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& sw, const at::Tensor& wz, int64_t kb) {
  TORCH_CHECK(x.dtype() == at::kFloat && x.dim() == 2 && x.is_contiguous(), "q4x8: x must be contiguous float32 [M, K]");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0), nb = K / kb;
  check_weights(w, sw, wz, K, kb);
  auto xq = at::empty({M, K}, x.options().dtype(at::kChar));
  auto dx = at::empty({M, nb}, x.options());
  auto xs = at::empty({M, nb}, x.options());
  auto y = at::empty({M, N}, x.options());
  quantize_rows(x.data_ptr<float>(), M, K, kb, xq.data_ptr<int8_t>(), dx.data_ptr<float>(), xs.data_ptr<float>());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float *swp = sw.data_ptr<float>(), *wzp = wz.data_ptr<float>();
  const int8_t* xqp = xq.data_ptr<int8_t>();
  const float *dxp = dx.data_ptr<float>(), *xsp = xs.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Output rows are handed out in chunks of ~kChunkBytes of weights from a shared counter rather than split
  // in one static half per thread: when one core is slowed (another process, a hypervisor), the other
  // takes more chunks instead of waiting at the end of the call, so both stay busy for the whole call.
  // Small layers (a 45M model's 512x512) still get at least 8 chunks per thread.
  const int64_t threads = at::get_num_threads();
  const int64_t rows_per_chunk = std::max<int64_t>(8, std::min(kChunkBytes / (K / 2), (N + 8 * threads - 1) / (8 * threads)));
  const int64_t chunks = (N + rows_per_chunk - 1) / rows_per_chunk;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, chunks), 1, [&](int64_t, int64_t) {
    for (int64_t c = next++; c < chunks; c = next++) {
      const int64_t n0 = c * rows_per_chunk, n1 = std::min(N, n0 + rows_per_chunk);
      rows_range(wp, swp, wzp, xqp, dxp, xsp, M, N, K, kb, n0, n1, yp);
    }
  });
  return y;
}

inline uint16_t to_bf16_bits(float f) {  // round to nearest even, as c10::BFloat16 (finite inputs)
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

template <typename Store>
void dequant_rows(const uint8_t* wp, const float* swp, const float* wzp, int64_t N, int64_t K, int64_t kb, Store store) {
  const int64_t nb = K / kb;
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    float buf[64];
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* wr = wp + n * (K / 2);
      for (int64_t c = 0; c < K; c += 64) {
        const float s = swp[n * nb + c / kb], z = wzp[n * nb + c / kb];
        for (int j = 0; j < 32; ++j) {
          const uint8_t v = wr[c / 2 + j];
          buf[j] = static_cast<float>(v & 15) * s - z;
          buf[j + 32] = static_cast<float>(v >> 4) * s - z;
        }
        store(n * K + c, buf);
      }
    }
  });
}

// out [N, K] (float32 or bfloat16, preallocated: a scratch buffer reused across layers) = W.
void q4_dequant(const at::Tensor& w, const at::Tensor& sw, const at::Tensor& wz, int64_t kb, at::Tensor& out) {
  const int64_t N = w.size(0), K = w.size(1) * 2;
  check_weights(w, sw, wz, K, kb);
  TORCH_CHECK(out.is_contiguous() && out.dim() == 2 && out.size(0) == N && out.size(1) == K,
              "q4_dequant: out must be contiguous [N, K]");
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float *swp = sw.data_ptr<float>(), *wzp = wz.data_ptr<float>();
  if (out.dtype() == at::kFloat) {
    float* op = out.data_ptr<float>();
    dequant_rows(wp, swp, wzp, N, K, kb, [op](int64_t at, const float* buf) { std::memcpy(op + at, buf, 64 * sizeof(float)); });
  } else {
    TORCH_CHECK(out.dtype() == at::kBFloat16, "q4_dequant: out must be float32 or bfloat16");
    auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
    dequant_rows(wp, swp, wzp, N, K, kb, [op](int64_t at, const float* buf) {
      for (int j = 0; j < 64; ++j) op[at + j] = to_bf16_bits(buf[j]);
    });
  }
}

std::string compiled_path() { return std::string(Q4X8_PATH) + " (" + Q4X8_DOT + ")"; }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("q4x8_mm", &q4x8_mm, "y = x @ W^T, 4-bit weights x int8-quantized activations");
  m.def("q4_dequant", &q4_dequant, "dequantize q4x8 weights into a dense [N, K] buffer");
  m.def("compiled_path", &compiled_path, "the SIMD path this build runs");
}
