/* The augmentation's warp (know.data.Augment): F.grid_sample(x, grid, mode="nearest", padding_mode="border",
 * align_corners=False) for images picked from a dataset by index, with PyTorch's CPU arithmetic, so the result is
 * the same bit for bit (tested): unnormalise as (g + 1) * (size / 2) - 0.5, clamp to [0, size - 1], round half to
 * even (the default rounding mode). Built with -ffp-contract=off: a fused multiply-add would round differently. */
#include <math.h>
#include <stddef.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

static inline float clamp(float v, float hi) { return v < hi ? (v > 0.0f ? v : 0.0f) : hi; }

/* out[i] (C, H, W) = x[idx[i]] (C, H, W) sampled at coords[i] (2, H, W: the normalised x plane, then y), i < n. */
void warp_nearest(const float *x, const long *idx, const float *coords, float *out, long n, int C, int H, int W) {
    const int plane = H * W;
    const size_t image = (size_t)C * plane;
    const float sx = (float)W / 2, sy = (float)H / 2, xmax = (float)(W - 1), ymax = (float)(H - 1);
    for (long i = 0; i < n; i++) {
        const float *src = x + (size_t)idx[i] * image, *gx = coords + (size_t)i * 2 * plane, *gy = gx + plane;
        float *dst = out + (size_t)i * image;
        int p = 0;
#ifdef __AVX512F__
        const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f), zero = _mm512_setzero_ps();
        for (; p + 16 <= plane; p += 16) { /* 16 pixels: one gather per channel */
            __m512 fx = _mm512_sub_ps(_mm512_mul_ps(_mm512_add_ps(_mm512_loadu_ps(gx + p), one), _mm512_set1_ps(sx)),
                                      half);
            __m512 fy = _mm512_sub_ps(_mm512_mul_ps(_mm512_add_ps(_mm512_loadu_ps(gy + p), one), _mm512_set1_ps(sy)),
                                      half);
            fx = _mm512_min_ps(_mm512_set1_ps(xmax), _mm512_max_ps(fx, zero));
            fy = _mm512_min_ps(_mm512_set1_ps(ymax), _mm512_max_ps(fy, zero));
            const __m512i at = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_cvtps_epi32(fy), _mm512_set1_epi32(W)),
                                                _mm512_cvtps_epi32(fx));
            for (int c = 0; c < C; c++)
                _mm512_storeu_ps(dst + (size_t)c * plane + p, _mm512_i32gather_ps(at, src + (size_t)c * plane, 4));
        }
#endif
        for (; p < plane; p++) {
            const size_t at = (size_t)lrintf(clamp((gy[p] + 1.0f) * sy - 0.5f, ymax)) * W +
                              (size_t)lrintf(clamp((gx[p] + 1.0f) * sx - 0.5f, xmax));
            for (int c = 0; c < C; c++) dst[(size_t)c * plane + p] = src[(size_t)c * plane + at];
        }
    }
}
