"""BERT in plain PyTorch, with Hugging Face's module and parameter names, and fastbert's fused ops plugged in.

Read top-down: embeddings -> N x [self-attention -> add&LayerNorm -> FFN(GELU) -> add&LayerNorm] -> pooler, then the
task heads. Every module keeps the name of the HF module it replaces, so ``load_state_dict(hf.state_dict())`` works
both ways without remapping.

Two input layouts flow through the same modules:

* padded: ``input_ids [batch, seqlen]`` with an HF 0/1 ``attention_mask [batch, seqlen]``;
  hidden states are ``[batch, seqlen, hidden]``.
* packed (padding-free): ``input_ids [total_tokens]`` with int32 ``cu_seqlens [batch + 1]`` and ``max_seqlen``;
  hidden states are ``[total_tokens, hidden]`` and nothing is computed on padding.

Which ops run is decided once, by ``fastbert.ops.choose_path(config.attn_implementation, device)``, when a model is
built, moved to a device or switched with ``set_attn_implementation``: every layer keeps the resulting
``Kernels`` table (``self.kernels``) and calls its entries (eager/sdpa: HF's computations; fused: fastbert's ops).
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import IGNORE_INDEX, BertConfig
from ..ops import padding
from ..ops.dispatch import AttentionInputs, Kernels, Path, choose_path
from ..ops.linear import Linear
from . import loading
from .outputs import (
    BaseModelOutputWithPooling,
    BertForPreTrainingOutput,
    MaskedLMOutput,
    NextSentencePredictorOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)


def _dropout_p(dropout: nn.Dropout, training: bool) -> float:
    return dropout.p if training else 0.0


class _UsesKernels(nn.Module):
    """A module that calls the kernel table of its model's path (installed by ``BertPreTrainedModel``)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.kernels: Kernels = choose_path(config.attn_implementation).kernels  # until the model installs its own


# ----------------------------------------------------------------------------------------------------------------
# embeddings
# ----------------------------------------------------------------------------------------------------------------
class BertEmbeddings(_UsesKernels):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings)[None, :], persistent=False)
        # Older checkpoints saved position_ids as a persistent buffer: accept and ignore it.
        self._register_load_state_dict_pre_hook(_drop_legacy_buffers)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        words = self.word_embeddings(input_ids)  # [..., hidden]
        extra = self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.kernels.add_layer_norm(words, extra, self.LayerNorm, 0.0))


def _drop_legacy_buffers(state_dict, prefix, *args, **kwargs):
    for name in ("position_ids", "token_type_ids"):
        state_dict.pop(prefix + name, None)


# ----------------------------------------------------------------------------------------------------------------
# one encoder layer
# ----------------------------------------------------------------------------------------------------------------
class BertSelfAttention(_UsesKernels):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_dim
        self.all_head_size = config.hidden_size
        self.query = Linear(config.hidden_size, config.hidden_size)
        self.key = Linear(config.hidden_size, config.hidden_size)
        self.value = Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, hidden: torch.Tensor, attn: AttentionInputs) -> torch.Tensor:
        # q, k, v: [batch, seqlen, heads, head_dim] or [total, heads, head_dim]
        q, k, v = self.kernels.project_qkv(hidden, self.query, self.key, self.value, self.num_attention_heads)
        out = self.kernels.attention(q, k, v, attn, _dropout_p(self.dropout, self.training))
        return out.reshape(hidden.shape)  # [..., hidden]


class BertSelfOutput(_UsesKernels):
    """dense -> dropout -> + residual -> LayerNorm (one fused op on the "fused" path)."""

    def __init__(self, config: BertConfig, in_features: int | None = None):
        super().__init__(config)
        self.dense = Linear(in_features or config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.kernels.add_layer_norm(self.dense(hidden), residual, self.LayerNorm,
                                           _dropout_p(self.dropout, self.training))


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden: torch.Tensor, attn: AttentionInputs) -> torch.Tensor:
        return self.output(self.self(hidden, attn), hidden)


