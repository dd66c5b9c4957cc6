// spectral_kv.CodesAttention: grouped-query attention that reads an int8 KV cache's codes, for ONNX Runtime (CPU).
//
// The cache holds, per (batch, KV head, position), int8 codes of rotated keys and values with one static step per
// (KV head, dim): x^ = code * step (exporter/codec/cache_quant.py). onnxruntime's GroupQueryAttention reads the
// same codes but dequantizes each cached row once for every query head of its group; this kernel reads each row
// once for the whole group and never dequantizes it:
//
//   score(h, j) = sum_c (q[h,c] * scale * k_step[c]) * k_code[j,c]       the key steps folded into the query
//   out(h, c)   = v_step[c] * sum_j p(h, j) * v_code[j,c]                  values summed in code space, one multiply
//
// Same inputs and semantics as the GroupQueryAttention nodes it replaces (graphs/kernels/__init__.py renames them):
//   0 query (B, T, H*d) float   1 key, 2 value (B, T, G*d) float   3 past_key, 4 past_value (B, G, P, d) int8
//   5 seqlens_k (B,) int32: tokens of each sequence after this step, minus one
//   6 total_sequence_length () int32   7 k_step, 8 v_step: G*d float
//   outputs: 0 (B, T, H*d) float, 1 present_key, 2 present_value (B, G, max(P, total), d) int8
// New keys and values are quantized into the present cache first (code = saturate(round_half_even(x * (1/step))),
// the op's arithmetic), at positions past_b .. past_b + T - 1 where past_b = seqlens_k[b] + 1 - T (0 for a first
// prompt, total == T); query t of sequence b sees positions 0 .. past_b + t (the last `local_window_size` of
// them when that attribute is > 0). When present and past are one buffer (IO binding), it is written in place.
//
// Entry point: RegisterCustomOps (onnxruntime's custom-op library ABI).
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr const char* kDomain = "spectral_kv";
constexpr int kMaxGroup = 4;           // query heads scored per pass over a row (registers); larger groups loop

// ---------------------------------------------------------------------------------------------------------------
// Small vector helpers (AVX2 + FMA)

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256 load_codes(const int8_t* p) {  // 8 int8 codes -> 8 floats
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// e^x for x <= 0 (scores minus their max): x = n ln2 + r, |r| <= ln2/2, e^r by its Taylor series to r^6
// (relative error ~1e-7), 2^n through the exponent bits.
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);        // ln2 in two parts (Cody-Waite)
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// ---------------------------------------------------------------------------------------------------------------
// One (sequence, KV head, query) unit of work: N query heads of the group against rows [lo, hi] of the cache.

// The four sums of a0..a3's lanes, in order (three horizontal adds for four rows instead of four reductions).
inline __m128 hsum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// scores[r * n + (j - lo)] = q[r] . k_code[j] for N heads; q: (N, d) with steps and scale folded in
template <int N>
void score_rows(const float* q, const int8_t* codes, int64_t d, int64_t lo, int64_t hi, float* scores, int64_t n) {
  const int64_t d8 = d - d % 8;
  int64_t j = lo;
  if (d8 == d)                                              // four rows at a time, one reduction for the four
    for (; j + 3 <= hi; j += 4) {
      const int8_t* row = codes + j * d;
      __m256 acc[N][4];
      for (int r = 0; r < N; ++r)
        for (int i = 0; i < 4; ++i) acc[r][i] = _mm256_setzero_ps();
      for (int64_t c = 0; c < d; c += 8)
        for (int i = 0; i < 4; ++i) {
          const __m256 k = load_codes(row + i * d + c);
          for (int r = 0; r < N; ++r) acc[r][i] = _mm256_fmadd_ps(_mm256_loadu_ps(q + r * d + c), k, acc[r][i]);
        }
      for (int r = 0; r < N; ++r)
        _mm_storeu_ps(scores + r * n + (j - lo), hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
    }
  for (; j <= hi; ++j) {
    const int8_t* row = codes + j * d;
    __m256 acc[N];
    for (int r = 0; r < N; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t c = 0; c < d8; c += 8) {
      __m256 k = load_codes(row + c);
      for (int r = 0; r < N; ++r) acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q + r * d + c), k, acc[r]);
    }
    for (int r = 0; r < N; ++r) {
      float s = hsum(acc[r]);
      for (int64_t c = d8; c < d; ++c) s += q[r * d + c] * row[c];
      scores[r * n + (j - lo)] = s;
    }
  }
}

