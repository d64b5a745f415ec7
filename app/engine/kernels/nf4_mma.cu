// nf4_mma_gemv: NF4 weight x one bf16 row on tensor cores; nf4_mma_rows: the same weights x
// up to 8 * CHUNKS rows (see nf4_mma.py's docstring). A template: nf4_mma.kernel_source fills in
// the code tables, warps, depth, tiles and chunks (the marked names below) and prepends DECODE;
// compiled at run time by NVRTC (torch.cuda._compile_kernel), so plain C++ and PTX, no headers.
@TABLES@
#define WARPS @WARPS@
#define DEPTH @DEPTH@
#define TILES @TILES@    // nf4_mma_rows: row tiles each warp multiplies per group of x it loads
#define CHUNKS @CHUNKS@  // nf4_mma_rows: 8-row chunks of activations (the mma's 8 columns)
#define KORDER @KORDER@  // the packed weight's k order: 0 the PTX fragment's, 1 lane-contiguous
#define CHAIN @CHAIN@    // nf4_mma_gemv: 1 chains a group's four mma into one accumulator
#define LEAN @LEAN@      // nf4_mma_gemv: 1 walks K with running pointers and two buffers
#define PREFETCH @PREFETCH@  // nf4_mma_gemv: 1 loads a tile's epilogue t and B before its K loop
#define AHEAD @AHEAD@    // nf4_mma_rows: 1 loads the warp's next group of weights during this one
#define SHRINK @SHRINK@  // nf4_mma_gemv: 1 computes the LoRA activations t = x A.T itself
#define OCCUPY @OCCUPY@  // nf4_mma_gemv: blocks an SM its registers must leave room for
#define RESIDUAL @RESIDUAL@  // nf4_mma_gemv: 1 adds a residual row in the epilogue
#define PDL @PDL@        // nf4_mma_gemv: 1 launched as a dependent (pdl.py): prologue, then wait
#define L2_NEXT @L2_NEXT@  // nf4_mma_gemv, LEAN: 1 asks L2 for the warp's groups of its next tile
#define SPLIT_K @SPLIT_K@  // nf4_mma_gemv, LEAN: 1 gives each block an equal run of K (stream-K)
#define PDL_L2_GROUPS 8  // PDL: groups of its first tile each warp asks L2 for before the wait
#define MAX_SHRINK 384   // t values SHRINK holds: three parts of rank 128
#define SHRINK_WAIT_NS 100000ull  // how long a block waits for the grid's shares of t