class BertIntermediate(_UsesKernels):
    """dense -> activation; on the "fused" path a bias-free GEMM, then bias + GELU in one op."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.dense = Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.kernels.dense_act(hidden, self.dense, self.config.hidden_act)


class BertOutput(BertSelfOutput):
    """dense (intermediate -> hidden) -> dropout -> + residual -> LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__(config, in_features=config.intermediate_size)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden: torch.Tensor, attn: AttentionInputs) -> torch.Tensor:
        hidden = self.attention(hidden, attn)
        return self.output(self.intermediate(hidden), hidden)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, hidden: torch.Tensor, attn: AttentionInputs, output_hidden_states: bool = False):
        all_hidden = [hidden] if output_hidden_states else None
        for layer in self.layer:
            if self.gradient_checkpointing and self.training:
                hidden = checkpoint(layer, hidden, attn, use_reentrant=False)
            else:
                hidden = layer(hidden, attn)
            if all_hidden is not None:
                all_hidden.append(hidden)
        return hidden, (tuple(all_hidden) if all_hidden is not None else None)


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, first_token: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(first_token))


# ----------------------------------------------------------------------------------------------------------------
# shared machinery: init, the path, loading and saving
# ----------------------------------------------------------------------------------------------------------------
class BertPreTrainedModel(nn.Module):
    """Weight init, the path (``choose_path``), ``from_pretrained`` / ``save_pretrained`` (local folders only), and
    the attributes Hugging Face tooling reads (``transformers.Trainer``, ``pipeline``, sentence-transformers)."""

    base_model_prefix = "bert"
    main_input_name = "input_ids"
    accepts_loss_kwargs = False  # Trainer: keep dividing the loss by the accumulation steps itself
    _keys_to_ignore_on_save = None

    def __init__(self, config: BertConfig):
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a fastbert.BertConfig, got {type(config).__name__}")
        self.config = config.replace()  # our own copy: the caller's config is never mutated
        self.path: Path = choose_path(self.config.attn_implementation)

    # -- init (HF's _init_weights) --------------------------------------------------------------------------------
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def post_init(self) -> None:
        """End of every model's __init__: share the config, install the path, initialise and tie the weights."""
        for module in self.modules():
            if hasattr(module, "config"):
                module.config = self.config
        self._install_path()
        self.apply(self._init_weights)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Heads with an MLM decoder share its weight with the word embeddings (overridden there)."""

    def _tied_keys(self) -> list[str]:
        return []

    # -- the path -------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _install_path(self) -> None:
        """Ask the policy once for this model's config and device, and hand the kernel table to every layer."""
        device = next(self.parameters(), torch.empty(0)).device
        self.path = choose_path(self.config.attn_implementation, device)
        for module in self.modules():
            if isinstance(module, _UsesKernels):
                module.kernels = self.path.kernels
            elif isinstance(module, BertPreTrainedModel):
                module.path = self.path

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .half() end here: "auto" may mean another path on the new device
        out = super()._apply(fn, *args, **kwargs)
        if self.path is not None:
            self._install_path()
        return out

    def set_attn_implementation(self, attn_implementation: str) -> "BertPreTrainedModel":
        """Switch every layer to "auto", "eager", "sdpa" or "fused" (in place; the weights are untouched)."""
        choose_path(attn_implementation)  # validates the name before anything changes
        self.config.attn_implementation = attn_implementation
        self._install_path()
        return self

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """Recompute each layer in backward (torch.utils.checkpoint, non-reentrant; Trainer's arguments accepted)."""
        for module in self.modules():
            if isinstance(module, BertEncoder):
                module.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if isinstance(module, BertEncoder):
                module.gradient_checkpointing = False

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters (tied ones once), as Hugging Face counts them: optionally only trainable ones, optionally
        without the embedding tables."""
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        unique = {id(p): p for p in self.parameters() if id(p) not in skip}
        return sum(p.numel() for p in unique.values() if p.requires_grad or not only_trainable)

    # -- loading and saving ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, attn_implementation: str | None = None,
                        **config_overrides: Any) -> "BertPreTrainedModel":
        """Load a local Hugging Face folder (config.json + model.safetensors or pytorch_model.bin), including the
        sentence-transformers layout. Never touches the network.

        Checkpoints of another BERT class load too: the ``bert.`` prefix is added or stripped as needed, heads the
        checkpoint lacks are freshly initialised (logged), and heads this class lacks are ignored (logged). Missing
        encoder weights, unknown keys and shape mismatches raise ValueError. Like transformers, the model comes back
        in eval mode (call ``.train()`` to fine-tune).
        """
        folder = loading.resolve_model_folder(path)
        if attn_implementation is not None:
            config_overrides["attn_implementation"] = attn_implementation
        model = cls(BertConfig.from_pretrained(folder, **config_overrides))
        model.load_checkpoint_state_dict(loading.read_weights(folder))
        return model.eval()

    def load_checkpoint_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint's tensors into this model with the checks described in ``from_pretrained``."""
        loading.load_into(self, state_dict, self.base_model_prefix + ".", set(self._tied_keys()))
        self.tie_weights()

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json + model.safetensors (tied copies written once, as Hugging Face does)."""
        os.makedirs(path, exist_ok=True)
        config = self.config.replace(extra={**self.config.extra, "architectures": [type(self).__name__]})
        config.save_pretrained(path)
        loading.save_weights(self, os.fspath(path), set(self._tied_keys()))


_INDEX_DTYPES = (torch.int64, torch.int32)  # what nn.Embedding takes as indices


def _check_inputs(config: BertConfig, input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen,
                  device: torch.device | None = None):
    """Validate shapes, dtypes and devices on the host and all value ranges with one device->host transfer.
    ``device``: the model's device (input_ids must be on it)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in _INDEX_DTYPES:
        raise ValueError("input_ids must be an integer tensor (int64 or int32), got "
                         f"{input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}")
    if device is not None and input_ids.device != device:
        raise ValueError(f"input_ids is on {input_ids.device} but the model is on {device}")
    packed = cu_seqlens is not None
    if packed:
        if input_ids.dim() != 1:
            raise ValueError(f"input_ids must be 1-D [total_tokens] with cu_seqlens, got shape {tuple(input_ids.shape)}")
        if attention_mask is not None:
            raise ValueError("attention_mask must be None with cu_seqlens (the packed form has no padding)")
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1:
            got = f"{cu_seqlens.dtype} shape {tuple(cu_seqlens.shape)}" if isinstance(cu_seqlens, torch.Tensor) \
                else type(cu_seqlens).__name__
            raise ValueError(f"cu_seqlens must be a 1-D int32 tensor [batch + 1], got {got}")
        if cu_seqlens.device != input_ids.device:
            raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but input_ids is on {input_ids.device}")
        if cu_seqlens.numel() < 2:
            raise ValueError("cu_seqlens: empty batch (needs at least 2 entries)")
        if not isinstance(max_seqlen, int) or isinstance(max_seqlen, bool) or max_seqlen < 0:
            raise ValueError(f"max_seqlen must be a non-negative int with cu_seqlens, got {max_seqlen!r}")
        if max_seqlen > config.max_position_embeddings:
            raise ValueError(
                f"max_seqlen={max_seqlen} exceeds max_position_embeddings={config.max_position_embeddings}")
    else:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seqlen], got shape {tuple(input_ids.shape)}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids: empty batch (shape {tuple(input_ids.shape)})")
        if input_ids.shape[1] > config.max_position_embeddings:
            raise ValueError(f"input_ids: sequence length {input_ids.shape[1]} exceeds "
                             f"max_position_embeddings={config.max_position_embeddings}")
        if max_seqlen is not None and max_seqlen != input_ids.shape[1]:
            raise ValueError(f"max_seqlen is for the packed layout (with cu_seqlens); got max_seqlen={max_seqlen!r} "
                             f"with padded input_ids {tuple(input_ids.shape)}")
    if packed and input_ids.numel() == 0:
        raise ValueError("input_ids: empty batch (no tokens)")
    for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids), ("position_ids", position_ids)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.shape != input_ids.shape:
            raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(t.shape)}")
        if t.device != input_ids.device:
            raise ValueError(f"{name} is on {t.device} but input_ids is on {input_ids.device}")
        if name != "attention_mask" and t.dtype not in _INDEX_DTYPES:
            raise ValueError(f"{name} must be an integer tensor (int64 or int32), got {t.dtype}")
        if name == "attention_mask" and t.dtype.is_complex:
            raise ValueError(f"attention_mask must be a bool, integer or float 0/1 mask, got {t.dtype}")

    checks: list[tuple[str, torch.Tensor]] = [
        (f"input_ids: token id outside [0, vocab_size={config.vocab_size})",
         (input_ids < 0).any() | (input_ids >= config.vocab_size).any()),
    ]
    if token_type_ids is not None:
        checks.append((f"token_type_ids: value outside [0, type_vocab_size={config.type_vocab_size})",
                       (token_type_ids < 0).any() | (token_type_ids >= config.type_vocab_size).any()))
    if position_ids is not None:
        checks.append((f"position_ids: value outside [0, max_position_embeddings={config.max_position_embeddings})",
                       (position_ids < 0).any() | (position_ids >= config.max_position_embeddings).any()))
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        what = "a float mask" if attention_mask.dtype.is_floating_point else "an integer mask"
        checks.append((f"attention_mask must hold only 0 and 1 (1 = token, 0 = padding); got {what} with other values "
                       "(pass HF's 0/1 mask, not an additive -10000/-inf mask)",
                       ((attention_mask != 0) & (attention_mask != 1)).any()))
    if packed:
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        checks.append(("cu_seqlens must start at 0, never decrease and end at len(input_ids)",
                       (cu_seqlens[0] != 0) | (lengths < 0).any() | (cu_seqlens[-1] != input_ids.numel())))
        checks.append((f"max_seqlen={max_seqlen} is smaller than the longest sequence in cu_seqlens",
                       (lengths > max_seqlen).any()))
    failed = torch.stack([c for _, c in checks]).cpu()  # the one sync of the forward (skippable: check_inputs=False)
    for (message, _), bad in zip(checks, failed.tolist()):
        if bad:
            raise ValueError(message)


