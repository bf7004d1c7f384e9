"""BERT in plain PyTorch, with Hugging Face's module and parameter names, and fastbert's fused ops plugged in.

Read top-down: embeddings -> N x [self-attention -> add&LayerNorm -> FFN(GELU) -> add&LayerNorm] -> pooler, then the
task heads. Every module keeps the name of the HF module it replaces, so ``load_state_dict(hf.state_dict())`` works
both ways without remapping.

Two input layouts flow through the same modules:

* padded: ``input_ids [batch, seqlen]`` with an HF 0/1 ``attention_mask [batch, seqlen]``;
  hidden states are ``[batch, seqlen, hidden]``.
* packed (padding-free): ``input_ids [total_tokens]`` with int32 ``cu_seqlens [batch + 1]`` and ``max_seqlen``;
  hidden states are ``[total_tokens, hidden]`` and nothing is computed on padding.

``config.attn_implementation`` picks the path: "eager" and "sdpa" are HF's (plain PyTorch modules everywhere);
"fused" runs fastbert's ops (Triton attention, dropout+residual+LayerNorm, bias+GELU), which fall back to their
PyTorch references on CPU tensors (see fastbert._backend).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import ops
from ..config import GELU_APPROXIMATE, BertConfig
from ..ops import reference
from .outputs import (
    BaseModelOutputWithPooling,
    BertForPreTrainingOutput,
    MaskedLMOutput,
    NextSentencePredictorOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    return F.gelu(x, approximate=GELU_APPROXIMATE[name])


@dataclass
class AttentionInputs:
    """What self-attention needs besides q, k, v: the padding mask (padded layout) or the packing (packed layout)."""

    attention_mask: torch.Tensor | None = None  # [batch, seqlen] 0/1, padded layout
    cu_seqlens: torch.Tensor | None = None  # int32 [batch + 1], packed layout
    max_seqlen: int | None = None

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None


# ----------------------------------------------------------------------------------------------------------------
# embeddings
# ----------------------------------------------------------------------------------------------------------------
class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
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
        if self.config.attn_implementation == "fused":
            hidden = ops.layer_norm(words, self.LayerNorm.weight, self.LayerNorm.bias, self.LayerNorm.eps, residual=extra)
        else:
            hidden = self.LayerNorm(words + extra)
        return self.dropout(hidden)


def _drop_legacy_buffers(state_dict, prefix, *args, **kwargs):
    for name in ("position_ids", "token_type_ids"):
        state_dict.pop(prefix + name, None)


# ----------------------------------------------------------------------------------------------------------------
# one encoder layer
# ----------------------------------------------------------------------------------------------------------------
class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_dim
        self.all_head_size = config.hidden_size
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, hidden: torch.Tensor, attn: AttentionInputs) -> torch.Tensor:
        heads_shape = hidden.shape[:-1] + (self.num_attention_heads, self.attention_head_size)
        dropout_p = self.dropout.p if self.training else 0.0
        impl = self.config.attn_implementation
        if impl == "fused":
            # one [3*hidden] GEMM instead of three; q, k, v are strided views of its output (the kernel takes strides)
            weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # [3*hidden, hidden]
            bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
            qkv = F.linear(hidden, weight, bias).view(hidden.shape[:-1] + (3,) + heads_shape[-2:])  # [..., 3, heads, head_dim]
            q, k, v = qkv.unbind(-3)
            out = ops.attention(q, k, v, attention_mask=attn.attention_mask, cu_seqlens=attn.cu_seqlens,
                                max_seqlen=attn.max_seqlen, dropout_p=dropout_p)
            return out.reshape(hidden.shape)  # [..., hidden]
        q = self.query(hidden).view(heads_shape)  # [batch, seqlen, heads, head_dim] or [total, heads, head_dim]
        k = self.key(hidden).view(heads_shape)
        v = self.value(hidden).view(heads_shape)
        fn = reference.eager_attention if impl == "eager" else reference.sdpa_attention
        if attn.packed:
            # eager/sdpa have no packed form: pad (q, k, v in one scatter), attend, drop the padding again
            qkv, mask = reference.packed_to_padded(torch.stack((q, k, v), dim=1), attn.cu_seqlens, attn.max_seqlen)
            qp, kp, vp = qkv.unbind(2)  # [batch, max_seqlen, heads, head_dim] each
            out = reference.padded_to_packed(fn(qp, kp, vp, mask, dropout_p), mask)
        else:
            out = fn(q, k, v, attn.attention_mask, dropout_p)
        return out.reshape(hidden.shape)  # [..., hidden]


class BertSelfOutput(nn.Module):
    """dense -> dropout -> + residual -> LayerNorm (one fused op on the "fused" path)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        hidden = self.dense(hidden)
        if self.config.attn_implementation == "fused":
            dropout_p = self.dropout.p if self.training else 0.0
            return ops.layer_norm(hidden, self.LayerNorm.weight, self.LayerNorm.bias, self.LayerNorm.eps,
                                  residual=residual, dropout_p=dropout_p)
        return self.LayerNorm(self.dropout(hidden) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden: torch.Tensor, attn: AttentionInputs) -> torch.Tensor:
        return self.output(self.self(hidden, attn), hidden)


