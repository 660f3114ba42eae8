// Output buffers of the cpu kernels, from a cache of freed ones: the allocator of every output the
// cpu backend returns.
//
// A tensor of tens of MB from the default CPU allocator is often fresh memory (glibc maps it, or
// hands freed heap tops back to the OS), so every page of it is faulted in and zeroed when a kernel
// first writes it. On the project's 2-core VM that first touch costs 0.64 ms of CPU time per MB,
// even in 2 MiB pages (the host backs guest memory on demand), against 0.03 ms to rewrite mapped
// memory: the 100 MB of outputs of a forward+backward at issue 13's headline shape (15 ms of
// kernel) took up to 30 ms more on the calls where they were fresh. CUDA's caching allocator
// exists for the same reason.
//
// Buffers of kMinBytes or more are rounded up to whole 2 MiB pages, 2 MiB-aligned, and asked for as
// transparent huge pages. A freed one goes back to the cache, for the next output of the same
// rounded size; past STQUERY_CPU_OUTPUT_CACHE_MB (default 1024) the cache frees its oldest buffers.
// Smaller buffers, and every buffer when the limit is 0, come from ATen's CPU allocator.
// empty_cache() frees what the cache holds.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>
#include <unordered_map>

#ifdef __linux__
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace stquery::cpu {

class OutputCache final : public c10::Allocator {
 public:
  static constexpr size_t kPage = size_t(1) << 21;  // 2 MiB
  static constexpr size_t kMinBytes = size_t(1) << 20;
  static constexpr size_t kDefaultLimitMiB = 1024;

  static OutputCache& get() {
    static OutputCache* cache = new OutputCache();  // never destroyed: tensors may outlive static destructors
    return *cache;
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes || limit_ == 0) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kPage - 1) / kPage * kPage;
    void* p = take(bytes);
    if (!p) {
      p = std::aligned_alloc(kPage, bytes);
      TORCH_CHECK(p, "stquery cpu: can't allocate ", bytes, " bytes for an output");
#ifdef __linux__
      madvise(p, bytes, MADV_HUGEPAGE);  // a hint; no effect where huge pages are off
#endif
      std::lock_guard<std::mutex> lock(mutex_);
      sizes_[p] = bytes;
    }
    return {p, p, &release, c10::Device(c10::kCPU)};  // context = data: a "simple" DataPtr
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Frees every cached buffer (those still in use come back to the cache when freed).
  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    while (!free_.empty()) drop_oldest();
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

 private:
  struct Block {
    void* p;
    size_t bytes;
  };

  OutputCache() : limit_(limit_from_env() << 20) {
#ifdef __linux__
    // fork() while another thread holds the lock would leave it held in the child forever
    pthread_atfork([] { get().mutex_.lock(); }, [] { get().mutex_.unlock(); }, [] { get().mutex_.unlock(); });
#endif
  }

  // STQUERY_CPU_OUTPUT_CACHE_MB: a whole number of MiB; anything else warns and keeps the default.
  static size_t limit_from_env() {
    const char* text = std::getenv("STQUERY_CPU_OUTPUT_CACHE_MB");
    if (!text || !*text) return kDefaultLimitMiB;
    errno = 0;
    char* end = nullptr;
    const unsigned long long mib = std::strtoull(text, &end, 10);
    if (*text == '-' || *end || errno || mib > (SIZE_MAX >> 20)) {
      TORCH_WARN("STQUERY_CPU_OUTPUT_CACHE_MB: expected a whole number of MiB, got '", text, "'; using ",
                 kDefaultLimitMiB);
      return kDefaultLimitMiB;
    }
    return static_cast<size_t>(mib);
  }

  void* take(size_t bytes) {  // the most recently freed buffer of this size, or null
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = free_.rbegin(); it != free_.rend(); ++it) {
      if (it->bytes == bytes) {
        void* p = it->p;
        free_.erase(std::next(it).base());
        cached_ -= bytes;
        return p;
      }
    }
    return nullptr;
  }

  static void release(void* p) {
    OutputCache& cache = get();
    std::lock_guard<std::mutex> lock(cache.mutex_);
    const size_t bytes = cache.sizes_.at(p);
    cache.free_.push_back({p, bytes});
    cache.cached_ += bytes;
    while (cache.cached_ > cache.limit_) cache.drop_oldest();
  }

  void drop_oldest() {  // with mutex_ held
    const Block block = free_.front();
    free_.pop_front();
    cached_ -= block.bytes;
    sizes_.erase(block.p);
    std::free(block.p);
  }

  std::mutex mutex_;
  std::deque<Block> free_;                   // cached buffers, oldest first
  std::unordered_map<void*, size_t> sizes_;  // every buffer this cache made and has not freed
  size_t cached_ = 0;
  const size_t limit_;
};

// An uninitialised contiguous CPU tensor whose buffer comes from OutputCache.
inline at::Tensor cached_empty(at::IntArrayRef shape, at::ScalarType dtype) {
  return at::detail::empty_generic(shape, &OutputCache::get(), c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                   std::nullopt);
}

}  // namespace stquery::cpu
