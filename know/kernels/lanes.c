/* Lane kernels: K = 16 small CNNs trained at once, member k in SIMD lane k.
 *
 * Every tensor keeps the member axis innermost, (..., LANES), so a 16-float vector holds one value of all members
 * and each member's arithmetic is plain element-wise vector arithmetic: no grouped convolution, no im2col. Built
 * at first use by know/lanes.py with the system C compiler (-O3 -march=native); called through ctypes.
 *
 * Layouts (float32, contiguous):  activations (B, C, H + 2p, W + 2p, LANES) with a zero border p = ks / 2 where a
 * convolution reads them; conv weights (Co, Ci, ks, ks, LANES); biases (Co, LANES).
 *
 * Entry points: train_step (each thread's part of a training step: chunks of images forward and backward with
 * plan_train, the gradients, optionally Adam) and plan_forward (logits of one chunk); know/lanes.py runs them on
 * several threads, one workspace each. Also adam_step and flip_transpose.
 */
#include <stddef.h>
#include <math.h>
#include <string.h>
#include <sched.h>

#define LANES 16
#define XB 8 /* output pixels per register block */
#define COB 4 /* at most this many output channels per register block (COB x XB / 2 accumulators) */
#define MAX_KS 5 /* odd kernel sizes up to this */
#define IMAGES_INNER_MAX 16 /* weight gradients of maps up to this many pixels loop over images innermost */

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int vi __attribute__((vector_size(LANES * sizeof(int))));

