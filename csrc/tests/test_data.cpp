// C++ test driver of the data-pipeline core (no Python): RNG pinned values, masking, collation and NSP
// invariants, thread-count independence and input validation. Built and run under AddressSanitizer and
// UBSan by csrc/tests/asan.sh. Exit status 0 iff every check passed.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "collate.h"
#include "common.h"
#include "masking.h"
#include "nsp.h"

namespace {

int g_failures = 0;
int g_checks = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    ++g_checks;                                                                \
    if (!(cond)) {                                                             \
      ++g_failures;                                                            \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                          \
  } while (0)

template <class Fn>
bool throws_invalid(Fn&& fn) {
  try {
    fn();
  } catch (const std::invalid_argument&) {
    return true;
  }
  return false;
}

constexpr int64_t kVocab = 64, kPad = 0, kUnk = 1, kCls = 2, kSep = 3, kMask = 4;

fastbert::MaskingOptions base_options() {
  fastbert::MaskingOptions o;
  o.vocab_size = kVocab;
  o.mask_token_id = kMask;
  o.special_ids = {kPad, kUnk, kCls, kSep};
  o.mlm_probability = 0.3;
  return o;
}

// Random sequence [CLS] x... [SEP] with some specials inside; ids in [0, kVocab).
std::vector<int64_t> random_sequence(fastbert::Rng& rng, int64_t len) {
  std::vector<int64_t> s(static_cast<size_t>(len));
  for (int64_t i = 0; i < len; ++i) s[static_cast<size_t>(i)] = rng.randint(0, kVocab - 1);
  if (len > 0) s.front() = kCls;
  if (len > 1) s.back() = kSep;
  return s;
}

void test_rng() {
  // Pinned against fastbert/data/reference.py (the Python oracle must agree bit for bit).
  fastbert::Rng r(1, 2);
  CHECK(r.next() == 0x481c920d996fce04ULL);
  CHECK(r.next() == 0x45755bbde008fe9bULL);
  CHECK(r.next() == 0xbfdda205eebccef0ULL);
  fastbert::Rng q(1, 2);
  CHECK(q.uniform() == 0.2816859515382354);
  CHECK(q.below(10) == 7);
  CHECK(q.randint(5, 9) == 6);
  CHECK(fastbert::derive_seed(42, 7) == 0xd56fd4491d82a4ddULL);
  fastbert::Rng s(3, 4);
  for (int i = 0; i < 1000; ++i) {
    const double u = s.uniform();
    CHECK(u >= 0.0 && u < 1.0);
    CHECK(s.below(1) == 0);
    const int64_t k = s.randint(-3, 3);
    CHECK(k >= -3 && k <= 3);
  }
}

void test_masker_validation() {
  auto with = [](auto edit) {
    return throws_invalid([&] {
      fastbert::MaskingOptions o = base_options();
      edit(o);
      fastbert::Masker m(o);
    });
  };
  CHECK(!with([](fastbert::MaskingOptions&) {}));
  CHECK(with([](fastbert::MaskingOptions& o) { o.mlm_probability = 1.5; }));
  CHECK(with([](fastbert::MaskingOptions& o) { o.mlm_probability = -0.1; }));
  CHECK(with([](fastbert::MaskingOptions& o) { o.mlm_probability = std::nan(""); }));
  CHECK(with([](fastbert::MaskingOptions& o) { o.keep_prob = 0.3; }));
  CHECK(with([](fastbert::MaskingOptions& o) { o.mask_token_id = kVocab; }));
  CHECK(with([](fastbert::MaskingOptions& o) { o.mask_token_id = kPad; }));
  CHECK(with([](fastbert::MaskingOptions& o) { o.special_ids.push_back(-1); }));
  CHECK(with([](fastbert::MaskingOptions& o) { o.special_ids.push_back(kVocab); }));
  CHECK(with([](fastbert::MaskingOptions& o) { o.vocab_size = 0; }));
  CHECK(with([](fastbert::MaskingOptions& o) { o.whole_word_mask = true; }));  // no table
  CHECK(with([](fastbert::MaskingOptions& o) {
    o.vocab_size = 5;
    o.special_ids = {0, 1, 2, 3};
  }));  // nothing left to draw
}

void test_masking_invariants() {
  fastbert::Rng data(7, 0);
  for (int wwm = 0; wwm < 2; ++wwm) {
    for (int exact = 0; exact < 2; ++exact) {
      fastbert::MaskingOptions o = base_options();
      o.whole_word_mask = wwm != 0;
      o.exact_count = exact != 0;
      o.max_predictions_per_seq = exact ? 6 : -1;
      o.is_continuation.assign(static_cast<size_t>(kVocab), 0);
      for (int64_t id = 40; id < kVocab; ++id) o.is_continuation[static_cast<size_t>(id)] = 1;
      const fastbert::Masker masker(o);
      fastbert::MaskWorkspace ws;
      for (int trial = 0; trial < 200; ++trial) {
        const int64_t len = data.randint(0, 40);
        const std::vector<int64_t> seq = random_sequence(data, len);
        std::vector<int64_t> ids(seq.size() + 1, 777), labels(seq.size() + 1, 777);  // +1: overrun guard
        fastbert::Rng rng(11, static_cast<uint64_t>(trial));
        CHECK(masker.mask_sequence(seq.data(), len, rng, ids.data(), labels.data(), ws) == -1);
        CHECK(ids.back() == 777 && labels.back() == 777);
        int64_t chosen = 0, candidates = 0;
        for (int64_t i = 0; i < len; ++i) {
          const size_t k = static_cast<size_t>(i);
          const bool prot = masker.is_protected(seq[k]);
          candidates += prot ? 0 : 1;
          if (labels[k] == fastbert::kIgnoreIndex) {
            CHECK(ids[k] == seq[k]);
          } else {
            ++chosen;
            CHECK(!prot);
            CHECK(labels[k] == seq[k]);
            CHECK(ids[k] == kMask || ids[k] == seq[k] || !masker.is_protected(ids[k]));
          }
          // Whole words: a chosen continuation piece has its chosen predecessor (when that is a candidate).
          if (o.whole_word_mask && i > 0 && !prot && o.is_continuation[static_cast<size_t>(seq[k])] &&
              !masker.is_protected(seq[k - 1]))
            CHECK((labels[k] == fastbert::kIgnoreIndex) == (labels[k - 1] == fastbert::kIgnoreIndex));
        }
        if (o.exact_count) {
          const int64_t rounded =
              static_cast<int64_t>(std::floor(0.3 * static_cast<double>(candidates) + 0.5));
          const int64_t budget = candidates == 0 ? 0 : std::min<int64_t>(6, std::max<int64_t>(1, rounded));
          CHECK(chosen <= budget);
          if (!o.whole_word_mask) CHECK(chosen == budget);
        }
      }
      // An out-of-vocabulary id is reported, not read past the table.
      const std::vector<int64_t> bad = {kCls, 9, kVocab + 5, kSep};
      std::vector<int64_t> ids(bad.size()), labels(bad.size());
      fastbert::Rng rng(0, 0);
      CHECK(masker.mask_sequence(bad.data(), 4, rng, ids.data(), labels.data(), ws) == 2);
      const std::vector<int64_t> neg = {-1};
      CHECK(masker.mask_sequence(neg.data(), 1, rng, ids.data(), labels.data(), ws) == 0);
    }
  }
}

void test_masking_rate() {
  fastbert::MaskingOptions o = base_options();
  o.mlm_probability = 0.15;
  const fastbert::Masker masker(o);
  fastbert::MaskWorkspace ws;
  std::vector<int64_t> seq(200);
  for (size_t i = 0; i < seq.size(); ++i) seq[i] = 10 + static_cast<int64_t>(i % 50);
  std::vector<int64_t> ids(seq.size()), labels(seq.size());
  int64_t n = 0, chosen = 0, masked = 0, kept = 0;
  for (int trial = 0; trial < 200; ++trial) {
    fastbert::Rng rng(5, static_cast<uint64_t>(trial));
    masker.mask_sequence(seq.data(), static_cast<int64_t>(seq.size()), rng, ids.data(), labels.data(), ws);
    for (size_t i = 0; i < seq.size(); ++i) {
      ++n;
      if (labels[i] == fastbert::kIgnoreIndex) continue;
      ++chosen;
      masked += ids[i] == kMask;
      kept += ids[i] == seq[i];
    }
  }
  const double rate = static_cast<double>(chosen) / static_cast<double>(n);
  CHECK(std::fabs(rate - 0.15) < 4 * std::sqrt(0.15 * 0.85 / static_cast<double>(n)));
  const double mask_frac = static_cast<double>(masked) / static_cast<double>(chosen);
  CHECK(std::fabs(mask_frac - 0.8) < 4 * std::sqrt(0.8 * 0.2 / static_cast<double>(chosen)));
  CHECK(kept > 0);
}

void test_padded_batch_threads() {
  const fastbert::Masker masker(base_options());
  const int64_t batch = 256, row_len = 600;
  fastbert::Rng data(3, 3);
  std::vector<int64_t> input(static_cast<size_t>(batch * row_len), kPad), lengths(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    lengths[static_cast<size_t>(b)] = data.randint(0, row_len);
    const std::vector<int64_t> s = random_sequence(data, lengths[static_cast<size_t>(b)]);
    std::copy(s.begin(), s.end(), input.begin() + b * row_len);
  }
  std::vector<int64_t> ids1(input.size()), lab1(input.size()), ids4(input.size()), lab4(input.size());
  fastbert::mask_padded_batch(masker, input.data(), lengths.data(), batch, row_len, 9, nullptr, 1, ids1.data(),
                              lab1.data());
  fastbert::mask_padded_batch(masker, input.data(), lengths.data(), batch, row_len, 9, nullptr, 4, ids4.data(),
                              lab4.data());
  CHECK(ids1 == ids4);
  CHECK(lab1 == lab4);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = lengths[static_cast<size_t>(b)]; i < row_len; ++i) {
      CHECK(lab1[static_cast<size_t>(b * row_len + i)] == fastbert::kIgnoreIndex);
      CHECK(ids1[static_cast<size_t>(b * row_len + i)] == kPad);
    }
  input[5 * row_len + 0] = kVocab;  // position 0 of row 5 is always real when lengths[5] > 0
  lengths[5] = std::max<int64_t>(lengths[5], 1);
  CHECK(throws_invalid([&] {
    fastbert::mask_padded_batch(masker, input.data(), lengths.data(), batch, row_len, 9, nullptr, 4, ids4.data(),
                                lab4.data());
  }));
  lengths[5] = row_len + 1;
  CHECK(throws_invalid([&] {
    fastbert::mask_padded_batch(masker, input.data(), lengths.data(), batch, row_len, 9, nullptr, 1, ids4.data(),
                                lab4.data());
  }));
}

