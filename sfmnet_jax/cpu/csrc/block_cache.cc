// A cache of large memory blocks, preloaded (LD_PRELOAD) into the processes
// that runtime.prepare_process() starts. Built by sfmnet_jax/block_cache.py.
//
// Why: XLA:CPU allocates each run's temporary buffer (1.3 GB for a width-16
// SFMNet train step at batch 8) with posix_memalign and frees it when the run
// ends. glibc serves blocks over 32 MiB with a fresh mmap and returns them with
// munmap, so every step faults all of that memory in again: the kernel zeroes
// it page by page, which here costs about a quarter of the step.
//
// What: aligned allocations of at least SFMNET_BLOCK_CACHE_MIN_MB (32 MiB by
// default) are carved from one reserved address range, 2 MiB aligned (and
// marked for transparent huge pages unless SFMNET_HUGEPAGES=0). A freed block
// stays resident ("warm") and serves the next request of a similar size
// without faults. Warm blocks are returned to the kernel (MADV_DONTNEED,
// oldest first) whenever the warm and live blocks together would exceed the
// most ever live at once, or the warm ones alone SFMNET_BLOCK_CACHE_KEEP_MB
// (a quarter of physical memory by default). Everything else (small blocks,
// malloc, frees of other blocks) goes to the next allocator (glibc's, or one
// preloaded after this).
// As it loads, the library removes itself from LD_PRELOAD, so that child
// processes do not inherit it.

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <initializer_list>

extern "C" {
void* __libc_memalign(size_t alignment, size_t size);
void* __libc_malloc(size_t size);
void* __libc_realloc(void* p, size_t size);
void __libc_free(void* p);
}

