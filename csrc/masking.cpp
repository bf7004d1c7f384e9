#include "masking.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

namespace fastbert {

namespace {

bool in_unit_interval(double p) { return p >= 0.0 && p <= 1.0; }  // false for NaN

}  // namespace

Masker::Masker(MaskingOptions options) : options_(std::move(options)) {
  const MaskingOptions& o = options_;
  if (o.vocab_size < 1) throw std::invalid_argument("vocab_size must be >= 1, got " + std::to_string(o.vocab_size));
  if (o.mask_token_id < 0 || o.mask_token_id >= o.vocab_size)
    throw std::invalid_argument("mask_token_id must be in [0, vocab_size=" + std::to_string(o.vocab_size) +
                                "), got " + std::to_string(o.mask_token_id));
  if (!in_unit_interval(o.mlm_probability))
    throw std::invalid_argument("mlm_probability must be in [0, 1], got " + std::to_string(o.mlm_probability));
  if (!in_unit_interval(o.mask_prob) || !in_unit_interval(o.random_prob) || !in_unit_interval(o.keep_prob) ||
      std::fabs(o.mask_prob + o.random_prob + o.keep_prob - 1.0) > 1e-6)
    throw std::invalid_argument("split (mask, random, keep) must be three probabilities summing to 1, got (" +
                                std::to_string(o.mask_prob) + ", " + std::to_string(o.random_prob) + ", " +
                                std::to_string(o.keep_prob) + ")");
  protected_.assign(static_cast<size_t>(o.vocab_size), 0);
  for (const int64_t id : o.special_ids) {
    if (id < 0 || id >= o.vocab_size)
      throw std::invalid_argument("special_ids must be in [0, vocab_size=" + std::to_string(o.vocab_size) +
                                  "), got " + std::to_string(id));
    if (id == o.mask_token_id)
      throw std::invalid_argument("mask_token_id=" + std::to_string(id) +
                                  " is one of special_ids; the mask id must be a distinct token");
    protected_[static_cast<size_t>(id)] = 1;
  }
  protected_[static_cast<size_t>(o.mask_token_id)] = 1;
  for (int64_t id = 0; id < o.vocab_size; ++id)
    if (protected_[static_cast<size_t>(id)]) excluded_.push_back(id);
  if (static_cast<int64_t>(excluded_.size()) >= o.vocab_size)
    throw std::invalid_argument("every id in [0, vocab_size) is special: nothing can be masked or drawn");
  if (o.whole_word_mask && static_cast<int64_t>(o.is_continuation.size()) != o.vocab_size)
    throw std::invalid_argument("whole_word_mask needs continuation_table with vocab_size=" +
                                std::to_string(o.vocab_size) + " entries, got " +
                                std::to_string(o.is_continuation.size()));
}

int64_t Masker::random_id(Rng& rng) const {
  // The k-th id outside the sorted excluded set: walk past every excluded id <= the candidate.
  int64_t id = static_cast<int64_t>(rng.below(static_cast<uint64_t>(options_.vocab_size) - excluded_.size()));
  for (const int64_t e : excluded_) {
    if (e > id) break;
    ++id;
  }
  return id;
}

namespace {

// Step 2 of the algorithm for one chosen position.
void replace(const Masker& m, const MaskingOptions& o, double mask_or_random, int64_t token, Rng& rng,
                    int64_t* out_id, int64_t* out_label) {
  *out_label = token;
  const double u = rng.uniform();
  if (u < o.mask_prob) {
    *out_id = o.mask_token_id;
  } else if (u < mask_or_random) {
    *out_id = m.random_id(rng);
  }
}

}  // namespace

int64_t Masker::mask_sequence(const int64_t* tokens, int64_t n, Rng& rng, int64_t* out_ids, int64_t* out_labels,
                              MaskWorkspace& ws) const {
  const MaskingOptions& o = options_;
  const double mask_or_random = o.mask_prob + o.random_prob;
  const uint8_t* cont = o.whole_word_mask ? o.is_continuation.data() : nullptr;
  // Step 1 for a valid token: copy it unmasked with no label; true when it may be chosen (not special).
  const auto copy_unmasked = [&](int64_t t, int64_t i) {
    out_ids[i] = t;
    out_labels[i] = kIgnoreIndex;
    return !protected_[static_cast<size_t>(t)];
  };

  if (!o.exact_count) {
    // 3a. One pass: copy, validate, group, choose and replace as the tokens stream by.
    int64_t group_end = -1;  // one past the last position of the current group
    bool group_chosen = false;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = tokens[i];
      if (t < 0 || t >= o.vocab_size) return i;
      if (!copy_unmasked(t, i)) continue;
      if (!(cont && cont[t] && group_end == i)) group_chosen = rng.uniform() < o.mlm_probability;
      group_end = i + 1;
      if (group_chosen) replace(*this, o, mask_or_random, t, rng, out_ids + i, out_labels + i);
    }
    return -1;
  }