void test_collate() {
  const fastbert::Masker masker(base_options());
  fastbert::Rng data(21, 0);
  std::vector<std::vector<int64_t>> seqs, types;
  for (int b = 0; b < 400; ++b) {  // ~80k tokens: enough work for 2 threads
    const int64_t len = b == 0 ? 0 : (b == 1 ? 1 : data.randint(0, 400));
    seqs.push_back(random_sequence(data, len));
    types.emplace_back(static_cast<size_t>(len), b % 2);
  }
  seqs.push_back({kCls, kSep, kPad, kUnk});  // all special
  types.emplace_back(4, 0);
  std::vector<fastbert::SeqView> views;
  for (size_t b = 0; b < seqs.size(); ++b)
    views.push_back({seqs[b].data(), types[b].data(), static_cast<int64_t>(seqs[b].size())});

  const fastbert::CollatePlan padded = fastbert::plan_collate(views, false, 8);
  const fastbert::CollatePlan packed = fastbert::plan_collate(views, true, 0);
  CHECK(padded.row_len % 8 == 0 && padded.row_len >= padded.max_seqlen);
  CHECK(packed.offsets.back() == packed.total_tokens);
  const size_t np = static_cast<size_t>(padded.batch * padded.row_len), nk = static_cast<size_t>(packed.total_tokens);
  std::vector<int64_t> p_ids(np), p_mask(np), p_types(np), p_labels(np);
  std::vector<int64_t> k_ids(nk), k_types(nk), k_labels(nk), k_pos(nk);
  fastbert::CollateBuffers pb{p_ids.data(), p_types.data(), p_labels.data(), p_mask.data(), nullptr};
  fastbert::CollateBuffers kb{k_ids.data(), k_types.data(), k_labels.data(), nullptr, k_pos.data()};
  fastbert::collate_batch(views, padded, kPad, &masker, 17, nullptr, 3, pb);
  fastbert::collate_batch(views, packed, kPad, &masker, 17, nullptr, 1, kb);
  for (size_t b = 0; b < seqs.size(); ++b) {
    const int64_t len = static_cast<int64_t>(seqs[b].size());
    for (int64_t i = 0; i < padded.row_len; ++i) {
      const size_t p = static_cast<size_t>(static_cast<int64_t>(b) * padded.row_len + i);
      CHECK(p_mask[p] == (i < len ? 1 : 0));
      if (i < len) {
        const size_t k = static_cast<size_t>(packed.offsets[b] + i);
        CHECK(p_ids[p] == k_ids[k]);
        CHECK(p_labels[p] == k_labels[k]);
        CHECK(p_types[p] == k_types[k] && k_types[k] == static_cast<int64_t>(b % 2));
        CHECK(k_pos[k] == i);
      } else {
        CHECK(p_ids[p] == kPad && p_labels[p] == fastbert::kIgnoreIndex && p_types[p] == 0);
      }
    }
  }
  const size_t last = static_cast<size_t>(packed.offsets[400]);  // the all-special row
  for (size_t i = 0; i < 4; ++i) CHECK(k_labels[last + i] == fastbert::kIgnoreIndex);

  // No masker: plain copy, labels optional; negative ids and token types are rejected.
  fastbert::CollateBuffers plain{k_ids.data(), k_types.data(), nullptr, nullptr, k_pos.data()};
  fastbert::collate_batch(views, packed, kPad, nullptr, 0, nullptr, 2, plain);
  for (size_t b = 0; b < seqs.size(); ++b)
    CHECK(std::equal(seqs[b].begin(), seqs[b].end(), k_ids.begin() + packed.offsets[b]));
  seqs[3][0] = -7;
  CHECK(throws_invalid([&] { fastbert::collate_batch(views, packed, kPad, nullptr, 0, nullptr, 2, plain); }));
  seqs[3][0] = kVocab;
  CHECK(throws_invalid([&] { fastbert::collate_batch(views, packed, kPad, &masker, 0, nullptr, 2, kb); }));
  seqs[3][0] = kCls;
  types[4][0] = -1;
  CHECK(throws_invalid([&] { fastbert::collate_batch(views, packed, kPad, &masker, 0, nullptr, 2, kb); }));
  CHECK(throws_invalid([&] { fastbert::plan_collate(views, false, -1); }));

  // Empty batch: nothing to do, nothing written.
  const std::vector<fastbert::SeqView> none;
  const fastbert::CollatePlan empty = fastbert::plan_collate(none, true, 0);
  CHECK(empty.total_tokens == 0 && empty.offsets.size() == 1);
  fastbert::collate_batch(none, empty, kPad, &masker, 0, nullptr, 4, kb);
}

