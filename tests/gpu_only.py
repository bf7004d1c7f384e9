"""The one list of GPU-marked tests (``@pytest.mark.gpu``): why each needs real hardware, and which CPU tests cover
the same behaviour through Triton's interpreter at small sizes. conftest.py skips a GPU test on a machine without
CUDA with its reason from here; test_gpu_accounting.py fails when a GPU test is missing from this list or names a CPU
counterpart that does not exist."""
from __future__ import annotations

SIZE = "real sizes (seqlen to 1024, BERT-base heads, 16K rows): hours in the interpreter"

GPU_ONLY: dict[str, dict] = {
    # attention
    "test_attention.py::test_gpu_padded": dict(
        reason="the full grid (3 dtypes x head_dim 32/64/128 x seqlen 1..1024) at " + SIZE,
        cpu=["test_attention.py::test_padded_matches_reference", "test_bf16_kernels.py::test_attention_padded_bf16",
             "test_attention.py::test_long_sequence_small_heads", "test_attention.py::test_any_head_dim"]),
    "test_attention.py::test_gpu_packed": dict(
        reason="the packed grid at " + SIZE,
        cpu=["test_attention.py::test_packed_matches_reference", "test_bf16_kernels.py::test_attention_packed_bf16"]),
    "test_attention.py::test_gpu_dropout": dict(
        reason="dropout replay at " + SIZE,
        cpu=["test_attention.py::test_dropout_matches_reference_with_mask",
             "test_bf16_kernels.py::test_attention_dropout_bf16"]),
    "test_attention.py::test_gpu_dropout_statistics_bert_shape": dict(
        reason="keep-rate of a 100M-element BERT-shaped mask (32 x 12 x 512 x 512)",
        cpu=["test_attention.py::test_dropout_keep_statistics"]),
    "test_attention.py::test_gpu_deterministic_and_race_free": dict(
        reason="races only exist where programs run concurrently on hardware; the interpreter runs them one by one",
        cpu=["test_attention.py::test_backward_is_deterministic"]),
    "test_attention.py::test_gpu_bert_qkv_views_bf16": dict(
        reason="BertModel's strided QKV views in bf16 with dropout at " + SIZE,
        cpu=["test_attention.py::test_views_of_fused_qkv_and_noncontiguous",
             "test_bf16_kernels.py::test_minilm_fused_bf16_autocast_matches_transformers_fp32"]),
    "test_attention.py::test_gpu_no_recompile_across_lengths": dict(
        reason="counts the kernels Triton compiled on the device",
        cpu=["test_static_report.py::test_sequence_length_is_not_specialized"]),
    "test_attention.py::test_gpu_compile_inductor": dict(
        reason="inductor's GPU code generation around the custom ops",
        cpu=["test_attention.py::test_torch_compile_fullgraph", "test_compile.py::test_no_graph_breaks"]),
    # the model
    "test_bert_fused.py::test_bf16_pretraining_loss_matches_transformers": dict(
        reason="BERT-base (110M parameters) MLM+NSP under bf16 autocast on 8 x 512 tokens: " + SIZE,
        cpu=["test_bf16_kernels.py::test_minilm_fused_bf16_autocast_matches_transformers_fp32",
             "test_bert_fused.py::test_fused_model_fp16_three_way"]),
    "test_bert_fused.py::test_packed_forward_has_no_host_sync_and_graph_captures": dict(
        reason="CUDA's sync debug mode and CUDA graph capture exist only on a CUDA device",
        cpu=["test_compile.py::test_packed_batch_compiles_fullgraph"]),
    # training
    "test_finetune.py::test_gpu_minilm_imdb_bf16_fused": dict(
        reason="a full MiniLM fine-tune with the fused kernels in bf16: minutes on a GPU, days in the interpreter",
        cpu=["test_finetune.py::test_minilm_imdb_beats_chance"]),
    "test_pretrain.py::test_gpu_bf16_fused_packed_resume": dict(
        reason="bf16 autocast and nccl: exact resume of a fused, packed pretraining run on the GPU",
        cpu=["test_pretrain.py::test_resume_continues_exactly"]),
    # bias + GELU
    "test_gelu.py::test_gpu_grid": dict(
        reason="the dtype x shape grid at " + SIZE,
        cpu=["test_gelu.py::test_bias_gelu", "test_bf16_kernels.py::test_bias_gelu_bf16"]),
    "test_gelu.py::test_gpu_bert_intermediate_shape": dict(
        reason="BERT-base's [16384, 3072] intermediate: " + SIZE, cpu=["test_gelu.py::test_bias_gelu"]),
    "test_gelu.py::test_gpu_many_rows": dict(
        reason="hundreds of thousands of rows (the persistent grid's row loop at scale)",
        cpu=["test_gelu.py::test_rows_4097_fp32"]),
    "test_gelu.py::test_gpu_autocast_bf16": dict(
        reason="torch.autocast on CUDA (bf16 activations, fp32 bias) at " + SIZE,
        cpu=["test_bf16_kernels.py::test_bias_gelu_bf16"]),
    "test_gelu.py::test_gpu_backward_deterministic_large": dict(
        reason="run-to-run determinism of concurrently executing programs, on hardware",
        cpu=["test_gelu.py::test_backward_is_deterministic"]),
    # dropout + residual + LayerNorm
    "test_layer_norm.py::test_gpu_grid": dict(
        reason="the dtype x shape x dropout grid at " + SIZE,
        cpu=["test_layer_norm.py::test_residual_layer_norm", "test_layer_norm.py::test_dropout_residual_layer_norm",
             "test_bf16_kernels.py::test_layer_norm_bf16", "test_bf16_kernels.py::test_layer_norm_dropout_bf16"]),
    "test_layer_norm.py::test_gpu_bert_shape_no_residual": dict(
        reason="BERT-base's [16384, 768] rows with dropout: " + SIZE,
        cpu=["test_layer_norm.py::test_residual_layer_norm"]),
    "test_layer_norm.py::test_gpu_many_rows_and_wide": dict(
        reason="hundreds of thousands of rows and hidden 16384: " + SIZE,
        cpu=["test_layer_norm.py::test_rows_4097_fp32"]),
    "test_layer_norm.py::test_gpu_autocast_bf16": dict(
        reason="torch.autocast on CUDA (bf16 activations, fp32 parameters) at " + SIZE,
        cpu=["test_bf16_kernels.py::test_layer_norm_bf16"]),
    "test_layer_norm.py::test_gpu_backward_deterministic_large": dict(
        reason="run-to-run determinism of concurrently executing programs, on hardware",
        cpu=["test_layer_norm.py::test_backward_is_deterministic"]),
}


def reason(nodeid: str) -> str:
    """The skip reason of a GPU test item (``tests/file.py::name[params]``)."""
    key = nodeid.split("/")[-1].split("[")[0]
    entry = GPU_ONLY.get(key)
    return f"needs a CUDA device: {entry['reason']}" if entry else "needs a CUDA device (not in tests/gpu_only.py!)"