class BertIntermediate(nn.Module):
    """dense -> GELU; on the "fused" path the bias add and the GELU are one op after a bias-free GEMM."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        act = self.config.hidden_act
        if self.config.attn_implementation == "fused" and act in GELU_APPROXIMATE:
            return ops.bias_gelu(F.linear(hidden, self.dense.weight), self.dense.bias, approximate=GELU_APPROXIMATE[act])
        return activation(act, self.dense(hidden))


class BertOutput(BertSelfOutput):
    """dense (intermediate -> hidden) -> dropout -> + residual -> LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)


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
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, first_token: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(first_token))


# ----------------------------------------------------------------------------------------------------------------
# shared machinery: init, input checks, loading and saving
# ----------------------------------------------------------------------------------------------------------------
class BertPreTrainedModel(nn.Module):
    """Weight init, ``from_pretrained`` / ``save_pretrained`` (local folders only) and the attention switch."""

    base_model_prefix = "bert"

    def __init__(self, config: BertConfig):
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a fastbert.BertConfig, got {type(config).__name__}")
        self.config = config.replace()  # our own copy: the caller's config is never mutated

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
        """End of every model's __init__: share the config, initialise the weights, tie the decoder."""
        _share_config(self)
        self.apply(self._init_weights)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Heads with an MLM decoder share its weight with the word embeddings (overridden there)."""

    # -- switches -------------------------------------------------------------------------------------------------
    def set_attn_implementation(self, attn_implementation: str) -> "BertPreTrainedModel":
        """Switch every layer between "eager", "sdpa" and "fused" (in place; the weights are untouched)."""
        self.config.attn_implementation = attn_implementation
        self.config.validate()
        return self

    def gradient_checkpointing_enable(self) -> None:
        for module in self.modules():
            if isinstance(module, BertEncoder):
                module.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if isinstance(module, BertEncoder):
                module.gradient_checkpointing = False

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- loading --------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, attn_implementation: str | None = None,
                        **config_overrides: Any) -> "BertPreTrainedModel":
        """Load a local Hugging Face folder (config.json + model.safetensors or pytorch_model.bin), including the
        sentence-transformers layout. Never touches the network.

        Checkpoints of another BERT class load too: the ``bert.`` prefix is added or stripped as needed, heads the
        checkpoint lacks are freshly initialised (logged), and heads this class lacks are ignored (logged). Missing
        encoder weights, unknown keys and shape mismatches raise ValueError.
        """
        folder = resolve_model_folder(path)
        if attn_implementation is not None:
            config_overrides["attn_implementation"] = attn_implementation
        config = BertConfig.from_pretrained(folder, **config_overrides)
        model = cls(config)
        model.load_checkpoint_state_dict(_read_weights(folder))
        return model

    def load_checkpoint_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint's tensors into this model with the checks described in ``from_pretrained``."""
        state_dict = _normalize_keys(state_dict)
        own = self.state_dict()
        prefix = self.base_model_prefix + "."
        has_base = any(k.startswith(prefix) for k in own)
        ckpt_has_base = any(k.startswith(prefix) for k in state_dict)
        if has_base and not ckpt_has_base:
            state_dict = {(k if k.startswith("cls.") else prefix + k): v for k, v in state_dict.items()}
        elif not has_base and ckpt_has_base:
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}

        tied = set(self._tied_keys())
        unexpected = sorted(k for k in state_dict if k not in own)
        head_like = ("cls.", "pooler.", prefix + "pooler.", "classifier.", "qa_outputs.")
        bad_unexpected = [k for k in unexpected if not k.startswith(head_like)]
        if bad_unexpected:
            raise ValueError(f"checkpoint has keys this {type(self).__name__} does not know: {bad_unexpected[:8]}")
        missing = sorted(k for k in own if k not in state_dict and k not in tied)
        base_missing = [k for k in missing if not k.startswith(head_like)]
        if base_missing:
            raise ValueError(f"checkpoint lacks encoder weights: {base_missing[:8]}" + (" ..." if len(base_missing) > 8 else ""))
        mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in state_dict if k in own and state_dict[k].shape != own[k].shape]
        if mismatched:
            raise ValueError("checkpoint shapes do not match the config: " + "; ".join(mismatched[:8]))
        if unexpected:
            logger.info("ignored checkpoint weights this %s does not use: %s", type(self).__name__, unexpected)
        if missing:
            logger.warning("%s: newly initialised (not in the checkpoint): %s", type(self).__name__, missing)
        loadable = {k: v for k, v in state_dict.items() if k in own}
        self.load_state_dict(loadable, strict=False)
        self.tie_weights()

    def _tied_keys(self) -> list[str]:
        return []

    # -- saving ---------------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json + model.safetensors (tied copies written once, as Hugging Face does)."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        config = self.config.replace(extra={**self.config.extra, "architectures": [type(self).__name__]})
        config.save_pretrained(path)
        tied = set(self._tied_keys())
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if k not in tied}
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def resolve_model_folder(path: str | os.PathLike) -> str:
    """The folder holding config.json: ``path`` itself, or the Transformer sub-folder a sentence-transformers
    modules.json names. Local paths only."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is not a local model folder (fastbert never downloads weights)")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    # sentence-transformers may keep the transformer in a sub-folder named by modules.json
    modules = os.path.join(path, "modules.json")
    if os.path.isfile(modules):
        import json

        with open(modules, encoding="utf-8") as f:
            for module in json.load(f):
                sub = os.path.join(path, module.get("path", ""))
                if module.get("type", "").endswith("Transformer") and os.path.isfile(os.path.join(sub, "config.json")):
                    return sub
    raise FileNotFoundError(f"no config.json in {path!r}")


def _read_weights(folder: str) -> dict[str, torch.Tensor]:
    st = os.path.join(folder, "model.safetensors")
    if os.path.isfile(st):
        from safetensors.torch import load_file

        return load_file(st)
    binary = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(binary):
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {folder!r}")


def _normalize_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TF-era names (LayerNorm.gamma/beta) -> weight/bias; drop legacy buffers."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(("embeddings.position_ids", "embeddings.token_type_ids")):
            continue
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[key] = value
    return out


def _share_config(model: BertPreTrainedModel) -> None:
    """Point every submodule at the model's own config, so set_attn_implementation switches them all at once."""
    for module in model.modules():
        if hasattr(module, "config"):
            module.config = model.config