__device__ __forceinline__ unsigned prmt(unsigned a, unsigned b, unsigned c) {
  unsigned d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// Four nibbles (low 16 bits of sel) -> their bf16 codes as two pairs: (n0, n1), (n2, n3).
__device__ __forceinline__ void decode4(unsigned sel, unsigned &p0, unsigned &p1) {
  unsigned s = sel & 0x7777u;                       // code & 7: byte within 8
  unsigned c = ((sel >> 1) & 0x4444u) | 0x3210u;    // code & 8: which 8
  unsigned lo = prmt(prmt(LO0, LO1, s), prmt(LO2, LO3, s), c);
  unsigned hi = prmt(prmt(HI0, HI1, s), prmt(HI2, HI3, s), c);
  p0 = prmt(lo, hi, 0x5140u);
  p1 = prmt(lo, hi, 0x7362u);
}

#ifndef DECODE
#define DECODE 1
#endif

// The byte -> bf16 pair table in shared memory, replicated per lane so a warp's 32 lookups
// never share a bank. DECODE 1: 32 KB, entry `byte` of lane l at word 32 byte + l (two integer
// ops make each address). DECODE 2: 64 KB of dynamic shared memory (the launch passes it),
// entry at byte offset 256 byte + 4 l, half of it unused, so that one byte permute of the
// packed word and the lane's offset is the whole address.
#if DECODE == 2
// The kernel has no static shared memory, so the dynamic table starts the CTA's window, right
// after the 1 KB the driver reserves on sm_80-sm_90 (not launched in a cluster: no rank bits).
// Each lookup uses that address as an immediate; the kernel traps at start if the table is
// anywhere else, so a layout change fails the GPU tests instead of reading the wrong bytes.
extern __shared__ unsigned wide_table[];
#define WIDE_TABLE_AT 1024u
#define WIDE_TABLE_AT_TEXT "1024"
#define TABLE_WORDS (256 * 64)
#define TABLE_SHIFT 6
#define TABLE_DECL unsigned *table = wide_table
#else
#define TABLE_WORDS (256 * 32)
#define TABLE_SHIFT 5
#define TABLE_DECL __shared__ unsigned table[TABLE_WORDS]
#endif

#if DECODE == 2
__device__ __forceinline__ unsigned lookup(unsigned offset) {
  unsigned v;  // WIDE_TABLE_AT as the load's immediate: no add per lookup
  asm("ld.shared.u32 %0, [%1+" WIDE_TABLE_AT_TEXT "];" : "=r"(v) : "r"(offset));
  return v;
}
#endif


// One word's eight nibbles -> the four bf16-pair registers of the A fragment.
__device__ __forceinline__ void decode_word(unsigned w, const unsigned *lut, unsigned &a0,
                                            unsigned &a1, unsigned &a2, unsigned &a3) {
#if DECODE == 1  // the 32 KB table; lut is this lane's column of it
  a0 = lut[(w & 0xFFu) << 5];
  a1 = lut[((w >> 8) & 0xFFu) << 5];
  a2 = lut[((w >> 16) & 0xFFu) << 5];
  a3 = lut[(w >> 24) << 5];
#elif DECODE == 2  // the 64 KB table (lut unused): address (byte i of w) << 8 | lane << 2
  const unsigned lane4 = (threadIdx.x & 31u) << 2;
  a0 = lookup(prmt(w, lane4, 0x5504u));
  a1 = lookup(prmt(w, lane4, 0x5514u));
  a2 = lookup(prmt(w, lane4, 0x5524u));
  a3 = lookup(prmt(w, lane4, 0x5534u));
#else  // byte permutes on register constants
  decode4(w, a0, a1);
  decode4(w >> 16, a2, a3);
#endif
}

// c += A B for one decoded A fragment (16 weight rows x 16 k) and one B fragment (16 k x 8
// columns): lane (g, t) holds c = C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1].
__device__ __forceinline__ void mma_decoded(float &c0, float &c1, float &c2, float &c3,
                                            unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                            unsigned b0, unsigned b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma(float &c0, float &c1, float &c2, float &c3, unsigned w,
                                    unsigned b0, unsigned b1, const unsigned *lut) {
  unsigned a0, a1, a2, a3;
  decode_word(w, lut, a0, a1, a2, a3);
  mma_decoded(c0, c1, c2, c3, a0, a1, a2, a3, b0, b1);
}

__device__ __forceinline__ void load16(const unsigned *p, unsigned &a, unsigned &b, unsigned &c,
                                       unsigned &d) {
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(a), "=r"(b), "=r"(c), "=r"(d) : "l"(p));
}

// Programmatic dependent launch (pdl.py): `launch_dependents` lets the next kernel in the
// stream become resident once every block of this one has called it; `wait` returns once the
// kernel before has completed and its writes are visible. Nothing written by an earlier
// kernel is read, and nothing is written, before the wait.
__device__ __forceinline__ void pdl_launch_dependents() {
#if PDL == 1
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait() {
#if PDL == 1
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Ask L2 for the 128-byte line holding p (a weight group's bytes, read later in the K loop).
__device__ __forceinline__ void prefetch_l2(const void *p) {
  asm volatile("prefetch.global.L2 [%0];" :: "l"(p));
}

// A block's work, one unit (a tile's groups [lo, hi)) at a time. SPLIT_K 0: tiles blockIdx.x,
// + gridDim.x, ..., each whole. SPLIT_K 1 (stream-K): the (tile, group) pairs in tile-major
// order, cut into gridDim.x equal runs [p0, p1), so every block streams the same number of
// groups however the tiles divide among the SMs; a tile cut between blocks is finished by
// the last of them to arrive (`tile_blocks`). Without it these fold to the plain tile loop.
__device__ __forceinline__ bool first_unit(int tiles, int groups, long long &p1, int &tile,
                                           int &lo, int &hi) {
#if SPLIT_K == 1
  const long long total = (long long)tiles * groups;
  const long long p0 = blockIdx.x * total / gridDim.x;
  p1 = (blockIdx.x + 1) * total / gridDim.x;
  tile = (int)(p0 / groups);
  lo = (int)(p0 - (long long)tile * groups);
  hi = (int)min((long long)groups, p1 - (long long)tile * groups);
  return p0 < p1;
#else
  p1 = 0;
  tile = blockIdx.x;
  lo = 0;
  hi = groups;
  return tile < tiles;
#endif
}

__device__ __forceinline__ bool next_unit(int tiles, int groups, long long p1, int &tile, int &lo,
                                          int &hi) {
#if SPLIT_K == 1
  tile += 1;
  lo = 0;
  hi = (int)min((long long)groups, p1 - (long long)tile * groups);
  return (long long)tile * groups < p1;
#else
  tile += gridDim.x;
  return tile < tiles;
#endif
}

// SPLIT_K: the block whose run holds pair p, and the first block and count of those a tile's
// groups are spread over.
__device__ __forceinline__ int block_of(long long p, long long total) {
  return (int)(((p + 1) * gridDim.x + total - 1) / total) - 1;
}

__device__ __forceinline__ void tile_blocks(int tile, int tiles, int groups, int &first,
                                            int &count) {
  const long long total = (long long)tiles * groups, start = (long long)tile * groups;
  first = block_of(start, total);
  count = block_of(start + groups - 1, total) - first + 1;
}

__device__ __forceinline__ float load_cg(const float *p) {  // from L2: another block wrote it
  float v;
  asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
  return v;
}

__device__ __forceinline__ float half_to_float(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

__device__ __forceinline__ float bf16_to_float(unsigned short h) {
  float f;
  asm("{ .reg .b32 t; cvt.u32.u16 t, %1; shl.b32 t, t, 16; mov.b32 %0, t; }" : "=f"(f) : "h"(h));
  return f;
}

__device__ __forceinline__ unsigned short float_to_bf16(float f) {
  unsigned short h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}

// 32 bytes of x for one lane, cached in L1 (every block reads the same row).
__device__ __forceinline__ void load32_cached(const unsigned *p, unsigned *b) {
  asm("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]) : "l"(p));
  asm("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(b[4]), "=r"(b[5]), "=r"(b[6]), "=r"(b[7]) : "l"(p + 4));
}

// x fragments of one group. KORDER 1: the packing put lane t's eight k pairs of the group at
// pairs 8t .. 8t + 7 of x (register 2j + h = step j, half h), so every lane loads them with two
// 16-byte loads and all eight columns of B hold x. KORDER 0 (the PTX order, k = 16j + 2t + 8h):
// lanes with g == 0 (column 0 of B) load eight words; other lanes multiply zeros.
__device__ __forceinline__ void load_x(const unsigned *x, int q, int g, int t, unsigned *b) {
#if KORDER == 1
  load32_cached(x + q * 32 + 8 * t, b);
#else
#pragma unroll
  for (int j = 0; j < 8; ++j) b[j] = 0u;
  if (g == 0) {
    const unsigned *xp = x + q * 32 + t;  // bf16 pairs: k = 64 q + 16 j + 2 t (+8)
#pragma unroll
    for (int j = 0; j < 4; ++j) { b[2 * j] = xp[8 * j]; b[2 * j + 1] = xp[8 * j + 4]; }
  }
#endif
}

__device__ __forceinline__ void load_scales(const unsigned short *s, int g,
                                            unsigned short *out) {
  asm("ld.global.nc.u16 %0, [%1];" : "=h"(out[0]) : "l"(s + g));
  asm("ld.global.nc.u16 %0, [%1];" : "=h"(out[1]) : "l"(s + g + 8));
}

// DEPTH groups' words, x fragments and scales of one tile, loaded ahead of their use.
__device__ __forceinline__ void preload(const unsigned *w, const unsigned short *s,
                                        const unsigned *x, long long word_step, int tiles,
                                        int first, int groups, int g, int t,
                                        unsigned (*u)[4], unsigned (*b)[8],
                                        unsigned short (*sc)[2]) {
#pragma unroll
  for (int d = 0; d < DEPTH; ++d) {
    const int q = first + d * WARPS;
    if (q < groups) {
      load16(w + q * word_step, u[d][0], u[d][1], u[d][2], u[d][3]);
      load_x(x, q, g, t, b[d]);
      load_scales(s + q * tiles * 16, g, sc[d]);
    }
  }
}

// LEAN, PDL: a group's words and scales (constant: loadable before the wait) and its x
// fragments (written by the kernel before: after it), the two halves of `load_group`.
__device__ __forceinline__ void load_weights(const unsigned *w, const unsigned short *s,
                                             unsigned *u, unsigned short *sc) {
  load16(w, u[0], u[1], u[2], u[3]);
  asm("ld.global.nc.u16 %0, [%1];" : "=h"(sc[0]) : "l"(s));
  asm("ld.global.nc.u16 %0, [%1];" : "=h"(sc[1]) : "l"(s + 8));
}

__device__ __forceinline__ void load_xs(const unsigned *xp, int g, unsigned *b) {
#if KORDER == 1
  load32_cached(xp, b);
#else
#pragma unroll
  for (int j = 0; j < 8; ++j) b[j] = 0u;
  if (g == 0) {
#pragma unroll
    for (int j = 0; j < 4; ++j) { b[2 * j] = xp[8 * j]; b[2 * j + 1] = xp[8 * j + 4]; }
  }
#endif
}

// LEAN: one group's words, x fragments and scales from running pointers (x already offset to
// the lane's first pair, scales to row g).
__device__ __forceinline__ void load_group(const unsigned *w, const unsigned short *s,
                                           const unsigned *xp, int g, unsigned *u, unsigned *b,
                                           unsigned short *sc) {
  load16(w, u[0], u[1], u[2], u[3]);
  load_xs(xp, g, b);
  asm("ld.global.nc.u16 %0, [%1];" : "=h"(sc[0]) : "l"(s));
  asm("ld.global.nc.u16 %0, [%1];" : "=h"(sc[1]) : "l"(s + 8));
}

#if PREFETCH == 1
// Rows of a tile each warp finishes in the epilogue (r = warp, warp + WARPS, ...).
#define ROWS_PER_WARP ((16 + WARPS - 1) / WARPS)

// Four bf16 (8 bytes) into two registers, issued where it stands: volatile, so the compiler
// does not sink it to its use after the K loop, which would bring back the latency it hides.
__device__ __forceinline__ void load8(const unsigned short *p, unsigned &a, unsigned &b) {
  asm volatile("ld.global.nc.v2.u32 {%0,%1}, [%2];" : "=r"(a), "=r"(b) : "l"(p));
}

#endif

// The sum of every lane's value, in every lane (butterfly shuffles).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    float other;
    asm volatile("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;"
                 : "=f"(other) : "f"(v), "r"(off));
    v += other;
  }
  return v;
}

// Lane's share of row r's sum before the LoRA update: the warps' partial sums of the row, or
// for a tile SPLIT_K spread over `parts` blocks their sums (lane 0, in block order: the same
// sums whichever block finishes the tile).
__device__ __forceinline__ float row_share(const float *partial, const float *k_sums, int parts,
                                           int out_rows, int row, int r, int lane) {
#if SPLIT_K == 1
  if (parts > 1) {
    float sum = 0.f;
    if (lane == 0)
      for (int j = 0; j < parts; ++j) sum += load_cg(k_sums + (long long)j * out_rows + row);
    return sum;
  }
#endif
  return lane < WARPS ? partial[lane * 16 + r] : 0.f;
}

// t as the epilogue reads it: a bf16 from the launch's t, or an fp32 the grid summed (SHRINK).
__device__ __forceinline__ float t_value(unsigned short t) { return bf16_to_float(t); }
__device__ __forceinline__ float t_value(float t) { return t; }

// The lane's share of a row's LoRA update, t . B[row], added to sum (the loop the epilogue
// keeps where t and B are not held in registers).
template <typename T>
__device__ __forceinline__ void add_lora_row(float &sum, const T *t_row,
                                             const unsigned short *b_row, int rank, int lane) {
  for (int i = lane; i < rank; i += 32) sum += t_value(t_row[i]) * bf16_to_float(b_row[i]);
}

// The dot product of two pairs of packed bf16 pairs, in fp32.
__device__ __forceinline__ float dot4(unsigned t0, unsigned t1, unsigned b0, unsigned b1) {
  float sum = __uint_as_float(t0 << 16) * __uint_as_float(b0 << 16);
  sum += __uint_as_float(t0 & 0xFFFF0000u) * __uint_as_float(b0 & 0xFFFF0000u);
  sum += __uint_as_float(t1 << 16) * __uint_as_float(b1 << 16);
  return sum + __uint_as_float(t1 & 0xFFFF0000u) * __uint_as_float(b1 & 0xFFFF0000u);
}

#if SHRINK == 1
// Four fp32 t values times four packed bf16 of B.
__device__ __forceinline__ float dot4f(const float *t, unsigned b0, unsigned b1) {
  return t[0] * __uint_as_float(b0 << 16) + t[1] * __uint_as_float(b0 & 0xFFFF0000u) +
         t[2] * __uint_as_float(b1 << 16) + t[3] * __uint_as_float(b1 & 0xFFFF0000u);
}

// One warp's dot product of row r of A (K bf16, rows contiguous) with x over the k chunks
// first, first + step, ... (256 k each, eight per lane), summed across the warp.
__device__ __forceinline__ float shrink_dot(const unsigned short *__restrict__ lora_a,
                                            const unsigned *__restrict__ x, int r, int K,
                                            int first, int step, int lane) {
  float p = 0.f;
  for (int k = first * 256 + lane * 8; k < K; k += step * 256) {
    unsigned a0, a1, a2, a3, x0, x1, x2, x3;
    load16((const unsigned *)(lora_a + (long long)r * K + k), a0, a1, a2, a3);
    load16(x + (k >> 1), x0, x1, x2, x3);
    p += dot4(a0, a1, x0, x1) + dot4(a2, a3, x2, x3);
  }
  return warp_sum(p);
}

__device__ __forceinline__ float round_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }
#endif

// One group's products added to rows g (acc0) and g + 8 (acc1), each scaled once.
__device__ __forceinline__ void group_product(const unsigned *u, const unsigned *b,
                                              const unsigned short *sc, const unsigned *lut,
                                              float &acc0, float &acc1) {
  const float s0 = half_to_float(sc[0]), s1 = half_to_float(sc[1]);
#if CHAIN == 1
  float c0 = 0.f, c1 = 0.f, c2 = 0.f, c3 = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) mma(c0, c1, c2, c3, u[j], b[2 * j], b[2 * j + 1], lut);
  acc0 += s0 * c0;  // lanes with t == 0: column 0
  acc1 += s1 * c2;
#else
  float c[4][4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
    mma(c[j][0], c[j][1], c[j][2], c[j][3], u[j], b[2 * j], b[2 * j + 1], lut);
  }
  acc0 += s0 * ((c[0][0] + c[1][0]) + (c[2][0] + c[3][0]));
  acc1 += s1 * ((c[0][2] + c[1][2]) + (c[2][2] + c[3][2]));
#endif
}

// SHRINK: every block must be resident at once (they wait for each other's shares of t), so
// such a build keeps registers for two blocks an SM, the grid nf4_mma.py launches; OCCUPY
// asks the same of any build (more warps in flight for fewer registers each).
extern "C" __global__ void __launch_bounds__(WARPS * 32, SHRINK == 1 ? 2 : OCCUPY)
nf4_mma_gemv(const unsigned *__restrict__ words, const unsigned short *__restrict__ scales,
             const unsigned *__restrict__ x, unsigned short *__restrict__ out, int groups,
             const unsigned *__restrict__ pairs, const unsigned short *__restrict__ lora_t,
             const unsigned short *__restrict__ lora_b, int rank, int b_stride, int gelu_from,
             int tiles, int split1, int split2, const unsigned short *__restrict__ lora_a,
             float *t_sum, unsigned *sync, int shrink_rows,
             const unsigned short *__restrict__ residual, float *k_sums, unsigned *k_counts) {
  TABLE_DECL;  // byte -> bf16 pair, one copy per lane
#if SPLIT_K == 1 && (LEAN == 0 || SHRINK == 1)
#error "SPLIT_K needs the LEAN loop and no SHRINK"
#endif
#if DECODE == 2  // no static shared memory: the dynamic table starts the window, at 0
  float *partial = (float *)(wide_table + TABLE_WORDS);
#if SHRINK == 1
  float *t_shared = partial + WARPS * 16;
  int *t_whole = (int *)(t_shared + MAX_SHRINK);
#endif
#if SPLIT_K == 1
  int *k_last = (int *)(partial + WARPS * 16);
#endif
#else
  __shared__ float partial[WARPS * 16];
#if SHRINK == 1
  __shared__ float t_shared[MAX_SHRINK];
  __shared__ int t_whole[1];
#endif
#if SPLIT_K == 1
  __shared__ int k_last[1];
#endif
#endif
#if SHRINK == 1
#define T_SOURCE t_shared  // where the epilogue reads t
#else
#define T_SOURCE lora_t
#endif
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const long long word_step = (long long)tiles * 128;
  // A block serves several units (`first_unit`): the shared table is filled once for them.
  long long p1;
  int tile, lo, hi;
  bool has = first_unit(tiles, groups, p1, tile, lo, hi);
  pdl_launch_dependents();
#if PDL == 1 && (LEAN == 0 || SHRINK == 1)
  pdl_wait();  // these builds read x from the start: no prologue to overlap
#endif
  // DEPTH groups' words, x fragments and scales are loaded ahead of the group being
  // multiplied (more than one in flight cost occupancy and was slower on an H200); the
  // first tile's are on their way while the table fills.
#if LEAN == 1
  // Two buffers in turn (a group is multiplied from one while the next loads into the other:
  // no register copies) and pointers that step by WARPS groups (no 64-bit index arithmetic).
  unsigned ua[4], ub[4], ba[8], bb[8];
  unsigned short sa[2], sb[2];
  const long long w_step = (long long)WARPS * word_step;
  const long long s_step = (long long)WARPS * tiles * 16;
  const int x_lane = KORDER == 1 ? 8 * t : t;
#if PDL == 1 && SHRINK == 0  // x is the previous kernel's output: its fragments after the wait
  if (has && lo + warp < hi)
    load_weights(words + ((long long)tile * 32 + lane) * 4 + (lo + warp) * word_step,
                 scales + (long long)tile * 16 + (long long)(lo + warp) * tiles * 16 + g, ua, sa);
#else
  if (has && lo + warp < hi)
    load_group(words + ((long long)tile * 32 + lane) * 4 + (lo + warp) * word_step,
               scales + (long long)tile * 16 + (long long)(lo + warp) * tiles * 16 + g,
               x + (lo + warp) * 32 + x_lane, g, ua, ba, sa);
#endif
#else
  unsigned u[DEPTH][4], b[DEPTH][8];
  unsigned short sc[DEPTH][2];
  preload(words + ((long long)tile * 32 + lane) * 4, scales + tile * 16, x, word_step, tiles,
          warp, groups, g, t, u, b, sc);
#endif
#if DECODE == 2
  if ((unsigned)__cvta_generic_to_shared(wide_table) != WIDE_TABLE_AT) __trap();
#endif
#if SHRINK == 1
  // This block's share of t = x A.T (the parts' A stacked, shrink_rows x K): items (row r,
  // 256-wide chunk of k) spread over every warp of the grid, each summed into t_sum (zero
  // at launch) while the first tile's weights are on their way; then the block checks in.
  {
    const int K = groups * 64, chunks = (K + 255) >> 8;
    for (int item = blockIdx.x * WARPS + warp; item < shrink_rows * chunks;
         item += gridDim.x * WARPS) {
      const int r = item / chunks;
      const float p = shrink_dot(lora_a, x, r, K, item - r * chunks, chunks, lane);
      if (lane == 0) atomicAdd(t_sum + r, p);
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) atomicAdd(sync, 1u);
  }
  bool t_ready = false;
#endif
  for (int i = threadIdx.x; i < TABLE_WORDS; i += WARPS * 32) table[i] = pairs[i >> TABLE_SHIFT];
#if PDL == 1 && LEAN == 1 && SHRINK == 0
  // While the kernel before finishes: the rest of this warp's groups of its first tile on
  // their way to L2, then the wait, then the first group's x.
  if (has) {
    const unsigned *ahead = words + ((long long)tile * 32 + lane) * 4 + (lo + warp) * word_step;
    for (int q = lo + warp + WARPS, n = 0; q < hi && n < PDL_L2_GROUPS; q += WARPS, ++n)
      prefetch_l2(ahead + (long long)(q - lo - warp) * word_step);
  }
  pdl_wait();
  if (has && lo + warp < hi) load_xs(x + (lo + warp) * 32 + x_lane, g, ba);
#endif
  __syncthreads();
  const unsigned *lut = DECODE == 2 ? table : table + lane;
#if PREFETCH == 1
  // The epilogue's t and B in registers, four bf16 per lane (k = 4 lane .. 4 lane + 3) of each
  // row the warp finishes, loaded as 8-byte vectors when the tile starts so that they arrive
  // during its K loop. Ranks above 128 or not a multiple of 4, and unaligned t or B, keep the
  // loop that loads them in the epilogue (the same for every lane: no divergence).
#if SHRINK == 1  // t comes from shared memory
  const bool held = rank <= 128 && (rank & 3) == 0 && (b_stride & 3) == 0 &&
                    ((unsigned long long)lora_b & 7) == 0;
#else
  const bool held = rank <= 128 && (rank & 3) == 0 && (b_stride & 3) == 0 &&
                    (((unsigned long long)lora_b | (unsigned long long)lora_t) & 7) == 0;
#endif
  const bool holds = held && 4 * lane < rank;  // lanes past the rank hold zeros
#endif

  for (; has; has = next_unit(tiles, groups, p1, tile, lo, hi)) {
    float acc0 = 0.f, acc1 = 0.f;  // rows g and g + 8 (column 0 of the mma output)
#if PREFETCH == 1
    unsigned ht0 = 0u, ht1 = 0u, hb[ROWS_PER_WARP][2];
#if SHRINK == 0
    if (holds) {  // splits are multiples of 16: a tile's rows share one projection's t
      const int first = tile * 16;
      load8(lora_t + ((first >= split1) + (first >= split2)) * rank + 4 * lane, ht0, ht1);
    }
#endif
#pragma unroll
    for (int k = 0; k < ROWS_PER_WARP; ++k) {
      hb[k][0] = hb[k][1] = 0u;
      const int r = warp + k * WARPS;
      if (holds && r < 16)
        load8(lora_b + (long long)(tile * 16 + r) * b_stride + 4 * lane, hb[k][0], hb[k][1]);
    }
#endif
#if LEAN == 1 && L2_NEXT == 1
    // The warp's share of the block's next tile on its way to L2 during this one: a tile's
    // worth of requests in flight (16-32 KB a block) where the registers hold one group.
    {
      int ahead_tile = tile, ahead_lo = lo, ahead_hi = hi;
      if (next_unit(tiles, groups, p1, ahead_tile, ahead_lo, ahead_hi)) {
        const unsigned *ahead = words + ((long long)ahead_tile * 32 + lane) * 4 +
                                (ahead_lo + warp) * word_step;
        for (int q = ahead_lo + warp; q < ahead_hi; q += WARPS, ahead += w_step) prefetch_l2(ahead);
      }
    }
#endif
#if LEAN == 1
    const unsigned *wp = words + ((long long)tile * 32 + lane) * 4 + (lo + warp) * word_step;
    const unsigned short *sp =
        scales + (long long)tile * 16 + (long long)(lo + warp) * tiles * 16 + g;
    const unsigned *xp = x + (lo + warp) * 32 + x_lane;
    for (int q = lo + warp; q < hi; q += 2 * WARPS) {  // group q is in buffer a
      if (q + WARPS < hi) load_group(wp + w_step, sp + s_step, xp + WARPS * 32, g, ub, bb, sb);
      group_product(ua, ba, sa, lut, acc0, acc1);
      if (q + WARPS >= hi) break;
      if (q + 2 * WARPS < hi)
        load_group(wp + 2 * w_step, sp + 2 * s_step, xp + 2 * WARPS * 32, g, ua, ba, sa);
      group_product(ub, bb, sb, lut, acc0, acc1);
      wp += 2 * w_step;
      sp += 2 * s_step;
      xp += 2 * WARPS * 32;
    }
    {  // the next unit's first loads fly during the epilogue
      int next = tile, next_lo = lo, next_hi = hi;
      if (next_unit(tiles, groups, p1, next, next_lo, next_hi) && next_lo + warp < next_hi)
        load_group(words + ((long long)next * 32 + lane) * 4 + (next_lo + warp) * word_step,
                   scales + (long long)next * 16 + (long long)(next_lo + warp) * tiles * 16 + g,
                   x + (next_lo + warp) * 32 + x_lane, g, ua, ba, sa);
    }
#else
    const unsigned *w = words + ((long long)tile * 32 + lane) * 4;  // + q * tiles * 128
    const unsigned short *s = scales + tile * 16;  // + q * tiles * 16
    for (int base = warp; base < groups; base += DEPTH * WARPS) {
#pragma unroll
      for (int d = 0; d < DEPTH; ++d) {
        const int q = base + d * WARPS;
        if (q < groups) {
          unsigned cur[4] = {u[d][0], u[d][1], u[d][2], u[d][3]};
          unsigned xb[8];
#pragma unroll
          for (int j = 0; j < 8; ++j) xb[j] = b[d][j];
          const float s0 = half_to_float(sc[d][0]), s1 = half_to_float(sc[d][1]);
          const int ahead = q + DEPTH * WARPS;
          if (ahead < groups) {
            load16(w + ahead * word_step, u[d][0], u[d][1], u[d][2], u[d][3]);
            load_x(x, ahead, g, t, b[d]);
            load_scales(s + ahead * tiles * 16, g, sc[d]);
          }
#if CHAIN == 1  // one accumulator: no zeroing or adding of four, a chain of four mma
          float c0 = 0.f, c1 = 0.f, c2 = 0.f, c3 = 0.f;
#pragma unroll
          for (int j = 0; j < 4; ++j)
            mma(c0, c1, c2, c3, cur[j], xb[2 * j], xb[2 * j + 1], lut);
          acc0 += s0 * c0;  // lanes with t == 0: column 0
          acc1 += s1 * c2;
#else
          float c[4][4];  // four independent products: no chain of dependent mma latencies
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
            mma(c[j][0], c[j][1], c[j][2], c[j][3], cur[j], xb[2 * j], xb[2 * j + 1], lut);
          }
          acc0 += s0 * ((c[0][0] + c[1][0]) + (c[2][0] + c[3][0]));  // lanes with t == 0
          acc1 += s1 * ((c[0][2] + c[1][2]) + (c[2][2] + c[3][2]));
#endif
        }
      }
    }
    const int next = tile + gridDim.x;  // the next tile's first loads fly during the epilogue
    if (next < tiles)
      preload(words + ((long long)next * 32 + lane) * 4, scales + next * 16, x, word_step,
              tiles, warp, groups, g, t, u, b, sc);
#endif

    if (t == 0) { partial[warp * 16 + g] = acc0; partial[warp * 16 + g + 8] = acc1; }
#if SHRINK == 1
    if (!t_ready) {  // the first tile's epilogue: every block's share of t, rounded as bf16
      if (threadIdx.x == 0) {
        unsigned long long start, now;
        unsigned arrived;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
        do {  // bounded: a block that cannot be resident must not hang the ones that are
          asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(arrived) : "l"(sync));
          asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
        } while (arrived < gridDim.x && now - start < SHRINK_WAIT_NS);
        t_whole[0] = arrived >= gridDim.x;
      }
      __syncthreads();
      if (t_whole[0]) {
        for (int i = threadIdx.x; i < shrink_rows; i += WARPS * 32) {
          float v;
          asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(t_sum + i));
          t_shared[i] = round_bf16(v);
        }
      } else {  // the grid was not all resident: this block computes the whole of t alone
        for (int r = warp; r < shrink_rows; r += WARPS) {
          const float p = shrink_dot(lora_a, x, r, groups * 64, 0, 1, lane);
          if (lane == 0) t_shared[r] = round_bf16(p);
        }
      }
      t_ready = true;
    }
#endif
    __syncthreads();
    int parts = 1;  // blocks this tile's groups are spread over (SPLIT_K)
#if SPLIT_K == 1
    int first_block;
    tile_blocks(tile, tiles, groups, first_block, parts);
    if (parts > 1) {
      // This block's sums of the tile's 16 rows go to the workspace; the last of the tile's
      // blocks to arrive reads them all back, runs the epilogue and resets the tile's counter
      // for the next launch.
      for (int r = warp; r < 16; r += WARPS) {
        const float share = warp_sum(lane < WARPS ? partial[lane * 16 + r] : 0.f);
        if (lane == 0)
          k_sums[(long long)(blockIdx.x - first_block) * tiles * 16 + tile * 16 + r] = share;
      }
      __threadfence();
      __syncthreads();
      if (threadIdx.x == 0) k_last[0] = atomicAdd(k_counts + tile, 1u) == (unsigned)parts - 1;
      __syncthreads();
      if (!k_last[0]) continue;  // the whole block: partial is free for the next unit
      __threadfence();
      if (threadIdx.x == 0) k_counts[tile] = 0u;
    }
#endif
    // Epilogue, a warp per row: the warps' partial sums, the LoRA update t . B[row] (scale
    // folded into B) and GELU (rows from gelu_from on), in fp32, rounded once. Rows from
    // split1 (and from split2) on belong to the next projection of a joined launch (q|k|v):
    // they read the next `rank` values of t.
#if PREFETCH == 1  // t and B are in registers already (`held`): FMAs only
#pragma unroll
    for (int k = 0; k < ROWS_PER_WARP; ++k) {
      const int r = warp + k * WARPS;
      if (r >= 16) break;
      const int row = tile * 16 + r;
      float sum = row_share(partial, k_sums, parts, tiles * 16, row, r, lane);
      if (held) {
#if SHRINK == 1
        const int part = (row >= split1) + (row >= split2);
        if (holds) sum += dot4f(t_shared + part * rank + 4 * lane, hb[k][0], hb[k][1]);
#else
        sum += dot4(ht0, ht1, hb[k][0], hb[k][1]);
#endif
      } else {
        add_lora_row(sum, T_SOURCE + ((row >= split1) + (row >= split2)) * rank,
                     lora_b + (long long)row * b_stride, rank, lane);
      }
#else
    for (int r = warp; r < 16; r += WARPS) {
      const int row = tile * 16 + r;
      float sum = row_share(partial, k_sums, parts, tiles * 16, row, r, lane);
      add_lora_row(sum, T_SOURCE + ((row >= split1) + (row >= split2)) * rank,
                   lora_b + (long long)row * b_stride, rank, lane);
#endif
      sum = warp_sum(sum);
      if (lane == 0) {
        if (row >= gelu_from) sum = sum * 0.5f * (1.f + erff(sum * 0.7071067811865476f));
#if RESIDUAL == 1
        sum += bf16_to_float(residual[tile * 16 + r]);  // the block's x
#endif
        out[tile * 16 + r] = float_to_bf16(sum);
      }
    }
    __syncthreads();  // partial is rewritten by the next tile
  }
#if SHRINK == 1
  // The last block out (every block has read t by then) zeroes t_sum and the two counters for
  // the next launch.
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(sync + 1, 1u) == gridDim.x - 1) {
      for (int i = 0; i < shrink_rows; ++i) t_sum[i] = 0.f;
      __threadfence();
      atomicExch(sync, 0u);
      atomicExch(sync + 1, 0u);
    }
  }
