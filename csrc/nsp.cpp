#include "nsp.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>
#include <utility>

namespace fastbert {

namespace {

constexpr int64_t kMinNspTokensPerThread = 16384;  // pair building does more work per token than masking

void check_offsets(const int64_t* offsets, int64_t count, int64_t end, const char* name, const char* item) {
  if (count < 1) throw std::invalid_argument(std::string(name) + " must have at least 2 entries");
  if (offsets[0] != 0) throw std::invalid_argument(std::string(name) + "[0] must be 0");
  for (int64_t i = 0; i < count; ++i) {
    if (offsets[i + 1] <= offsets[i])
      throw std::invalid_argument(std::string(name) + " must be strictly increasing: " + item + " " +
                                  std::to_string(i) + " is empty");
  }
  if (offsets[count] != end)
    throw std::invalid_argument(std::string(name) + "[-1]=" + std::to_string(offsets[count]) + " must equal " +
                                std::to_string(end));
}

// Half-open token range [begin, end) of a growing segment; truncation moves the ends.
struct Segment {
  std::vector<int64_t> tokens;
  size_t begin = 0;
  size_t size() const { return tokens.size() - begin; }
};

void append_sentence(const Corpus& c, int64_t s, std::vector<int64_t>& dst) {
  dst.insert(dst.end(), c.tokens + c.sentence_offsets[s], c.tokens + c.sentence_offsets[s + 1]);
}

int64_t sentence_len(const Corpus& c, int64_t s) { return c.sentence_offsets[s + 1] - c.sentence_offsets[s]; }

}  // namespace

void validate_nsp(const Corpus& corpus, const NspOptions& o) {
  if (o.max_seq_len < 5)
    throw std::invalid_argument("max_seq_len must be >= 5 ([CLS] A [SEP] B [SEP] with non-empty A and B), got " +
                                std::to_string(o.max_seq_len));
  if (!(o.short_seq_prob >= 0.0 && o.short_seq_prob <= 1.0))
    throw std::invalid_argument("short_seq_prob must be in [0, 1], got " + std::to_string(o.short_seq_prob));
  if (!(o.random_next_prob >= 0.0 && o.random_next_prob <= 1.0))
    throw std::invalid_argument("random_next_prob must be in [0, 1], got " + std::to_string(o.random_next_prob));
  if (o.cls_token_id < 0 || o.sep_token_id < 0)
    throw std::invalid_argument("cls_token_id and sep_token_id must be >= 0");
  if (corpus.num_documents < 2)
    throw std::invalid_argument("NSP needs at least 2 documents (NotNext segments come from another document), got " +
                                std::to_string(corpus.num_documents));
  check_offsets(corpus.sentence_offsets, corpus.num_sentences, corpus.num_tokens, "sentence_offsets", "sentence");
  check_offsets(corpus.document_offsets, corpus.num_documents, corpus.num_sentences, "document_offsets",
                "document");
  for (int64_t i = 0; i < corpus.num_tokens; ++i)
    if (corpus.tokens[i] < 0)
      throw std::invalid_argument("tokens[" + std::to_string(i) + "]=" + std::to_string(corpus.tokens[i]) +
                                  " is negative");
}

void build_document_pairs(const Corpus& c, const NspOptions& o, int64_t doc, uint64_t seed, NspPairs& out) {
  Rng rng(seed, static_cast<uint64_t>(doc));
  const int64_t max_num_tokens = o.max_seq_len - 3;
  int64_t target = max_num_tokens;
  if (rng.uniform() < o.short_seq_prob) target = rng.randint(2, max_num_tokens);

  const int64_t first = c.document_offsets[doc], end = c.document_offsets[doc + 1];
  Segment a, b;
  int64_t chunk_begin = first, chunk_len = 0;  // the chunk is sentences [chunk_begin, i]
  for (int64_t i = first; i < end; ++i) {
    chunk_len += sentence_len(c, i);
    if (i != end - 1 && chunk_len < target) continue;
    const int64_t chunk_size = i - chunk_begin + 1;
    const int64_t a_end = chunk_size >= 2 ? rng.randint(1, chunk_size - 1) : 1;
    a.tokens.clear();
    a.begin = 0;
    b.tokens.clear();
    b.begin = 0;
    for (int64_t s = chunk_begin; s < chunk_begin + a_end; ++s) append_sentence(c, s, a.tokens);

    bool not_next = rng.uniform() < o.random_next_prob;
    if (!not_next && chunk_size == 1) {
      if (a.tokens.size() >= 2) {
        const int64_t split = rng.randint(1, static_cast<int64_t>(a.tokens.size()) - 1);
        b.tokens.assign(a.tokens.begin() + split, a.tokens.end());
        a.tokens.resize(static_cast<size_t>(split));
      } else {
        not_next = true;
      }
    } else if (!not_next) {
      for (int64_t s = chunk_begin + a_end; s <= i; ++s) append_sentence(c, s, b.tokens);
    }
    if (not_next) {
      const int64_t target_b = target - static_cast<int64_t>(a.tokens.size());
      int64_t r = rng.randint(0, c.num_documents - 2);
      if (r >= doc) ++r;
      const int64_t r_first = c.document_offsets[r], r_end = c.document_offsets[r + 1];
      const int64_t start = r_first + rng.randint(0, r_end - r_first - 1);
      for (int64_t s = start; s < r_end; ++s) {
        append_sentence(c, s, b.tokens);
        if (static_cast<int64_t>(b.tokens.size()) >= target_b) break;
      }
      i -= chunk_size - a_end;  // the unused chunk sentences start the next chunk
    }

    while (static_cast<int64_t>(a.size() + b.size()) > max_num_tokens) {
      Segment& t = a.size() > b.size() ? a : b;
      if (rng.uniform() < 0.5) {
        ++t.begin;
      } else {
        t.tokens.pop_back();
      }
    }

    out.input_ids.push_back(o.cls_token_id);
    out.input_ids.insert(out.input_ids.end(), a.tokens.begin() + static_cast<std::ptrdiff_t>(a.begin), a.tokens.end());
    out.input_ids.push_back(o.sep_token_id);
    out.token_type_ids.insert(out.token_type_ids.end(), a.size() + 2, 0);
    out.input_ids.insert(out.input_ids.end(), b.tokens.begin() + static_cast<std::ptrdiff_t>(b.begin), b.tokens.end());
    out.input_ids.push_back(o.sep_token_id);
    out.token_type_ids.insert(out.token_type_ids.end(), b.size() + 1, 1);
    out.offsets.push_back(static_cast<int64_t>(out.input_ids.size()));
    out.next_sentence_label.push_back(not_next ? 1 : 0);
    out.document_index.push_back(doc);

    chunk_begin = i + 1;
    chunk_len = 0;
  }
}

NspPairs build_nsp_pairs(const Corpus& c, const NspOptions& o, uint64_t seed, int num_threads) {
  validate_nsp(c, o);
  const int64_t num_docs = c.num_documents;
  std::vector<int64_t> cost(static_cast<size_t>(num_docs) + 1);
  for (int64_t d = 0; d <= num_docs; ++d)
    cost[static_cast<size_t>(d)] = c.sentence_offsets[c.document_offsets[d]];
  const int threads = resolve_threads(num_threads, c.num_tokens, kMinNspTokensPerThread, num_docs);
  if (threads <= 1) {
    NspPairs out;
    for (int64_t d = 0; d < num_docs; ++d) build_document_pairs(c, o, d, seed, out);
    return out;
  }
  // Each thread fills its own NspPairs for a contiguous document range; the parts are concatenated in
  // document order afterwards, so the result does not depend on the thread count.
  std::vector<std::pair<int64_t, NspPairs>> parts(static_cast<size_t>(threads));
  std::atomic<size_t> next_part{0};
  parallel_chunks(cost, threads, [&](int64_t begin, int64_t end) {
    auto& part = parts[next_part.fetch_add(1)];
    part.first = begin;
    for (int64_t d = begin; d < end; ++d) build_document_pairs(c, o, d, seed, part.second);
  });
  parts.resize(next_part.load());
  std::sort(parts.begin(), parts.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  NspPairs out;
  for (const auto& part : parts) {
    const NspPairs& p = part.second;
    const int64_t base = out.offsets.back();
    out.input_ids.insert(out.input_ids.end(), p.input_ids.begin(), p.input_ids.end());
    out.token_type_ids.insert(out.token_type_ids.end(), p.token_type_ids.begin(), p.token_type_ids.end());
    for (size_t k = 1; k < p.offsets.size(); ++k) out.offsets.push_back(base + p.offsets[k]);
    out.next_sentence_label.insert(out.next_sentence_label.end(), p.next_sentence_label.begin(),
                                   p.next_sentence_label.end());
    out.document_index.insert(out.document_index.end(), p.document_index.begin(), p.document_index.end());
  }
  return out;
}

}  // namespace fastbert