struct CorpusData {
  std::vector<int64_t> tokens, sent, docs;
  fastbert::Corpus view() const {
    fastbert::Corpus c;
    c.tokens = tokens.data();
    c.num_tokens = static_cast<int64_t>(tokens.size());
    c.sentence_offsets = sent.data();
    c.num_sentences = static_cast<int64_t>(sent.size()) - 1;
    c.document_offsets = docs.data();
    c.num_documents = static_cast<int64_t>(docs.size()) - 1;
    return c;
  }
};

CorpusData random_corpus(uint64_t seed, int num_docs) {
  fastbert::Rng rng(seed, 0);
  CorpusData c;
  c.sent.push_back(0);
  c.docs.push_back(0);
  for (int d = 0; d < num_docs; ++d) {
    const int64_t n_sent = rng.randint(1, 12);
    for (int64_t s = 0; s < n_sent; ++s) {
      const int64_t len = rng.randint(1, 40);
      for (int64_t t = 0; t < len; ++t) c.tokens.push_back(rng.randint(10, kVocab - 1));
      c.sent.push_back(static_cast<int64_t>(c.tokens.size()));
    }
    c.docs.push_back(static_cast<int64_t>(c.sent.size()) - 1);
  }
  return c;
}

void test_nsp() {
  const CorpusData data = random_corpus(5, 1000);  // ~120k tokens: several threads
  fastbert::NspOptions o;
  o.cls_token_id = kCls;
  o.sep_token_id = kSep;
  o.max_seq_len = 48;
  const fastbert::NspPairs one = fastbert::build_nsp_pairs(data.view(), o, 13, 1);
  const fastbert::NspPairs four = fastbert::build_nsp_pairs(data.view(), o, 13, 4);
  CHECK(one.input_ids == four.input_ids);
  CHECK(one.token_type_ids == four.token_type_ids);
  CHECK(one.offsets == four.offsets);
  CHECK(one.next_sentence_label == four.next_sentence_label);
  CHECK(one.document_index == four.document_index);
  const size_t n = one.next_sentence_label.size();
  CHECK(n > 300);
  int64_t not_next = 0;
  for (size_t k = 0; k < n; ++k) {
    const int64_t s = one.offsets[k], e = one.offsets[k + 1];
    CHECK(e - s <= o.max_seq_len && e - s >= 5);
    CHECK(one.input_ids[static_cast<size_t>(s)] == kCls && one.input_ids[static_cast<size_t>(e - 1)] == kSep);
    int64_t seps = 0, first_sep = -1;
    for (int64_t i = s; i < e; ++i)
      if (one.input_ids[static_cast<size_t>(i)] == kSep) {
        ++seps;
        if (first_sep < 0) first_sep = i;
      }
    CHECK(seps == 2);
    CHECK(first_sep - s >= 2 && e - first_sep >= 3);  // A and B non-empty
    for (int64_t i = s; i < e; ++i)
      CHECK(one.token_type_ids[static_cast<size_t>(i)] == (i <= first_sep ? 0 : 1));
    not_next += one.next_sentence_label[k];
  }
  CHECK(std::fabs(static_cast<double>(not_next) / static_cast<double>(n) - 0.5) <
        4 * std::sqrt(0.25 / static_cast<double>(n)));

  // Validation.
  auto bad = [&](auto edit) {
    CorpusData c = data;
    fastbert::NspOptions opt = o;
    edit(c, opt);
    return throws_invalid([&] { fastbert::build_nsp_pairs(c.view(), opt, 0, 2); });
  };
  CHECK(bad([](CorpusData&, fastbert::NspOptions& p) { p.max_seq_len = 4; }));
  CHECK(bad([](CorpusData&, fastbert::NspOptions& p) { p.short_seq_prob = 2.0; }));
  CHECK(bad([](CorpusData& c, fastbert::NspOptions&) { c.docs = {0, c.docs.back()}; }));  // one document
  CHECK(bad([](CorpusData& c, fastbert::NspOptions&) { c.sent[2] = c.sent[1]; }));       // empty sentence
  CHECK(bad([](CorpusData& c, fastbert::NspOptions&) { c.sent.back() += 1; }));          // past the tokens
  CHECK(bad([](CorpusData& c, fastbert::NspOptions&) { c.docs.back() -= 1; }));          // sentences left over
  CHECK(bad([](CorpusData& c, fastbert::NspOptions&) { c.tokens[0] = -1; }));
  // Smallest legal pairs: max_seq_len 5 gives one token per side.
  CHECK(!bad([](CorpusData&, fastbert::NspOptions& p) { p.max_seq_len = 5; }));
}

}  // namespace

int main() {
  test_rng();
  test_masker_validation();
  test_masking_invariants();
  test_masking_rate();
  test_padded_batch_threads();
  test_collate();
  test_nsp();
  if (g_failures) {
    std::fprintf(stderr, "test_data: %d of %d checks failed\n", g_failures, g_checks);
    return 1;
  }
  std::printf("test_data: all %d checks passed\n", g_checks);
  return 0;
}
