"""Swap fastbert's fused ops into an existing Hugging Face ``transformers`` BERT model, in place.

    model = transformers.BertForSequenceClassification.from_pretrained(path)
    fastbert.patch(model)        # same weights, same state_dict keys, fused attention / LayerNorm / GELU
    fastbert.unpatch(model)      # back to the original classes

How: each matching submodule keeps its parameters and attributes and only changes class, to a subclass of its
own class whose ``forward`` calls the kernel table ``fastbert.ops.choose_path`` picks (``_FORWARDS`` maps module
roles to forwards). The modules fused are exactly those fastbert's own ``BertModel`` runs through its table:

* ``BertSelfAttention`` -> ``Kernels.project_qkv`` + ``Kernels.attention`` on the [batch, seqlen, heads, head_dim]
  projections, with the key-padding mask recovered from whatever mask transformers passes;
* ``BertSelfOutput`` / ``BertOutput`` -> ``Kernels.add_layer_norm`` (dropout + residual + LayerNorm in one op);
* ``BertIntermediate`` -> ``Kernels.dense_act`` (bias-free GEMM + bias + GELU);
* ``BertPredictionHeadTransform`` (MLM head) -> ``Kernels.dense_act`` + ``Kernels.layer_norm``;
* the embeddings' ``LayerNorm`` -> ``Kernels.layer_norm``.

Outputs match the unpatched model at real token positions; at padded query positions the fused attention writes
zeros where transformers attends over the real keys (values nobody should read). Attention weights are not
returned (``output_attentions`` gives None for them).
"""
from __future__ import annotations

from torch import nn

from .config import GELU_APPROXIMATE, HIDDEN_ACTS
from .ops import padding
from .ops.dispatch import AttentionInputs, choose_path


def _dropout_p(module: nn.Module) -> float:
    return module.dropout.p if module.training else 0.0


def _self_attention_forward(self, hidden_states, attention_mask=None, *args, **kwargs):
    batch, seqlen = hidden_states.shape[:2]
    k = self._fastbert_kernels
    q, key, v = k.project_qkv(hidden_states, self.query, self.key, self.value, self.num_attention_heads)
    attn = AttentionInputs(attention_mask=padding.key_padding_mask(attention_mask, batch, seqlen))
    out = k.attention(q, key, v, attn, _dropout_p(self))
    return out.reshape(batch, seqlen, -1), None  # (context, attention weights) as transformers expects


def _add_layer_norm_forward(self, hidden_states, input_tensor):
    return self._fastbert_kernels.add_layer_norm(self.dense(hidden_states), input_tensor, self.LayerNorm,
                                                 _dropout_p(self))


def _intermediate_forward(self, hidden_states):
    return self._fastbert_kernels.dense_act(hidden_states, self.dense, self._fastbert_act)


def _head_transform_forward(self, hidden_states):
    k = self._fastbert_kernels
    return k.layer_norm(k.dense_act(hidden_states, self.dense, self._fastbert_act), self.LayerNorm)


def _layer_norm_forward(self, x):
    return self._fastbert_kernels.layer_norm(x, self)


# role (class name) -> (forward, reads config.hidden_act)
_FORWARDS = {
    "BertSelfAttention": (_self_attention_forward, False),
    "BertSdpaSelfAttention": (_self_attention_forward, False),  # transformers 4.x's sdpa variant
    "BertSelfOutput": (_add_layer_norm_forward, False),
    "BertOutput": (_add_layer_norm_forward, False),
    "BertIntermediate": (_intermediate_forward, True),
    "BertPredictionHeadTransform": (_head_transform_forward, True),
    "BertEmbeddings.LayerNorm": (_layer_norm_forward, False),
}
_PATCHED: dict[type, type] = {}


def _fused_class(cls: type, forward) -> type:
    """A subclass of ``cls`` with the fused forward (made once per class, so patched modules share it)."""
    if cls not in _PATCHED:
        _PATCHED[cls] = type(f"Fused{cls.__name__}", (cls,), {"forward": forward, "_fastbert_original": cls})
    return _PATCHED[cls]


def _role(name: str, module: nn.Module, parents: dict[str, nn.Module]) -> str | None:
    cls = type(module).__name__
    if cls in _FORWARDS:
        return cls
    if isinstance(module, nn.LayerNorm) and name.rpartition(".")[2] == "LayerNorm":
        parent = parents.get(name.rpartition(".")[0])
        if parent is not None and type(parent).__name__ == "BertEmbeddings":
            return "BertEmbeddings.LayerNorm"
    return None


def patch(model: nn.Module, attn_implementation: str = "fused") -> nn.Module:
    """Swap the ops of ``attn_implementation``'s path (see ``fastbert.ops.choose_path``; default "fused") into a
    transformers BertModel / BertFor* model in place (weights untouched); returns it."""
    device = next(model.parameters()).device
    kernels = choose_path(attn_implementation, device).kernels
    hidden_act = getattr(getattr(model, "config", None), "hidden_act", "gelu")
    known_act = isinstance(hidden_act, str) and (hidden_act in HIDDEN_ACTS or hidden_act in GELU_APPROXIMATE)
    modules = dict(model.named_modules())
    swapped = 0
    for name, module in modules.items():
        if hasattr(type(module), "_fastbert_original"):
            continue  # already patched
        role = _role(name, module, modules)
        if role is None:
            continue
        forward, needs_act = _FORWARDS[role]
        if needs_act:
            if not known_act:
                continue  # a custom callable: nothing we know how to run, keep transformers' module
            module._fastbert_act = hidden_act
        module._fastbert_kernels = kernels
        module.__class__ = _fused_class(type(module), forward)
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