// acc[r, c0 : c0 + 8W] = sum_j p[r * n + (j - lo)] * v_code[j, c0 : c0 + 8W] for N heads: N x W accumulators,
// a compile-time count so that they stay in registers
template <int N, int W>
void sum_block(const float* p, const int8_t* codes, int64_t d, int64_t c0, int64_t lo, int64_t hi, int64_t n,
               float* acc) {
  __m256 a[N][W];
  for (int r = 0; r < N; ++r)
    for (int v = 0; v < W; ++v) a[r][v] = _mm256_setzero_ps();
  for (int64_t j = lo; j <= hi; ++j) {
    const int8_t* row = codes + j * d + c0;
    __m256 w[N];
    for (int r = 0; r < N; ++r) w[r] = _mm256_set1_ps(p[r * n + (j - lo)]);
    for (int v = 0; v < W; ++v) {
      const __m256 x = load_codes(row + 8 * v);
      for (int r = 0; r < N; ++r) a[r][v] = _mm256_fmadd_ps(w[r], x, a[r][v]);
    }
  }
  for (int r = 0; r < N; ++r)
    for (int v = 0; v < W; ++v) _mm256_storeu_ps(acc + r * d + c0 + 8 * v, a[r][v]);
}

// acc[r, :] = sum_j p[r * n + (j - lo)] * v_code[j, :] for N heads
template <int N>
void sum_rows(const float* p, const int8_t* codes, int64_t d, int64_t lo, int64_t hi, int64_t n, float* acc) {
  const int64_t d8 = d - d % 8;
  std::fill(acc, acc + N * d, 0.0f);
  int64_t c0 = 0;
  for (; c0 + 32 <= d8; c0 += 32) sum_block<N, 4>(p, codes, d, c0, lo, hi, n, acc);
  switch ((d8 - c0) / 8) {
    case 3: sum_block<N, 3>(p, codes, d, c0, lo, hi, n, acc); break;
    case 2: sum_block<N, 2>(p, codes, d, c0, lo, hi, n, acc); break;
    case 1: sum_block<N, 1>(p, codes, d, c0, lo, hi, n, acc); break;
  }
  for (int64_t c = d8; c < d; ++c)
    for (int64_t j = lo; j <= hi; ++j) {
      const float x = codes[j * d + c];
      for (int r = 0; r < N; ++r) acc[r * d + c] += p[r * n + (j - lo)] * x;
    }
}

// scores[r, :] = exp(scores[r, :] - max) in place for N heads of n scores, inv_sums[r] = 1 / their sum: the
// softmax, its division left to the output (one multiply per dim instead of one per score)
void softmax_rows(float* scores, int N, int64_t n, float* inv_sums) {
  for (int r = 0; r < N; ++r) {
    float* s = scores + r * n;
    __m256 m8 = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(s + j));
    float lanes[8], m = -INFINITY;
    _mm256_storeu_ps(lanes, m8);
    for (float x : lanes) m = std::max(m, x);
    for (; j < n; ++j) m = std::max(m, s[j]);
    __m256 mv = _mm256_set1_ps(m), total = _mm256_setzero_ps();
    j = 0;
    for (; j + 8 <= n; j += 8) {
      __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
      _mm256_storeu_ps(s + j, e);
      total = _mm256_add_ps(total, e);
    }
    float sum = hsum(total);
    for (; j < n; ++j) {
      s[j] = std::exp(s[j] - m);
      sum += s[j];
    }
    inv_sums[r] = 1.0f / sum;
  }
}

template <int N>
void attend_group(const float* q, const int8_t* kc, const int8_t* vc, int64_t d, int64_t lo, int64_t hi,
                  std::vector<float>& scores, float* acc) {
  const int64_t n = hi - lo + 1;
  scores.resize(static_cast<size_t>(N * n));
  score_rows<N>(q, kc, d, lo, hi, scores.data(), n);
  float inv_sums[N];
  softmax_rows(scores.data(), N, n, inv_sums);
  sum_rows<N>(scores.data(), vc, d, lo, hi, n, acc);
  for (int r = 0; r < N; ++r)
    for (int64_t c = 0; c < d; ++c) acc[r * d + c] *= inv_sums[r];
}