#endif
}


// x fragments of one group for every lane: column g of chunk c is activation row 8 c + g
// (zeros past the last row).
__device__ __forceinline__ void load_x_row(const unsigned *x, long long row_pairs, int row,
                                           int rows, int q, int t, unsigned *b) {
  if (row < rows) {
#if KORDER == 1
    load32_cached(x + row * row_pairs + q * 32 + 8 * t, b);
#else
    const unsigned *xp = x + row * row_pairs + q * 32 + t;
#pragma unroll
    for (int j = 0; j < 4; ++j) { b[2 * j] = xp[8 * j]; b[2 * j + 1] = xp[8 * j + 4]; }
#endif
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) b[j] = 0u;
  }
}

// A rows kernel warp's fp32 sums: TILES row tiles x CHUNKS 8-row chunks x its 4 values.
__device__ __forceinline__ void zero_sums(float (&acc)[TILES][CHUNKS][4]) {
#pragma unroll
  for (int tt = 0; tt < TILES; ++tt)
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) acc[tt][c][0] = acc[tt][c][1] = acc[tt][c][2] = acc[tt][c][3] = 0.f;
}

// One group's packed words and scales of every tile in the warp's set (all loads first: TILES
// in flight); a tile past the last re-reads the last, whose sums are never stored.
__device__ __forceinline__ void load_rows_group(const unsigned *__restrict__ words,
                                                const unsigned short *__restrict__ scales, int q,
                                                long long word_step, int tile0, int tiles,
                                                int lane, int g, unsigned (&u)[TILES][4],
                                                unsigned short (&sc)[TILES][2]) {
#pragma unroll
  for (int tt = 0; tt < TILES; ++tt) {
    const int tile = tile0 + tt < tiles ? tile0 + tt : tiles - 1;
    load16(words + q * word_step + ((long long)tile * 32 + lane) * 4, u[tt][0], u[tt][1],
           u[tt][2], u[tt][3]);
    load_scales(scales + ((long long)q * tiles + tile) * 16, g, sc[tt]);
  }
}