# ----------------------------------------------------------------------------------------------------------------
# the encoder
# ----------------------------------------------------------------------------------------------------------------
class BertModel(BertPreTrainedModel):
    """The BERT encoder (+ pooler). Returns ``last_hidden_state`` and ``pooler_output`` like HF's BertModel.

    Padded batches are unpadded internally (the whole encoder then runs on ``[total_tokens, hidden]``) when the
    path's rule says so (``Path.unpads``: the "fused" path when at least 10% of the batch is padding) or when
    ``model.unpad`` forces it ("always" / "never"; default "auto"). Unpadding reads the per-row lengths on the host:
    one device->host copy of ``batch`` ints. The result is re-padded at the output (zeros at padding positions, where
    HF's eager attention leaves values computed from garbage-in rows; compare real positions only).

    Set ``model.check_inputs = False`` to skip the input validation (one more device->host sync per forward).
    Inside ``torch.compile`` both the validation and the internal unpadding are skipped (they need host syncs and
    data-dependent shapes); pass the collator's packed batch to a compiled model to run padding-free.
    """

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        config = self.config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.check_inputs = True
        self.unpad = "auto"
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **hf_kwargs: Any,
    ) -> BaseModelOutputWithPooling:
        """Padded: input_ids [batch, seqlen] (+ attention_mask). Packed: input_ids [total] + cu_seqlens + max_seqlen
        (position_ids default to 0..len-1 per sequence). Outputs keep the input's layout.

        Hugging Face's padding-free rows are accepted too (``DataCollatorWithFlattening``): input_ids ``[1, total]``
        with restarting ``position_ids`` and optionally ``cu_seq_lens_q/k``, ``max_length_q/k``, ``seq_idx``; they run
        packed and ``last_hidden_state`` comes back as ``[1, total, hidden]``."""
        input_ids, position_ids, cu_seqlens, max_seqlen, row = _hf_padding_free(
            input_ids, attention_mask, position_ids, cu_seqlens, max_seqlen, hf_kwargs)
        token_type_ids = token_type_ids.reshape(-1) if row and token_type_ids is not None else token_type_ids
        compiling = torch.compiler.is_compiling()
        if self.check_inputs and not compiling:  # value checks need a host sync: skipped inside torch.compile graphs
            _check_inputs(self.config, input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen,
                          self.embeddings.word_embeddings.weight.device)
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask != 0  # a float 0/1 mask (checked above): the fused ops take bool masks
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        unpadded = None
        if cu_seqlens is not None:
            attn = AttentionInputs(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
            if position_ids is None:
                position_ids = padding.packed_position_ids(cu_seqlens, input_ids.numel())
        else:
            if position_ids is None:
                position_ids = self.embeddings.position_ids[:, : input_ids.shape[1]].expand_as(input_ids)
            if not compiling:  # data-dependent shapes: not traced
                unpadded, attention_mask = self._maybe_unpad(attention_mask)
            if unpadded is None:
                attn = AttentionInputs(attention_mask=attention_mask)
            else:
                attn = AttentionInputs(cu_seqlens=unpadded.cu_seqlens, max_seqlen=unpadded.max_seqlen)
                input_ids, token_type_ids, position_ids = (
                    t.reshape(-1)[unpadded.indices] for t in (input_ids, token_type_ids, position_ids))  # [total] each

        hidden = self.embeddings(input_ids, token_type_ids, position_ids)  # [batch, seqlen, hidden] or [total, hidden]
        hidden, all_hidden = self.encoder(hidden, attn, output_hidden_states)
        pooled = None
        if self.pooler is not None:
            pooled = self.pooler(first_tokens(hidden, attn.cu_seqlens))  # [batch, hidden]
        if unpadded is not None:  # back to the caller's padded layout
            shape = attention_mask.shape
            hidden = padding.pad(hidden, unpadded.indices, shape)
            if all_hidden is not None:
                all_hidden = tuple(padding.pad(h, unpadded.indices, shape) for h in all_hidden)
        if row:  # a Hugging Face padding-free row: back to [1, total, hidden]
            hidden = hidden[None]
            all_hidden = None if all_hidden is None else tuple(h[None] for h in all_hidden)
        out = BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled, hidden_states=all_hidden)
        return out if return_dict else out.to_tuple()

    def _maybe_unpad(self, attention_mask: torch.Tensor | None) -> tuple[padding.Unpadded | None, torch.Tensor | None]:
        """(packed layout, mask): the packed layout of this padded batch when the path's rule (or ``self.unpad``) says
        to unpad, else None; the mask becomes None when nothing is padded (attention then runs unmasked)."""
        if attention_mask is None or self.unpad == "never":
            return None, attention_mask
        layout, real = self.path.unpad(attention_mask, self.unpad)
        return layout, (None if layout is None and real == attention_mask.numel() else attention_mask)


