/* Large freed blocks kept mapped for the next request of the same size (preloaded by ich_keras/host_memory.py).
 *
 * XLA's CPU runtime allocates a step's temporaries as one block, gigabytes for CoAtNet at 224 px, at every run,
 * and frees it at the end; its YNNPACK kernels allocate their scratch (tens of MB) at every call. glibc maps a
 * block that large afresh and unmaps it when it is freed, so the kernel faults in and zeroes every page of it
 * again at every step. Preloaded (LD_PRELOAD), this library serves each request of BLOCK_MIN bytes or more from a
 * mapping of its own and, when the block is freed, keeps the mapping for the next request of the same size: a
 * training step's blocks are faulted in once, not once a step. Everything else, and anything it cannot serve,
 * goes to glibc (its __libc_* entry points).
 *
 * What it keeps is bounded twice over, the least recently freed block going first: a block not asked for again
 * within KEEP_NS goes back to the system (at the next large request or free), and the blocks mapped, in use and
 * kept, never exceed twice the most that was ever in use at once. */
#define _GNU_SOURCE
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>

extern void *__libc_malloc(size_t size);
extern void __libc_free(void *pointer);
extern void *__libc_realloc(void *pointer, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);

/* glibc keeps a freed block in its heaps only under its mmap threshold, which never grows past 32 MB on 64-bit
 * systems: a block of 32 MB or more it maps afresh at every request, smaller ones it keeps itself. */
#define BLOCK_MIN ((size_t)32 << 20)
#define ALIGNMENT ((size_t)2 << 20)   /* a huge page: blocks start on one, for the kernel to back with huge pages */
#define SLOTS 64                      /* blocks mapped at once, in use or kept; more go to glibc */
#ifndef KEEP_NS                       /* (the tests build it with a shorter one) */
#define KEEP_NS 60000000000ULL        /* a minute: a training step's block is asked for again well within it */
#endif
/* XLA frees a step's block a moment after the step's results are ready, sometimes after the next step has asked
 * for its own: waiting that long for the block, rather than mapping a second one, keeps the peak memory. */
#define WAIT_NS 50000000L

enum state { EMPTY, IN_USE, KEPT };

static struct {
    _Atomic(void *) start;  /* the block handed out; NULL while EMPTY */
    size_t length;          /* bytes mapped, a multiple of ALIGNMENT */
    enum state state;
    uint64_t freed_at;      /* when it was last freed (CLOCK_MONOTONIC, ns) */
} slots[SLOTS];
static atomic_int slots_used;  /* free() looks at the slots only when some are used */
static size_t in_use, kept, peak_in_use;  /* bytes; with the lock held */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t freed = PTHREAD_COND_INITIALIZER;

/* A child forked while another thread holds the lock would wait for it forever: fork only between holders. */
static void lock_for_fork(void) { pthread_mutex_lock(&lock); }
static void unlock_after_fork(void) { pthread_mutex_unlock(&lock); }
__attribute__((constructor)) static void prepare_for_fork(void) {
    pthread_atfork(lock_for_fork, unlock_after_fork, unlock_after_fork);
}

/* Whether the environment variable `name` is "auto", read as ich_keras/host_memory.py reads it: spaces and case
 * aside, unset or empty is "auto". */
static int setting_is_auto(const char *name) {
    const char *setting = getenv(name);
    if (setting == NULL) return 1;
    while (isspace((unsigned char)*setting)) setting++;
    size_t length = strlen(setting);
    while (length > 0 && isspace((unsigned char)setting[length - 1])) length--;
    return length == 0 || (length == 4 && strncasecmp(setting, "auto", 4) == 0);
}

/* ICH_KERAS_BLOCK_CACHE other than "auto": every request goes to glibc, even where a shell's LD_PRELOAD (from
 * `eval "$(python -m ich_keras.host_memory)"`) still loads this library. ICH_KERAS_HUGE_PAGES other than "auto":
 * blocks are mapped without asking for huge pages. Fresh huge pages cost a first step more than its 4 KB pages
 * do; later steps run a little faster on them. */
static int enabled = 1, huge_pages = 1;
__attribute__((constructor)) static void read_settings(void) {
    enabled = setting_is_auto("ICH_KERAS_BLOCK_CACHE");
    huge_pages = setting_is_auto("ICH_KERAS_HUGE_PAGES");
}

static void *map_aligned(size_t length) {
    /* Map one ALIGNMENT more than needed and unmap the ends, so the block starts on a huge-page boundary. */
    char *mapped = mmap(NULL, length + ALIGNMENT, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapped == MAP_FAILED) return NULL;
    char *start = (char *)(((uintptr_t)mapped + ALIGNMENT - 1) & ~(uintptr_t)(ALIGNMENT - 1));
    if (start > mapped) munmap(mapped, start - mapped);
    munmap(start + length, mapped + ALIGNMENT - start);
    if (huge_pages) madvise(start, length, MADV_HUGEPAGE);
    return start;
}

/* The slot of the least recently freed kept block, or -1; with the lock held. */
static int oldest_kept(void) {
    int oldest = -1;
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].state == KEPT && (oldest < 0 || slots[i].freed_at < slots[oldest].freed_at)) oldest = i;
    return oldest;
}

static void unmap_slot(int i) {  /* a kept block; with the lock held */
    munmap(atomic_load(&slots[i].start), slots[i].length);
    atomic_store(&slots[i].start, NULL);
    slots[i].state = EMPTY;
    kept -= slots[i].length;
    atomic_fetch_sub(&slots_used, 1);
}