// The batched-decode kernel: `rows` activation rows (at most 8 * CHUNKS) share each decoded
// weight fragment, as the mma's eight columns. A block serves TILES neighbouring row tiles at a
// time (blockIdx.x, + gridDim.x, ...); its warps split K by groups, each decoding its group's
// TILES fragments once and multiplying them with every chunk of x, so one load of x serves
// TILES tiles. Per group the fp16 scales of rows g and g + 8 multiply the fp32 products, as in
// nf4_mma_gemv; the warps' sums meet in shared memory (fp32 atomics) and are rounded once.
extern "C" __global__ void __launch_bounds__(WARPS * 32)
nf4_mma_rows(const unsigned *__restrict__ words, const unsigned short *__restrict__ scales,
             const unsigned *__restrict__ x, unsigned short *__restrict__ out, int groups,
             const unsigned *__restrict__ pairs, int rows, int tiles) {
  TABLE_DECL;  // byte -> bf16 pair, one copy per lane
#if DECODE == 2  // no static shared memory: the dynamic table starts the window
  float *red = (float *)(wide_table + TABLE_WORDS);
  if ((unsigned)__cvta_generic_to_shared(wide_table) != WIDE_TABLE_AT) __trap();
#else
  __shared__ float red[TILES * 16 * CHUNKS * 8];  // [weight row of the set][activation row]
#endif
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const long long word_step = (long long)tiles * 128;  // words of one group, all tiles
  const long long row_pairs = (long long)groups * 32;  // bf16 pairs of one activation row
  const int width = CHUNKS * 8;
  for (int i = threadIdx.x; i < TABLE_WORDS; i += WARPS * 32) table[i] = pairs[i >> TABLE_SHIFT];
  const unsigned *lut = DECODE == 2 ? table : table + lane;
  const int sets = (tiles + TILES - 1) / TILES;

  for (int set = blockIdx.x; set < sets; set += gridDim.x) {
    const int tile0 = set * TILES;
    for (int i = threadIdx.x; i < TILES * 16 * width; i += WARPS * 32) red[i] = 0.f;
    __syncthreads();  // the table (first set) and the zeroed sums are ready
    float acc[TILES][CHUNKS][4];
    zero_sums(acc);

    unsigned u[TILES][4];
    unsigned short sc[TILES][2];
#if AHEAD == 1  // the first group's weights; each iteration then loads the next one's
    if (warp < groups) load_rows_group(words, scales, warp, word_step, tile0, tiles, lane, g, u, sc);
#endif
    for (int q = warp; q < groups; q += WARPS) {
#if AHEAD == 1
      unsigned un[TILES][4];
      unsigned short scn[TILES][2];
      if (q + WARPS < groups)  // in flight while this group is decoded and multiplied
        load_rows_group(words, scales, q + WARPS, word_step, tile0, tiles, lane, g, un, scn);
#else
      load_rows_group(words, scales, q, word_step, tile0, tiles, lane, g, u, sc);
#endif
      unsigned a[TILES][4][4];
      float s[TILES][2];
#pragma unroll
      for (int tt = 0; tt < TILES; ++tt) {
#pragma unroll
        for (int j = 0; j < 4; ++j)
          decode_word(u[tt][j], lut, a[tt][j][0], a[tt][j][1], a[tt][j][2], a[tt][j][3]);
        s[tt][0] = half_to_float(sc[tt][0]);
        s[tt][1] = half_to_float(sc[tt][1]);
      }
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) {
        unsigned b[8];
        load_x_row(x, row_pairs, c * 8 + g, rows, q, t, b);
#pragma unroll
        for (int tt = 0; tt < TILES; ++tt) {
          float p0 = 0.f, p1 = 0.f, p2 = 0.f, p3 = 0.f;
#pragma unroll
          for (int j = 0; j < 4; ++j)
            mma_decoded(p0, p1, p2, p3, a[tt][j][0], a[tt][j][1], a[tt][j][2], a[tt][j][3],
                        b[2 * j], b[2 * j + 1]);
          acc[tt][c][0] += s[tt][0] * p0;
          acc[tt][c][1] += s[tt][0] * p1;
          acc[tt][c][2] += s[tt][1] * p2;
          acc[tt][c][3] += s[tt][1] * p3;
        }
      }
#if AHEAD == 1
#pragma unroll
      for (int tt = 0; tt < TILES; ++tt) {
        u[tt][0] = un[tt][0]; u[tt][1] = un[tt][1]; u[tt][2] = un[tt][2]; u[tt][3] = un[tt][3];
        sc[tt][0] = scn[tt][0]; sc[tt][1] = scn[tt][1];
      }
#endif
    }

#pragma unroll
    for (int tt = 0; tt < TILES; ++tt)
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) {
        float *top = red + (tt * 16 + g) * width + c * 8 + 2 * t;  // weight row g, rows 2t, 2t+1
        float *low = top + 8 * width;                              // weight row g + 8
        atomicAdd(top, acc[tt][c][0]);
        atomicAdd(top + 1, acc[tt][c][1]);
        atomicAdd(low, acc[tt][c][2]);
        atomicAdd(low + 1, acc[tt][c][3]);
      }
    __syncthreads();
    const long long n = (long long)tiles * 16;
    for (int i = threadIdx.x; i < TILES * 16 * rows; i += WARPS * 32) {
      const int r = i % (TILES * 16), row = i / (TILES * 16);  // neighbours write neighbours
      const int weight_row = tile0 * 16 + r;
      if (weight_row < n) out[row * n + weight_row] = float_to_bf16(red[r * width + row]);
    }
    __syncthreads();  // red is zeroed again for the next set
  }
}