static inline vf ld(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vmax(vf a, vf b) { vi m = (vi)(a > b); return (vf)(((vi)a & m) | ((vi)b & ~m)); }
static inline vf vsel(vi m, vf a) { return (vf)((vi)a & m); }

int lanes(void) { return LANES; }

/* A 2x2 max-pool's gradient route per member: which of the window's values (0: top left, 1: top right, 2, 3: the
 * bottom row) is its first maximum in scan order, which takes the gradient as in PyTorch, or 4 when ReLU blocks it
 * (maximum <= 0). Kept as one byte per pooled value and member by the forward, for the backward. With AVX-512
 * the bytes <-> ints conversions and the code itself use intrinsics (GCC scalarizes __builtin_convertvector here). */
#if defined(__AVX512F__) && LANES == 16
#include <immintrin.h>
static inline vi load_codes(const unsigned char *p) {
    return (vi)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}
static inline void store_codes(unsigned char *p, vi c) {
    _mm_storeu_si128((__m128i *)p, _mm512_cvtepi32_epi8((__m512i)c));
}
/* The code of a window (v00, v01 / v10, v11) with maximum m: mask registers and blends, few vector registers. */
static inline vi route_code(vf v00, vf v01, vf v10, vf m) {
    const __mmask16 k00 = _mm512_cmp_ps_mask((__m512)v00, (__m512)m, _CMP_EQ_OQ);
    const __mmask16 k01 = _mm512_cmp_ps_mask((__m512)v01, (__m512)m, _CMP_EQ_OQ);
    const __mmask16 k10 = _mm512_cmp_ps_mask((__m512)v10, (__m512)m, _CMP_EQ_OQ);
    const __mmask16 pos = _mm512_cmp_ps_mask((__m512)m, _mm512_setzero_ps(), _CMP_GT_OQ);
    __m512i c = _mm512_mask_mov_epi32(_mm512_set1_epi32(3), k10, _mm512_set1_epi32(2));
    c = _mm512_mask_mov_epi32(c, k01, _mm512_set1_epi32(1));
    c = _mm512_mask_mov_epi32(c, k00, _mm512_setzero_si512());
    return (vi)_mm512_mask_mov_epi32(_mm512_set1_epi32(4), pos, c);
}
#else
static inline vi load_codes(const unsigned char *p) {
    vi c;
    for (int l = 0; l < LANES; l++) c[l] = p[l];
    return c;
}
static inline void store_codes(unsigned char *p, vi c) {
    for (int l = 0; l < LANES; l++) p[l] = (unsigned char)c[l];
}
static inline vi route_code(vf v00, vf v01, vf v10, vf m) {
    const vf zero = {0};
    const vi t00 = (vi)(v00 == m), t01 = (vi)(v01 == m) & ~t00, t10 = (vi)(v10 == m) & ~t00 & ~t01;
    const vi t11 = ~(t00 | t01 | t10), pos = (vi)(m > zero);
    return (pos & ((t01 & 1) | (t10 & 2) | (t11 & 3))) | (~pos & 4);
}
#endif

/* ------------------------------------------------------------------------------- convolution, stride 1, 'same' */
struct conv { const float *in, *w, *b; float *out; int B, Ci, Co, H, W, ks; };

/* Output row y, columns x0 .. x0 + n, of channels co .. co + nc of one image (input in_b): a register block of
 * nc x n vectors, written to out_row + c co_stride + x (out_row: channel co's row, column 0). */
static inline __attribute__((always_inline)) void conv_block(const struct conv *a, const float *in_b, float *out_row,
                                                             size_t co_stride, int co, int nc, int y, int x0, int n,
                                                             int ks) {
    const int Hp = a->H + ks - 1, Wp = a->W + ks - 1, wstride = a->Ci * ks * ks * LANES;
    const float *w0 = a->w + (size_t)co * wstride;
    vf acc[COB][XB];
    for (int c = 0; c < nc; c++) {
        const vf bias = a->b ? ld(a->b + (size_t)(co + c) * LANES) : (vf){0};
        for (int j = 0; j < n; j++) acc[c][j] = bias;
    }
    for (int ci = 0; ci < a->Ci; ci++)
        for (int dy = 0; dy < ks; dy++) {
            const float *row = in_b + ((size_t)(ci * Hp + y + dy) * Wp + x0) * LANES;
            const float *wr = w0 + (size_t)((ci * ks + dy) * ks) * LANES;
            for (int dx = 0; dx < ks; dx++) {
                vf wv[COB];
                for (int c = 0; c < nc; c++) wv[c] = ld(wr + (size_t)c * wstride + dx * LANES);
                for (int j = 0; j < n; j++) {
                    const vf v = ld(row + (j + dx) * LANES);
                    for (int c = 0; c < nc; c++) acc[c][j] += wv[c] * v;
                }
            }
        }
    for (int c = 0; c < nc; c++)
        for (int j = 0; j < n; j++) st(out_row + c * co_stride + (size_t)(x0 + j) * LANES, acc[c][j]);
}

static inline __attribute__((always_inline)) void conv_cols(const struct conv *a, const float *in_b, float *out_row,
                                                            size_t co_stride, int co, int nc, int y, int ks) {
    const int W = a->W;
    int x = 0;
    for (; x + XB <= W; x += XB) conv_block(a, in_b, out_row, co_stride, co, nc, y, x, XB, ks);
    if (W - x >= 4) { conv_block(a, in_b, out_row, co_stride, co, nc, y, x, 4, ks); x += 4; }
    if (W - x >= 2) { conv_block(a, in_b, out_row, co_stride, co, nc, y, x, 2, ks); x += 2; }
    if (W - x >= 1) conv_block(a, in_b, out_row, co_stride, co, nc, y, x, 1, ks);
}

/* Output row y of every channel of one image: out_row(co) = out + co co_stride. Input rows stay in L1 meanwhile. */
static inline __attribute__((always_inline)) void conv_row(const struct conv *a, const float *in_b, float *out,
                                                           size_t co_stride, int y, int ks) {
    int co = 0;
    if (a->W < XB) /* narrow rows: more output channels per block keep enough accumulators busy */
        for (; co + 4 <= a->Co; co += 4) conv_cols(a, in_b, out + co * co_stride, co_stride, co, 4, y, ks);
    for (; co + 2 <= a->Co; co += 2) conv_cols(a, in_b, out + co * co_stride, co_stride, co, 2, y, ks);
    for (; co < a->Co; co++) conv_cols(a, in_b, out + co * co_stride, co_stride, co, 1, y, ks);
}

static inline __attribute__((always_inline)) void conv_rows(const struct conv *a, int lo, int hi, int ks) {
    const int Hp = a->H + ks - 1, Wp = a->W + ks - 1;
    for (int bb = lo; bb < hi; bb++) {
        const float *in_b = a->in + (size_t)bb * a->Ci * Hp * Wp * LANES;
        float *out_b = a->out + (size_t)bb * a->Co * a->H * a->W * LANES;
        for (int y = 0; y < a->H; y++)
            conv_row(a, in_b, out_b + (size_t)y * a->W * LANES, (size_t)a->H * a->W * LANES, y, ks);
    }
}

static void conv_range(const void *p, int lo, int hi) {
    const struct conv *a = p;
    if (a->ks == 3) conv_rows(a, lo, hi, 3); /* the common case, with the kernel size known to the compiler */
    else if (a->ks == 1) conv_rows(a, lo, hi, 1);
    else conv_rows(a, lo, hi, a->ks);
}

/* out (B, Co, H, W) = conv(in (B, Ci, H + ks - 1, W + ks - 1), w (Co, Ci, ks, ks)) + b (Co) [b may be NULL].
 * The input gradient is this same call on the padded output gradient with the weights flipped and transposed. */
static void conv_forward(const float *in, const float *w, const float *b, float *out, int B, int Ci, int Co, int H,
                         int W, int ks) {
    const struct conv a = {in, w, b, out, B, Ci, Co, H, W, ks};
    conv_range(&a, 0, B);
}

/* out (B, Co) = in (B, Ci) w^T (w: (Co, Ci)) + b (Co) [b may be NULL]: a Linear layer. Register blocks of 4 output
 * channels x 4 images, so each weight is loaded once per 4 images; each output sums bias, then the channels in order
 * (as conv_forward with 1x1 maps: the same bits). */
static inline __attribute__((always_inline)) void linear_block(const float *in, const float *w, const float *b,
                                                               float *out, int Ci, int Co, int b0, int nb, int co0,
                                                               int nc) {
    vf acc[4][4];
    for (int c = 0; c < nc; c++) {
        const vf bias = b ? ld(b + (size_t)(co0 + c) * LANES) : (vf){0};
        for (int j = 0; j < nb; j++) acc[c][j] = bias;
    }
    for (int ci = 0; ci < Ci; ci++) {
        vf wv[4], xv[4];
        for (int c = 0; c < nc; c++) wv[c] = ld(w + ((size_t)(co0 + c) * Ci + ci) * LANES);
        for (int j = 0; j < nb; j++) xv[j] = ld(in + ((size_t)(b0 + j) * Ci + ci) * LANES);
        for (int c = 0; c < nc; c++)
            for (int j = 0; j < nb; j++) acc[c][j] += wv[c] * xv[j];
    }
    for (int c = 0; c < nc; c++)
        for (int j = 0; j < nb; j++) st(out + ((size_t)(b0 + j) * Co + co0 + c) * LANES, acc[c][j]);
}

static void linear_forward(const float *in, const float *w, const float *b, float *out, int B, int Ci, int Co) {
    for (int b0 = 0; b0 < B; b0 += 4) {
        const int nb = B - b0 < 4 ? B - b0 : 4;
        int co0 = 0;
        if (nb == 4)
            for (; co0 + 4 <= Co; co0 += 4) linear_block(in, w, b, out, Ci, Co, b0, 4, co0, 4);
        for (; co0 < Co; co0++) linear_block(in, w, b, out, Ci, Co, b0, nb, co0, 1);
    }
}

struct conv_grad { const float *in, *dout; float *dw, *db; int B, Ci, Co, H, W, ks, accumulate; };

/* dw, db of output channels co .. co + nc (nc <= 2: two channels share every input load). Each weight's sum runs
 * over the images in order, then rows, then columns; `images_inner` only chooses the loop order around it: images
 * outside the input channels (an image's planes stay in L1 while dw is read and written once per image) or inside
 * them (dw stays in registers across the chunk: better where dw is large and the planes small). */
static inline __attribute__((always_inline)) void conv_grad_block(const struct conv_grad *a, int co, int nc, int ks,
                                                                  int images_inner) {
    const int pad = ks / 2, H = a->H, W = a->W, Hp = H + ks - 1, Wp = W + ks - 1, kk = ks * ks;
    const size_t dw_stride = (size_t)a->Ci * kk * LANES, plane = (size_t)Hp * Wp * LANES;
    float *dw_co = a->dw + co * dw_stride;
    vf db[2] = {{0}, {0}}; /* accumulate: add to dw and db (the sums so far, over the earlier images) */
    for (int c = 0; c < nc && a->accumulate && a->db; c++) db[c] = ld(a->db + (size_t)(co + c) * LANES);
    for (int bb = 0; bb < a->B; bb++) {
        const float *g_b = a->dout + (size_t)(bb * a->Co + co) * plane; /* padded like the input */
        for (int c = 0; c < nc; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) db[c] += ld(g_b + c * plane + ((size_t)(y + pad) * Wp + x + pad) * LANES);
    }
    const int n_outer = images_inner ? 1 : a->B, n_inner = images_inner ? a->B : 1;
    for (int outer = 0; outer < n_outer; outer++)
        for (int ci = 0; ci < a->Ci; ci++) {
            vf acc[2][MAX_KS * MAX_KS];
            for (int c = 0; c < nc; c++)
                for (int t = 0; t < kk; t++)
                    acc[c][t] = outer || a->accumulate ? ld(dw_co + c * dw_stride + ((size_t)ci * kk + t) * LANES)
                                                       : (vf){0};
            for (int inner = 0; inner < n_inner; inner++) {
                const int bb = outer + inner;
                const float *g_b = a->dout + (size_t)(bb * a->Co + co) * plane;
                const float *in_b = a->in + (size_t)(bb * a->Ci + ci) * plane;
                if (ks == 3) { /* sliding windows: each input vector is loaded once per row, used thrice per channel */
                    for (int y = 0; y < H; y++) {
                        const float *g_row = g_b + ((size_t)(y + 1) * Wp + 1) * LANES;
                        const float *r0 = in_b + (size_t)y * Wp * LANES, *r1 = r0 + Wp * LANES, *r2 = r1 + Wp * LANES;
                        vf w[3][3] = {{ld(r0), ld(r0 + LANES)}, {ld(r1), ld(r1 + LANES)}, {ld(r2), ld(r2 + LANES)}};
                        for (int x = 0; x < W; x++) {
                            for (int dy = 0; dy < 3; dy++) w[dy][2] = ld((dy == 0 ? r0 : dy == 1 ? r1 : r2) +
                                                                        (size_t)(x + 2) * LANES);
                            for (int c = 0; c < nc; c++) {
                                const vf g = ld(g_row + c * plane + (size_t)x * LANES);
                                for (int t = 0; t < 9; t++) acc[c][t] += g * w[t / 3][t % 3];
                            }
                            for (int dy = 0; dy < 3; dy++) { w[dy][0] = w[dy][1]; w[dy][1] = w[dy][2]; }
                        }
                    }
                } else
                    for (int y = 0; y < H; y++)
                        for (int x = 0; x < W; x++)
                            for (int c = 0; c < nc; c++) {
                                const vf g = ld(g_b + c * plane + ((size_t)(y + pad) * Wp + x + pad) * LANES);
                                for (int dy = 0; dy < ks; dy++)
                                    for (int dx = 0; dx < ks; dx++)
                                        acc[c][dy * ks + dx] += g * ld(in_b + ((size_t)(y + dy) * Wp + x + dx) * LANES);
                            }
            }
            for (int c = 0; c < nc; c++)
                for (int t = 0; t < kk; t++) st(dw_co + c * dw_stride + ((size_t)ci * kk + t) * LANES, acc[c][t]);
        }
    for (int c = 0; c < nc && a->db; c++) st(a->db + (size_t)(co + c) * LANES, db[c]);
}

static inline __attribute__((always_inline)) void conv_grad_channels(const struct conv_grad *a, int lo, int hi,
                                                                     int ks) {
    const int images_inner = a->H * a->W <= IMAGES_INNER_MAX;
    int co = lo;
    for (; co + 2 <= hi; co += 2) conv_grad_block(a, co, 2, ks, images_inner);
    if (co < hi) conv_grad_block(a, co, 1, ks, images_inner);
}

static void conv_grad_range(const void *p, int lo, int hi) {
    const struct conv_grad *a = p;
    if (a->ks == 3) conv_grad_channels(a, lo, hi, 3);
    else if (a->ks == 1) conv_grad_channels(a, lo, hi, 1);
    else conv_grad_channels(a, lo, hi, a->ks);
}

/* dw (Co, Ci, ks, ks) and db (Co) [may be NULL] from the padded input and the padded output gradient
 * (B, Co, H + ks - 1, W + ks - 1). */
static void conv_weight_grad(const float *in, const float *dout, float *dw, float *db, int B, int Ci, int Co, int H,
                             int W, int ks, int accumulate) {
    const struct conv_grad a = {in, dout, dw, db, B, Ci, Co, H, W, ks, accumulate};
    conv_grad_range(&a, 0, Co);
}

/* --------------------------------------------------------- conv, ReLU and 2x2 max-pool (stride 2) fused
 * A pooled layer's conv output is never stored whole: each pair of output rows of all channels goes to a scratch of
 * (Co, 2, W) vectors that stays in L1, and is pooled at once; the backward needs only the routes (codes). */
struct conv_pool { struct conv c; float *rows; float *out; unsigned char *codes; int pad; };

/* out (B, Co, H/2 + 2 pad, W/2 + 2 pad) interior = maxpool2(relu(conv(in) + b)), and codes (B, Co, H/2, W/2)
 * [may be NULL]; the border is not touched. With odd H or W the last row or column is outside every window. */
static inline __attribute__((always_inline)) void conv_pool_rows(const struct conv_pool *a, int ks) {
    const struct conv *c = &a->c;
    const int H = c->H, W = c->W, Ho = H / 2, Wo = W / 2, Hop = Ho + 2 * a->pad, Wop = Wo + 2 * a->pad;
    const size_t co_stride = (size_t)2 * W * LANES;
    const vf zero = {0};
    for (int bb = 0; bb < c->B; bb++) {
        const float *in_b = c->in + (size_t)bb * c->Ci * (H + ks - 1) * (W + ks - 1) * LANES;
        for (int py = 0; py < Ho; py++) {
            for (int o = 0; o < 2; o++) conv_row(c, in_b, a->rows + (size_t)o * W * LANES, co_stride, 2 * py + o, ks);
            for (int co = 0; co < c->Co; co++) {
                const float *r0 = a->rows + co * co_stride, *r1 = r0 + (size_t)W * LANES;
                float *out_row = a->out + (((size_t)(bb * c->Co + co) * Hop + py + a->pad) * Wop + a->pad) * LANES;
                unsigned char *code_row = a->codes ? a->codes + ((size_t)(bb * c->Co + co) * Ho + py) * Wo * LANES
                                                   : NULL;
                for (int px = 0; px < Wo; px++) {
                    const vf v00 = ld(r0 + (size_t)2 * px * LANES), v01 = ld(r0 + (size_t)(2 * px + 1) * LANES);
                    const vf v10 = ld(r1 + (size_t)2 * px * LANES), v11 = ld(r1 + (size_t)(2 * px + 1) * LANES);
                    const vf m = vmax(vmax(v00, v01), vmax(v10, v11));
                    st(out_row + (size_t)px * LANES, vmax(m, zero));
                    if (code_row) store_codes(code_row + (size_t)px * LANES, route_code(v00, v01, v10, m));
                }
            }
        }
    }
}

static void conv_pool_layer(const float *in, const float *w, const float *b, float *rows, float *out,
                            unsigned char *codes, int B, int Ci, int Co, int H, int W, int ks, int pad) {
    const struct conv_pool a = {{in, w, b, NULL, B, Ci, Co, H, W, ks}, rows, out, codes, pad};
    if (ks == 3) conv_pool_rows(&a, 3);
    else conv_pool_rows(&a, ks);
}

/* dz (planes, H + 2 pad, W + 2 pad) interior = the pool's input gradient: each value of g (planes, H/2, W/2) goes
 * where its code sends it; the border is not touched (keep it zero for the convolutions that read dz). */
static void route_backward(const unsigned char *codes, const float *g, float *dz, int planes, int H, int W, int pad) {
    const int Ho = H / 2, Wo = W / 2, Wp = W + 2 * pad;
    for (int pl = 0; pl < planes; pl++) {
        const unsigned char *c = codes + (size_t)pl * Ho * Wo * LANES;
        const float *gp = g + (size_t)pl * Ho * Wo * LANES;
        float *d = dz + (size_t)pl * (H + 2 * pad) * Wp * LANES;
        if (H % 2) /* the row and column outside every window (odd sizes) get no gradient */
            memset(d + ((size_t)(H - 1 + pad) * Wp + pad) * LANES, 0, sizeof(float) * W * LANES);
        if (W % 2)
            for (int y = 0; y < H; y++) memset(d + ((size_t)(y + pad) * Wp + W - 1 + pad) * LANES, 0, sizeof(vf));
        for (int y = 0; y < Ho; y++)
            for (int x = 0; x < Wo; x++) {
                const vi code = load_codes(c + ((size_t)y * Wo + x) * LANES);
                const vf gv = ld(gp + ((size_t)y * Wo + x) * LANES);
                const size_t o00 = (size_t)(2 * y + pad) * Wp + 2 * x + pad;
                st(d + o00 * LANES, vsel((vi)(code == 0), gv));
                st(d + (o00 + 1) * LANES, vsel((vi)(code == 1), gv));
                st(d + (o00 + Wp) * LANES, vsel((vi)(code == 2), gv));
                st(d + (o00 + Wp + 1) * LANES, vsel((vi)(code == 3), gv));
            }
    }
}

/* ------------------------------------------------------------------ the first layer: conv, ReLU and pool fused
 * The first conv output is the largest tensor of the net (Co x H x W per image at full resolution) and the first
 * layer needs no input gradient, so it is never stored: each register block computes the conv outputs of two rows
 * and pools them at once. For the backward the forward keeps, per pooled value and member, one byte: which of the
 * window's four values took the gradient (0-3, PyTorch's first maximum in scan order), or 4 when ReLU blocked it. */


/* acc[o][j] = the conv output (bias included) at row 2 py + o, column x0 + j of output channel co, o < 2, j < n,
 * for the padded image in_b (Ci, H + ks - 1, W + ks - 1). */
static inline __attribute__((always_inline)) void conv_two_rows(const float *in_b, const float *w, const float *b,
                                                                int Ci, int H, int W, int ks, int co, int py, int x0,
                                                                int n, vf acc[2][XB]) {
    const int Wp = W + ks - 1, kk = ks * ks;
    const vf bias = b ? ld(b + (size_t)co * LANES) : (vf){0};
    for (int o = 0; o < 2; o++)
        for (int j = 0; j < n; j++) acc[o][j] = bias;
    for (int ci = 0; ci < Ci; ci++) {
        const float *wc = w + ((size_t)co * Ci + ci) * kk * LANES;
        const float *in_c = in_b + (size_t)ci * (H + ks - 1) * Wp * LANES;
        for (int r = 0; r <= ks; r++) { /* input rows 2 py + r feed output rows o with dy = r - o */
            const float *row = in_c + ((size_t)(2 * py + r) * Wp + x0) * LANES;
            for (int dx = 0; dx < ks; dx++)
                for (int o = 0; o < 2; o++) {
                    if (r - o < 0 || r - o >= ks) continue;
                    const vf wv = ld(wc + ((r - o) * ks + dx) * LANES);
                    for (int j = 0; j < n; j++) acc[o][j] += wv * ld(row + (size_t)(j + dx) * LANES);
                }
        }
    }
}

/* Runs the statements that follow once per column block (x0, n) of a pooled row, n in {XB, 4, 2}, covering
 * columns 0 .. 2 (W / 2) of the conv output. */
#define FOR_PAIR_BLOCKS(W, ...)                                                                                      \
    {                                                                                                               \
        int x0 = 0;                                                                                                 \
        for (; x0 + XB <= (W / 2) * 2; x0 += XB) { const int n = XB; __VA_ARGS__ }                                  \
        if ((W / 2) * 2 - x0 >= 4) { const int n = 4; __VA_ARGS__ x0 += 4; }                                       \
        if ((W / 2) * 2 - x0 >= 2) { const int n = 2; __VA_ARGS__ }                                                 \
    }

/* out (B, Co, H/2 + 2 pad, W/2 + 2 pad) interior = maxpool2(relu(conv(in) + b)); codes (B, Co, H/2, W/2) [may be
 * NULL] = where each value's gradient goes (see above). */
static inline __attribute__((always_inline)) void conv_pool(const float *in, const float *w, const float *b,
                                                            float *out, unsigned char *codes, int B, int Ci, int Co,
                                                            int H, int W, int ks, int pad) {
    const int Ho = H / 2, Wo = W / 2, Hop = Ho + 2 * pad, Wop = Wo + 2 * pad;
    const size_t in_image = (size_t)Ci * (H + ks - 1) * (W + ks - 1) * LANES;
    const vf zero = {0};
    for (int bb = 0; bb < B; bb++)
        for (int co = 0; co < Co; co++)
            for (int py = 0; py < Ho; py++) {
                float *out_row = out + (((size_t)(bb * Co + co) * Hop + py + pad) * Wop + pad) * LANES;
                unsigned char *code_row = codes ? codes + ((size_t)(bb * Co + co) * Ho + py) * Wo * LANES : NULL;
                FOR_PAIR_BLOCKS(W,
                    vf acc[2][XB];
                    conv_two_rows(in + bb * in_image, w, b, Ci, H, W, ks, co, py, x0, n, acc);
                    for (int q = 0; q < n / 2; q++) {
                        const vf v00 = acc[0][2 * q], v01 = acc[0][2 * q + 1], v10 = acc[1][2 * q];
                        const vf v11 = acc[1][2 * q + 1], m = vmax(vmax(v00, v01), vmax(v10, v11));
                        st(out_row + (size_t)(x0 / 2 + q) * LANES, vmax(m, zero));
                        if (!code_row) continue;
                        store_codes(code_row + (size_t)(x0 / 2 + q) * LANES, route_code(v00, v01, v10, m));
                    }
                )
            }
}

static void conv_pool_forward(const float *in, const float *w, const float *b, float *out, unsigned char *codes,
                              int B, int Ci, int Co, int H, int W, int ks, int pad) {
    if (ks == 3) conv_pool(in, w, b, out, codes, B, Ci, Co, H, W, 3, pad);
    else conv_pool(in, w, b, out, codes, B, Ci, Co, H, W, ks, pad);
}

/* dw (Co, Ci, ks, ks) and db (Co) [may be NULL] of the first layer from the pool's output gradient g (B, Co, H/2,
 * W/2) and the forward's codes: each 2x2 window's gradient goes to the value its code names. One (co, ci) at a time,
 * its ks x ks sums stay in registers across the whole chunk. */
static inline __attribute__((always_inline)) void pool_conv_grad(const float *in, const unsigned char *codes,
                                                                 const float *g, float *dw, float *db, int B, int Ci,
                                                                 int Co, int H, int W, int ks) {
    const int Ho = H / 2, Wo = W / 2, Wp = W + ks - 1, kk = ks * ks;
    const size_t in_image = (size_t)Ci * (H + ks - 1) * Wp * LANES;
    for (int co = 0; co < Co; co++)
        for (int ci = 0; ci < Ci; ci++) {
            vf acc[MAX_KS * MAX_KS], dbias = {0};
            for (int t = 0; t < kk; t++) acc[t] = (vf){0};
            for (int bb = 0; bb < B; bb++)
                for (int py = 0; py < Ho; py++) {
                    const float *g_row = g + ((size_t)(bb * Co + co) * Ho + py) * Wo * LANES;
                    const unsigned char *code_row = codes + ((size_t)(bb * Co + co) * Ho + py) * Wo * LANES;
                    const float *in_c = in + bb * in_image + (size_t)ci * (H + ks - 1) * Wp * LANES;
                    FOR_PAIR_BLOCKS(W,
                        /* output row o of the pair: its gradients d, then their products with input rows o + dy;
                         * per weight the terms come in the order of the forward's rows (o = 0, then 1) */
                        _Pragma("GCC unroll 2") for (int o = 0; o < 2; o++) {
                            vf d[XB];
                            for (int q = 0; q < n / 2; q++) {
                                const vi code = load_codes(code_row + (size_t)(x0 / 2 + q) * LANES);
                                const vf gv = ld(g_row + (size_t)(x0 / 2 + q) * LANES);
                                d[2 * q] = vsel((vi)(code == 2 * o), gv);
                                d[2 * q + 1] = vsel((vi)(code == 2 * o + 1), gv);
                                if (ci == 0 && o == 0) dbias += vsel((vi)(code < 4), gv);
                            }
                            const float *rows = in_c + ((size_t)(2 * py + o) * Wp + x0) * LANES;
                            _Pragma("GCC unroll 8") for (int j = 0; j < n; j++) /* j outermost: 9 independent sums */
                                _Pragma("GCC unroll 5") for (int dy = 0; dy < ks; dy++)
                                    _Pragma("GCC unroll 5") for (int dx = 0; dx < ks; dx++)
                                        acc[dy * ks + dx] += d[j] * ld(rows + ((size_t)dy * Wp + j + dx) * LANES);
                        }
                    )
                }
            for (int t = 0; t < kk; t++) st(dw + (((size_t)co * Ci + ci) * kk + t) * LANES, acc[t]);
            if (db && ci == 0) st(db + (size_t)co * LANES, dbias);
        }
}

static void pool_conv_weight_grad(const float *in, const unsigned char *codes, const float *g, float *dw, float *db,
                                  int B, int Ci, int Co, int H, int W, int ks) {
    if (ks == 3) pool_conv_grad(in, codes, g, dw, db, B, Ci, Co, H, W, 3);
    else pool_conv_grad(in, codes, g, dw, db, B, Ci, Co, H, W, ks);
}

/* ----------------------------------------------------------------------------------- a whole SimpleNet chunk */
#define MAX_CONVS 8

/* Everything one chunk of images needs, set up once per (thread, chunk size, gradient slot) by know/lanes.py:
 * conv blocks [Conv(ks, 'same') -> ReLU -> MaxPool2], then fc -> ReLU -> head, cross-entropy per member. For
 * training, x[n_conv], act, dact and dlogits point at the chunk's rows of whole-batch buffers, from which
 * linear_weight_grad takes the fc and head weight gradients once per step. */
struct plan {
    int n_conv, b, k, total, hidden, classes, features, start; /* start: the chunk's first image in the batch */
    int ci[MAX_CONVS], co[MAX_CONVS], h[MAX_CONVS], w[MAX_CONVS], ks[MAX_CONVS];
    const float *wt[MAX_CONVS], *bias[MAX_CONVS], *wflip[MAX_CONVS];
    float *x[MAX_CONVS + 1]; /* x[i]: padded input of conv i; x[n_conv]: the last pooled map = the fc input */
    float *z[MAX_CONVS]; /* z[i], i > 0: two rows of conv i's output, the scratch of its pooling (conv_pool_rows) */
    unsigned char *codes[MAX_CONVS]; /* each pool's gradient routes (training; NULL: not kept) */
    float *dz[MAX_CONVS], *da[MAX_CONVS], *dw[MAX_CONVS], *db[MAX_CONVS];
    const float *fc_w, *fc_b, *fc_wt, *head_w, *head_b, *head_wt;
    float *fc_out, *act, *logits, *dlogits, *dact, *dfeats;
};

static int pad_of(const struct plan *p, int i) { return i < p->n_conv ? p->ks[i] / 2 : 0; }

/* x[0] interior <- src[m * member_stride + i * image_stride + (c, y, x)] for lanes m < k (a member stride of 0
 * broadcasts one image to every member); lanes from k on are left as they are (zero). */
static void stage(const struct plan *p, const float *src, long member_stride, long image_stride) {
    const int C = p->ci[0], H = p->h[0], W = p->w[0], pd = pad_of(p, 0), Hp = H + 2 * pd, Wp = W + 2 * pd;
#if defined(__AVX512F__) && LANES == 16
    if (member_stride * (LANES - 1) <= 0x7fffffffL) { /* one masked gather per pixel */
        const __m512i offsets = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1,
                                                                    0), _mm512_set1_epi32((int)member_stride));
        const __mmask16 members = (__mmask16)((1u << p->k) - 1);
        for (int i = 0; i < p->b; i++)
            for (int c = 0; c < C; c++)
                for (int y = 0; y < H; y++) {
                    float *dst = p->x[0] + ((((size_t)i * C + c) * Hp + y + pd) * Wp + pd) * LANES;
                    const float *s = src + i * image_stride + ((size_t)c * H + y) * W;
                    for (int x = 0; x < W; x++) {
                        const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), members, offsets, s + x, 4);
                        _mm512_mask_storeu_ps(dst + (size_t)x * LANES, members, v);
                    }
                }
        return;
    }
