/* The runtime's native CPU kernels (see native.py): decode attention over the paged KV cache, RMSNorm with
   rotary embeddings, and one token's routed experts. Each replaces many small torch operations per step by one call; for float32 and
   bfloat16 tensors (T below: float or uint16_t holding bfloat16 bits).

   Decode attention, every decode item of a step in one call. Each item has one query row (heads x head_dim) and reads its keys and values where they lie: runs of
   consecutive slots of the pool [kv_heads, num_slots, head_dim]. Per item and kv head, the query heads that
   share it (`group` of them) go through its keys together: one pass over the keys for the scores, a softmax
   in fp32, one pass over the values for the output. Each key and value row is read once from memory, and
   the whole step is one call instead of several torch operations per sequence and layer.

   Returns 0, or -1 when it could not allocate its scratch.

   Built by native.py with -O3 -march=native -fopenmp-simd (the simd pragmas only: no OpenMP runtime). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf16_to_float(uint16_t x) {
    uint32_t bits = (uint32_t)x << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even, as torch does */
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u); /* NaN stays NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* Dot products in four independent 8-float vectors (GCC vector extensions: AVX2 registers here, pairs of SSE
   ones without AVX): a single running sum would make every multiply-add wait for the one before it. */
typedef float v8f __attribute__((vector_size(32), aligned(4)));
typedef uint16_t v8u16 __attribute__((vector_size(16), aligned(2)));
typedef uint32_t v8u32 __attribute__((vector_size(32)));

static inline v8f load8_float32(const float *p) { return *(const v8f *)p; }

static inline v8f load8_bfloat16(const uint16_t *p) {
    v8u32 bits = __builtin_convertvector(*(const v8u16 *)p, v8u32) << 16;
    return (v8f)bits;
}

