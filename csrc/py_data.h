// numpy / pybind11 glue of the data pipeline: argument parsing and validation, output allocation, GIL
// release. The algorithms live in masking / collate / nsp; bindings.cpp registers these functions.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "masking.h"

namespace fastbert {

namespace py = pybind11;

// MaskingConfig(...) constructor: validates once, so each batch only checks token ids.
Masker make_masker(int64_t vocab_size, int64_t mask_token_id, const py::object& special_ids, double mlm_probability,
                   const py::object& split, bool whole_word_mask, const py::object& continuation_table,
                   bool exact_count, int64_t max_predictions_per_seq);

// Masks a padded [batch, len] integer array (rows hold lengths[b] real tokens). Returns (input_ids, labels).
py::tuple py_mask_tokens(const py::object& input_ids, const Masker& masking, const py::object& lengths,
                         uint64_t seed, const py::object& streams, int num_threads);

// Pads (or packs) a list of 1-D integer sequences, masking them when `masking` is not None. Returns a dict of
// numpy arrays (+ "max_seqlen": int when packed).
py::dict py_collate(const py::object& sequences, const py::object& token_type_ids, int64_t pad_token_id,
                    const py::object& masking, uint64_t seed, const py::object& streams, int64_t pad_to_multiple_of,
                    bool packed, int num_threads);

// NSP pairs from a corpus in compressed form (tokens, sentence_offsets, document_offsets). Returns a dict of
// numpy arrays: input_ids, token_type_ids (flat), offsets, next_sentence_label, document_index.
py::dict py_build_nsp_pairs(const py::object& tokens, const py::object& sentence_offsets,
                            const py::object& document_offsets, int64_t cls_token_id, int64_t sep_token_id,
                            int64_t max_seq_len, double short_seq_prob, double random_next_prob, uint64_t seed,
                            int num_threads);

}  // namespace fastbert
