/* plugformer's fused float32 decode step of rotary self-attention (core/model/decode_step.py).
 *
 * One new token per sequence: the raw q, k, v projections come in, then in one call
 *   1. k and v are rotated (k only) and written into the KV cache slot of the step,
 *   2. each query head is rotated and attends over the filled slots of its KV head:
 *        out = softmax(q . k^T * scale + bias) v,
 * and the heads' outputs leave as [B, Hq * D], ready for the output projection. It replaces a
 * chain of about twenty small tensor ops (split, views, rotary, cache write, attention,
 * transpose) whose dispatch costs more than their arithmetic at this size.
 *
 * The rotary embedding is the halves form (Llama, NeoX) with the (cos, cos) and (-sin, sin)
 * tables of core/model/rotary.py, computed as x * cos + x_rolled * sin with two roundings
 * (-ffp-contract=off): bit-equal to the torch path, so the cache holds the same keys. The
 * attention sums in its own order (a few float32 ulps from PyTorch's).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__AVX512F__) && !defined(PF_PORTABLE)
#include <immintrin.h>
#define PF_ATTN_SIMD 1
#else
#define PF_ATTN_SIMD 0
#endif

typedef struct {
    const float *q, *k, *v; /* raw projections of row b at q + b * q_sb (k, v likewise) */
    int64_t q_sb, k_sb, v_sb;
    const float *cos, *sin; /* [B][rd] */
    float *kc, *vc;         /* caches [B][Hkv][cap][D] */
    const float *bias;      /* [B][bias_sb], the first `filled` entries used */
    int64_t bias_sb;
    float *out;             /* [B][Hq * D] */
    int64_t b, hq, hkv, d, rd, cap, slot, filled;
    float scale;
} pf_decode;

int pf_attention_abi(void) { return 1; }

static void rotate(const float *x, const float *c, const float *s, float *y, int64_t d,
                   int64_t rd) {
    const int64_t half = rd / 2;
    for (int64_t i = 0; i < half; i++) {
        y[i] = x[i] * c[i] + x[i + half] * s[i];
        y[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
    }
    for (int64_t i = rd; i < d; i++) y[i] = x[i];
}

static inline float dot(const float *a, const float *b, int64_t d) {
#if PF_ATTN_SIMD
    if (d % 16 == 0) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t i = 0; i < d; i += 16)
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
        return _mm512_reduce_add_ps(acc);
    }
#endif
    float acc = 0.0f;
    for (int64_t i = 0; i < d; i++) acc += a[i] * b[i];
    return acc;
}

static inline void axpy(float alpha, const float *x, float *y, int64_t d) {
#if PF_ATTN_SIMD
    if (d % 16 == 0) {
        const __m512 a = _mm512_set1_ps(alpha);
        for (int64_t i = 0; i < d; i += 16)
            _mm512_storeu_ps(y + i, _mm512_fmadd_ps(a, _mm512_loadu_ps(x + i),
                                                    _mm512_loadu_ps(y + i)));
        return;
    }
#endif
    for (int64_t i = 0; i < d; i++) y[i] += alpha * x[i];
}

/* Returns 0, or -1 when scratch memory could not be allocated (the cache is then written but
 * no output is). */
int pf_decode_attention(const pf_decode *a, int nthreads) {
    const int64_t d = a->d, rd = a->rd, t_n = a->filled, group = a->hq / a->hkv;
    /* 1. the new key and value into the cache */
    for (int64_t b = 0; b < a->b; b++) {
        const float *c = a->cos + b * rd, *s = a->sin + b * rd;
        for (int64_t h = 0; h < a->hkv; h++) {
            const int64_t at = ((b * a->hkv + h) * a->cap + a->slot) * d;
            rotate(a->k + b * a->k_sb + h * d, c, s, a->kc + at, d, rd);
            const float *v = a->v + b * a->v_sb + h * d;
            for (int64_t i = 0; i < d; i++) a->vc[at + i] = v[i];
        }
    }
    /* 2. every (row, query head) attends over the filled slots */
    const int64_t items = a->b * a->hq;
    int failed = 0;
#pragma omp parallel for schedule(static) num_threads(nthreads) reduction(| : failed) \
    if (items * t_n * d >= 16384)
    for (int64_t it = 0; it < items; it++) {
        const int64_t b = it / a->hq, h = it % a->hq, g = h / group;
        float *scores = (float *)malloc(sizeof(float) * (size_t)(t_n + d));
        if (!scores) {
            failed = 1;
            continue;
        }
        float *q = scores + t_n;
        rotate(a->q + b * a->q_sb + h * d, a->cos + b * rd, a->sin + b * rd, q, d, rd);
        const float *keys = a->kc + (b * a->hkv + g) * a->cap * d;
        const float *vals = a->vc + (b * a->hkv + g) * a->cap * d;
        const float *bias = a->bias + b * a->bias_sb;
        float m = -INFINITY;
        for (int64_t t = 0; t < t_n; t++) {
            const float sc = isinf(bias[t]) && bias[t] < 0
                                 ? -INFINITY
                                 : dot(q, keys + t * d, d) * a->scale + bias[t];
            scores[t] = sc;
            m = sc > m ? sc : m;
        }
        float *out = a->out + b * a->hq * d + h * d;
        for (int64_t i = 0; i < d; i++) out[i] = 0.0f;
        float sum = 0.0f;
        for (int64_t t = 0; t < t_n; t++) {
            if (scores[t] == -INFINITY) continue;
            const float p = expf(scores[t] - m);
            sum += p;
            axpy(p, vals + t * d, out, d);
        }
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        for (int64_t i = 0; i < d; i++) out[i] *= inv;
        free(scores);
    }
    return failed ? -1 : 0;
}

/* RMSNorm of `rows` rows of `dim` floats for decode steps: y = w * (x * (1 / sqrt(mean(x^2) +
 * eps))), the sum of squares in 16 lanes (its order is not torch's: a few ulps apart). */
void pf_rmsnorm(const float *x, const float *w, float *y, int64_t rows, int64_t dim, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *yr = y + r * dim;
        float ss;
#if PF_ATTN_SIMD
        __m512 acc = _mm512_setzero_ps();
        int64_t i = 0;
        for (; i + 16 <= dim; i += 16) {
            const __m512 v = _mm512_loadu_ps(xr + i);
            acc = _mm512_fmadd_ps(v, v, acc);
        }
        ss = _mm512_reduce_add_ps(acc);
        for (; i < dim; i++) ss += xr[i] * xr[i];
#else
        ss = 0.0f;
        for (int64_t i = 0; i < dim; i++) ss += xr[i] * xr[i];
#endif
        const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int64_t i = 0; i < dim; i++) yr[i] = w[i] * (xr[i] * inv);
    }
}
