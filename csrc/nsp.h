// Next-sentence-prediction pair building from documents of sentences (the create_instances_from_document
// algorithm of google-research/bert create_pretraining_data.py, with the deviations listed below).
// Plain C++ (no Python).
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"

namespace fastbert {

// A corpus in compressed form: sentence s is tokens[sentence_offsets[s], sentence_offsets[s + 1]), document d
// is sentences [document_offsets[d], document_offsets[d + 1]).
struct Corpus {
  const int64_t* tokens = nullptr;
  int64_t num_tokens = 0;
  const int64_t* sentence_offsets = nullptr;  // num_sentences + 1
  int64_t num_sentences = 0;
  const int64_t* document_offsets = nullptr;  // num_documents + 1
  int64_t num_documents = 0;
};

struct NspOptions {
  int64_t cls_token_id = -1;
  int64_t sep_token_id = -1;
  int64_t max_seq_len = 128;    // >= 5: [CLS] A [SEP] B [SEP] with non-empty A and B
  double short_seq_prob = 0.1;  // probability of a shorter target length, uniform in [2, max_seq_len - 3]
  double random_next_prob = 0.5;  // probability of NotNext
};

// Pairs laid out back to back: pair k is input_ids[offsets[k], offsets[k + 1]).
struct NspPairs {
  std::vector<int64_t> input_ids, token_type_ids;
  std::vector<int64_t> offsets{0};
  std::vector<int64_t> next_sentence_label;  // 0 IsNext, 1 NotNext
  std::vector<int64_t> document_index;       // document of segment A
};

// Throws std::invalid_argument unless the options and the corpus are well formed: offsets start at 0, strictly
// increase (no empty sentence or document) and end at the sizes; at least 2 documents; ids >= 0.
void validate_nsp(const Corpus& corpus, const NspOptions& options);

// Appends the pairs of document `doc`, drawn from Rng(seed, doc). Per document, with T = max_seq_len - 3:
//   target = T; if uniform() < short_seq_prob: target = randint(2, T).
//   Sentences accumulate into a chunk until its length reaches target or the document ends. Then
//   a_end = randint(1, size - 1) if size >= 2 else 1, A = chunk[:a_end];
//   not_next = uniform() < random_next_prob (always drawn, so the labels are exactly Bernoulli(0.5));
//   IsNext with a one-sentence chunk splits that sentence at randint(1, len - 1) (NotNext if len == 1);
//   IsNext otherwise: B = chunk[a_end:];
//   NotNext: another document r = randint(0, D - 2), r += (r >= doc); start = randint(0, sentences(r) - 1);
//   B = sentences from start until |B| >= target - |A|; the unused chunk sentences are put back.
//   Truncation while |A| + |B| > T: the longer side (B on ties) loses its first token if uniform() < 0.5,
//   else its last.
void build_document_pairs(const Corpus& corpus, const NspOptions& options, int64_t doc, uint64_t seed,
                          NspPairs& out);

// All documents, multi-threaded over documents, pairs in document order (independent of num_threads).
NspPairs build_nsp_pairs(const Corpus& corpus, const NspOptions& options, uint64_t seed, int num_threads);

}  // namespace fastbert