#endif
    for (int i = 0; i < p->b; i++)
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    float *dst = p->x[0] + ((((size_t)i * C + c) * Hp + y + pd) * Wp + x + pd) * LANES;
                    const float *s = src + i * image_stride + ((size_t)c * H + y) * W + x;
                    for (int m = 0; m < p->k; m++) dst[m] = s[m * member_stride];
                }
}

static void forward(const struct plan *p) {
    conv_pool_forward(p->x[0], p->wt[0], p->bias[0], p->x[1], p->codes[0], p->b, p->ci[0], p->co[0], p->h[0],
                      p->w[0], p->ks[0], pad_of(p, 1));
    for (int i = 1; i < p->n_conv; i++) {
        conv_pool_layer(p->x[i], p->wt[i], p->bias[i], p->z[i], p->x[i + 1], p->codes[i], p->b, p->ci[i], p->co[i],
                        p->h[i], p->w[i], p->ks[i], pad_of(p, i + 1));
    }
    linear_forward(p->x[p->n_conv], p->fc_w, p->fc_b, p->fc_out, p->b, p->features, p->hidden);
    const vf zero = {0};
    for (size_t j = 0; j < (size_t)p->b * p->hidden; j++) st(p->act + j * LANES, vmax(ld(p->fc_out + j * LANES), zero));
    linear_forward(p->act, p->head_w, p->head_b, p->logits, p->b, p->hidden, p->classes);
}

