"""Swap fastbert's fused ops into an existing Hugging Face ``transformers`` BERT model, in place.

    model = transformers.BertForSequenceClassification.from_pretrained(path)
    fastbert.patch(model)        # same weights, same state_dict keys, fused attention / LayerNorm / GELU
    fastbert.unpatch(model)      # back to the original classes

How: each matching submodule keeps its parameters and attributes and only changes class, to a subclass of its
own class whose ``forward`` calls fastbert's ops (one mapping, ``_FUSED_FORWARDS``, for every BertFor* model):

* ``BertSelfAttention`` -> ``fastbert.ops.attention`` on the [batch, seqlen, heads, head_dim] projections, with the
  key-padding mask recovered from whatever 4-D mask transformers passes (additive float or boolean);
* ``BertSelfOutput`` / ``BertOutput`` -> ``fastbert.ops.layer_norm`` (dropout + residual + LayerNorm in one op);
* ``BertIntermediate`` -> bias-free GEMM + ``fastbert.ops.bias_gelu`` (for "gelu" and the tanh variants);
* every other ``nn.LayerNorm`` (embeddings, MLM head) -> ``fastbert.ops.layer_norm``.

Outputs match the unpatched model at real token positions; at padded query positions the fused attention writes
zeros where transformers attends over the real keys (values nobody should read). Attention weights are not
returned (``output_attentions`` gives None for them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .config import GELU_APPROXIMATE



def key_padding_mask(mask: torch.Tensor | None, batch: int, seqlen: int) -> torch.Tensor | None:
    """transformers' attention mask (None, [batch, seqlen] 0/1, [batch, 1, 1|seqlen, seqlen] additive or boolean)
    -> a boolean [batch, seqlen] key mask (True = attend), or None when nothing is masked."""
    if mask is None:
        return None
    if mask.dim() == 2:
        return mask.bool()
    if mask.dim() != 4:
        raise ValueError(f"unsupported attention_mask of shape {tuple(mask.shape)} for a patched BertSelfAttention")
    keep = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    keep = keep[:, 0]  # [batch, 1 | seqlen, seqlen]
    # a padding mask is the same for every query row that has any real key; a key is real if any row may attend
    keep = keep.any(dim=1)  # [batch, seqlen]
    return keep.expand(batch, seqlen)


def _self_attention_forward(self, hidden_states, attention_mask=None, *args, **kwargs):
    batch, seqlen = hidden_states.shape[:2]
    heads_shape = (batch, seqlen, self.num_attention_heads, self.attention_head_size)
    q = self.query(hidden_states).view(heads_shape)  # [batch, seqlen, heads, head_dim]
    k = self.key(hidden_states).view(heads_shape)
    v = self.value(hidden_states).view(heads_shape)
    out = ops.attention(q, k, v, attention_mask=key_padding_mask(attention_mask, batch, seqlen),
                        dropout_p=self.dropout.p if self.training else 0.0)
    return out.reshape(batch, seqlen, -1), None  # (context, attention weights) as transformers expects


def _add_layer_norm_forward(self, hidden_states, input_tensor):
    ln = self.LayerNorm
    return ops.layer_norm(self.dense(hidden_states), ln.weight, ln.bias, ln.eps, residual=input_tensor,
                          dropout_p=self.dropout.p if self.training else 0.0)


def _intermediate_forward(self, hidden_states):
    return ops.bias_gelu(F.linear(hidden_states, self.dense.weight), self.dense.bias,
                         approximate=self._fastbert_gelu)


def _layer_norm_forward(self, x):
    return ops.layer_norm(x, self.weight, self.bias, self.eps)


_FUSED_FORWARDS = {
    "BertSelfAttention": _self_attention_forward,
    "BertSdpaSelfAttention": _self_attention_forward,  # transformers 4.x's sdpa variant
    "BertSelfOutput": _add_layer_norm_forward,
    "BertOutput": _add_layer_norm_forward,
    "BertIntermediate": _intermediate_forward,
    "LayerNorm": _layer_norm_forward,
}
_PATCHED: dict[type, type] = {}


def _fused_class(cls: type, forward) -> type:
    """A subclass of ``cls`` with the fused forward (made once per class, so patched modules share it)."""
    if cls not in _PATCHED:
        _PATCHED[cls] = type(f"Fused{cls.__name__}", (cls,), {"forward": forward, "_fastbert_original": cls})
    return _PATCHED[cls]


def patch(model: nn.Module) -> nn.Module:
    """Swap fused ops into a transformers BertModel / BertFor* model in place (weights untouched); returns it."""
    hidden_act = getattr(getattr(model, "config", None), "hidden_act", "gelu")
    swapped = 0
    for module in model.modules():
        cls = type(module)
        if hasattr(cls, "_fastbert_original"):
            continue  # already patched
        if cls is nn.LayerNorm:
            if not module.elementwise_affine:
                continue
            forward = _FUSED_FORWARDS["LayerNorm"]
        elif cls.__name__ in _FUSED_FORWARDS and cls.__name__ != "LayerNorm":
            forward = _FUSED_FORWARDS[cls.__name__]
        else:
            continue
        if cls.__name__ == "BertIntermediate":
            if not isinstance(hidden_act, str) or hidden_act not in GELU_APPROXIMATE:
                continue  # relu or a custom callable: nothing to fuse, keep transformers' module
            module._fastbert_gelu = GELU_APPROXIMATE[hidden_act]
        module.__class__ = _fused_class(cls, forward)
        swapped += 1
    if swapped == 0:
        raise ValueError(f"fastbert.patch: no BERT modules to patch in {type(model).__name__}")
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch`: every swapped module gets its original class back."""
    for module in model.modules():
        original = getattr(type(module), "_fastbert_original", None)
        if original is not None:
            module.__class__ = original
    return model