// Built where x's static buffers fit beside the table: k order 1, decode 1 up to 32 rows,
// decode 0 (no table) up to 64.
#if KORDER == 1 && (DECODE == 0 || (DECODE == 1 && CHUNKS <= 4))
// nf4_mma_rows_shared: the rows kernel with the activations staged in shared memory once per
// block and group, read there by every warp. In nf4_mma_rows each warp loads its group's x for
// every chunk from L2, which at 32 rows is four times the bytes of the weights it multiplies
// (bench/results/nf4-mma-rows-ahead-h100.json: 32 rows took three to six times the one-row
// time). Here the warps of a block split the row tiles instead of K: a block serves a set of
// WARPS * TILES tiles over a slice of K's groups, so one staged group of x serves them all.
// Slices of K (ksplit > 1) keep every SM busy on narrow weights; each slice's fp32 sums go to
// a partial buffer, and the slice that finishes a set last adds the partials and rounds once.
#define XS_STRIDE 36  // words per staged activation row: 32 (64 bf16) + 4, so the eight rows a
                      // quarter-warp reads with 16-byte loads fall in distinct banks

__device__ __forceinline__ void stage_async(unsigned *dst, const unsigned *src, bool valid) {
  const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
               :: "r"(d), "l"(src), "r"(valid ? 16 : 0));
}

