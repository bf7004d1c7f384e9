// MLM masking of one token sequence: special-token protection, whole-word groups, Bernoulli or exact-count
// selection, and the mask / random / keep replacement split. Plain C++ (no Python).
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"

namespace fastbert {

constexpr int64_t kIgnoreIndex = -100;  // label of unchosen positions (HF / torch CrossEntropyLoss ignore_index)

struct MaskingOptions {
  int64_t vocab_size = 0;
  int64_t mask_token_id = -1;
  std::vector<int64_t> special_ids;  // never chosen (CLS, SEP, PAD, UNK, ...); must not contain mask_token_id
  double mlm_probability = 0.15;
  double mask_prob = 0.8;    // chosen -> mask_token_id
  double random_prob = 0.1;  // chosen -> uniform id outside special_ids and mask_token_id
  double keep_prob = 0.1;    // chosen -> unchanged
  bool whole_word_mask = false;
  std::vector<uint8_t> is_continuation;  // vocab_size entries (WordPiece "##" pieces) when whole_word_mask
  bool exact_count = false;              // round(p * candidates) tokens per sequence instead of Bernoulli draws
  int64_t max_predictions_per_seq = -1;  // cap of the exact count; < 0: no cap
};

// Scratch space reused across sequences by one thread.
struct MaskWorkspace {
  std::vector<int64_t> group_start, group_len, order;
  std::vector<uint8_t> chosen;
};

// Validated masking configuration (the constructor throws std::invalid_argument naming the bad option).
//
// Algorithm for tokens t[0, n) with one Rng per sequence:
//   1. Candidates are positions whose id is neither special nor the mask id. They form groups: with whole-word
//      masking a candidate continuation piece joins the group of the candidate right before it; otherwise
//      every candidate is its own group.
//   2. Replacement of a chosen position (the draw `replace`): u = uniform(); u < mask_prob -> mask id;
//      u < mask_prob + random_prob -> the below(V - E)-th id outside the E excluded ids; else unchanged.
//      labels = original id at chosen positions, kIgnoreIndex elsewhere.
//   3a. Bernoulli (one streaming pass): for each group in order, u = uniform(), chosen when
//      u < mlm_probability; a chosen group's positions then draw `replace` in order.
//   3b. Exact count: budget = min(max(1, floor(p * C + 0.5)), max_predictions_per_seq) for C candidates
//      (0 when C == 0 or p == 0); groups are shuffled (Fisher-Yates, i = G-1..1, j = below(i + 1)) and taken
//      in shuffled order, skipping a group that would overshoot the budget (as create_pretraining_data.py);
//      then the chosen positions draw `replace` in increasing order.
class Masker {
 public:
  explicit Masker(MaskingOptions options);

  // Masks t[0, n) into out_ids[0, n) and out_labels[0, n). Returns -1, or the first position whose id is
  // outside [0, vocab_size) (the outputs are then unspecified).
  int64_t mask_sequence(const int64_t* tokens, int64_t n, Rng& rng, int64_t* out_ids, int64_t* out_labels,
                        MaskWorkspace& ws) const;

  const MaskingOptions& options() const { return options_; }
  bool is_protected(int64_t id) const { return protected_[static_cast<size_t>(id)] != 0; }

 // A uniform id outside special_ids and the mask id: the below(V - E)-th id not among the E excluded ones.
  int64_t random_id(Rng& rng) const;

 private:
  MaskingOptions options_;
  std::vector<uint8_t> protected_;    // vocab_size entries: special or mask id
  std::vector<int64_t> excluded_;     // sorted distinct protected ids, for the random-replacement mapping
};

// Masks rows of a padded [batch, row_len] array: row b holds lengths[b] real tokens, the rest is copied
// unchanged with label kIgnoreIndex. Row b uses Rng(seed, streams ? streams[b] : b). Throws
// std::invalid_argument on an id outside [0, vocab_size) among the real tokens.
void mask_padded_batch(const Masker& masker, const int64_t* input_ids, const int64_t* lengths, int64_t batch,
                       int64_t row_len, uint64_t seed, const uint64_t* streams, int num_threads, int64_t* out_ids,
                       int64_t* out_labels);

}  // namespace fastbert
