"""The Hugging Face encoder families and what fastbert does with each: the list tests/test_hf.py checks (every
encoder in the installed transformers that calls attention through AttentionInterface must be here) and from which
the README's table is generated (``python tests/hf_families.py`` prints it).

Each entry: model_type -> dict(
    config: overrides making a tiny random model (2 layers, hidden 64),
    positions: padding-free batches work from restarting position_ids alone (the family passes position_ids down to
               attention); otherwise they need DataCollatorWithFlattening(return_flash_attn_kwargs=True),
    packable: False when padding-free batches are refused (default True),
    fused: what fastbert.patch swaps (roles found by module structure), as a set,
    unpads: fastbert.patch runs padded batches through the layers padding-free (default True; False where its probe
            finds the family cannot),
    note: anything a user must know,
)
"""
from __future__ import annotations

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=100,
            max_position_embeddings=128)
BERT_LIKE = {"add_layer_norm", "dense_act", "layer_norm", "head_transform"}

ROBERTA_LIKE = {"add_layer_norm", "dense_act", "layer_norm"}  # the LM head's dense -> gelu sits beside its decoder
PRE_LN = "pre-LayerNorm blocks: LayerNorms fused, no add+LayerNorm to fuse"

FAMILIES: dict[str, dict] = {
    "bert": dict(positions=True, fused=BERT_LIKE),
    "roberta": dict(positions=True, fused=ROBERTA_LIKE, note="packed: position_ids_start = padding_idx + 1"),
    "xlm-roberta": dict(positions=True, fused=ROBERTA_LIKE, note="packed: position_ids_start = padding_idx + 1"),
    "camembert": dict(positions=True, fused=ROBERTA_LIKE, note="packed: position_ids_start = padding_idx + 1"),
    "electra": dict(config=dict(embedding_size=32), positions=True, fused=BERT_LIKE),
    "albert": dict(config=dict(embedding_size=32), positions=True, fused={"layer_norm"},
                   note="attention output and FFN sit inside AlbertAttention / AlbertLayer: LayerNorms fused only"),
    "distilbert": dict(config=dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128), positions=False,
                       fused={"layer_norm"}, note="residual adds sit in TransformerBlock: LayerNorms fused only"),
    "modernbert": dict(config=dict(num_hidden_layers=3, global_attn_every_n_layers=2, local_attention=8,
                                   pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2),
                       positions=False, fused={"layer_norm", "head_transform"},
                       note="local layers use the kernel's sliding window; " + PRE_LN + "; GLU MLP not fused"),
    "data2vec-text": dict(positions=True, fused=ROBERTA_LIKE),
    "ernie": dict(positions=True, fused=BERT_LIKE),
    "roc_bert": dict(positions=True, fused=BERT_LIKE),
    "layoutlm": dict(positions=False, fused=BERT_LIKE, note="builds its own 4-D mask: reduced to key padding"),
    "xmod": dict(config=dict(default_language="en_XX"), positions=True, fused={"layer_norm", "dense_act"}, unpads=False,
                 note="per-language adapters after the FFN: no add+LayerNorm to fuse; per-row language ids keep "
                      "patched batches padded"),
    "roberta-prelayernorm": dict(positions=True, fused={"layer_norm"}, note=PRE_LN),
    "xlm-roberta-xl": dict(positions=True, fused={"layer_norm", "dense_act"}, note=PRE_LN),
    "esm": dict(config=dict(pad_token_id=1, mask_token_id=2), positions=False, fused={"layer_norm"}, note=PRE_LN),
    "esmc": dict(config=dict(num_key_value_heads=4, head_dim=16), positions=False, fused={"layer_norm"}, note=PRE_LN),
    "nomic_bert": dict(positions=False, fused={"layer_norm"}, note="SwiGLU MLP not fused"),
    "gte": dict(positions=False, fused={"layer_norm"}, note="GLU MLP not fused"),
    "jina_embeddings_v3": dict(positions=False, fused={"layer_norm"},
                               note="with its pooler (AutoModel) patched batches stay padded: the pooler reads the "
                                    "padded layout"),
    "neomme": dict(config=dict(num_key_value_heads=2), positions=False, fused={"layer_norm"},
                   note="grouped-query attention: key/value heads repeated per group"),
    "eurobert": dict(config=dict(num_key_value_heads=2), positions=False, fused=set(),
                     note="grouped-query attention; RMSNorm: nothing to fuse"),
    "ultrabert": dict(config=dict(num_key_value_heads=2), positions=False, fused=set(),
                      note="grouped-query attention; RMSNorm: nothing to fuse"),
    "mobilebert": dict(config=dict(embedding_size=32), positions=False, packable=False, unpads=False,
                       fused={"dense_act", "head_transform"},
                       note="padding-free refused (embeddings mix neighbouring tokens); NoNorm layers not fused"),
}

# Encoders whose attention does not go through transformers' AttentionInterface (fastbert cannot plug in there):
# refused by fastbert.patch with a message unless a module matches a fused op; listed in the README for clarity.
NOT_ROUTED = ("deberta", "deberta-v2", "mpnet", "funnel", "longformer", "big_bird", "convbert", "squeezebert",
              "rembert", "megatron-bert", "ibert", "luke", "tapas", "roformer", "nystromformer", "mra", "yoso", "fnet")


def markdown_table() -> str:
    """The README's family table."""
    lines = ["| family (model_type) | attention | padding-free batches | `patch()`: modules swapped | `patch()`: padded "
             "batches run padding-free | notes |",
             "|---|---|---|---|---|---|"]
    for model_type, entry in FAMILIES.items():
        packed = ("refused" if not entry.get("packable", True) else "✔ (position_ids or flash kwargs)"
                  if entry["positions"] else "✔ (needs `return_flash_attn_kwargs=True`)")
        fused = ", ".join(sorted(entry["fused"])) or "—"
        unpads = "✔" if entry.get("unpads", True) else "— (kept padded)"
        lines.append(f"| {model_type} | ✔ | {packed} | {fused} | {unpads} | {entry.get('note', '')} |")
    lines.append(f"| decoders (`config.is_decoder`), cross-attention | refused (ValueError naming the class) | — | — | — | "
                 "fastbert's attention is bidirectional |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