static uint64_t now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec;
}

/* Unmaps kept blocks, least recently freed first, while one was freed over KEEP_NS ago or the blocks mapped
 * exceed twice the peak in use; with the lock held. */
static void trim(void) {
    uint64_t now = now_ns();
    for (int oldest; (oldest = oldest_kept()) >= 0;) {
        if (now - slots[oldest].freed_at <= KEEP_NS && in_use + kept <= 2 * peak_in_use) return;
        unmap_slot(oldest);
    }
}

static void *hand_out(int i) {  /* with the lock held */
    slots[i].state = IN_USE;
    in_use += slots[i].length;
    if (in_use > peak_in_use) peak_in_use = in_use;
    trim();
    return atomic_load(&slots[i].start);
}

/* A block of `size` bytes or more: a kept one of the same length, else a new mapping; NULL when neither. */
static void *take(size_t size) {
    if (size > PTRDIFF_MAX - ALIGNMENT) return NULL;  /* glibc refuses it, and rounding up would wrap around */
    size_t length = (size + ALIGNMENT - 1) & ~(ALIGNMENT - 1);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_nsec += WAIT_NS;
    if (deadline.tv_nsec >= 1000000000L) deadline.tv_sec++, deadline.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&lock);
    for (;;) {
        int in_use_alike = 0;
        for (int i = 0; i < SLOTS; i++) {
            if (slots[i].length != length || slots[i].state == EMPTY) continue;
            if (slots[i].state == KEPT) {
                kept -= length;
                void *start = hand_out(i);
                pthread_mutex_unlock(&lock);
                return start;
            }
            in_use_alike = 1;
        }
        if (!in_use_alike || pthread_cond_timedwait(&freed, &lock, &deadline) != 0) break;
    }
    int empty = -1;
    for (int i = SLOTS - 1; i >= 0; i--)
        if (slots[i].state == EMPTY) empty = i;
    if (empty < 0 && (empty = oldest_kept()) >= 0) unmap_slot(empty);
    void *start = empty >= 0 ? map_aligned(length) : NULL;
    if (start) {
        slots[empty].length = length;
        atomic_store(&slots[empty].start, start);
        atomic_fetch_add(&slots_used, 1);
        hand_out(empty);
    }
    pthread_mutex_unlock(&lock);
    return start;
}

/* The slot of a block this library handed out, or -1 (anything of glibc's). */
static int slot_of(const void *pointer) {
    if (pointer == NULL || atomic_load_explicit(&slots_used, memory_order_relaxed) == 0) return -1;
    for (int i = 0; i < SLOTS; i++)
        if (atomic_load_explicit(&slots[i].start, memory_order_acquire) == pointer) return i;
    return -1;
}

static void keep(int i) {
    pthread_mutex_lock(&lock);
    slots[i].state = KEPT;
    slots[i].freed_at = now_ns();
    in_use -= slots[i].length;
    kept += slots[i].length;
    trim();
    pthread_cond_broadcast(&freed);
    pthread_mutex_unlock(&lock);
}

void *malloc(size_t size) {
    void *block = enabled && size >= BLOCK_MIN ? take(size) : NULL;
    return block ? block : __libc_malloc(size);
}

void free(void *pointer) {
    int i = slot_of(pointer);
    if (i >= 0) keep(i);
    else __libc_free(pointer);
}

void *memalign(size_t alignment, size_t size) {
    void *block = enabled && size >= BLOCK_MIN && alignment <= ALIGNMENT ? take(size) : NULL;
    return block ? block : __libc_memalign(alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) { return memalign(alignment, size); }

int posix_memalign(void **out, size_t alignment, size_t size) {
    if (alignment % sizeof(void *) != 0 || (alignment & (alignment - 1)) != 0) return EINVAL;
    void *block = memalign(alignment, size);
    if (block == NULL && size != 0) return ENOMEM;
    *out = block;
    return 0;
}

void *realloc(void *pointer, size_t size) {
    int i = slot_of(pointer);
    if (i < 0) return __libc_realloc(pointer, size);
    /* A size within the block's length stays where it is (take() would wait for this very block to be freed). */
    if (size != 0 && ((size + ALIGNMENT - 1) & ~(ALIGNMENT - 1)) == slots[i].length) return pointer;
    void *moved = malloc(size);
    if (moved != NULL) {
        memcpy(moved, pointer, size < slots[i].length ? size : slots[i].length);
        keep(i);
    }
    return moved;
}

void *reallocarray(void *pointer, size_t count, size_t size) {  /* glibc's own would call its realloc */
    size_t bytes;
    if (__builtin_mul_overflow(count, size, &bytes)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(pointer, bytes);
}

/* C23's sized frees (glibc 2.40 on) would otherwise hand a block of this library's to glibc. */
void free_sized(void *pointer, size_t size) { (void)size, free(pointer); }
void free_aligned_sized(void *pointer, size_t alignment, size_t size) { (void)alignment, (void)size, free(pointer); }

size_t malloc_usable_size(void *pointer) {
    static size_t (*glibc_usable_size)(void *);
    int i = slot_of(pointer);
    if (i >= 0) return slots[i].length;
    if (glibc_usable_size == NULL) glibc_usable_size = (size_t (*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
    return glibc_usable_size(pointer);
}