void attend(int heads, const float* q, const int8_t* kc, const int8_t* vc, int64_t d, int64_t lo, int64_t hi,
            std::vector<float>& scores, float* acc) {
  switch (heads) {
    case 1: return attend_group<1>(q, kc, vc, d, lo, hi, scores, acc);
    case 2: return attend_group<2>(q, kc, vc, d, lo, hi, scores, acc);
    case 3: return attend_group<3>(q, kc, vc, d, lo, hi, scores, acc);
    default: return attend_group<4>(q, kc, vc, d, lo, hi, scores, acc);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The op

inline int8_t quantize(float x, float inv_step) {
  const float c = std::nearbyint(x * inv_step);              // round half to even (the default rounding mode)
  return static_cast<int8_t>(std::min(127.0f, std::max(-128.0f, c)));
}

struct Problem {
  int64_t B, T, H, G, d, P, S;    // batch, new tokens, query heads, KV heads, head size, past length, present length
  float scale;
  int64_t window;
  const float *q, *k_step, *v_step;
  const int32_t* seqlens;
  bool first_prompt;
  int8_t *keys, *values;          // the present cache (B, G, S, d)
  float* out;                     // (B, T, H*d)
  int64_t query_blocks;           // queries of one (b, g) split into this many units of work
  int64_t past(int64_t b) const { return first_prompt ? 0 : seqlens[b] + 1 - T; }
};

constexpr int64_t kQueriesPerUnit = 16;

void run_unit(void* data, size_t unit) {
  const Problem& p = *static_cast<const Problem*>(data);
  const int64_t block = static_cast<int64_t>(unit) % p.query_blocks;
  const int64_t bg = static_cast<int64_t>(unit) / p.query_blocks;
  const int64_t b = bg / p.G, g = bg % p.G, rep = p.H / p.G, d = p.d;
  const int8_t* kc = p.keys + (b * p.G + g) * p.S * d;
  const int8_t* vc = p.values + (b * p.G + g) * p.S * d;
  const int64_t past = p.past(b);
  std::vector<float> q(static_cast<size_t>(kMaxGroup * d)), acc(static_cast<size_t>(kMaxGroup * d)), scores;
  const int64_t t_end = std::min(p.T, (block + 1) * kQueriesPerUnit);
  for (int64_t t = block * kQueriesPerUnit; t < t_end; ++t) {
    const int64_t hi = past + t;                                  // this query's own position
    const int64_t lo = p.window > 0 ? std::max<int64_t>(0, hi - p.window + 1) : 0;
    for (int64_t h0 = 0; h0 < rep; h0 += kMaxGroup) {
      const int heads = static_cast<int>(std::min<int64_t>(kMaxGroup, rep - h0));
      for (int r = 0; r < heads; ++r) {
        const float* qh = p.q + ((b * p.T + t) * p.H + g * rep + h0 + r) * d;
        for (int64_t c = 0; c < d; ++c) q[r * d + c] = qh[c] * p.scale * p.k_step[g * d + c];
      }
      attend(heads, q.data(), kc, vc, d, lo, hi, scores, acc.data());
      for (int r = 0; r < heads; ++r) {
        float* o = p.out + ((b * p.T + t) * p.H + g * rep + h0 + r) * d;
        for (int64_t c = 0; c < d; ++c) o[c] = acc[r * d + c] * p.v_step[g * d + c];
      }
    }
  }
}

std::vector<int64_t> shape_of(const Ort::ConstValue& v) { return v.GetTensorTypeAndShapeInfo().GetShape(); }

struct CodesAttentionKernel {
  int64_t heads, kv_heads, window;
  float scale;

  CodesAttentionKernel(const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    heads = ki.GetAttribute<int64_t>("num_heads");
    kv_heads = ki.GetAttribute<int64_t>("kv_num_heads");
    scale = 0.0f;                                   // 0: 1/sqrt(head size), as GroupQueryAttention
    try { scale = ki.GetAttribute<float>("scale"); } catch (const Ort::Exception&) {}
    window = -1;                                    // <= 0: no sliding window
    try { window = ki.GetAttribute<int64_t>("local_window_size"); } catch (const Ort::Exception&) {}
    if (heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0)
      throw std::invalid_argument("CodesAttention: num_heads must be a positive multiple of kv_num_heads");
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    auto query = ctx.GetInput(0), key = ctx.GetInput(1), value = ctx.GetInput(2);
    auto past_key = ctx.GetInput(3), past_value = ctx.GetInput(4), seqlens = ctx.GetInput(5);
    auto total = ctx.GetInput(6), k_step = ctx.GetInput(7), v_step = ctx.GetInput(8);
    const auto qs = shape_of(query), ps = shape_of(past_key);
    if (qs.size() != 3 || ps.size() != 4) throw std::invalid_argument("CodesAttention: query must be 3-D, past_key 4-D");
    Problem p{};
    p.B = qs[0], p.T = qs[1], p.H = heads, p.G = kv_heads, p.d = ps[3], p.P = ps[2];
    if (qs[2] != p.H * p.d || ps[1] != p.G || shape_of(key)[2] != p.G * p.d)
      throw std::invalid_argument("CodesAttention: query/key widths do not match num_heads, kv_num_heads and past_key");
    if (k_step.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(p.G * p.d) ||
        v_step.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(p.G * p.d))
      throw std::invalid_argument("CodesAttention: k_scale and v_scale need kv_num_heads * head_size steps");
    const int64_t total_len = total.GetTensorData<int32_t>()[0];
    p.S = std::max(p.P, total_len);
    p.scale = scale != 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(p.d));
    p.window = window;
    p.q = query.GetTensorData<float>();
    p.k_step = k_step.GetTensorData<float>();
    p.v_step = v_step.GetTensorData<float>();
    p.seqlens = seqlens.GetTensorData<int32_t>();
    p.first_prompt = total_len == p.T;
    for (int64_t b = 0; b < p.B; ++b)
      if (p.past(b) < 0 || p.past(b) + p.T > p.S)
        throw std::out_of_range("CodesAttention: seqlens_k puts new tokens outside the cache (" +
                                std::to_string(p.past(b)) + " + " + std::to_string(p.T) + " > " + std::to_string(p.S) + ")");
    const std::vector<int64_t> present_shape{p.B, p.G, p.S, p.d};
    auto out = ctx.GetOutput(0, {p.B, p.T, p.H * p.d});
    auto present_key = ctx.GetOutput(1, present_shape), present_value = ctx.GetOutput(2, present_shape);
    p.out = out.GetTensorMutableData<float>();
    p.keys = present_key.GetTensorMutableData<int8_t>();
    p.values = present_value.GetTensorMutableData<int8_t>();

    const int8_t* caches_in[2] = {past_key.GetTensorData<int8_t>(), past_value.GetTensorData<int8_t>()};
    int8_t* caches_out[2] = {p.keys, p.values};
    const float* news[2] = {key.GetTensorData<float>(), value.GetTensorData<float>()};
    const float* steps[2] = {p.k_step, p.v_step};
    for (int kind = 0; kind < 2; ++kind) {
      if (caches_in[kind] != caches_out[kind] && p.P > 0)            // not one buffer: copy the past rows over
        for (int64_t bg = 0; bg < p.B * p.G; ++bg)
          std::memcpy(caches_out[kind] + bg * p.S * p.d, caches_in[kind] + bg * p.P * p.d, p.P * p.d);
      for (int64_t b = 0; b < p.B; ++b)                              // the new tokens' codes
        for (int64_t t = 0; t < p.T; ++t)
          for (int64_t g = 0; g < p.G; ++g) {
            const float* x = news[kind] + ((b * p.T + t) * p.G + g) * p.d;
            int8_t* dst = caches_out[kind] + ((b * p.G + g) * p.S + p.past(b) + t) * p.d;
            for (int64_t c = 0; c < p.d; ++c) dst[c] = quantize(x[c], 1.0f / steps[kind][g * p.d + c]);
          }
    }
    p.query_blocks = (p.T + kQueriesPerUnit - 1) / kQueriesPerUnit;
    ctx.ParallelFor(run_unit, static_cast<size_t>(p.B * p.G * p.query_blocks), 0, &p);
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Compute(context);
      return nullptr;
    } catch (const Ort::Exception& e) {
      return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::exception& e) {
      return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, e.what());
    }
  }
};