/* Logits of the staged images: (b, classes, LANES). */
void plan_forward(const struct plan *p, const float *src, long member_stride, long image_stride) {
    stage(p, src, member_stride, image_stride);
    forward(p);
}

/* Forward and backward of one chunk: the convolutions' weight gradients into the plan's slot (the fc and head ones
 * are linear_weight_grad's, once per step), the summed cross-entropy of each member into loss[LANES]; gradients are
 * those of the mean loss over `total` images (the whole batch). */
static void plan_train(const struct plan *p, const float *src, long member_stride, long image_stride,
                       const long *labels, long label_stride, float *loss) {
    stage(p, src, member_stride, image_stride);
    forward(p);
    const int nc = p->classes;
    for (int m = 0; m < LANES; m++) loss[m] = 0;
    for (int i = 0; i < p->b; i++)
        for (int m = 0; m < p->k; m++) {
            const float *l = p->logits + (size_t)i * nc * LANES + m;
            float *d = p->dlogits + (size_t)i * nc * LANES + m;
            const long y = labels[m * label_stride + i];
            float mx = l[0];
            for (int c = 1; c < nc; c++) mx = l[c * LANES] > mx ? l[c * LANES] : mx;
            double sum = 0;
            for (int c = 0; c < nc; c++) sum += exp((double)(l[c * LANES] - mx));
            loss[m] += (float)(log(sum) - (double)(l[y * LANES] - mx));
            for (int c = 0; c < nc; c++)
                d[c * LANES] = (float)((exp((double)(l[c * LANES] - mx)) / sum - (c == y)) / p->total);
        }
    linear_forward(p->dlogits, p->head_wt, NULL, p->dact, p->b, nc, p->hidden);
    const vf zero = {0};
    for (size_t j = 0; j < (size_t)p->b * p->hidden; j++) /* ReLU */
        st(p->dact + j * LANES, vsel((vi)(ld(p->act + j * LANES) > zero), ld(p->dact + j * LANES)));
    linear_forward(p->dact, p->fc_wt, NULL, p->dfeats, p->b, p->hidden, p->features);
    const float *g = p->dfeats; /* = the gradient of the last pooled map */
    for (int i = p->n_conv - 1; i >= 0; i--) {
        const int b = p->b, ci = p->ci[i], co = p->co[i], h = p->h[i], w = p->w[i], ks = p->ks[i];
        if (i == 0) { /* no input gradient needed; the forward's codes route the pool's gradient */
            pool_conv_weight_grad(p->x[0], p->codes[0], g, p->dw[0], p->db[0], b, ci, co, h, w, ks);
            break;
        }
        /* image by image where maps are large (its output gradient dz then stays in cache), else the chunk at once */
        const int per_image = h * w > IMAGES_INNER_MAX, step = per_image ? 1 : b, pad = ks / 2;
        const size_t pooled = (size_t)co * (h / 2) * (w / 2) * LANES;
        for (int bb = 0; bb < b; bb += step) {
            route_backward(p->codes[i] + bb * pooled, g + bb * pooled, p->dz[i], step * co, h, w, pad);
            conv_weight_grad(p->x[i] + (size_t)bb * ci * (h + 2 * pad) * (w + 2 * pad) * LANES, p->dz[i], p->dw[i],
                             p->db[i], step, ci, co, h, w, ks, bb > 0);
            conv_forward(p->dz[i], p->wflip[i], NULL, p->da[i] + (size_t)bb * ci * h * w * LANES, step, co, ci, h, w,
                         ks);
        }
        g = p->da[i];
    }
}