static inline float sum8(v8f v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

/* Weights stream from memory (one token's experts are far larger than the caches): each dot product asks for
   the bytes 4 KB ahead of it. With the hardware prefetcher alone, on a Xeon with AVX-512 and AMX, the experts'
   kernel read 6-12 GB/s against MKL's 10-14 and made a decode step 1.1x (fp32) to 1.3x (bf16) slower than
   torch's operations; 4 KB ahead brought it level (fp32) and ahead (bf16). */
#define PREFETCH_BYTES 4096
#define DEFINE_DOT(NAME, T, LOAD, LOAD8)                                                                    \
    static inline float NAME(const float *a, const T *b, int64_t n) {                                       \
        v8f s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                                                         \
        int64_t d = 0;                                                                                      \
        for (; d + 32 <= n; d += 32) {                                                                      \
            __builtin_prefetch((const char *)(b + d) + PREFETCH_BYTES);                                     \
            __builtin_prefetch((const char *)(b + d) + PREFETCH_BYTES + 64);                                \
            s0 += load8_float32(a + d) * LOAD8(b + d);                                                      \
            s1 += load8_float32(a + d + 8) * LOAD8(b + d + 8);                                              \
            s2 += load8_float32(a + d + 16) * LOAD8(b + d + 16);                                            \
            s3 += load8_float32(a + d + 24) * LOAD8(b + d + 24);                                            \
        }                                                                                                   \
        float total = sum8((s0 + s1) + (s2 + s3));                                                          \
        for (; d < n; d++) total += a[d] * LOAD(b[d]);                                                      \
        return total;                                                                                       \
    }

#define DEFINE_DECODE_ATTENTION(NAME, T, LOAD, STORE, DOT)                                                       \
    int NAME(const T *q, int64_t q_row_stride, const T *keys, const T *values, int64_t num_slots,           \
             int64_t kv_heads, int64_t group, int64_t head_dim, float scale, int64_t num_items,             \
             const int64_t *rows, const int64_t *run_offsets, const int64_t *runs, int64_t max_keys,       \
             T *out) {                                                                                      \
        const int64_t heads = kv_heads * group;                                                             \
        float *query = malloc(sizeof(float) * group * head_dim);                                            \
        float *acc = malloc(sizeof(float) * group * head_dim);                                              \
        float *scores = malloc(sizeof(float) * group * (max_keys > 0 ? max_keys : 1));                      \
        if (!query || !acc || !scores) {                                                                    \
            free(query), free(acc), free(scores);                                                           \
            return -1;                                                                                      \
        }                                                                                                   \
        for (int64_t item = 0; item < num_items; item++) {                                                  \
            const int64_t row = rows[item];                                                                 \
            const int64_t first_run = run_offsets[item], end_run = run_offsets[item + 1];                   \
            int64_t num_keys = 0;                                                                           \
            for (int64_t r = first_run; r < end_run; r++) num_keys += runs[2 * r + 1];                      \
            for (int64_t h = 0; h < kv_heads; h++) {                                                        \
                const T *q_head = q + row * q_row_stride + h * group * head_dim;                            \
                for (int64_t g = 0; g < group * head_dim; g++) query[g] = LOAD(q_head[g]) * scale;          \
                /* scores[g * num_keys + j]: query head g against the item's j-th key */                    \
                int64_t j = 0;                                                                              \
                for (int64_t r = first_run; r < end_run; r++) {                                             \
                    const T *key = keys + (h * num_slots + runs[2 * r]) * head_dim;                         \
                    for (int64_t t = 0; t < runs[2 * r + 1]; t++, j++, key += head_dim) {                   \
                        for (int64_t g = 0; g < group; g++)                                                 \
                            scores[g * num_keys + j] = DOT(query + g * head_dim, key, head_dim);            \
                    }                                                                                       \
                }                                                                                           \
                for (int64_t g = 0; g < group; g++) {                                                       \
                    float *s = scores + g * num_keys, peak = s[0], total = 0.0f;                            \
                    for (int64_t k = 1; k < num_keys; k++) peak = s[k] > peak ? s[k] : peak;                \
                    for (int64_t k = 0; k < num_keys; k++) total += (s[k] = expf(s[k] - peak));             \
                    for (int64_t k = 0; k < num_keys; k++) s[k] /= total;                                   \
                }                                                                                           \
                memset(acc, 0, sizeof(float) * group * head_dim);                                           \
                j = 0;                                                                                      \
                for (int64_t r = first_run; r < end_run; r++) {                                             \
                    const T *value = values + (h * num_slots + runs[2 * r]) * head_dim;                     \
                    for (int64_t t = 0; t < runs[2 * r + 1]; t++, j++, value += head_dim) {                 \
                        for (int64_t g = 0; g < group; g++) {                                               \
                            float *a = acc + g * head_dim;                                                  \
                            const float p = scores[g * num_keys + j];                                       \
                            _Pragma("omp simd") for (int64_t d = 0; d < head_dim; d++)                      \
                                a[d] += p * LOAD(value[d]);                                                 \
                        }                                                                                   \
                    }                                                                                       \
                }                                                                                           \
                T *o = out + row * heads * head_dim + h * group * head_dim;                                 \
                for (int64_t g = 0; g < group * head_dim; g++) o[g] = STORE(acc[g]);                        \
            }                                                                                               \
        }                                                                                                   \
        free(query), free(acc), free(scores);                                                               \
        return 0;                                                                                           \
    }

/* RMSNorm and/or rotary embedding of rows x[o, i, :n] (row (o, i) at x + o * stride_outer + i * stride_inner)
   into out [outer, inner, n], contiguous, rounding where torch's operations round (ROUND: to T's precision):
   - weight (may be NULL: no norm) [weight_rows, n]: row (o, i) uses weight row i % weight_rows; normalised
     in fp32, rounded, then multiplied by the weight, as transformers' RMSNorm;
   - cos, sin (may be NULL: no rotation) [outer, n]: x * cos + rotate_half(x) * sin, rotate_half(x) =
     (-x[n/2:], x[:n/2]). */
#define DEFINE_NORM_ROPE(NAME, T, LOAD, STORE, ROUND)                                                      \
    __attribute__((optimize("fp-contract=off"))) /* round as torch's separate operations do */            \
    void NAME(const T *x, int64_t outer, int64_t inner, int64_t stride_outer, int64_t stride_inner,         \
              int64_t n, const T *weight, int64_t weight_rows, float eps, const T *cos, const T *sin,       \
              T *out) {                                                                                     \
        float row[n];                                                                                       \
        const int64_t half = n / 2;                                                                         \
        for (int64_t o = 0; o < outer; o++) {                                                               \
            for (int64_t i = 0; i < inner; i++) {                                                           \
                const T *src = x + o * stride_outer + i * stride_inner;                                     \
                T *dst = out + (o * inner + i) * n;                                                         \
                for (int64_t d = 0; d < n; d++) row[d] = LOAD(src[d]);                                      \
                if (weight) {                                                                               \
                    float squares = 0.0f;                                                                   \
                    _Pragma("omp simd reduction(+ : squares)") for (int64_t d = 0; d < n; d++)              \
                        squares += row[d] * row[d];                                                         \
                    const float inverse = 1.0f / sqrtf(squares / (float)n + eps);                           \
                    const T *w = weight + (i % weight_rows) * n;                                            \
                    for (int64_t d = 0; d < n; d++) row[d] = ROUND(LOAD(w[d]) * ROUND(row[d] * inverse));   \
                }                                                                                           \
                if (cos) {                                                                                  \
                    const T *c = cos + o * n, *s = sin + o * n;                                             \
                    for (int64_t d = 0; d < n; d++) {                                                       \
                        const float rotated = d < half ? -row[d + half] : row[d - half];                    \
                        dst[d] = STORE(ROUND(row[d] * LOAD(c[d])) + ROUND(rotated * LOAD(s[d])));           \
                    }                                                                                       \
                } else {                                                                                    \
                    for (int64_t d = 0; d < n; d++) dst[d] = STORE(row[d]);                                 \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
    }

/* One token through its k routed experts (a decode step of one sequence): for each expert e = experts[j],
   out += weights[j] * down[e] @ (silu(gate) * up), [gate; up] = gate_up[e] @ x; gate_up [E, 2I, D] and down
   [E, D, I] contiguous, x and out [D]. Rounds where torch's operations (moe._one_token) round. */
#define DEFINE_EXPERTS_ONE_TOKEN(NAME, T, LOAD, STORE, ROUND, DOT)                                          \
    __attribute__((optimize("fp-contract=off"))) void NAME(                                                \
        const T *x, const T *gate_up, const T *down, int64_t dim, int64_t inter, int64_t top_k,             \
        const int64_t *experts, const T *weights, T *out) {                                                 \
        float input[dim], hidden[2 * inter], total[dim];                                                    \
        for (int64_t d = 0; d < dim; d++) input[d] = LOAD(x[d]);                                            \
        for (int64_t j = 0; j < top_k; j++) {                                                               \
            const T *w_in = gate_up + experts[j] * 2 * inter * dim;                                         \
            const T *w_out = down + experts[j] * dim * inter;                                               \
            const float weight = LOAD(weights[j]);                                                          \
            for (int64_t r = 0; r < 2 * inter; r++) hidden[r] = ROUND(DOT(input, w_in + r * dim, dim));     \
            for (int64_t i = 0; i < inter; i++) {                                                           \
                const float gate = hidden[i];                                                               \
                hidden[i] = ROUND(ROUND(gate / (1.0f + expf(-gate))) * hidden[inter + i]);                  \
            }                                                                                               \
            for (int64_t r = 0; r < dim; r++) {                                                             \
                const float y = ROUND(ROUND(DOT(hidden, w_out + r * inter, inter)) * weight);               \
                total[r] = j == 0 ? y : ROUND(total[r] + y);                                                \
            }                                                                                               \
        }                                                                                                   \
        for (int64_t d = 0; d < dim; d++) out[d] = STORE(total[d]);                                         \
    }

static inline float round_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

#define IDENTITY(x) (x)
DEFINE_NORM_ROPE(norm_rope_float32, float, IDENTITY, IDENTITY, IDENTITY)
DEFINE_NORM_ROPE(norm_rope_bfloat16, uint16_t, bf16_to_float, float_to_bf16, round_bf16)
DEFINE_DOT(dot_float32, float, IDENTITY, load8_float32)
DEFINE_DOT(dot_bfloat16, uint16_t, bf16_to_float, load8_bfloat16)
DEFINE_DECODE_ATTENTION(decode_attention_float32, float, IDENTITY, IDENTITY, dot_float32)
DEFINE_DECODE_ATTENTION(decode_attention_bfloat16, uint16_t, bf16_to_float, float_to_bf16, dot_bfloat16)
DEFINE_EXPERTS_ONE_TOKEN(experts_one_token_float32, float, IDENTITY, IDENTITY, IDENTITY, dot_float32)
DEFINE_EXPERTS_ONE_TOKEN(experts_one_token_bfloat16, uint16_t, bf16_to_float, float_to_bf16, round_bf16, dot_bfloat16)