// Group q's x for every row of the chunks (zeros past `rows`) into `xs`, 16 bytes a copy.
__device__ __forceinline__ void stage_group(unsigned *xs, const unsigned *__restrict__ x,
                                            long long row_pairs, int q, int rows) {
  for (int i = threadIdx.x; i < CHUNKS * 8 * 8; i += WARPS * 32) {
    const int row = i >> 3, part = i & 7;  // 8 copies of 16 bytes a row
    const bool valid = row < rows;
    stage_async(xs + row * XS_STRIDE + part * 4,
                x + (valid ? row * row_pairs + q * 32 + part * 4 : 0), valid);
  }
  asm volatile("cp.async.commit_group;");
}

__device__ __forceinline__ void put(unsigned short *p, float v) { *p = float_to_bf16(v); }
__device__ __forceinline__ void put(float *p, float v) { *p = v; }

// A warp's sums into the (rows, n) matrix dst, bf16 (rounded) or fp32 (a partial): lane (g, t)
// holds weight rows g and g + 8 of each of its tiles for activation rows 2t, 2t + 1 of each
// chunk.
template <typename T>
__device__ __forceinline__ void store_tiles(T *dst, const float (&acc)[TILES][CHUNKS][4],
                                            int tile0, int tiles, int rows, long long n, int g,
                                            int t) {
#pragma unroll
  for (int tt = 0; tt < TILES; ++tt) {
    const int tile = tile0 + tt;
    if (tile >= tiles) break;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int r0 = c * 8 + 2 * t;
      const long long w0 = (long long)tile * 16 + g;
      if (r0 < rows) {
        put(dst + r0 * n + w0, acc[tt][c][0]);
        put(dst + r0 * n + w0 + 8, acc[tt][c][2]);
      }
      if (r0 + 1 < rows) {
        put(dst + (r0 + 1) * n + w0, acc[tt][c][1]);
        put(dst + (r0 + 1) * n + w0 + 8, acc[tt][c][3]);
      }
    }
  }
}