namespace {

// The next allocator's entry points (dlsym(RTLD_NEXT) in Init; glibc's until then).
void (*g_next_free)(void*) = __libc_free;
void* (*g_next_malloc)(size_t) = __libc_malloc;
void* (*g_next_realloc)(void*, size_t) = __libc_realloc;
void* (*g_next_memalign)(size_t, size_t) = __libc_memalign;
void* (*g_next_aligned_alloc)(size_t, size_t) = __libc_memalign;
int (*g_next_posix_memalign)(void**, size_t, size_t) = nullptr;
size_t (*g_next_usable_size)(void*) = nullptr;

template <typename Fn>
void Next(Fn* fn, const char* name) {
  if (void* sym = dlsym(RTLD_NEXT, name)) *fn = reinterpret_cast<Fn>(sym);
}

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kGrain = 2 * kMiB;  // block alignment and size unit (a huge page)
constexpr int kMaxBlocks = 512;

constexpr uintptr_t RoundUp(uintptr_t n) { return (n + kGrain - 1) / kGrain * kGrain; }

enum State { kFree, kLive, kWarm, kCold };

struct Block {
  uintptr_t addr;
  size_t capacity;  // multiple of kGrain
  size_t size;      // requested size while live
  State state;
  unsigned long stamp;  // when it became warm
};

struct Stats {
  unsigned long requests, reused, fresh, evicted, fallbacks;
};

pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
uintptr_t g_base = 0, g_span = 0, g_next = 0;  // the reserved range and its bump pointer
size_t g_min = 32 * kMiB, g_keep = ~size_t{0};
size_t g_live = 0, g_warm = 0, g_peak = 0;
unsigned long g_clock = 0;
Block g_blocks[kMaxBlocks];
int g_count = 0;
Stats g_stats = {};

size_t EnvMiB(const char* name, size_t fallback) {
  const char* v = getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const unsigned long long n = strtoull(v, &end, 10);
  return (end && *end == '\0') ? static_cast<size_t>(n) * kMiB : fallback;
}

// Removes this library's own path from the LD_PRELOAD of this process's environment.
void LeaveLdPreload() {
  Dl_info info;
  const char* preload = getenv("LD_PRELOAD");
  if (!preload || !dladdr(reinterpret_cast<void*>(&LeaveLdPreload), &info) || !info.dli_fname)
    return;
  const size_t own = strlen(info.dli_fname);
  char kept[4096];
  size_t n = 0;
  for (const char* p = preload; *p;) {
    const size_t len = strcspn(p, ": ");
    const bool self = len == own && strncmp(p, info.dli_fname, own) == 0;
    if (len > 0 && !self && n + len + 1 < sizeof(kept)) {
      if (n > 0) kept[n++] = ' ';
      memcpy(kept + n, p, len);
      n += len;
    }
    p += len;
    if (*p) ++p;
  }
  kept[n] = '\0';
  if (n == 0) unsetenv("LD_PRELOAD");
  else setenv("LD_PRELOAD", kept, 1);
}

void LockForFork() { pthread_mutex_lock(&g_lock); }
void UnlockAfterFork() { pthread_mutex_unlock(&g_lock); }

__attribute__((constructor)) void Init() {
  LeaveLdPreload();
  Next(&g_next_free, "free");
  Next(&g_next_malloc, "malloc");
  Next(&g_next_realloc, "realloc");
  Next(&g_next_memalign, "memalign");
  Next(&g_next_aligned_alloc, "aligned_alloc");
  Next(&g_next_posix_memalign, "posix_memalign");
  Next(&g_next_usable_size, "malloc_usable_size");
  if (const char* off = getenv("SFMNET_BLOCK_CACHE"); off && strcmp(off, "0") == 0) return;
  g_min = EnvMiB("SFMNET_BLOCK_CACHE_MIN_MB", g_min);
  if (g_min < kGrain) g_min = kGrain;
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  const size_t memory = (pages > 0 && page > 0) ? static_cast<size_t>(pages) * page : 0;
  // Warm blocks cost resident memory: by default at most a quarter of physical memory
  // (on a 24 GB machine both of a C=32 step's 2.75 GB temp buffers stay warm, one of C=64's).
  g_keep = EnvMiB("SFMNET_BLOCK_CACHE_KEEP_MB", memory ? memory / 4 : 0);
  // Address space only: PROT_NONE reserves no memory; blocks are made
  // accessible as they are carved. 4x physical memory, at most 1 TiB.
  size_t span = memory ? 4 * memory : 64ull << 30;
  if (span > (1ull << 40)) span = 1ull << 40;
  span = RoundUp(span);
  void* p = mmap(nullptr, span + kGrain, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) return;
  const uintptr_t base = RoundUp(reinterpret_cast<uintptr_t>(p));
  const char* huge = getenv("SFMNET_HUGEPAGES");
  if (!(huge && strcmp(huge, "0") == 0))
    madvise(reinterpret_cast<void*>(base), span, MADV_HUGEPAGE);  // best effort
  pthread_atfork(LockForFork, UnlockAfterFork, UnlockAfterFork);
  g_next = g_base = base;
  g_span = span;
}

inline bool Ours(const void* p) {
  return reinterpret_cast<uintptr_t>(p) - g_base < g_span;
}

int Find(uintptr_t addr) {
  for (int i = 0; i < g_count; ++i)
    if (g_blocks[i].addr == addr && g_blocks[i].state == kLive) return i;
  return -1;
}

void Evict(Block& b) {
  madvise(reinterpret_cast<void*>(b.addr), b.capacity, MADV_DONTNEED);
  b.state = kCold;
  g_warm -= b.capacity;
  ++g_stats.evicted;
}

// Returns oldest-first warm blocks to the kernel until warm + live + extra fits the
// budget (the most ever live, and SFMNET_BLOCK_CACHE_KEEP_MB for the warm ones).
void Trim(size_t extra) {
  for (;;) {
    const size_t needed = g_live + extra;
    const bool over_peak = g_warm + needed > (g_peak > needed ? g_peak : needed);
    if (g_warm == 0 || (!over_peak && g_warm <= g_keep)) return;
    Block* oldest = nullptr;
    for (int i = 0; i < g_count; ++i)
      if (g_blocks[i].state == kWarm && (!oldest || g_blocks[i].stamp < oldest->stamp))
        oldest = &g_blocks[i];
    if (!oldest) return;
    Evict(*oldest);
  }
}

// The block for `size` bytes (a multiple of kGrain): the best-fitting warm block
// no more than twice as large, else a cold one, else a new one; null when full.
Block* Take(size_t size) {
  Block* best = nullptr;
  for (State want : {kWarm, kCold}) {
    for (int i = 0; i < g_count; ++i) {
      Block& b = g_blocks[i];
      if (b.state == want && b.capacity >= size && b.capacity <= 2 * size &&
          (!best || b.capacity < best->capacity))
        best = &b;
    }
    if (best) break;
  }
  if (best) {
    if (best->state == kWarm) {
      g_warm -= best->capacity;
      ++g_stats.reused;
    }
    best->state = kLive;  // taken: Trim must not evict it
    Trim(best->capacity);
    return best;
  }
  if (g_next + size > g_base + g_span) return nullptr;
  Block* slot = nullptr;
  for (int i = 0; i < g_count && !slot; ++i)
    if (g_blocks[i].state == kFree) slot = &g_blocks[i];
  if (!slot) {
    if (g_count == kMaxBlocks) return nullptr;
    slot = &g_blocks[g_count++];
  }
  Trim(size);
  if (mprotect(reinterpret_cast<void*>(g_next), size, PROT_READ | PROT_WRITE) != 0) {
    slot->state = kFree;
    return nullptr;
  }
  *slot = Block{g_next, size, 0, kCold, 0};
  g_next += size;
  ++g_stats.fresh;
  return slot;
}

void* Allocate(size_t alignment, size_t size) {
  if (g_span == 0 || size < g_min || alignment > kGrain) return nullptr;
  const size_t rounded = RoundUp(size);
  pthread_mutex_lock(&g_lock);
  ++g_stats.requests;
  Block* b = Take(rounded);
  void* p = nullptr;
  if (b) {
    b->state = kLive;
    b->size = size;
    g_live += b->capacity;
    if (g_live > g_peak) g_peak = g_live;
    p = reinterpret_cast<void*>(b->addr);
  } else {
    ++g_stats.fallbacks;
  }
  pthread_mutex_unlock(&g_lock);
  return p;
}

void Release(void* p) {
  pthread_mutex_lock(&g_lock);
  const int i = Find(reinterpret_cast<uintptr_t>(p));
  if (i >= 0) {
    Block& b = g_blocks[i];
    b.state = kWarm;
    b.stamp = ++g_clock;
    g_live -= b.capacity;
    g_warm += b.capacity;
    Trim(0);
  }
  pthread_mutex_unlock(&g_lock);
  if (i < 0) {  // inside the range but no live block: a double or invalid free
    static const char kMessage[] = "sfmnet block cache: free() of a block not allocated\n";
    if (write(2, kMessage, sizeof(kMessage) - 1) < 0) {}
    abort();
  }
}

size_t LiveSize(void* p) {
  pthread_mutex_lock(&g_lock);
  const int i = Find(reinterpret_cast<uintptr_t>(p));
  const size_t size = i >= 0 ? g_blocks[i].size : 0;
  pthread_mutex_unlock(&g_lock);
  return size;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int posix_memalign(void** out, size_t alignment,
                                                          size_t size) {
  if (alignment < sizeof(void*) || (alignment & (alignment - 1)) != 0) return EINVAL;
  void* p = Allocate(alignment, size);
  if (!p && g_next_posix_memalign) return g_next_posix_memalign(out, alignment, size);
  if (!p) p = __libc_memalign(alignment, size);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}

__attribute__((visibility("default"))) void* aligned_alloc(size_t alignment, size_t size) {
  if (void* p = Allocate(alignment, size)) return p;
  return g_next_aligned_alloc(alignment, size);
}

__attribute__((visibility("default"))) void* memalign(size_t alignment, size_t size) {
  if (void* p = Allocate(alignment, size)) return p;
  return g_next_memalign(alignment, size);
}

__attribute__((visibility("default"))) void free(void* p) {
  if (Ours(p)) return Release(p);
  g_next_free(p);
}

__attribute__((visibility("default"))) void* realloc(void* p, size_t size) {
  if (!Ours(p)) return g_next_realloc(p, size);
  void* q = g_next_malloc(size);
  if (!q) return nullptr;
  const size_t old = LiveSize(p);
  memcpy(q, p, old < size ? old : size);
  Release(p);
  return q;
}

__attribute__((visibility("default"))) size_t malloc_usable_size(void* p) {
  if (Ours(p)) return LiveSize(p);
  return g_next_usable_size ? g_next_usable_size(p) : 0;
}

// C23's sized frees (glibc 2.39 and later) of our blocks; others go to free().
__attribute__((visibility("default"))) void free_sized(void* p, size_t) { free(p); }
__attribute__((visibility("default"))) void free_aligned_sized(void* p, size_t, size_t) {
  free(p);
}

// Counters for tests and benchmarks: requests, reused, fresh, evicted, fallbacks,
// then live, warm and peak bytes, and the limit on warm bytes.
__attribute__((visibility("default"))) void sfmnet_block_cache_stats(unsigned long* out) {
  pthread_mutex_lock(&g_lock);
  out[0] = g_stats.requests;
  out[1] = g_stats.reused;
  out[2] = g_stats.fresh;
  out[3] = g_stats.evicted;
  out[4] = g_stats.fallbacks;
  out[5] = g_live;
  out[6] = g_warm;
  out[7] = g_peak;
  out[8] = g_keep;
  pthread_mutex_unlock(&g_lock);
}

}  // extern "C"