/* ------------------------------------------------------------------------------------- per-step helpers */
/* dw (Co, Ci) and db (Co) of a Linear layer, output channels lo .. hi, from its input (B, Ci) and output gradient
 * (B, Co) over a whole batch: once per step, not per chunk (its weights are the largest of the net). Each sum runs
 * over the images in order, so the result does not depend on how the channels are split. Register blocks of 2 output
 * x 8 input channels; an input block of the whole batch (B x 8 vectors) stays in L1 across the output channels. */
static void linear_weight_grad(const float *in, const float *dout, float *dw, float *db, int B, int Ci, int Co,
                               int lo, int hi) {
    for (int co = lo; co < hi; co++) {
        vf s = {0};
        for (int bb = 0; bb < B; bb++) s += ld(dout + ((size_t)bb * Co + co) * LANES);
        st(db + (size_t)co * LANES, s);
    }
    for (int ci0 = 0; ci0 < Ci; ci0 += 8) {
        const int ni = Ci - ci0 < 8 ? Ci - ci0 : 8;
        for (int co = lo; co < hi; co += 2) {
            const int nc = hi - co < 2 ? hi - co : 2;
            vf acc[2][8];
            for (int c = 0; c < nc; c++)
                for (int j = 0; j < ni; j++) acc[c][j] = (vf){0};
            for (int bb = 0; bb < B; bb++) {
                vf g[2];
                for (int c = 0; c < nc; c++) g[c] = ld(dout + ((size_t)bb * Co + co + c) * LANES);
                for (int j = 0; j < ni; j++) {
                    const vf v = ld(in + ((size_t)bb * Ci + ci0 + j) * LANES);
                    for (int c = 0; c < nc; c++) acc[c][j] += g[c] * v;
                }
            }
            for (int c = 0; c < nc; c++)
                for (int j = 0; j < ni; j++) st(dw + ((size_t)(co + c) * Ci + ci0 + j) * LANES, acc[c][j]);
        }
    }
}