struct CodesAttentionOp : Ort::CustomOpBase<CodesAttentionOp, CodesAttentionKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new CodesAttentionKernel(info);
      return nullptr;
    } catch (const std::exception& e) {
      return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, e.what());
    }
  }
  const char* GetName() const { return "CodesAttention"; }
  size_t GetInputTypeCount() const { return 9; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    if (i == 3 || i == 4) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
    if (i == 5 || i == 6) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(size_t i) const {
    return i == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  }
};

}  // namespace

extern "C" OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr)                               // CreateStatus is the first entry of every version's table
    return api_base->GetApi(1)->CreateStatus(ORT_FAIL, "the spectral_kv kernels were built against a newer "
                                             "onnxruntime than this one: rebuild them with `make setup`");
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
    return api->CreateStatus(ORT_FAIL, "the spectral_kv kernels need a CPU with AVX2 and FMA: export with "
                                       "KV_KERNEL=onnxruntime on this machine");
  Ort::InitApi(api);
  static CodesAttentionOp op;
  // one domain per session options, alive as long as the library (sessions keep pointers into it)
  static std::mutex lock;
  static std::vector<std::unique_ptr<Ort::CustomOpDomain>> domains;
  try {
    std::lock_guard<std::mutex> guard(lock);
    domains.push_back(std::make_unique<Ort::CustomOpDomain>(kDomain));
    domains.back()->Add(&op);
    Ort::UnownedSessionOptions(options).Add(*domains.back());
    return nullptr;
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  }
}