def _check_inputs(config: BertConfig, input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen):
    """Validate shapes and dtypes on the host and all value ranges with one device->host transfer."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor, got {getattr(input_ids, 'dtype', type(input_ids))}")
    packed = cu_seqlens is not None
    if packed:
        if input_ids.dim() != 1:
            raise ValueError(f"input_ids must be 1-D [total_tokens] with cu_seqlens, got shape {tuple(input_ids.shape)}")
        if attention_mask is not None:
            raise ValueError("attention_mask must be None with cu_seqlens (the packed form has no padding)")
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1:
            raise ValueError("cu_seqlens must be a 1-D int32 tensor [batch + 1]")
        if cu_seqlens.numel() < 2:
            raise ValueError("cu_seqlens: empty batch (needs at least 2 entries)")
        if not isinstance(max_seqlen, int) or max_seqlen < 0:
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
    if packed and input_ids.numel() == 0:
        raise ValueError("input_ids: empty batch (no tokens)")
    for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids), ("position_ids", position_ids)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.shape != input_ids.shape:
            raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(t.shape)}")
        if name != "attention_mask" and (t.dtype.is_floating_point or t.dtype == torch.bool):
            raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")

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

    Padded batches are unpadded internally (the whole encoder then runs on ``[total_tokens, hidden]``) according to
    ``model.unpad``: "auto" (default) unpads on the "fused" path when at least ``UNPAD_MIN_PADDING`` of the batch is
    padding, "always" / "never" force it (any backend). Unpadding reads the per-row lengths on the host: one
    device->host copy of ``batch`` ints. The result is re-padded at the output (zeros at padding positions, where
    HF's eager attention leaves values computed from garbage-in rows; compare real positions only).

    Set ``model.check_inputs = False`` to skip the input validation (one more device->host sync per forward).
    Inside ``torch.compile`` both the validation and the internal unpadding are skipped (they need host syncs and
    data-dependent shapes); pass the collator's packed batch to a compiled model to run padding-free.
    """

    # Unpad when at least this fraction of the padded batch is padding. Chosen from `benchmarks/bench_bert.py`'s
    # padding sweep (see README "Padding-free encoder"); re-measure per device.
    UNPAD_MIN_PADDING = 0.10

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
    ) -> BaseModelOutputWithPooling:
        """Padded: input_ids [batch, seqlen] (+ attention_mask). Packed: input_ids [total] + cu_seqlens + max_seqlen
        (position_ids default to 0..len-1 per sequence). Outputs keep the input's layout."""
        compiling = _is_compiling()
        if self.check_inputs and not compiling:  # value checks need a host sync: skipped inside torch.compile graphs
            _check_inputs(self.config, input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        indices = None
        if cu_seqlens is not None:
            attn = AttentionInputs(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
            if position_ids is None:
                position_ids = packed_position_ids(cu_seqlens, input_ids.numel())
        else:
            if position_ids is None:
                position_ids = self.embeddings.position_ids[:, : input_ids.shape[1]].expand_as(input_ids)
            unpadded = None if compiling else self._maybe_unpad(attention_mask)  # data-dependent shapes: not traced
            if unpadded is None:
                attn = AttentionInputs(attention_mask=attention_mask)
            else:
                indices, cu_seqlens, max_seqlen = unpadded
                attn = AttentionInputs(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
                input_ids, token_type_ids, position_ids = (
                    t.reshape(-1)[indices] for t in (input_ids, token_type_ids, position_ids))  # [total] each

        hidden = self.embeddings(input_ids, token_type_ids, position_ids)  # [batch, seqlen, hidden] or [total, hidden]
        hidden, all_hidden = self.encoder(hidden, attn, output_hidden_states)
        pooled = None
        if self.pooler is not None:
            pooled = self.pooler(first_tokens(hidden, attn.cu_seqlens))  # [batch, hidden]
        if indices is not None:  # back to the caller's padded layout
            shape = attention_mask.shape
            hidden = pad_output(hidden, indices, shape)
            if all_hidden is not None:
                all_hidden = tuple(pad_output(h, indices, shape) for h in all_hidden)
        out = BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled, hidden_states=all_hidden)
        return out if return_dict else out.to_tuple()

    def _maybe_unpad(self, attention_mask: torch.Tensor | None):
        """(indices, cu_seqlens, max_seqlen) when this padded batch should run padding-free, else None."""
        if attention_mask is None or self.unpad == "never":
            return None
        if self.unpad == "auto" and self.config.attn_implementation != "fused":
            return None
        if self.unpad not in ("auto", "always"):
            raise ValueError(f"BertModel.unpad must be 'auto', 'always' or 'never', got {self.unpad!r}")
        seqlens = attention_mask.sum(1, dtype=torch.int32)
        seqlens_host = seqlens.cpu()  # the one device->host copy of the unpadded path: [batch] ints
        total = int(seqlens_host.sum())
        if self.unpad == "auto" and total > (1.0 - self.UNPAD_MIN_PADDING) * attention_mask.numel():
            return None
        flat = attention_mask.reshape(-1).bool()
        # positions of the real tokens in row-major order, found without a data-dependent shape (no nonzero sync):
        # a stable sort puts the True entries first, in their original order
        indices = torch.argsort((~flat).to(torch.uint8), stable=True)[:total]
        cu_seqlens = reference.seqlens_to_cu_seqlens(seqlens)
        return indices, cu_seqlens, int(seqlens_host.max())


def _is_compiling() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling and is_compiling())


def pad_output(packed: torch.Tensor, indices: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """[total, hidden] rows scattered back to [*shape, hidden] (zeros at padding)."""
    out = packed.new_zeros((shape.numel(), packed.shape[-1])).index_copy(0, indices, packed)
    return out.view(*shape, packed.shape[-1])


def labeled_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices (into ``labels.reshape(-1)``) of the positions with an MLM label. Compute it where the labels
    are made (on the CPU, in the data pipeline) and pass it as ``masked_positions`` to avoid a device sync."""
    return (labels.reshape(-1) != IGNORE_INDEX).nonzero().reshape(-1)


def packed_position_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Positions restarting at 0 in every packed sequence: int64 [total]."""
    starts = cu_seqlens[:-1].long()
    seq_of_token = torch.searchsorted(cu_seqlens[1:].long(), torch.arange(total, device=cu_seqlens.device), right=True)
    return torch.arange(total, device=cu_seqlens.device) - starts[seq_of_token]


def first_tokens(hidden: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """The [CLS] state of every sequence: [batch, hidden] (a length-0 packed sequence gives zeros)."""
    if cu_seqlens is None:
        return hidden[:, 0]
    starts = cu_seqlens[:-1].long()
    empty = cu_seqlens[1:] == cu_seqlens[:-1]
    picked = hidden[starts.clamp(max=max(hidden.shape[0] - 1, 0))]  # [batch, hidden]
    return picked.masked_fill(empty[:, None], 0.0)


# ----------------------------------------------------------------------------------------------------------------
# heads
# ----------------------------------------------------------------------------------------------------------------
class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(activation(self.config.hidden_act, self.dense(hidden)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
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
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.seq_relationship(pooled)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

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


def _mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX)


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
                output_hidden_states=False, return_dict=True):
        """``masked_positions`` (see ``labeled_positions``): compute MLM logits only there; ``prediction_logits`` is
        then ``[num_masked, vocab]`` and the loss is unchanged."""
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen,
                         output_hidden_states)
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
                max_seqlen=None, labels=None, masked_positions=None, output_hidden_states=False, return_dict=True):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen,
                         output_hidden_states)
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
                max_seqlen=None, labels=None, output_hidden_states=False, return_dict=True):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen,
                         output_hidden_states)
        logits = self.cls(base.pooler_output)
        loss = F.cross_entropy(logits.float(), labels.reshape(-1)) if labels is not None else None
        out = NextSentencePredictorOutput(loss, logits, base.hidden_states)
        return out if return_dict else out.to_tuple()


