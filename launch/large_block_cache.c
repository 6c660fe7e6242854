// A diagnostic LD_PRELOAD shim: keeps freed memory blocks of at least LARGE_BLOCK_MIB (default 64) MiB for reuse
// instead of returning them to the kernel.
//
// Why: XLA:CPU allocates each execution's temporaries as one large block and frees it when the execution ends.
// glibc serves a block that large, requested from a worker thread, by a fresh mmap and frees it by munmap, so the
// kernel maps and zeroes it again on every step (README, "Benchmarks"). A caching allocator (jemalloc, tcmalloc)
// keeps such blocks; this file does only that, to measure what the per-step mmap costs:
//
//   bash launch/large_block_cache.sh ladd-jax bench ladd --steps 7 --no-torch-compile
//
// Blocks are mmapped on 2 MiB boundaries, so a pointer that is not 2 MiB-aligned is glibc's and passes through at
// the price of one AND. Not thread-safe against a concurrent free of the same block (no allocator is).
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

extern void *__libc_malloc(size_t);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

#define ALIGN ((size_t)2 << 20)
#define SLOTS 64

static struct {
  void *ptr;
  size_t size;
  int used;
} slots[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static size_t threshold;

static size_t large_threshold(void) {
  if (!threshold) {
    const char *mib = getenv("LARGE_BLOCK_MIB");
    threshold = (size_t)(mib ? atol(mib) : 64) << 20;
  }
  return threshold;
}

// A cached block of at least `size` bytes (the smallest that fits), or a new one; NULL when mmap fails.
static void *take(size_t size) {
  void *out = NULL;
  int best = -1;
  pthread_mutex_lock(&lock);
  for (int i = 0; i < SLOTS; i++)
    if (slots[i].ptr && !slots[i].used && slots[i].size >= size && (best < 0 || slots[i].size < slots[best].size))
      best = i;
  if (best >= 0) {
    slots[best].used = 1;
    out = slots[best].ptr;
  }
  pthread_mutex_unlock(&lock);
  if (out) return out;
  size_t bytes = (size + ALIGN - 1) & ~(ALIGN - 1);
  void *raw = mmap(NULL, bytes + ALIGN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return NULL;
  uintptr_t start = ((uintptr_t)raw + ALIGN - 1) & ~(ALIGN - 1);  // trim to a 2 MiB-aligned block
  if (start > (uintptr_t)raw) munmap(raw, start - (uintptr_t)raw);
  uintptr_t end = (uintptr_t)raw + bytes + ALIGN;
  if (end > start + bytes) munmap((void *)(start + bytes), end - (start + bytes));
  pthread_mutex_lock(&lock);
  for (int i = 0; i < SLOTS; i++)
    if (!slots[i].ptr) {
      slots[i].ptr = (void *)start, slots[i].size = bytes, slots[i].used = 1;
      pthread_mutex_unlock(&lock);
      return (void *)start;
    }
  pthread_mutex_unlock(&lock);
  munmap((void *)start, bytes);  // every slot taken: not cached
  return NULL;
}

// The size of our block at `ptr` (marked free when `release`), or 0 when `ptr` is not ours.
static size_t ours(void *ptr, int release) {
  size_t size = 0;
  if (!ptr || ((uintptr_t)ptr & (ALIGN - 1))) return 0;
  pthread_mutex_lock(&lock);
  for (int i = 0; i < SLOTS; i++)
    if (slots[i].ptr == ptr) {
      size = slots[i].size;
      if (release) slots[i].used = 0;
      break;
    }
  pthread_mutex_unlock(&lock);
  return size;
}

static void *large(size_t size, size_t alignment) {
  return size >= large_threshold() && alignment <= ALIGN ? take(size) : NULL;
}

void *malloc(size_t size) {
  void *p = large(size, 16);
  return p ? p : __libc_malloc(size);
}

void *memalign(size_t alignment, size_t size) {
  void *p = large(size, alignment);
  return p ? p : __libc_memalign(alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) { return memalign(alignment, size); }

int posix_memalign(void **out, size_t alignment, size_t size) {
  void *p = memalign(alignment, size);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}

void free(void *ptr) {
  if (!ours(ptr, 1)) __libc_free(ptr);
}

void *realloc(void *ptr, size_t size) {
  size_t old = ours(ptr, 0);
  if (!old) return __libc_realloc(ptr, size);
  if (size <= old) return ptr;
  void *p = malloc(size);
  if (p) memcpy(p, ptr, old), ours(ptr, 1);
  return p;
}
