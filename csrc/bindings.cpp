// fastbert._C: the data side of BERT pretraining (MLM masking, NSP pairs, padded / packed collation).
// Registration only; the glue is in py_data.cpp and the algorithms in masking / nsp / collate.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"
#include "masking.h"
#include "py_data.h"

namespace py = pybind11;
using fastbert::Masker;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastbert C++ data pipeline: MLM masking, NSP pair building, padded and packed collation";
  m.attr("IGNORE_INDEX") = fastbert::kIgnoreIndex;
  m.attr("MIN_TOKENS_PER_THREAD") = fastbert::kMinTokensPerThread;

  py::class_<Masker>(m, "MaskingConfig",
                     "Validated MLM masking configuration (see fastbert/data/masking.py for the semantics).")
      .def(py::init(&fastbert::make_masker), py::arg("vocab_size"), py::arg("mask_token_id"), py::arg("special_ids"),
           py::arg("mlm_probability") = 0.15, py::arg("split") = py::make_tuple(0.8, 0.1, 0.1),
           py::arg("whole_word_mask") = false, py::arg("continuation_table") = py::none(),
           py::arg("exact_count") = false, py::arg("max_predictions_per_seq") = -1)
      .def_property_readonly("vocab_size", [](const Masker& k) { return k.options().vocab_size; })
      .def_property_readonly("mask_token_id", [](const Masker& k) { return k.options().mask_token_id; })
      .def_property_readonly("special_ids", [](const Masker& k) { return k.options().special_ids; })
      .def_property_readonly("mlm_probability", [](const Masker& k) { return k.options().mlm_probability; })
      .def_property_readonly("split", [](const Masker& k) {
        return py::make_tuple(k.options().mask_prob, k.options().random_prob, k.options().keep_prob);
      })
      .def_property_readonly("whole_word_mask", [](const Masker& k) { return k.options().whole_word_mask; })
      .def_property_readonly("exact_count", [](const Masker& k) { return k.options().exact_count; })
      .def_property_readonly("max_predictions_per_seq",
                             [](const Masker& k) { return k.options().max_predictions_per_seq; });

  m.def("mask_tokens", &fastbert::py_mask_tokens, py::arg("input_ids"), py::arg("masking"),
        py::arg("lengths") = py::none(), py::arg("seed") = 0, py::arg("streams") = py::none(),
        py::arg("num_threads") = 0, "Mask a padded [batch, len] id array; returns (input_ids, labels).");
  m.def("collate", &fastbert::py_collate, py::arg("input_ids"), py::arg("token_type_ids") = py::none(),
        py::arg("pad_token_id") = 0, py::arg("masking") = py::none(), py::arg("seed") = 0,
        py::arg("streams") = py::none(), py::arg("pad_to_multiple_of") = 0, py::arg("packed") = false,
        py::arg("num_threads") = 0, "Pad or pack (and optionally mask) a list of id sequences; returns a dict.");
  m.def("build_nsp_pairs", &fastbert::py_build_nsp_pairs, py::arg("tokens"), py::arg("sentence_offsets"),
        py::arg("document_offsets"), py::arg("cls_token_id"), py::arg("sep_token_id"), py::arg("max_seq_len") = 128,
        py::arg("short_seq_prob") = 0.1, py::arg("random_next_prob") = 0.5, py::arg("seed") = 0,
        py::arg("num_threads") = 0, "Build [CLS] A [SEP] B [SEP] NSP pairs from a compressed corpus.");
  m.def("derive_seed", &fastbert::derive_seed, py::arg("seed"), py::arg("value"),
        "mix64(seed ^ mix64(value + golden)): the key of an independent random stream.");
}