extern "C" __global__ void __launch_bounds__(WARPS * 32, 2)
nf4_mma_rows_shared(const unsigned *__restrict__ words, const unsigned short *__restrict__ scales,
                    const unsigned *__restrict__ x, unsigned short *__restrict__ out, int groups,
                    const unsigned *__restrict__ pairs, int rows, int tiles, int ksplit,
                    float *partials, unsigned *sems) {
#if DECODE == 1  // the 32 KB table beside x's two buffers (9 KB at 32 rows): under the 48 KB
  TABLE_DECL;    // of static shared memory; 64 rows (18 KB) decode by byte permutes instead
#endif
  __shared__ __align__(16) unsigned xs[2][CHUNKS * 8 * XS_STRIDE];
  __shared__ int finishing;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const long long word_step = (long long)tiles * 128;
  const long long row_pairs = (long long)groups * 32;
  const long long n = (long long)tiles * 16;
#if DECODE == 1
  for (int i = threadIdx.x; i < TABLE_WORDS; i += WARPS * 32) table[i] = pairs[i >> TABLE_SHIFT];
  const unsigned *lut = table + lane;
#else
  const unsigned *lut = pairs;  // unread: byte permutes
#endif
  const int set_tiles = WARPS * TILES;
  const int sets = (tiles + set_tiles - 1) / set_tiles;
  const int per = (groups + ksplit - 1) / ksplit;

  for (int item = blockIdx.x; item < sets * ksplit; item += gridDim.x) {
    const int set = item / ksplit, slice = item - set * ksplit;
    const int q0 = slice * per, q1 = q0 + per < groups ? q0 + per : groups;
    const int tile0 = set * set_tiles + warp * TILES;  // this warp's first tile
    float acc[TILES][CHUNKS][4];
    zero_sums(acc);
    unsigned u[TILES][4];
    unsigned short sc[TILES][2];
    __syncthreads();  // the table (first item), and no warp still reads xs from the last item
    if (q0 < q1) {
      stage_group(xs[0], x, row_pairs, q0, rows);
      load_rows_group(words, scales, q0, word_step, tile0, tiles, lane, g, u, sc);
    }
    for (int q = q0; q < q1; ++q) {
      const int buf = (q - q0) & 1;
      asm volatile("cp.async.wait_group 0;");
      __syncthreads();  // group q's x is staged; the other buffer is free
      unsigned un[TILES][4];
      unsigned short scn[TILES][2];
      if (q + 1 < q1) {  // the next group's x and weights fly while this one is multiplied
        stage_group(xs[buf ^ 1], x, row_pairs, q + 1, rows);
        load_rows_group(words, scales, q + 1, word_step, tile0, tiles, lane, g, un, scn);
      }
      const unsigned *xb = xs[buf] + g * XS_STRIDE + 8 * t;  // column g of every chunk
#pragma unroll
      for (int tt = 0; tt < TILES; ++tt) {
        unsigned a[4][4];
#pragma unroll
        for (int j = 0; j < 4; ++j) decode_word(u[tt][j], lut, a[j][0], a[j][1], a[j][2], a[j][3]);
        const float s0 = half_to_float(sc[tt][0]), s1 = half_to_float(sc[tt][1]);
#pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
          const uint4 lo = *(const uint4 *)(xb + c * 8 * XS_STRIDE);
          const uint4 hi = *(const uint4 *)(xb + c * 8 * XS_STRIDE + 4);
          const unsigned b[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
          float p0 = 0.f, p1 = 0.f, p2 = 0.f, p3 = 0.f;
#pragma unroll
          for (int j = 0; j < 4; ++j)
            mma_decoded(p0, p1, p2, p3, a[j][0], a[j][1], a[j][2], a[j][3], b[2 * j], b[2 * j + 1]);
          acc[tt][c][0] += s0 * p0;
          acc[tt][c][1] += s0 * p1;
          acc[tt][c][2] += s1 * p2;
          acc[tt][c][3] += s1 * p3;
        }
      }
      if (q + 1 < q1) {
#pragma unroll
        for (int tt = 0; tt < TILES; ++tt) {
          u[tt][0] = un[tt][0]; u[tt][1] = un[tt][1]; u[tt][2] = un[tt][2]; u[tt][3] = un[tt][3];
          sc[tt][0] = scn[tt][0]; sc[tt][1] = scn[tt][1];
        }
      }
    }

    if (ksplit == 1) {  // the whole of K: rounded straight into out
      store_tiles(out, acc, tile0, tiles, rows, n, g, t);
      continue;
    }
    // This slice's sums into its partial buffer (slice, activation row, weight row), then the
    // set's last slice adds every slice's and rounds once.
    store_tiles(partials + (long long)slice * rows * n, acc, tile0, tiles, rows, n, g, t);
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) finishing = atomicAdd(sems + set, 1u) == (unsigned)(ksplit - 1);
    __syncthreads();
    if (finishing) {
      __threadfence();
      const long long first = (long long)set * set_tiles * 16;
      const long long width = (first + set_tiles * 16 < n ? set_tiles * 16 : n - first);
      for (long long i = threadIdx.x; i < rows * width; i += WARPS * 32) {
        const long long r = i / width, w = first + (i - r * width);
        float sum = 0.f;
        for (int s = 0; s < ksplit; ++s) {
          float v;
          asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v)
                       : "l"(partials + ((long long)s * rows + r) * n + w));
          sum += v;
        }
        out[r * n + w] = float_to_bf16(sum);
      }
      if (threadIdx.x == 0) sems[set] = 0u;  // for the next launch
    }
  }
}
#endif