_HF_PACKING_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


def _hf_padding_free(input_ids, attention_mask, position_ids, cu_seqlens, max_seqlen, hf_kwargs):
    """(input_ids, position_ids, cu_seqlens, max_seqlen, row): a Hugging Face padding-free row ``[1, total]`` (flash
    kwargs, or restarting position_ids) in fastbert's packed layout, with row=True; other inputs unchanged."""
    unknown = sorted(k for k, v in hf_kwargs.items() if k not in _HF_PACKING_KWARGS and v is not None and v is not False)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown} (fastbert's models take input_ids, attention_mask, "
                        f"token_type_ids, position_ids, cu_seqlens, max_seqlen and Hugging Face's {_HF_PACKING_KWARGS})")
    cu = hf_kwargs.get("cu_seq_lens_q")
    if cu_seqlens is not None or not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1:
        if cu is not None:
            raise ValueError("cu_seq_lens_q: Hugging Face's padding-free kwargs go with one row input_ids [1, total] "
                             "and no cu_seqlens")
        return input_ids, position_ids, cu_seqlens, max_seqlen, False
    if cu is not None:
        other = hf_kwargs.get("cu_seq_lens_k")
        if other is not None and other is not cu and not torch.equal(other, cu):
            raise ValueError("cu_seq_lens_k must equal cu_seq_lens_q (self-attention)")
        max_len = hf_kwargs.get("max_length_q")
        found = (cu.to(torch.int32), int(max_len) if max_len is not None else int((cu[1:] - cu[:-1]).max()))
    elif attention_mask is None and position_ids is not None and not torch.compiler.is_compiling():
        found = padding.cu_seqlens_from_position_ids(position_ids)
    else:
        found = None
    if found is None:
        return input_ids, position_ids, cu_seqlens, max_seqlen, False
    if attention_mask is not None:
        raise ValueError("attention_mask must be None with a padding-free row (cu_seq_lens_q / restarting position_ids)")
    cu_seqlens, max_seqlen = found
    positions = None if position_ids is None else position_ids.reshape(-1)
    if positions is not None and positions.numel() and int(positions.min()) != 0:
        positions = None  # RoBERTa-style offsets (padding_idx + 1): BERT positions restart at 0 per sequence
    return input_ids.reshape(-1), positions, cu_seqlens, max_seqlen, True


