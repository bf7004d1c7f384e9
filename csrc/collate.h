// Batch collation: dynamic padding (or the padding-free packed layout) fused with MLM masking, in one pass over
// the token buffers. Plain C++ (no Python).
#pragma once

#include <cstdint>
#include <vector>

#include "masking.h"

namespace fastbert {

// One example: `len` token ids and, optionally, as many token type ids (nullptr: all 0).
struct SeqView {
  const int64_t* ids = nullptr;
  const int64_t* types = nullptr;
  int64_t len = 0;
};

// Where each row goes. Padded: row b occupies [b * row_len, (b + 1) * row_len) of the [batch, row_len] outputs,
// row_len = max length rounded up to pad_to_multiple_of. Packed: row b occupies [offsets[b], offsets[b + 1]) of
// the 1-D outputs (offsets = cu_seqlens), no padding at all.
struct CollatePlan {
  bool packed = false;
  int64_t batch = 0;
  int64_t row_len = 0;     // padded only
  int64_t max_seqlen = 0;  // longest example
  int64_t total_tokens = 0;  // real tokens
  std::vector<int64_t> offsets;  // batch + 1 entries, start of each row in the flat output
};

CollatePlan plan_collate(const std::vector<SeqView>& seqs, bool packed, int64_t pad_to_multiple_of);

// Output buffers, sized by the plan (padded: batch * row_len; packed: total_tokens). Pointers that do not
// apply to the layout (attention_mask when packed, position_ids when padded) or are not wanted (labels
// without masking) are nullptr.
struct CollateBuffers {
  int64_t* input_ids = nullptr;
  int64_t* token_type_ids = nullptr;
  int64_t* labels = nullptr;
  int64_t* attention_mask = nullptr;
  int64_t* position_ids = nullptr;
};

// Fills the buffers. With a masker, row b is masked with Rng(seed, streams ? streams[b] : b), so the
// masks are the same in both layouts and for any thread count; labels are kIgnoreIndex at unchosen
// positions and padding. Throws std::invalid_argument on a negative id, an id >= vocab_size (with a masker)
// or a negative token type.
void collate_batch(const std::vector<SeqView>& seqs, const CollatePlan& plan, int64_t pad_token_id,
                   const Masker* masker, uint64_t seed, const uint64_t* streams, int num_threads,
                   const CollateBuffers& out);

}  // namespace fastbert
