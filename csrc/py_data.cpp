#include "py_data.h"

#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "collate.h"
#include "nsp.h"

namespace fastbert {

namespace {

using Int64Array = py::array_t<int64_t, py::array::c_style>;

std::string type_name(const py::handle& obj) { return py::str(py::type::of(obj).attr("__name__")); }

// A C-contiguous int64 array viewing `obj` (an int64 numpy array: no copy) or converting it (other integer
// dtypes, lists, torch CPU tensors). Non-integer or ragged data raises TypeError; a wrong number of
// dimensions raises ValueError.
Int64Array as_int64_array(const py::handle& obj, const std::string& name, int ndim) {
  py::array arr = py::isinstance<py::array>(obj) ? py::reinterpret_borrow<py::array>(obj) : py::array::ensure(obj);
  if (!arr)
    throw py::type_error(name + " must be an integer array, could not convert a " + type_name(obj) +
                         " (ragged rows?)");
  const char kind = arr.dtype().kind();
  if (kind == 'O')
    throw py::type_error(name + " must be a rectangular integer array, got an object array (ragged rows?)");
  if (kind != 'i' && kind != 'u')
    throw py::type_error(name + " must hold integers, got dtype " + std::string(py::str(arr.dtype())));
  if (arr.ndim() != ndim)
    throw py::value_error(name + " must be " + std::to_string(ndim) + "-D, got " + std::to_string(arr.ndim()) +
                          "-D");
  if (kind == 'u' && arr.itemsize() == 8) {
    // Int64Array::ensure returns a null array for uint64 input (using it crashed): convert here, refusing values
    // that int64 cannot hold
    if (arr.size() > 0 && py::int_(arr.attr("max")()).cast<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      throw py::value_error(name + " holds a value >= 2^63 (does not fit in int64)");
    arr = arr.attr("astype")("int64");
  }
  Int64Array out = Int64Array::ensure(arr);
  if (!out) throw py::type_error(name + " could not be converted to an int64 array (dtype " +
                                 std::string(py::str(arr.dtype())) + ")");
  return out;
}

// Optional 1-D int64 array of exactly `size` entries; None gives an empty array.
Int64Array optional_array(const py::object& obj, const std::string& name, int64_t size) {
  if (obj.is_none()) return Int64Array();
  Int64Array arr = as_int64_array(obj, name, 1);
  if (arr.shape(0) != size)
    throw py::value_error(name + " must have " + std::to_string(size) + " entries, got " +
                          std::to_string(arr.shape(0)));
  return arr;
}

// Ragged batch of 1-D integer sequences, viewed without copies where possible.
class RaggedBatch {
 public:
  // Each item of `seqs` is a list/tuple of ints (converted here, quickly) or anything numpy turns into a 1-D
  // integer array (int64 arrays are viewed in place).
  RaggedBatch(const py::handle& seqs, const std::string& name) {
    if (!py::isinstance<py::list>(seqs) && !py::isinstance<py::tuple>(seqs))
      throw py::type_error(name + " must be a list of 1-D integer sequences, got " + type_name(seqs));
    const py::sequence items = py::reinterpret_borrow<py::sequence>(seqs);
    const size_t n = items.size();
    views_.reserve(n);
    for (size_t b = 0; b < n; ++b) {
      const py::handle item = items[b];
      const std::string item_name = name + "[" + std::to_string(b) + "]";
      if (PyList_Check(item.ptr()) || PyTuple_Check(item.ptr())) {
        views_.push_back(from_sequence(item, item_name));
      } else if (Int64Array::check_(item) &&
                 (py::reinterpret_borrow<py::array>(item).flags() & py::array::c_style) &&
                 py::reinterpret_borrow<py::array>(item).ndim() == 1) {
        // Fast path: a C-contiguous int64 vector is viewed in place (no conversion call into numpy).
        Int64Array arr = py::reinterpret_borrow<Int64Array>(item);
        views_.push_back(SeqView{arr.data(), nullptr, arr.shape(0)});
        arrays_.push_back(std::move(arr));
      } else {
        Int64Array arr = as_int64_array(item, item_name, 1);
        views_.push_back(SeqView{arr.data(), nullptr, arr.shape(0)});
        arrays_.push_back(std::move(arr));
      }
    }
  }

  const std::vector<SeqView>& views() const { return views_; }
  size_t size() const { return views_.size(); }

 private:
  SeqView from_sequence(const py::handle& item, const std::string& name) {
    PyObject* seq = item.ptr();
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject** elems = PySequence_Fast_ITEMS(seq);
    std::vector<int64_t>& buf = owned_.emplace_back(static_cast<size_t>(n));
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* e = elems[i];
      if (!PyLong_Check(e)) {
        if (PyFloat_Check(e) || !PyIndex_Check(e))
          throw py::type_error(name + "[" + std::to_string(i) + "] must be an integer, got " + type_name(e));
      }
      int overflow = 0;
      const long long v = PyLong_AsLongLongAndOverflow(e, &overflow);
      if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
      if (overflow != 0)
        throw py::value_error(name + "[" + std::to_string(i) + "] does not fit in 64 bits");
      buf[static_cast<size_t>(i)] = v;
    }
    return SeqView{buf.data(), nullptr, static_cast<int64_t>(n)};
  }

  std::vector<SeqView> views_;
  std::vector<Int64Array> arrays_;         // keeps viewed arrays alive
  std::deque<std::vector<int64_t>> owned_;  // converted lists (deque: element addresses are stable)
};

}  // namespace

Masker make_masker(int64_t vocab_size, int64_t mask_token_id, const py::object& special_ids, double mlm_probability,
                   const py::object& split, bool whole_word_mask, const py::object& continuation_table,
                   bool exact_count, int64_t max_predictions_per_seq) {
  MaskingOptions o;
  o.vocab_size = vocab_size;
  o.mask_token_id = mask_token_id;
  const Int64Array specials = as_int64_array(special_ids, "special_ids", 1);
  o.special_ids.assign(specials.data(), specials.data() + specials.shape(0));
  o.mlm_probability = mlm_probability;
  const py::sequence parts = split.cast<py::sequence>();
  if (parts.size() != 3)
    throw py::value_error("split must have 3 entries (mask, random, keep), got " + std::to_string(parts.size()));
  o.mask_prob = parts[0].cast<double>();
  o.random_prob = parts[1].cast<double>();
  o.keep_prob = parts[2].cast<double>();
  o.whole_word_mask = whole_word_mask;
  if (whole_word_mask) {
    if (continuation_table.is_none())
      throw py::value_error("whole_word_mask=True needs continuation_table (see continuation_table_from_vocab)");
    py::array table = py::array::ensure(continuation_table);
    if (!table || table.ndim() != 1 || (table.dtype().kind() != 'b' && table.dtype().kind() != 'i' &&
                                        table.dtype().kind() != 'u'))
      throw py::type_error("continuation_table must be a 1-D bool or integer array");
    const auto as_bool = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(
        table.attr("astype")("bool"));
    o.is_continuation.assign(as_bool.data(), as_bool.data() + as_bool.shape(0));
  } else if (!continuation_table.is_none()) {
    throw py::value_error("continuation_table is only used with whole_word_mask=True");
  }
  o.exact_count = exact_count;
  o.max_predictions_per_seq = max_predictions_per_seq;
  return Masker(std::move(o));
}

py::tuple py_mask_tokens(const py::object& input_ids, const Masker& masking, const py::object& lengths,
                         uint64_t seed, const py::object& streams, int num_threads) {
  const Int64Array ids = as_int64_array(input_ids, "input_ids", 2);
  const int64_t batch = ids.shape(0), row_len = ids.shape(1);
  Int64Array lens = optional_array(lengths, "lengths", batch);
  if (lengths.is_none()) {
    lens = Int64Array(batch);
    std::fill_n(lens.mutable_data(), batch, row_len);
  }
  const Int64Array stream_arr = optional_array(streams, "streams", batch);
  Int64Array out_ids({batch, row_len}), out_labels({batch, row_len});
  const int64_t* in = ids.data();
  const int64_t* len_ptr = lens.data();
  const uint64_t* stream_ptr = streams.is_none() ? nullptr : reinterpret_cast<const uint64_t*>(stream_arr.data());
  int64_t* ids_ptr = out_ids.mutable_data();
  int64_t* labels_ptr = out_labels.mutable_data();
  {
    py::gil_scoped_release release;
    mask_padded_batch(masking, in, len_ptr, batch, row_len, seed, stream_ptr, num_threads, ids_ptr, labels_ptr);
  }
  return py::make_tuple(out_ids, out_labels);
}

py::dict py_collate(const py::object& sequences, const py::object& token_type_ids, int64_t pad_token_id,
                    const py::object& masking, uint64_t seed, const py::object& streams, int64_t pad_to_multiple_of,
                    bool packed, int num_threads) {
  RaggedBatch ids(sequences, "input_ids");
  const int64_t batch = static_cast<int64_t>(ids.size());
  if (batch == 0) throw py::value_error("input_ids is an empty batch");
  std::vector<SeqView> views = ids.views();
  std::unique_ptr<RaggedBatch> types;
  if (!token_type_ids.is_none()) {
    types = std::make_unique<RaggedBatch>(token_type_ids, "token_type_ids");
    if (static_cast<int64_t>(types->size()) != batch)
      throw py::value_error("token_type_ids has " + std::to_string(types->size()) + " sequences, input_ids " +
                            std::to_string(batch));
    for (int64_t b = 0; b < batch; ++b) {
      const SeqView& t = types->views()[static_cast<size_t>(b)];
      if (t.len != views[static_cast<size_t>(b)].len)
        throw py::value_error("token_type_ids[" + std::to_string(b) + "] has " + std::to_string(t.len) +
                              " entries, input_ids[" + std::to_string(b) + "] " +
                              std::to_string(views[static_cast<size_t>(b)].len));
      views[static_cast<size_t>(b)].types = t.ids;
    }
  }
  if (!masking.is_none() && !py::isinstance<Masker>(masking))
    throw py::type_error("masking must be a MaskingConfig or None, got " + type_name(masking));
  const Masker* masker = masking.is_none() ? nullptr : masking.cast<const Masker*>();
  if (masker && (pad_token_id < 0 || pad_token_id >= masker->options().vocab_size))
    throw py::value_error("pad_token_id must be in [0, vocab_size=" + std::to_string(masker->options().vocab_size) +
                          "), got " + std::to_string(pad_token_id));
  const Int64Array stream_arr = optional_array(streams, "streams", batch);
  const uint64_t* stream_ptr = streams.is_none() ? nullptr : reinterpret_cast<const uint64_t*>(stream_arr.data());

  const CollatePlan plan = plan_collate(views, packed, pad_to_multiple_of);
  py::dict out;
  CollateBuffers buf;
  auto alloc = [&](const char* key) {
    Int64Array a = packed ? Int64Array(plan.total_tokens) : Int64Array({plan.batch, plan.row_len});
    int64_t* ptr = a.mutable_data();
    out[key] = std::move(a);
    return ptr;
  };
  buf.input_ids = alloc("input_ids");
  if (!packed) buf.attention_mask = alloc("attention_mask");
  buf.token_type_ids = alloc("token_type_ids");
  if (masker) buf.labels = alloc("labels");
  if (packed) {
    if (plan.total_tokens > INT32_MAX)
      throw py::value_error("packed batch has " + std::to_string(plan.total_tokens) +
                            " tokens; cu_seqlens is int32 (at most 2^31 - 1)");
    buf.position_ids = alloc("position_ids");
    py::array_t<int32_t> cu(batch + 1);
    int32_t* cu_ptr = cu.mutable_data();
    for (int64_t b = 0; b <= batch; ++b) cu_ptr[b] = static_cast<int32_t>(plan.offsets[static_cast<size_t>(b)]);
    out["cu_seqlens"] = std::move(cu);
    out["max_seqlen"] = py::int_(plan.max_seqlen);
  }
  {
    py::gil_scoped_release release;
    collate_batch(views, plan, pad_token_id, masker, seed, stream_ptr, num_threads, buf);
  }
  return out;
}

py::dict py_build_nsp_pairs(const py::object& tokens, const py::object& sentence_offsets,
                            const py::object& document_offsets, int64_t cls_token_id, int64_t sep_token_id,
                            int64_t max_seq_len, double short_seq_prob, double random_next_prob, uint64_t seed,
                            int num_threads) {
  const Int64Array tok = as_int64_array(tokens, "tokens", 1);
  const Int64Array sent = as_int64_array(sentence_offsets, "sentence_offsets", 1);
  const Int64Array docs = as_int64_array(document_offsets, "document_offsets", 1);
  if (sent.shape(0) < 1 || docs.shape(0) < 1)
    throw py::value_error("sentence_offsets and document_offsets need at least one entry (a leading 0)");
  Corpus corpus;
  corpus.tokens = tok.data();
  corpus.num_tokens = tok.shape(0);
  corpus.sentence_offsets = sent.data();
  corpus.num_sentences = sent.shape(0) - 1;
  corpus.document_offsets = docs.data();
  corpus.num_documents = docs.shape(0) - 1;
  NspOptions o;
  o.cls_token_id = cls_token_id;
  o.sep_token_id = sep_token_id;
  o.max_seq_len = max_seq_len;
  o.short_seq_prob = short_seq_prob;
  o.random_next_prob = random_next_prob;
  NspPairs pairs;
  {
    py::gil_scoped_release release;
    pairs = build_nsp_pairs(corpus, o, seed, num_threads);
  }
  auto to_numpy = [](const std::vector<int64_t>& v) {
    Int64Array a(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
  };
  py::dict out;
  out["input_ids"] = to_numpy(pairs.input_ids);
  out["token_type_ids"] = to_numpy(pairs.token_type_ids);
  out["offsets"] = to_numpy(pairs.offsets);
  out["next_sentence_label"] = to_numpy(pairs.next_sentence_label);
  out["document_index"] = to_numpy(pairs.document_index);
  return out;
}

}  // namespace fastbert
