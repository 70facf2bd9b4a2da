#include <math.h>
#include <string.h>
#if defined(__AVX512F__)
#define L 16   /* rows per vector */
#define H 3    /* vectors per tile */
#define CB 8   /* projection outputs per register block */
#else          /* AVX2 / other: 8-lane vectors, 16 registers */
#define L 8
#define H 2
#define CB 4
#endif
#define JB 8
typedef float v16 __attribute__((vector_size(4 * L)));
typedef int vi16 __attribute__((vector_size(4 * L)));
#define WID 64
#define CMP 8
#define PRJ 32
struct Weights {
  int window;
  const float *m1, *b1;                          /* (window, 144), (144): [h_x 64 | h_dx 64 | z_x 8 | z_dx 8] */
  const float *mr[2], *br[2], *mg[2], *bg[2];    /* (8, 64), (64) per branch: rate, gain */
  const float *ma[2], *ba[2];                    /* (8, 32), (32): additive folded through project (+ its bias) */
  const float *pw[2];                            /* (64, 32): project */
  const float *hw, *hb;                          /* (64), (1): head */
};
static inline v16 splat(float a) { return (v16){} + a; }
#if defined(__AVX512F__)
#include <immintrin.h>
static inline v16 vexp(v16 v) {  /* Cephes expf polynomial, ~1 ulp; roundscale/scalef do the 2^k part */
  __m512 x = _mm512_min_ps(_mm512_max_ps((__m512)v, _mm512_set1_ps(-100.0f)), _mm512_set1_ps(100.0f));
  __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return (v16)_mm512_scalef_ps(p, fx);
}
#else
static inline v16 vexp(v16 x) {  /* Cephes expf, ~1 ulp */
  x = x > 88.3762626647949f ? splat(88.3762626647949f) : x;
  x = x < -87.3365478515625f ? splat(-87.3365478515625f) : x;
  v16 fx = x * 1.44269504088896341f;
  fx = (fx + 12582912.0f) - 12582912.0f;
  v16 r = x - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  v16 p = splat(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * (r * r) + r + 1.0f;
  vi16 k = __builtin_convertvector(fx, vi16);
  return p * (v16)((k + 127) << 23);
}
#endif
static void tile(const Weights &W, const float *const *rows, long r0, int nr, float *out, int add_last) {
  const int w = W.window, NP = 2 * WID + 2 * CMP;
  v16 xv[H][32];
  for (int q = 0; q < H; q++) {
    int nq = nr - q * L; nq = nq < 0 ? 0 : (nq > L ? L : nq);
    for (int i = 0; i < w; i++) {
      float t[L] = {0};
      if (nq) memcpy(t, rows[i] + r0 + q * L, nq * sizeof(float));
      memcpy(&xv[q][i], t, sizeof(v16));
    }
  }
  v16 h[2 * WID][H], z[2 * CMP][H];
  for (int j = 0; j < NP; j++) {
    v16 acc[H];
    float m = W.m1[j], b = W.b1[j];
    for (int q = 0; q < H; q++) acc[q] = xv[q][0] * m + b;
    for (int i = 1; i < w; i++) { float mi = W.m1[i * NP + j]; for (int q = 0; q < H; q++) acc[q] += xv[q][i] * mi; }
    for (int q = 0; q < H; q++) {
      if (j < 2 * WID) h[j][q] = acc[q];
      else z[j - 2 * WID][q] = acc[q] > 0.0f ? acc[q] : splat(0.0f);
    }
  }
  v16 y[H];
  for (int q = 0; q < H; q++) y[q] = splat(W.hb[0]);
  for (int b = 0; b < 2; b++) {
    v16 (*zb)[H] = z + CMP * b;
    v16 e[WID][H];
    for (int j = 0; j < WID; j++) {
      v16 rate[H], gain[H];
      float rw = W.mr[b][j], gw = W.mg[b][j], rb = W.br[b][j], gb = W.bg[b][j];
      for (int q = 0; q < H; q++) { rate[q] = zb[0][q] * rw + rb; gain[q] = zb[0][q] * gw + gb; }
#pragma GCC unroll 8
      for (int k = 1; k < CMP; k++) {
        float rk = W.mr[b][k * WID + j], gk = W.mg[b][k * WID + j];
        for (int q = 0; q < H; q++) { rate[q] += zb[k][q] * rk; gain[q] += zb[k][q] * gk; }
      }
      for (int q = 0; q < H; q++) e[j][q] = gain[q] * vexp(rate[q] * h[WID * b + j][q]);
    }
    for (int c0 = 0; c0 < PRJ; c0 += CB) {
      v16 o[CB][H];
#pragma GCC unroll 32
      for (int c = 0; c < CB; c++) {
        float a0 = W.ma[b][c0 + c], ab = W.ba[b][c0 + c];
        for (int q = 0; q < H; q++) o[c][q] = zb[0][q] * a0 + ab;
        for (int k = 1; k < CMP; k++) { float ak = W.ma[b][k * PRJ + c0 + c]; for (int q = 0; q < H; q++) o[c][q] += zb[k][q] * ak; }
      }
      for (int j0 = 0; j0 < WID; j0 += JB) {
        v16 t[CB][H];
#pragma GCC unroll 32
        for (int c = 0; c < CB; c++) { float wc = W.pw[b][j0 * PRJ + c0 + c]; for (int q = 0; q < H; q++) t[c][q] = e[j0][q] * wc; }
        for (int j = j0 + 1; j < j0 + JB; j++) {
          const float *pw = W.pw[b] + j * PRJ + c0;
#pragma GCC unroll 32
          for (int c = 0; c < CB; c++) { float wc = pw[c]; for (int q = 0; q < H; q++) t[c][q] += e[j][q] * wc; }
        }
#pragma GCC unroll 32
        for (int c = 0; c < CB; c++) for (int q = 0; q < H; q++) o[c][q] += t[c][q];
      }
#pragma GCC unroll 32
      for (int c = 0; c < CB; c++) {
        float hw = W.hw[PRJ * b + c0 + c];
        for (int q = 0; q < H; q++) { v16 v = o[c][q]; v = v > 0.0f ? v : v * 0.3f; y[q] += v * hw; }
      }
    }
  }
  for (int q = 0; q < H; q++) {
    float yt[L], xl[L];
    memcpy(yt, &y[q], sizeof(v16));
    memcpy(xl, &xv[q][w - 1], sizeof(v16));
    for (int r = 0; r < L && q * L + r < nr; r++) out[r0 + q * L + r] = (add_last ? xl[r] : 0.0f) + tanhf(yt[r]);
  }
}
extern "C" int known_tile(void) { return H * L; }
extern "C" void known_rows(const Weights *W, const float *const *rows, long start, long stop, float *out, int add_last) {
  for (long r0 = start; r0 < stop; r0 += H * L) {
    int nr = (stop - r0) < H * L ? (int)(stop - r0) : H * L;
    tile(*W, rows, r0, nr, out, add_last);
  }
}
/* Size of the struct know/fastknown.py mirrors with ctypes: checked at load time, so a reordered field is caught. */
extern "C" long sizeof_weights(void) { return (long)sizeof(Weights); }