  // 3b. Exact count: validate, copy and group the candidates first.
  ws.group_start.clear();
  ws.group_len.clear();
  ws.chosen.assign(static_cast<size_t>(n), 0);
  int64_t num_candidates = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = tokens[i];
    if (t < 0 || t >= o.vocab_size) return i;
    if (!copy_unmasked(t, i)) continue;
    ++num_candidates;
    if (cont && cont[t] && !ws.group_start.empty() && ws.group_start.back() + ws.group_len.back() == i) {
      ++ws.group_len.back();
    } else {
      ws.group_start.push_back(i);
      ws.group_len.push_back(1);
    }
  }
  const size_t num_groups = ws.group_start.size();
  int64_t budget = 0;
  if (num_candidates > 0 && o.mlm_probability > 0.0) {
    budget = std::max<int64_t>(
        1, static_cast<int64_t>(std::floor(o.mlm_probability * static_cast<double>(num_candidates) + 0.5)));
    if (o.max_predictions_per_seq >= 0) budget = std::min(budget, o.max_predictions_per_seq);
  }
  ws.order.resize(num_groups);
  for (size_t g = 0; g < num_groups; ++g) ws.order[g] = static_cast<int64_t>(g);
  for (size_t i = num_groups; i > 1; --i) {
    const size_t j = static_cast<size_t>(rng.below(i));
    std::swap(ws.order[i - 1], ws.order[j]);
  }
  int64_t count = 0;
  for (size_t k = 0; k < num_groups && count < budget; ++k) {
    const size_t g = static_cast<size_t>(ws.order[k]);
    if (count + ws.group_len[g] > budget) continue;
    std::fill_n(ws.chosen.begin() + ws.group_start[g], ws.group_len[g], uint8_t{1});
    count += ws.group_len[g];
  }
  for (int64_t i = 0; i < n; ++i)
    if (ws.chosen[static_cast<size_t>(i)])
      replace(*this, o, mask_or_random, tokens[i], rng, out_ids + i, out_labels + i);
  return -1;
}

void mask_padded_batch(const Masker& masker, const int64_t* input_ids, const int64_t* lengths, int64_t batch,
                       int64_t row_len, uint64_t seed, const uint64_t* streams, int num_threads, int64_t* out_ids,
                       int64_t* out_labels) {
  std::vector<int64_t> cost(static_cast<size_t>(batch) + 1, 0);
  for (int64_t b = 0; b < batch; ++b) {
    if (lengths[b] < 0 || lengths[b] > row_len)
      throw std::invalid_argument("lengths[" + std::to_string(b) + "]=" + std::to_string(lengths[b]) +
                                  " is outside [0, " + std::to_string(row_len) + "]");
    cost[static_cast<size_t>(b) + 1] = cost[static_cast<size_t>(b)] + row_len;
  }
  const int threads = resolve_threads(num_threads, cost.back(), kMinTokensPerThread, batch);
  std::vector<int64_t> bad_pos(static_cast<size_t>(batch), -1);
  parallel_chunks(cost, threads, [&](int64_t begin, int64_t end) {
    MaskWorkspace ws;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t off = b * row_len, n = lengths[b];
      Rng rng(seed, streams ? streams[b] : static_cast<uint64_t>(b));
      bad_pos[static_cast<size_t>(b)] =
          masker.mask_sequence(input_ids + off, n, rng, out_ids + off, out_labels + off, ws);
      std::copy(input_ids + off + n, input_ids + off + row_len, out_ids + off + n);
      std::fill(out_labels + off + n, out_labels + off + row_len, kIgnoreIndex);
    }
  });
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t i = bad_pos[static_cast<size_t>(b)];
    if (i >= 0)
      throw std::invalid_argument("input_ids[" + std::to_string(b) + "][" + std::to_string(i) +
                                  "]=" + std::to_string(input_ids[b * row_len + i]) + " is outside [0, vocab_size=" +
                                  std::to_string(masker.options().vocab_size) + ")");
  }
}

}  // namespace fastbert