/* out (Ci, Co, ks, ks) = w (Co, Ci, ks, ks) flipped in both spatial axes and transposed: the weights of the input
 * gradient's convolution (ks = 1: a Linear layer's transpose). */
void flip_transpose(const float *w, float *out, int Co, int Ci, int ks) {
    const int kk = ks * ks;
    for (int co = 0; co < Co; co++)
        for (int ci = 0; ci < Ci; ci++)
            for (int t = 0; t < kk; t++)
                st(out + ((size_t)(ci * Co + co) * kk + kk - 1 - t) * LANES,
                   ld(w + ((size_t)(co * Ci + ci) * kk + t) * LANES));
}

/* out[i] = slots[0][i] + slots[1][i] + ... in slot order (so the sum does not depend on how i is split), for the
 * n lane vectors of out; slots are `stride` vectors apart. */
static void sum_slots(float *out, const float *slots, int n_slots, long stride, long n) {
    for (long i = 0; i < n; i++) {
        vf s = ld(slots + i * LANES);
        for (int k = 1; k < n_slots; k++) s += ld(slots + ((size_t)k * stride + i) * LANES);
        st(out + i * LANES, s);
    }
}

/* ---------------------------------------------------------------------------------------------------- Adam */
/* One Adam step over n lane vectors of parameters p with gradients g and moments m, v; lr is per lane (member).
 * The arithmetic of torch.optim.Adam's single-tensor path: m = lerp(m, g, w1); v = b2 v + w2 g g;
 * p -= (lr / bc1) m / (sqrt(v) / bc2_sqrt + eps), with w1 = 1 - b1 and w2 = 1 - b2 rounded from double by the
 * caller as torch rounds its scalars. */
