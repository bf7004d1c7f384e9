// Shared pieces of the data pipeline: the counter-based RNG and the thread helper.
//
// Plain C++17 (no Python), so the C++ test driver links the algorithms without pybind11.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace fastbert {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;  // 2^64 / golden ratio, the SplitMix64 increment

// SplitMix64 finaliser (Steele, Lea & Flood 2014): a bijective 64-bit mixer.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Key of an independent stream: derive_seed(seed, v) = mix64(seed ^ mix64(v + kGolden)).
// Used for (seed, sample index), (seed, epoch), (seed, document index).
inline uint64_t derive_seed(uint64_t seed, uint64_t value) { return mix64(seed ^ mix64(value + kGolden)); }

// One random stream per sample: SplitMix64 started at derive_seed(seed, stream).
// Every derivation below uses exact integer arithmetic or exact float conversions, so the Python reference
// (fastbert/data/reference.py) reproduces the draws bit for bit; std::*_distribution is avoided on purpose
// (its algorithms are implementation-defined).
class Rng {
 public:
  Rng(uint64_t seed, uint64_t stream) : state_(derive_seed(seed, stream)) {}

  uint64_t next() {
    state_ += kGolden;
    return mix64(state_);
  }

  // Uniform double in [0, 1): the top 53 bits times 2^-53 (exact in binary64).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  // Uniform integer in [0, n), n >= 1, unbiased by rejection: draws below 2^64 mod n are rejected, the rest
  // taken modulo n.
  uint64_t below(uint64_t n) {
    const uint64_t threshold = (0 - n) % n;  // == 2^64 mod n
    for (;;) {
      const uint64_t x = next();
      if (x >= threshold) return x % n;
    }
  }

  // Uniform integer in [lo, hi], lo <= hi.
  int64_t randint(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(below(static_cast<uint64_t>(hi - lo) + 1));
  }

 private:
  uint64_t state_;
};

// Masking / collation work below which another thread costs more than it saves (~100 us of work per thread;
// spawning and joining a std::thread costs tens of microseconds).
constexpr int64_t kMinTokensPerThread = 32768;

// Number of threads to use: `requested` <= 0 means all hardware threads; never more than one thread per
// `min_work_per_thread` units of work, nor more than `num_items`.
inline int resolve_threads(int requested, int64_t total_work, int64_t min_work_per_thread, int64_t num_items) {
  int64_t n = requested > 0 ? requested : static_cast<int64_t>(std::thread::hardware_concurrency());
  n = std::max<int64_t>(n, 1);
  n = std::min<int64_t>(n, std::max<int64_t>(1, total_work / std::max<int64_t>(min_work_per_thread, 1)));
  n = std::min<int64_t>(n, std::max<int64_t>(num_items, 1));
  return static_cast<int>(n);
}

// Runs fn(begin, end) over contiguous item ranges, balanced on cost: `cost_prefix` has num_items + 1 entries,
// cost_prefix[i] = total cost of items [0, i). With one thread fn runs inline. Exceptions thrown by fn are
// rethrown (the first one) after all threads joined.
template <class Fn>
void parallel_chunks(const std::vector<int64_t>& cost_prefix, int num_threads, Fn&& fn) {
  const int64_t n = static_cast<int64_t>(cost_prefix.size()) - 1;
  if (n <= 0) return;
  if (num_threads <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::vector<int64_t> bounds(static_cast<size_t>(num_threads) + 1, n);
  bounds[0] = 0;
  const int64_t total = cost_prefix.back();
  for (int t = 1; t < num_threads; ++t) {
    const int64_t target = total / num_threads * t + (total % num_threads) * t / num_threads;
    const auto it = std::lower_bound(cost_prefix.begin(), cost_prefix.end(), target);
    bounds[static_cast<size_t>(t)] = std::max(bounds[static_cast<size_t>(t) - 1],
                                              static_cast<int64_t>(it - cost_prefix.begin()));
  }
  std::vector<std::exception_ptr> errors(static_cast<size_t>(num_threads));
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(num_threads) - 1);
  auto run = [&](int t) {
    try {
      const int64_t b = bounds[static_cast<size_t>(t)], e = std::min(bounds[static_cast<size_t>(t) + 1], n);
      if (b < e) fn(b, e);
    } catch (...) {
      errors[static_cast<size_t>(t)] = std::current_exception();
    }
  };
  for (int t = 1; t < num_threads; ++t) threads.emplace_back(run, t);
  run(0);
  for (auto& th : threads) th.join();
  for (auto& err : errors)
    if (err) std::rethrow_exception(err);
}

}  // namespace fastbert
