/* Path ORAM stash simulation (docs/ARCHITECTURE.md, "Stash bound").
 *
 * An in-memory tree of 2^L leaves and Z=4-slot buckets holding N blocks, with
 * the same greedy eviction as oram_store/_eviction.py on the union of the K
 * paths of each batch (K=1: classic single accesses). Every block is written
 * once (N accesses, not counted), then A accesses to uniformly random blocks;
 * the stash size after each access's eviction (what the ORAM persists) is
 * recorded and printed as a tail: P[stash >= r].
 *
 *   cc -O2 -o stash_sim tools/stash_sim.c
 *   ./stash_sim L N A [K [seed]]     e.g. ./stash_sim 14 65536 50000000
 * (with K > 1, A counts batches of K accesses)
 *
 * tests/oram/test_eviction.py checks the real eviction code agrees at smaller A.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum { Z = 4, MAX_TAIL = 4096 };
static uint64_t rs[2] = {0x9E3779B97F4A7C15ULL, 0xD1B54A32D192ED03ULL};

static uint64_t next_random(void) { /* xoroshiro128+ */
  uint64_t a = rs[0], b = rs[1], r = a + b;
  b ^= a;
  rs[0] = ((a << 55) | (a >> 9)) ^ b ^ (b << 14);
  rs[1] = (b << 36) | (b >> 28);
  return r;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s L N ACCESSES [K [SEED]]\n", argv[0]);
    return 2;
  }
  int L = atoi(argv[1]);
  long n = atol(argv[2]);
  long long accesses = atoll(argv[3]);
  int k = argc > 4 ? atoi(argv[4]) : 1;
  rs[0] ^= argc > 5 ? (uint64_t)atoll(argv[5]) : 0;
  long leaves = 1L << L, nodes_total = 2 * leaves;
  long cap = n + 1;
  uint32_t *bucket = malloc(sizeof(uint32_t) * nodes_total * Z);
  uint8_t *count = calloc(nodes_total, 1);
  uint32_t *pos = malloc(sizeof(uint32_t) * n);
  uint8_t *present = calloc(n, 1);
  uint32_t *stash = malloc(sizeof(uint32_t) * cap);
  long *head = malloc(sizeof(long) * nodes_total);
  long *next = malloc(sizeof(long) * cap);
  uint32_t *cand = malloc(sizeof(uint32_t) * cap);
  int *mark = calloc(nodes_total, sizeof(int));
  long *nodes = malloc(sizeof(long) * (L + 1) * k);
  static long long tail[MAX_TAIL];
  long ns = 0, max_stash = 0;
  for (long i = 0; i < nodes_total; i++) head[i] = -1;
  for (long i = 0; i < n; i++) pos[i] = next_random() & (leaves - 1);
  for (long long t = 0; t < n + accesses; t++) {
    int stamp = (int)(t + 1), nn = 0, width = t < n ? 1 : k;
    for (int j = 0; j < width; j++) { /* read the paths, remap the blocks */
      uint32_t b = t < n ? (uint32_t)t : (uint32_t)(next_random() % n);
      for (long node = leaves + pos[b]; node && mark[node] != stamp; node >>= 1) {
        mark[node] = stamp;
        nodes[nn++] = node;
      }
      if (!present[b]) present[b] = 1, stash[ns++] = b;
      pos[b] = next_random() & (leaves - 1);
    }
    for (int i = 0; i < nn; i++) {
      for (int j = 0; j < count[nodes[i]]; j++) stash[ns++] = bucket[nodes[i] * Z + j];
      count[nodes[i]] = 0;
    }
    for (long i = 0; i < ns; i++) { /* each block waits at its deepest node in the union */
      long node = leaves + pos[stash[i]];
      while (mark[node] != stamp) node >>= 1;
      cand[i] = stash[i];
      next[i] = head[node];
      head[node] = i;
    }
    for (int i = 1; i < nn; i++) { /* deepest first: descending heap index */
      long v = nodes[i];
      int j = i - 1;
      for (; j >= 0 && nodes[j] < v; j--) nodes[j + 1] = nodes[j];
      nodes[j + 1] = v;
    }
    ns = 0;
    for (int i = 0; i < nn; i++) { /* fill; what does not fit moves to the parent */
      long node = nodes[i], c = head[node];
      head[node] = -1;
      while (c != -1) {
        long after = next[c];
        if (count[node] < Z) bucket[node * Z + count[node]++] = cand[c];
        else if (node == 1) stash[ns++] = cand[c];
        else next[c] = head[node >> 1], head[node >> 1] = c;
        c = after;
      }
    }
    if (t >= n) {
      tail[ns < MAX_TAIL ? ns : MAX_TAIL - 1]++;
      if (ns > max_stash) max_stash = ns;
    }
  }
  printf("L=%d leaves=%ld N=%ld utilisation=%.3f K=%d steps=%lld max_stash=%ld\n", L, leaves,
         n, (double)n / (Z * (2.0 * leaves - 1)), k, accesses, max_stash);
  long long at_least = 0;
  for (long r = max_stash; r >= 0; r--) {
    at_least += tail[r];
    printf("P[stash>=%ld]=%.3e\n", r, (double)at_least / (double)accesses);
  }
  return 0;
}
