/* The augmentation's warp (know.data.Augment): F.grid_sample(x, grid, mode="nearest", padding_mode="border",
 * align_corners=False) for images picked from a dataset by index, with PyTorch's CPU arithmetic, so the result is
 * the same bit for bit (tested): unnormalise as (g + 1) * (size / 2) - 0.5, clamp to [0, size - 1], round half to
 * even (the default rounding mode). warp_affine also computes the grid, as the GEMM of know.data._affine_coords
 * rounds it: fma(y, t1, x t0) + t2. Built with -ffp-contract=off: other fused multiply-adds would round
 * differently. */
#include <math.h>
#include <stddef.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

struct image { const float *src; float *dst; int C, plane, W; float sx, sy, xmax, ymax; };

static inline float clamp(float v, float hi) { return v < hi ? (v > 0.0f ? v : 0.0f) : hi; }

/* pixel p of every channel of dst from the source pixel nearest to the normalised (gx, gy) */
static inline void sample1(const struct image *im, int p, float gx, float gy) {
    const size_t at = (size_t)lrintf(clamp((gy + 1.0f) * im->sy - 0.5f, im->ymax)) * im->W +
                      (size_t)lrintf(clamp((gx + 1.0f) * im->sx - 0.5f, im->xmax));
    for (int c = 0; c < im->C; c++) im->dst[(size_t)c * im->plane + p] = im->src[(size_t)c * im->plane + at];
}

#ifdef __AVX512F__
/* pixels p .. p + 16 likewise, one gather per channel */
static inline void sample16(const struct image *im, int p, __m512 gx, __m512 gy) {
    const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f), zero = _mm512_setzero_ps();
    __m512 fx = _mm512_sub_ps(_mm512_mul_ps(_mm512_add_ps(gx, one), _mm512_set1_ps(im->sx)), half);
    __m512 fy = _mm512_sub_ps(_mm512_mul_ps(_mm512_add_ps(gy, one), _mm512_set1_ps(im->sy)), half);
    fx = _mm512_min_ps(_mm512_set1_ps(im->xmax), _mm512_max_ps(fx, zero));
    fy = _mm512_min_ps(_mm512_set1_ps(im->ymax), _mm512_max_ps(fy, zero));
    const __m512i at = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_cvtps_epi32(fy), _mm512_set1_epi32(im->W)),
                                        _mm512_cvtps_epi32(fx));
    for (int c = 0; c < im->C; c++)
        _mm512_storeu_ps(im->dst + (size_t)c * im->plane + p,
                         _mm512_i32gather_ps(at, im->src + (size_t)c * im->plane, 4));
}
#endif

static struct image image_of(const float *x, long i, const long *idx, float *out, int C, int H, int W) {
    const size_t size = (size_t)C * H * W;
    return (struct image){x + (size_t)idx[i] * size, out + (size_t)i * size, C, H * W, W, (float)W / 2,
                          (float)H / 2, (float)(W - 1), (float)(H - 1)};
}

/* out[i] (C, H, W) = x[idx[i]] (C, H, W) sampled at coords[i] (2, H, W: the normalised x plane, then y), i < n. */
void warp_nearest(const float *x, const long *idx, const float *coords, float *out, long n, int C, int H, int W) {
    for (long i = 0; i < n; i++) {
        const struct image im = image_of(x, i, idx, out, C, H, W);
        const float *gx = coords + (size_t)i * 2 * im.plane, *gy = gx + im.plane;
        int p = 0;
#ifdef __AVX512F__
        for (; p + 16 <= im.plane; p += 16) sample16(&im, p, _mm512_loadu_ps(gx + p), _mm512_loadu_ps(gy + p));
#endif
        for (; p < im.plane; p++) sample1(&im, p, gx[p], gy[p]);
    }
}

/* The same with the grid of theta[i] (2, 3) over the pixel centres px, py (H, W): g = fma(y, t1, x t0) + t2. */
void warp_affine(const float *x, const long *idx, const float *theta, const float *px, const float *py, float *out,
                 long n, int C, int H, int W) {
    for (long i = 0; i < n; i++) {
        const struct image im = image_of(x, i, idx, out, C, H, W);
        const float *t = theta + i * 6;
        int p = 0;
#ifdef __AVX512F__
        for (; p + 16 <= im.plane; p += 16) {
            const __m512 xv = _mm512_loadu_ps(px + p), yv = _mm512_loadu_ps(py + p);
            const __m512 gx = _mm512_add_ps(_mm512_fmadd_ps(yv, _mm512_set1_ps(t[1]),
                                                            _mm512_mul_ps(xv, _mm512_set1_ps(t[0]))),
                                            _mm512_set1_ps(t[2]));
            const __m512 gy = _mm512_add_ps(_mm512_fmadd_ps(yv, _mm512_set1_ps(t[4]),
                                                            _mm512_mul_ps(xv, _mm512_set1_ps(t[3]))),
                                            _mm512_set1_ps(t[5]));
            sample16(&im, p, gx, gy);
        }
#endif
        for (; p < im.plane; p++)
            sample1(&im, p, fmaf(py[p], t[1], px[p] * t[0]) + t[2], fmaf(py[p], t[4], px[p] * t[3]) + t[5]);
    }
}