def labeled_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices (into ``labels.reshape(-1)``) of the positions with an MLM label. Compute it where the labels
    are made (on the CPU, in the data pipeline) and pass it as ``masked_positions`` to avoid a device sync."""
    return (labels.reshape(-1) != IGNORE_INDEX).nonzero().reshape(-1)


def first_tokens(hidden: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """The [CLS] state of every sequence: [batch, hidden] (a length-0 packed sequence gives zeros)."""
    if cu_seqlens is None:
        return hidden[:, 0]
    starts = cu_seqlens[:-1].long()
    empty = cu_seqlens[1:] == cu_seqlens[:-1]
    if hidden.shape[0] == 0:  # no tokens at all (e.g. an all-padding batch, unpadded)
        return hidden.new_zeros((starts.shape[0], hidden.shape[-1]))
    picked = hidden[starts.clamp(max=max(hidden.shape[0] - 1, 0))]  # [batch, hidden]
    return picked.masked_fill(empty[:, None], 0.0)


# ----------------------------------------------------------------------------------------------------------------
# heads
# ----------------------------------------------------------------------------------------------------------------
class BertPredictionHeadTransform(_UsesKernels):
    """dense -> activation -> LayerNorm (bias + GELU and the LayerNorm fused on the "fused" path)."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.kernels.layer_norm(self.kernels.dense_act(hidden, self.dense, self.config.hidden_act), self.LayerNorm)


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias  # tied, as in HF: both names appear in the state dict

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))  # [..., vocab]


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden)


class BertOnlyNSPHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.seq_relationship = Linear(config.hidden_size, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.seq_relationship(pooled)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = Linear(config.hidden_size, 2)

    def forward(self, hidden: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictions(hidden), self.seq_relationship(pooled)


class _BertWithMLMDecoder(BertPreTrainedModel):
    """Ties ``cls.predictions.decoder.weight`` to the word embeddings."""

    def tie_weights(self) -> None:
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        self.cls.predictions.decoder.bias = self.cls.predictions.bias

    def _tied_keys(self) -> list[str]:
        return ["cls.predictions.decoder.weight", "cls.predictions.decoder.bias"]


def _base(config: BertConfig, add_pooling_layer: bool = True) -> BertModel:
    return BertModel(config, add_pooling_layer=add_pooling_layer)


def _add_classifier(model: BertPreTrainedModel, add_pooling_layer: bool) -> None:
    """The encoder, dropout and ``classifier`` of the sequence / token classification heads (HF's layout)."""
    config = model.config
    model.num_labels = config.num_labels
    model.bert = _base(config, add_pooling_layer=add_pooling_layer)
    model.dropout = nn.Dropout(config.classifier_dropout if config.classifier_dropout is not None
                               else config.hidden_dropout_prob)
    model.classifier = Linear(config.hidden_size, config.num_labels)
    model.post_init()


def _mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled positions; 0 (not NaN, as a plain mean would give) when a batch has none,
    which short sequences with independently drawn masks can."""
    labels = labels.reshape(-1)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels, ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def _mlm_logits_and_loss(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor | None,
                         masked_positions: torch.Tensor | None):
    """MLM logits over the whole sequence (HF behaviour), or only at ``masked_positions`` (flat indices into the
    token positions): the transform and the [hidden x vocab] projection then run on ~15% of the tokens and the
    loss is the same, since unlabeled positions never enter it."""
    if masked_positions is None:
        logits = head(hidden)  # [..., vocab]
        return logits, (_mlm_loss(logits, labels) if labels is not None else None)
    logits = head(hidden.reshape(-1, hidden.shape[-1])[masked_positions])  # [num_masked, vocab]
    loss = _mlm_loss(logits, labels.reshape(-1)[masked_positions]) if labels is not None else None
    return logits, loss


class BertForPreTraining(_BertWithMLMDecoder):
    """MLM + NSP. ``labels`` are MLM targets (-100 = ignore); ``next_sentence_label`` 0 = IsNext, 1 = NotNext."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = _base(self.config)
        self.cls = BertPreTrainingHeads(self.config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, cu_seqlens=None,
                max_seqlen=None, labels=None, next_sentence_label=None, masked_positions=None,
                output_hidden_states=False, return_dict=True, **hf_kwargs):
        """``masked_positions`` (see ``labeled_positions``): compute MLM logits only there; ``prediction_logits`` is
        then ``[num_masked, vocab]`` and the loss is unchanged."""
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen,
                         output_hidden_states, **hf_kwargs)
        prediction_logits, mlm_loss = _mlm_logits_and_loss(self.cls.predictions, base.last_hidden_state, labels,
                                                           masked_positions)
        nsp_logits = self.cls.seq_relationship(base.pooler_output)
        loss = None
        if mlm_loss is not None and next_sentence_label is not None:
            loss = mlm_loss + F.cross_entropy(nsp_logits.float(), next_sentence_label.reshape(-1))
        out = BertForPreTrainingOutput(loss, prediction_logits, nsp_logits, base.hidden_states)
        return out if return_dict else out.to_tuple()


class BertForMaskedLM(_BertWithMLMDecoder):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = _base(self.config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(self.config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, cu_seqlens=None,
                max_seqlen=None, labels=None, masked_positions=None, output_hidden_states=False, return_dict=True,
                **hf_kwargs):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen,
                         output_hidden_states, **hf_kwargs)
        logits, loss = _mlm_logits_and_loss(self.cls.predictions, base.last_hidden_state, labels, masked_positions)
        out = MaskedLMOutput(loss, logits, base.hidden_states)
        return out if return_dict else out.to_tuple()


class BertForNextSentencePrediction(BertPreTrainedModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = _base(self.config)
        self.cls = BertOnlyNSPHead(self.config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, cu_seqlens=None,
                max_seqlen=None, labels=None, output_hidden_states=False, return_dict=True, **hf_kwargs):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen,
                         output_hidden_states, **hf_kwargs)
        logits = self.cls(base.pooler_output)
        loss = F.cross_entropy(logits.float(), labels.reshape(-1)) if labels is not None else None
        out = NextSentencePredictorOutput(loss, logits, base.hidden_states)
        return out if return_dict else out.to_tuple()


class BertForSequenceClassification(BertPreTrainedModel):
    """Pooled [CLS] -> dropout -> classifier. Loss as HF: regression (num_labels == 1), single-label (integer
    labels) or multi-label (float labels of shape [batch, num_labels])."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        _add_classifier(self, add_pooling_layer=True)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, cu_seqlens=None,
                max_seqlen=None, labels=None, output_hidden_states=False, return_dict=True, **hf_kwargs):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen,
                         output_hidden_states, **hf_kwargs)
        logits = self.classifier(self.dropout(base.pooler_output))  # [batch, num_labels]
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float().reshape(-1))
            elif labels.dtype.is_floating_point:
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.reshape(-1))
        out = SequenceClassifierOutput(loss, logits, base.hidden_states)
        return out if return_dict else out.to_tuple()


class BertForTokenClassification(BertPreTrainedModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        _add_classifier(self, add_pooling_layer=False)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, cu_seqlens=None,
                max_seqlen=None, labels=None, output_hidden_states=False, return_dict=True, **hf_kwargs):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen,
                         output_hidden_states, **hf_kwargs)
        logits = self.classifier(self.dropout(base.last_hidden_state))  # [..., num_labels]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX)
        out = TokenClassifierOutput(loss, logits, base.hidden_states)
        return out if return_dict else out.to_tuple()


class BertForQuestionAnswering(BertPreTrainedModel):
    """Span extraction: start/end logits per token. Padded layout only for the loss's positions."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = _base(self.config, add_pooling_layer=False)
        self.qa_outputs = Linear(self.config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, cu_seqlens=None,
                max_seqlen=None, start_positions=None, end_positions=None, output_hidden_states=False,
                return_dict=True, **hf_kwargs):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen,
                         output_hidden_states, **hf_kwargs)
        logits = self.qa_outputs(base.last_hidden_state)  # [batch, seqlen, 2] or [total, 2]
        if cu_seqlens is not None:
            # per-sequence positions: back to [batch, max_seqlen, 2]; the padding gets finfo.min so the span softmax
            # covers the real tokens only (the packed form has no padding to attend to)
            logits, mask = padding.packed_to_padded(logits, cu_seqlens, max_seqlen)
            logits = logits.masked_fill(~mask.bool()[..., None], torch.finfo(logits.dtype).min)
        start_logits, end_logits = logits.unbind(-1)  # [batch, seqlen] each
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.shape[-1]  # positions outside the sequence are ignored, as in HF
            start = start_positions.reshape(-1).clamp(0, ignored)
            end = end_positions.reshape(-1).clamp(0, ignored)
            loss = (F.cross_entropy(start_logits.float(), start, ignore_index=ignored)
                    + F.cross_entropy(end_logits.float(), end, ignore_index=ignored)) / 2
        out = QuestionAnsweringModelOutput(loss, start_logits, end_logits, base.hidden_states)
        return out if return_dict else out.to_tuple()
