#include "collate.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace fastbert {

namespace {

// First problem found in one row, reported after the threads joined.
struct RowError {
  int64_t pos = -1;
  bool type_error = false;
};

}  // namespace

CollatePlan plan_collate(const std::vector<SeqView>& seqs, bool packed, int64_t pad_to_multiple_of) {
  if (pad_to_multiple_of < 0)
    throw std::invalid_argument("pad_to_multiple_of must be >= 0 (0: none), got " +
                                std::to_string(pad_to_multiple_of));
  CollatePlan plan;
  plan.packed = packed;
  plan.batch = static_cast<int64_t>(seqs.size());
  plan.offsets.assign(seqs.size() + 1, 0);
  for (size_t b = 0; b < seqs.size(); ++b) {
    const int64_t n = seqs[b].len;
    if (n < 0) throw std::invalid_argument("sequence " + std::to_string(b) + " has negative length");
    plan.max_seqlen = std::max(plan.max_seqlen, n);
    plan.total_tokens += n;
  }
  if (packed) {
    for (size_t b = 0; b < seqs.size(); ++b) plan.offsets[b + 1] = plan.offsets[b] + seqs[b].len;
  } else {
    plan.row_len = plan.max_seqlen;
    if (pad_to_multiple_of > 1)
      plan.row_len = (plan.row_len + pad_to_multiple_of - 1) / pad_to_multiple_of * pad_to_multiple_of;
    for (size_t b = 0; b < seqs.size(); ++b) plan.offsets[b + 1] = plan.offsets[b] + plan.row_len;
  }
  return plan;
}

void collate_batch(const std::vector<SeqView>& seqs, const CollatePlan& plan, int64_t pad_token_id,
                   const Masker* masker, uint64_t seed, const uint64_t* streams, int num_threads,
                   const CollateBuffers& out) {
  const int64_t batch = plan.batch;
  const int threads = resolve_threads(num_threads, plan.offsets.back(), kMinTokensPerThread, batch);
  std::vector<RowError> errors(static_cast<size_t>(batch));

  parallel_chunks(plan.offsets, threads, [&](int64_t begin, int64_t end) {
    MaskWorkspace ws;
    for (int64_t b = begin; b < end; ++b) {
      const SeqView& s = seqs[static_cast<size_t>(b)];
      const int64_t off = plan.offsets[static_cast<size_t>(b)];
      const int64_t cap = plan.offsets[static_cast<size_t>(b) + 1] - off;  // == s.len when packed
      RowError& err = errors[static_cast<size_t>(b)];

      if (masker) {
        Rng rng(seed, streams ? streams[b] : static_cast<uint64_t>(b));
        err.pos = masker->mask_sequence(s.ids, s.len, rng, out.input_ids + off, out.labels + off, ws);
        if (err.pos >= 0) continue;
      } else {
        for (int64_t i = 0; i < s.len; ++i) {
          if (s.ids[i] < 0) {
            err.pos = i;
            break;
          }
        }
        if (err.pos >= 0) continue;
        std::copy(s.ids, s.ids + s.len, out.input_ids + off);
        if (out.labels) std::fill(out.labels + off, out.labels + off + s.len, kIgnoreIndex);
      }
      if (s.types) {
        for (int64_t i = 0; i < s.len; ++i) {
          if (s.types[i] < 0) {
            err.pos = i;
            err.type_error = true;
            break;
          }
          out.token_type_ids[off + i] = s.types[i];
        }
        if (err.pos >= 0) continue;
      } else {
        std::fill(out.token_type_ids + off, out.token_type_ids + off + s.len, int64_t{0});
      }
      if (out.position_ids)
        for (int64_t i = 0; i < s.len; ++i) out.position_ids[off + i] = i;
      if (out.attention_mask) {
        std::fill(out.attention_mask + off, out.attention_mask + off + s.len, int64_t{1});
        std::fill(out.attention_mask + off + s.len, out.attention_mask + off + cap, int64_t{0});
      }
      // Padding (padded layout only; cap == len when packed).
      std::fill(out.input_ids + off + s.len, out.input_ids + off + cap, pad_token_id);
      std::fill(out.token_type_ids + off + s.len, out.token_type_ids + off + cap, int64_t{0});
      if (out.labels) std::fill(out.labels + off + s.len, out.labels + off + cap, kIgnoreIndex);
    }
  });

  for (int64_t b = 0; b < batch; ++b) {
    const RowError& err = errors[static_cast<size_t>(b)];
    if (err.pos < 0) continue;
    const std::string where = "[" + std::to_string(b) + "][" + std::to_string(err.pos) + "]=";
    if (err.type_error)
      throw std::invalid_argument("token_type_ids" + where +
                                  std::to_string(seqs[static_cast<size_t>(b)].types[err.pos]) + " is negative");
    const int64_t id = seqs[static_cast<size_t>(b)].ids[err.pos];
    const std::string why =
        masker ? " is outside [0, vocab_size=" + std::to_string(masker->options().vocab_size) + ")" : " is negative";
    throw std::invalid_argument("input_ids" + where + std::to_string(id) + why);
  }
}

}  // namespace fastbert