void adam_step(float *p, const float *g, float *m, float *v, long n, const float *lr, float w1, float b2, float w2,
               float eps, float bc1, float bc2_sqrt) {
    vf step = ld(lr);
    for (int l = 0; l < LANES; l++) step[l] /= bc1;
    for (long i = 0; i < n; i++) {
        const vf gi = ld(g + i * LANES), mi = ld(m + i * LANES);
        const vf m_new = mi + w1 * (gi - mi);
        const vf v_new = ld(v + i * LANES) * b2 + w2 * gi * gi;
        vf root;
        for (int l = 0; l < LANES; l++) root[l] = sqrtf(v_new[l]);
        st(m + i * LANES, m_new);
        st(v + i * LANES, v_new);
        st(p + i * LANES, ld(p + i * LANES) - step * m_new / (root / bc2_sqrt + eps));
    }
}

/* ----------------------------------------------------------------------------------------- a training step */
/* What the threads of one training step share; know/lanes.py fills it (per step: the batch, the losses, the Adam
 * scalars and zeroed counters). */
struct step {
    int n_chunks, parts, total;
    int *counters; /* next chunk, chunks done, next gradient share, gradient shares done, next Adam share */
    const float *src; long member_stride, image_stride; const long *labels; long label_stride;
    float *losses; /* (n_chunks, LANES): each chunk's summed cross-entropy */
    float *grads; const float *slots; long slot_stride, conv_vectors; /* the convolutions': first conv_vectors */
    const float *dense_in[2], *dense_dout[2]; float *dense_dw[2], *dense_db[2]; int dense_ci[2], dense_co[2];
    float *params, *exp_avg, *exp_avg_sq; const float *lr; long n_params; /* lr NULL: no Adam step */
    float w1, b2, w2, eps, bc1, bc2_sqrt;
};