class BertForSequenceClassification(BertPreTrainedModel):
    """Pooled [CLS] -> dropout -> classifier. Loss as HF: regression (num_labels == 1), single-label (integer
    labels) or multi-label (float labels of shape [batch, num_labels])."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.num_labels = self.config.num_labels
        self.bert = _base(self.config)
        p = self.config.classifier_dropout if self.config.classifier_dropout is not None else self.config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(self.config.hidden_size, self.config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, cu_seqlens=None,
                max_seqlen=None, labels=None, output_hidden_states=False, return_dict=True):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen,
                         output_hidden_states)
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
        self.num_labels = self.config.num_labels
        self.bert = _base(self.config, add_pooling_layer=False)
        p = self.config.classifier_dropout if self.config.classifier_dropout is not None else self.config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(self.config.hidden_size, self.config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, cu_seqlens=None,
                max_seqlen=None, labels=None, output_hidden_states=False, return_dict=True):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen,
                         output_hidden_states)
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
        self.qa_outputs = nn.Linear(self.config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, cu_seqlens=None,
                max_seqlen=None, start_positions=None, end_positions=None, output_hidden_states=False, return_dict=True):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, max_seqlen,
                         output_hidden_states)
        logits = self.qa_outputs(base.last_hidden_state)  # [batch, seqlen, 2] or [total, 2]
        if cu_seqlens is not None:
            # per-sequence positions: back to [batch, max_seqlen, 2]; the padding gets finfo.min so the span softmax
            # covers the real tokens only (the packed form has no padding to attend to)
            logits, mask = reference.packed_to_padded(logits, cu_seqlens, max_seqlen)
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