static void wait_for(int *counter, int target) {
    while (__atomic_load_n(counter, __ATOMIC_ACQUIRE) < target) sched_yield();
}

static long share_start(long n, int j, int parts) { return n * j / parts; }

/* One thread's part of a training step, `plans` its workspace's plans of the chunks. Three phases, each a pool of
 * work items taken from a counter, so a faster thread takes more and any number of threads (one included) finishes
 * the step: chunks (forward and backward, gradients into per-chunk slots); then, once every chunk is done, shares
 * of the gradients (the slots summed in chunk order; fc and head from the whole-batch buffers); then, once those are
 * done, shares of the Adam step. Each sum runs in a fixed order whatever the split: the result is deterministic. */
void train_step(const struct step *s, struct plan *const *plans) {
    int *c = s->counters;
    for (int i; (i = __atomic_fetch_add(&c[0], 1, __ATOMIC_RELAXED)) < s->n_chunks;) {
        const struct plan *p = plans[i];
        plan_train(p, s->src + (size_t)p->start * s->image_stride, s->member_stride, s->image_stride,
                   s->labels + p->start, s->label_stride, s->losses + (size_t)i * LANES);
        __atomic_fetch_add(&c[1], 1, __ATOMIC_RELEASE);
    }
    wait_for(&c[1], s->n_chunks);
    for (int j; (j = __atomic_fetch_add(&c[2], 1, __ATOMIC_RELAXED)) < s->parts;) {
        const long lo = share_start(s->conv_vectors, j, s->parts), hi = share_start(s->conv_vectors, j + 1, s->parts);
        sum_slots(s->grads + lo * LANES, s->slots + lo * LANES, s->n_chunks, s->slot_stride, hi - lo);
        for (int d = 0; d < 2; d++)
            linear_weight_grad(s->dense_in[d], s->dense_dout[d], s->dense_dw[d], s->dense_db[d], s->total,
                               s->dense_ci[d], s->dense_co[d], (int)share_start(s->dense_co[d], j, s->parts),
                               (int)share_start(s->dense_co[d], j + 1, s->parts));
        __atomic_fetch_add(&c[3], 1, __ATOMIC_RELEASE);
    }
    if (!s->lr) return;
    wait_for(&c[3], s->parts);
    for (int j; (j = __atomic_fetch_add(&c[4], 1, __ATOMIC_RELAXED)) < s->parts;) {
        const long lo = share_start(s->n_params, j, s->parts), hi = share_start(s->n_params, j + 1, s->parts);
        adam_step(s->params + lo * LANES, s->grads + lo * LANES, s->exp_avg + lo * LANES, s->exp_avg_sq + lo * LANES,
                  hi - lo, s->lr, s->w1, s->b2, s->w2, s->eps, s->bc1, s->bc2_sqrt);
    }
}

/* Sizes of the structs know/lanes.py mirrors with ctypes: checked at load time, so a reordered field is caught. */
long sizeof_plan(void) { return (long)sizeof(struct plan); }
long sizeof_step(void) { return (long)sizeof(struct step); }
