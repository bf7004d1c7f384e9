"""Hugging Face ``transformers`` integration: ``attn_implementation="fastbert"`` and ``fastbert.patch(model)``.

**The attention implementation.** transformers 5 encoders (BERT, RoBERTa, XLM-RoBERTa, ELECTRA, CamemBERT,
DistilBERT, ALBERT, ModernBERT and more) call attention through ``AttentionInterface``. ``import fastbert`` registers
``"fastbert"`` there: at once when transformers' modeling code is already imported, otherwise the moment it is (an
import hook, so ``import fastbert`` stays cheap). Then

    model = AutoModel.from_pretrained(path, attn_implementation="fastbert")   # or model.set_attn_implementation(...)

runs :func:`attention_forward`, which calls ``fastbert.ops.attention`` (Triton on CUDA; torch SDPA where Triton
cannot run). A mask function is registered under the same name: without one transformers skips mask creation for
an unknown implementation and padding would be silently ignored. It hands over the 2-D key-padding mask (or None
when nothing is padded), never a ``[batch, 1, S, S]`` mask. Padding-free batches (``DataCollatorWithFlattening``,
with or without ``return_flash_attn_kwargs=True``; restarting ``position_ids`` alone works for the families that
pass them down) run the varlen kernel. ModernBERT's local layers use the kernel's sliding window.

Refused, with a message naming the module: causal / decoder layers (``config.is_decoder``) and cross-attention.
Falls back to plain PyTorch for that call, saying so once: ``output_attentions=True`` (the fused kernel never forms
the attention matrix), a 4-D mask that is not a key-padding mask, head_dim above 128.

**patch(model).** Routes attention through the interface and, on the path ``fastbert.ops.choose_path`` picks for the
model's device, gives the modules whose *structure* (children and a numerical probe of their forward) shows
dropout+residual+LayerNorm, bias+GELU or LayerNorm, whatever their class name, a forward calling the path's kernels:
fused Triton kernels on CUDA; on CPU ("sdpa") transformers' own operations done in place in inference (fewer large
allocations). Every ``nn.Linear`` runs ``fastbert.ops.linear`` (on CPU in fp32 oneDNN's GEMM where it measured
faster than PyTorch's; in inference the FFN activation as its post-op). Padded batches then run through the layers
padding-free (:class:`PaddingFree`, forward hooks on the encoder stack) from the path's measured padding threshold.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import inspect
import sys
import threading
import warnings
from typing import Any, NamedTuple

NAME = "fastbert"  # no "flash" in it: transformers would treat the name as a flash-attention build

_REGISTERED = False
_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------------------------------------------
def register() -> bool:
    """Register ``attn_implementation="fastbert"`` (attention and mask functions) with transformers. Idempotent;
    False when the installed transformers has no AttentionInterface (then nothing changes)."""
    global _REGISTERED
    if _REGISTERED:
        return True
    try:
        from transformers.masking_utils import AttentionMaskInterface
        from transformers.modeling_utils import AttentionInterface
    except ImportError:
        return False
    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, mask_function)  # the classmethod: the mapping transformers checks
    _REGISTERED = True
    return True


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Registers fastbert with transformers right after ``transformers.modeling_utils`` is imported."""

    TARGET = "transformers.modeling_utils"

    def find_spec(self, fullname, path, target=None):
        if fullname != self.TARGET:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from finding this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            try:
                register()
            except Exception as exc:  # noqa: BLE001 - a broken registration must not break importing transformers
                _warn_once("register", f"fastbert: could not register attn_implementation='fastbert': {exc}")

        spec.loader.exec_module = exec_and_register
        return spec


def install_import_hook() -> None:
    """Register now if transformers' modeling code is loaded, else as soon as it is (called by ``import fastbert``)."""
    if "transformers.modeling_utils" in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        if importlib.util.find_spec("transformers") is not None:
            sys.meta_path.insert(0, _RegisterOnImport())


# ----------------------------------------------------------------------------------------------------------------
# the mask function and the attention function
# ----------------------------------------------------------------------------------------------------------------
def mask_function(*args, **kwargs):
    """What transformers builds for "fastbert": the 2-D bool key-padding mask, or None when nothing is padded (its
    ``flash_attention_mask``). A model asking for a pattern beyond padding (``use_vmap``: extra mask functions) gets
    the full 4-D boolean mask, which :func:`attention_forward` then runs through plain PyTorch."""
    from transformers import masking_utils

    if kwargs.get("use_vmap"):
        return masking_utils.sdpa_mask(*args, **kwargs)
    return masking_utils.flash_attention_mask(*args, **kwargs)


def _refuse(module, query, key, kwargs) -> None:
    name = type(module).__name__
    causal = kwargs.get("is_causal")
    if causal is None:
        causal = getattr(module, "is_causal", False)
    if causal or getattr(getattr(module, "config", None), "is_decoder", False):
        raise ValueError(f"attn_implementation='fastbert' is bidirectional only: {name} is a causal (decoder) "
                         "attention layer (config.is_decoder=True); load this model with attn_implementation='sdpa'")
    if key.shape[2] != query.shape[2] or "CrossAttention" in name:
        raise ValueError(f"attn_implementation='fastbert' does not do cross-attention ({name}); load this model "
                         "with attn_implementation='sdpa'")


# Attention layers of families whose layers before attention mix neighbouring positions, so a padding-free row
# would leak across sequence boundaries whatever attention does: refused by name.
_NOT_PACKABLE = {"MobileBertSelfAttention": "its embeddings concatenate each token with its neighbours (trigram input)"}


class _Packing(NamedTuple):
    cu_seqlens: Any  # int32 [n + 1]
    max_seqlen: int


def _packing(query, attention_mask, kwargs) -> _Packing | None:
    """The varlen layout of a padding-free row ([1, total] with cu_seq_lens, or restarting position_ids), else None."""
    import torch

    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        if query.shape[0] != 1:
            raise ValueError(f"cu_seq_lens_q given with a batch of {query.shape[0]} rows: padding-free inputs are one "
                             "row [1, total_tokens] (DataCollatorWithFlattening)")
        max_len = kwargs.get("max_length_q")
        if max_len is None:
            max_len = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
        return _Packing(cu.to(torch.int32), int(max_len))
    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or position_ids is None or query.shape[0] != 1 or position_ids.shape[-1] < 2:
        return None
    return _packing_from_positions(position_ids)


def _packing_from_positions(pos) -> _Packing | None:
    """``ops.padding.cu_seqlens_from_position_ids`` as a _Packing (host-cached there: one read per forward, not per
    layer)."""
    from .ops.padding import cu_seqlens_from_position_ids

    found = cu_seqlens_from_position_ids(pos)
    return _Packing(*found) if found is not None else None


def _key_padding(attention_mask, batch: int, seqlen: int):
    """(2-D bool key mask or None, True) when ``attention_mask`` is None, 2-D, or a 4-D mask that only masks keys;
    (None, False) for any other 4-D pattern."""
    import torch

    from .ops.padding import key_padding_mask

    if attention_mask is None or attention_mask.dim() == 2:
        return (None if attention_mask is None else attention_mask.bool()), True
    keys = key_padding_mask(attention_mask, batch, seqlen)  # [batch, seqlen]
    allowed = attention_mask if attention_mask.dtype == torch.bool else attention_mask > torch.finfo(
        attention_mask.dtype).min / 2
    rows_with_keys = allowed.any(-1, keepdim=True)
    if torch.equal(allowed | ~rows_with_keys, (keys[:, None, None, :] | ~rows_with_keys).expand_as(allowed)):
        return (None if bool(keys.all()) else keys), True
    return None, False


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                      sliding_window: int | None = None, **kwargs):
    """transformers' attention function signature: query/key/value ``[batch, heads, seqlen, head_dim]`` (views),
    ``attention_mask`` from :func:`mask_function`; returns ``(out [batch, seqlen, heads, head_dim], None)``.
    ``sliding_window`` follows flash-attention's convention (ModernBERT passes local_attention // 2 + 1): keys with
    |i - j| < sliding_window are attended."""
    from . import ops

    _refuse(module, query, key, kwargs)
    batch, heads, seqlen, head_dim = query.shape
    window = sliding_window - 1 if sliding_window else None
    keys, ok = _key_padding(attention_mask, batch, seqlen)
    weights = bool(kwargs.get("output_attentions"))
    if weights or not ok or head_dim > 128:
        if weights:
            _warn_once("output_attentions", "attn_implementation='fastbert' never forms the attention matrix: calls "
                       "with output_attentions=True run plain PyTorch attention to return it")
        else:
            why = "a 4-D mask that masks more than padding" if not ok else f"head_dim {head_dim} > 128"
            _warn_once(f"fallback {why}", f"attn_implementation='fastbert': {why} runs plain PyTorch attention "
                       f"({type(module).__name__})")
        packing = _packing(query, keys, kwargs) if ok else None
        mask = attention_mask if packing is None else _segments_mask(packing.cu_seqlens, seqlen)
        return _plain_attention(query, key, value, mask, dropout, scaling, window, weights=weights)
    if key.shape[1] != heads:  # grouped-query attention: every query head reads its group's key/value head
        key, value = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (key, value))
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [batch, seqlen, heads, head_dim] views
    packing = _packing(query, keys, kwargs)
    if packing is not None and type(module).__name__ in _NOT_PACKABLE:
        raise ValueError(f"{type(module).__name__} cannot run padding-free batches: {_NOT_PACKABLE[type(module).__name__]}")
    if packing is not None:
        out = ops.attention(q[0], k[0], v[0], cu_seqlens=packing.cu_seqlens, max_seqlen=packing.max_seqlen,
                            dropout_p=dropout, softmax_scale=scaling, window=window)[None]
    else:
        out = ops.attention(q, k, v, attention_mask=keys, dropout_p=dropout, softmax_scale=scaling, window=window)
    return out, None


def _segments_mask(cu_seqlens, total: int):
    """The boolean [1, 1, total, total] mask of a padding-free row: each token sees its own sequence only (for the
    plain-PyTorch fallbacks, which must not mix the row's sequences either)."""
    from .ops.padding import sequence_of_token

    segment = sequence_of_token(cu_seqlens, total)
    return (segment[:, None] == segment[None, :])[None, None]


def _plain_attention(query, key, value, attention_mask, dropout, scaling, window, weights: bool):
    """softmax(q k^T * scale + mask) v in plain PyTorch, [batch, heads, S, D] in, ([batch, S, heads, D], weights)."""
    import torch
    import torch.nn.functional as F

    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if key.shape[1] != query.shape[1]:  # grouped-query attention
        key, value = (t.repeat_interleave(query.shape[1] // t.shape[1], dim=1) for t in (key, value))
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale  # [batch, heads, S, S]
    if attention_mask is not None:
        mask = attention_mask[:, None, None, :] if attention_mask.dim() == 2 else attention_mask
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    if window is not None:
        pos = torch.arange(query.shape[2], device=query.device)
        scores = scores.masked_fill((pos[:, None] - pos[None, :]).abs() > window, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=dropout > 0.0)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, (probs if weights else None)


# ----------------------------------------------------------------------------------------------------------------
# patch(model): attention through the interface, fused ops where the module structure shows their computation
# ----------------------------------------------------------------------------------------------------------------
class PatchReport(NamedTuple):
    """What :func:`patch` changed: ``attention`` says how attention now runs, ``modules`` maps each swapped module's
    name to its role ("add_layer_norm", "dense_act", "head_transform", "layer_norm"), ``path`` is the policy's pick,
    ``padding_free`` says whether padded batches now run the layers padding-free (and from how much padding) or why
    not, ``dense`` how many ``nn.Linear`` now run ``fastbert.ops.linear`` and which GEMM that runs on CPU."""

    model: Any
    path: str
    attention: str
    modules: dict
    padding_free: str = "no"
    dense: str = "no nn.Linear"

    def __repr__(self) -> str:
        roles: dict[str, int] = {}
        for role in self.modules.values():
            roles[role] = roles.get(role, 0) + 1
        fused = ", ".join(f"{n} {r}" for r, n in sorted(roles.items())) or "no module fused"
        return (f"PatchReport({type(self.model).__name__}: path {self.path!r}; attention: {self.attention}; {fused}; "
                f"padding-free layers: {self.padding_free}; dense layers: {self.dense})")


# ----------------------------------------------------------------------------------------------------------------
# padded batches through the layers padding-free: forward hooks on the encoder stack
# ----------------------------------------------------------------------------------------------------------------
_FLAGS = ("output_attentions", "output_hidden_states")


class PaddingFree:
    """Forward hooks that run a padded batch through a transformers model's layers padding-free.

    Hooked on the encoder stack (the module taking the embeddings ``[batch, seqlen, hidden]`` and the key-padding
    mask and running the layers: BERT's ``encoder``, DistilBERT's ``transformer``), or, for families whose base model
    loops over its layers itself (ModernBERT and the rotary encoders), on the base model (``level="model"``: token
    inputs and their positions are packed; positions are the padded batch's own, ``arange(seqlen)`` unless given).
    A padded batch whose padding reaches the path's measured threshold (``Path.unpads``) then runs as one row
    ``[1, total]`` in Hugging Face's own packed layout (the ``cu_seq_lens_q/k`` / ``max_length_q/k`` kwargs of
    ``DataCollatorWithFlattening``, which the layers hand to attention); outputs are scattered back to
    ``[batch, seqlen, ...]``, zeros at padding. On the stack level embeddings and pooler run on the padded batch as
    before. Batches below the threshold, calls asking for attentions or all hidden states, and inputs with per-row
    tensors a packed row cannot carry run as they came."""

    def __init__(self, path, config, level: str = "stack"):
        self.path, self.config, self.level = path, config, level
        self.force = False  # patch()'s probe: pack whatever the padding
        self.packed = 0  # calls run padding-free (the probe checks that its batch was)
        self._local = threading.local()  # the layouts of calls in flight, per thread (a model served from threads)

    def __getstate__(self):
        return {"path": self.path, "config": self.config, "level": self.level}

    def __setstate__(self, state):
        self.__init__(state["path"], state["config"], state["level"])

    def _pending(self) -> list:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def before(self, module, args, kwargs):
        found = self._pack(module, args, kwargs)
        self._pending().append(found[0] if found else None)
        return found[1] if found else None

    def after(self, module, args, kwargs, output):
        pending = self._pending()
        layout = pending.pop() if pending else None
        return None if layout is None else _repad(output, *layout)

    def _pack(self, module, args, kwargs):
        import torch

        arguments = _arguments(module, args, kwargs)
        if arguments is None:
            return None
        first, x = arguments.pop(0)
        mask = arguments.pop("attention_mask", None)
        if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 4):
            return None
        if "cu_seq_lens_q" in arguments or any(getattr(self.config, f, False) if arguments.get(f) is None
                                               else arguments[f] for f in _FLAGS):
            return None  # already padding-free, or per-layer outputs requested (they would come back packed)
        if self.level == "stack":
            if not isinstance(x, torch.Tensor) or x.dim() != 3:
                return None
            batch, seqlen = x.shape[:2]
        else:
            batch, seqlen = mask.shape[0], mask.shape[-1]
            if x is not None and (not isinstance(x, torch.Tensor) or x.shape[:2] != (batch, seqlen)):
                return None
            if arguments.get("position_ids") is None:
                arguments["position_ids"] = torch.arange(seqlen, device=mask.device).expand(batch, seqlen)
        keys, ok = _key_padding(mask, batch, seqlen)
        per_token = {}
        for name, value in arguments.items():
            if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == (batch, seqlen):
                per_token[name] = value
            elif isinstance(value, torch.Tensor) or (isinstance(value, (tuple, list)) and any(
                    isinstance(v, torch.Tensor) for v in value)):
                return None  # a per-row input (e.g. language ids) the packed row cannot carry
        if not ok or keys is None:
            return None
        layout, real = self.path.unpad(keys, "always" if self.force else "auto")  # as fastbert's own models decide
        if layout is None or real == 0:
            return None
        self.packed += 1

        def flat(t):
            return t.reshape(batch * seqlen, *t.shape[2:]).index_select(0, layout.indices)[None]

        packed = dict(arguments, **{n: flat(v) for n, v in per_token.items()}, attention_mask=None,
                      cu_seq_lens_q=layout.cu_seqlens, cu_seq_lens_k=layout.cu_seqlens,
                      max_length_q=layout.max_seqlen, max_length_k=layout.max_seqlen)
        x = flat(x) if isinstance(x, torch.Tensor) else x
        if first is not None:
            return (layout.indices, batch, seqlen, real), ((), dict(packed, **{first: x}))
        return (layout.indices, batch, seqlen, real), ((x,), packed)


def _arguments(module, args, kwargs) -> dict | None:
    """The call's arguments by name (``**kwargs`` flattened in); key 0 holds (name or None, the first argument).
    None when the call does not bind to the forward's signature or passes extra positional arguments."""
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    params = bound.signature.parameters
    names = list(params)
    if not names or params[names[0]].kind not in (params[names[0]].POSITIONAL_OR_KEYWORD,
                                                  params[names[0]].POSITIONAL_ONLY):
        return None
    arguments: dict = {}
    for name, value in bound.arguments.items():
        kind = params[name].kind
        if kind is params[name].VAR_KEYWORD:
            arguments.update(value)
        elif kind is params[name].VAR_POSITIONAL:
            if value:
                return None
        elif name != names[0]:
            arguments[name] = value
    first_name = names[0] if names[0] in kwargs else None  # passed by keyword: give it back by keyword
    arguments[0] = (first_name, bound.arguments.get(names[0]))
    return arguments


def _repad(value, indices, batch: int, seqlen: int, total: int):
    """``value`` (a tensor, a ModelOutput, a tuple or list of them) with every ``[1, total, ...]`` tensor scattered
    back to ``[batch, seqlen, ...]`` (zeros at padding)."""
    import torch

    from .ops import padding

    if isinstance(value, torch.Tensor):
        if value.dim() >= 2 and value.shape[0] == 1 and value.shape[1] == total:
            rows = padding.pad(value[0].reshape(total, -1), indices, torch.Size((batch, seqlen)))
            return rows.view(batch, seqlen, *value.shape[2:])
        return value
    if isinstance(value, dict):  # ModelOutput: set in place (keeps its class and attributes in step)
        for key in list(value.keys()):
            value[key] = _repad(value[key], indices, batch, seqlen, total)
        return value
    if isinstance(value, (tuple, list)):
        items = [_repad(v, indices, batch, seqlen, total) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def _encoder_stack(base):
    """The child of a transformers base model that runs the layer stack on the embeddings: its forward takes
    ``hidden_states`` first and it holds the layers' ModuleList (BERT's ``encoder``, DistilBERT's ``transformer``,
    ALBERT's ``encoder``), or None (families whose base model loops over its layers itself)."""
    from torch import nn

    for child in base.children():
        try:
            first = next(iter(inspect.signature(child.forward).parameters))
        except (TypeError, ValueError, StopIteration):
            continue
        if first == "hidden_states" and any(isinstance(c, nn.ModuleList) for c in child.children()):
            return child
    return None


def _probe_batch(config, device):
    """A small padded batch for the base model: (input_ids, attention_mask), rows of 7, 4 and 1 real tokens."""
    import torch

    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab < 8:
        return None
    lengths = torch.tensor([7, 4, 1])
    mask = (torch.arange(7)[None] < lengths[:, None]).long()
    ids = torch.randint(5, vocab, mask.shape, generator=torch.Generator().manual_seed(0))
    pad = getattr(config, "pad_token_id", None)
    ids = ids * mask + (pad if isinstance(pad, int) and 0 <= pad < vocab else 0) * (1 - mask)
    return ids.to(device), mask.to(device)


def _install_padding_free(hf_model, path) -> str:
    """Hook :class:`PaddingFree` onto the encoder stack of ``hf_model``'s base model when a probe shows the packed
    layers give the padded layers' outputs (real tokens and pooled outputs); returns what happened, in words."""
    import torch

    base = getattr(hf_model, "base_model", hf_model)
    name = type(base).__name__
    if path.unpad_min_padding is None:
        return f"no (the {path.name!r} path keeps padded batches padded)"
    stack = _encoder_stack(base)
    level, stack = ("stack", stack) if stack is not None else ("model", base)
    if padding_free_of(stack) is not None:
        return f"yes ({name}, already hooked)"
    param = next(base.parameters(), None)
    probe = _probe_batch(base.config, param.device if param is not None else "cpu")
    if probe is None:
        return f"no ({name}: no vocabulary to probe with)"
    hooks = PaddingFree(path, base.config, level)
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            ref = base(input_ids=probe[0], attention_mask=probe[1])
            handles = [stack.register_forward_pre_hook(hooks.before, with_kwargs=True),
                       stack.register_forward_hook(hooks.after, with_kwargs=True, always_call=True)]
            hooks.force = True
            try:
                out = base(input_ids=probe[0], attention_mask=probe[1])
                why = _probe_mismatch(ref, out, probe[1].bool()) if hooks.packed else (
                    f"{type(stack).__name__} takes per-row inputs a packed row cannot carry")
            except Exception as exc:  # noqa: BLE001 - a family whose layers refuse packed rows
                why = f"its layers refuse a packed row: {exc}"
            finally:
                hooks.force, hooks.packed = False, 0  # the count is of the model's own calls
    finally:
        base.train(was_training)
    if why is not None:
        for handle in handles:
            handle.remove()
        return f"no ({name}: {why})"
    where = f"{type(stack).__name__} of {name}" if level == "stack" else f"{name}'s layers"
    return f"yes ({where}, from {path.unpad_min_padding:.0%} padding)"


def _probe_mismatch(ref, out, real) -> str | None:
    import torch

    pairs = [("last_hidden_state", ref[0][real], out[0][real])]
    pooled_ref, pooled = getattr(ref, "pooler_output", None), getattr(out, "pooler_output", None)
    if isinstance(pooled_ref, torch.Tensor):
        pairs.append(("pooler_output", pooled_ref, pooled))
    for field, a, b in pairs:
        tol = 1e-3 if a.dtype == torch.float32 else 5e-2
        if not isinstance(b, torch.Tensor) or a.shape != b.shape or not torch.allclose(a.float(), b.float(), atol=tol,
                                                                                         rtol=tol):
            return f"packed layers differ from padded ones on a probe batch ({field})"
    return None


def padding_free_of(module) -> PaddingFree | None:
    """The :class:`PaddingFree` hooked on ``module`` by :func:`patch`, or None."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(getattr(hook, "__self__", None), PaddingFree):
            return hook.__self__
    return None


def _remove_padding_free(model) -> None:
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, h in hooks.items() if isinstance(getattr(h, "__self__", None), PaddingFree)]:
                del hooks[key]
                for extra in ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs",
                              "_forward_hooks_always_called"):
                    getattr(module, extra, {}).pop(key, None)


def _probe_input(module, features: int, *lead: int):
    import torch

    p = next(module.parameters())
    return torch.randn(*lead, features, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)


def _close(a, b) -> bool:
    import torch

    tol = 1e-5 if a.dtype == torch.float32 else 1e-2
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), atol=tol, rtol=tol))


def _activation_name(act) -> str | None:
    """The BERT ``hidden_act`` an activation module computes ("gelu", "gelu_pytorch_tanh", "relu"), found by
    evaluating it (class names vary across families), or None."""
    import torch
    import torch.nn.functional as F

    if any(True for _ in act.parameters()) or any(True for _ in act.children()):
        return None
    x = torch.linspace(-6.0, 6.0, 97)
    try:
        y = act(x)
    except Exception:  # noqa: BLE001 - not an elementwise activation
        return None
    for name, ref in (("gelu", F.gelu(x)), ("gelu_pytorch_tanh", F.gelu(x, approximate="tanh")), ("relu", F.relu(x))):
        if isinstance(y, torch.Tensor) and _close(y, ref):
            return name
    return None


def _parts(module) -> dict[str, Any] | None:
    """The children of a candidate module by kind: {"dense", "dropout", "ln", "act": (name, hidden_act)}; None when a
    child of another kind (or a second of one kind) is present."""
    from torch import nn

    parts: dict[str, Any] = {}
    for name, child in module.named_children():
        kind = ("dense" if isinstance(child, nn.Linear) else "dropout" if isinstance(child, nn.Dropout)
                else "ln" if isinstance(child, nn.LayerNorm) and child.weight is not None else None)
        act = _activation_name(child) if kind is None else None
        if kind is None and act is None:
            return None
        kind = kind or "act"
        if kind in parts:
            return None
        parts[kind] = (name, act) if kind == "act" else name
    return parts


def _match(module) -> tuple[str, dict] | None:
    """(role, parts) when the module computes one of the fused forms, checked on a random input in eval mode."""
    import torch

    parts = _parts(module)
    if not parts or "dense" not in parts:
        return None
    kinds = set(parts)
    dense = getattr(module, parts["dense"])
    act = parts.get("act", (None, None))[1]
    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return None
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            x = _probe_input(module, dense.in_features, 2, 3)
            if kinds == {"dense", "dropout", "ln"} and len(params) == 2:
                r = _probe_input(module, dense.out_features, 2, 3)
                ln = getattr(module, parts["ln"])
                return ("add_layer_norm", parts) if _close(module(x, r), ln(dense(x) + r)) else None
            if len(params) != 1 or act is None:
                return None
            from .ops.linear import activation

            if kinds == {"dense", "act"}:
                return ("dense_act", parts) if _close(module(x), activation(act, dense(x))) else None
            if kinds == {"dense", "act", "ln"}:
                ln = getattr(module, parts["ln"])
                return ("head_transform", parts) if _close(module(x), ln(activation(act, dense(x)))) else None
    except Exception:  # noqa: BLE001 - a forward that does something else (other arguments, shapes)
        return None
    finally:
        module.train(was_training)
    return None


def _add_layer_norm_forward(self, hidden_states, input_tensor, *args, **kwargs):
    parts = self._fastbert_parts
    dropout = getattr(self, parts["dropout"])
    return self._fastbert_kernels.add_layer_norm(getattr(self, parts["dense"])(hidden_states), input_tensor,
                                                 getattr(self, parts["ln"]), dropout.p if self.training else 0.0)


def _dense_act_forward(self, hidden_states, *args, **kwargs):
    parts = self._fastbert_parts
    return self._fastbert_kernels.dense_act(hidden_states, getattr(self, parts["dense"]), parts["act"][1])


def _head_transform_forward(self, hidden_states, *args, **kwargs):
    parts, k = self._fastbert_parts, self._fastbert_kernels
    return k.layer_norm(k.dense_act(hidden_states, getattr(self, parts["dense"]), parts["act"][1]),
                        getattr(self, parts["ln"]))


def _layer_norm_forward(self, x, *args, **kwargs):
    return self._fastbert_kernels.layer_norm(x, self)


_FORWARDS = {"add_layer_norm": _add_layer_norm_forward, "dense_act": _dense_act_forward,
             "head_transform": _head_transform_forward, "layer_norm": _layer_norm_forward}
_SEP = "___"
_PATCHED: dict[tuple[type, str], type] = {}


def _patched_class(original: type, role: str) -> type:
    """The subclass of ``original`` running ``role``'s fused forward, made once. Named so that pickle finds it as an
    attribute of this module (rebuilt on demand by ``__getattr__`` in a process that has not patched yet)."""
    if (original, role) not in _PATCHED:
        name = _SEP.join(("Fastbert", role, original.__module__.replace(".", "__"), original.__qualname__))
        if role == "linear":  # fastbert.ops.Linear's own forward (imports torch: looked up only here)
            from .ops.linear import Linear

            forward = Linear.forward
        else:
            forward = _FORWARDS[role]
        cls = type(f"Fastbert{original.__name__}", (original,),
                   {"forward": forward, "_fastbert_original": original, "__module__": __name__})
        cls.__qualname__ = name
        _PATCHED[(original, role)] = cls
    return _PATCHED[(original, role)]


def __getattr__(name: str):
    if name.startswith("Fastbert" + _SEP):
        _, role, module, qualname = name.split(_SEP)
        original = importlib.import_module(module.replace("__", "."))
        for part in qualname.split("."):
            original = getattr(original, part)
        return _patched_class(original, role)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _transformers_models(model) -> list:
    """The model itself when it is a transformers model (it has a config and set_attn_implementation), else the
    outermost such submodules (e.g. the encoder inside a sentence-transformers model)."""
    def is_hf(m) -> bool:
        return getattr(m, "config", None) is not None and callable(getattr(m, "set_attn_implementation", None))

    if is_hf(model):
        return [model]
    found, inside = [], []
    for name, module in model.named_modules():
        if is_hf(module) and not any(name.startswith(p + ".") for p in inside):
            found.append(module)
            inside.append(name)
    return found


def _route_attention(model, models: list) -> str:
    """Switch attention to "fastbert" in each transformers model in ``model`` that calls attention through
    transformers' interface (``models``: :func:`_transformers_models` of ``model``)."""
    if not models or not register():
        return "left as is (not a transformers model with AttentionInterface)"
    routed = []
    for m in models:
        previous = getattr(m.config, "_attn_implementation", None)
        if previous != NAME:
            m.set_attn_implementation(NAME)
        if getattr(m.config, "_attn_implementation", None) == NAME:
            m._fastbert_previous_attn = previous
            routed.append(m)
    if not routed:
        return f"left as is ({type(models[0]).__name__} does not call attention through AttentionInterface)"
    where = "" if routed == [model] else f" in {', '.join(type(m).__name__ for m in routed)}"
    return f"attn_implementation={NAME!r}{where}"


def patch(model, attn_implementation: str = "auto") -> PatchReport:
    """Make a Hugging Face encoder run fastbert's ops, in place (same weights, same ``state_dict`` keys).

    Attention goes through ``attn_implementation="fastbert"`` when the model calls attention through transformers'
    AttentionInterface. On the path ``fastbert.ops.choose_path(attn_implementation, device)`` picks (default
    "auto": "fused" on CUDA, "sdpa" on CPU), modules whose structure computes LayerNorm(dropout(dense(h)) + residual),
    act(dense(x)), LayerNorm(act(dense(x))) or a LayerNorm on its own get a forward calling the path's kernels: fused
    Triton kernels on "fused"; on "sdpa"/"eager" transformers' own operations, done in place when no gradient flows
    (one [tokens, features] allocation fewer each). Every module of exactly the class ``nn.Linear`` gets
    ``fastbert.ops.Linear``'s forward (oneDNN's GEMM on CPU in fp32 where ``fastbert.ops.linear.cpu_gemm`` picked
    it; ``F.linear`` otherwise). Padded batches then run the layers padding-free (:class:`PaddingFree`) from the
    path's measured padding threshold, where a probe batch shows the family allows it. Returns a :class:`PatchReport`; raises ValueError, naming the class, for a model it cannot run
    correctly (a decoder: causal attention).
    """
    from torch import nn

    from .ops.dispatch import choose_path

    models = _transformers_models(model)
    for m in models:
        if getattr(m.config, "is_decoder", False):
            raise ValueError(f"fastbert.patch: {type(m).__name__} is a decoder (config.is_decoder=True): fastbert's "
                             "attention is bidirectional only")
    first = next(model.parameters(), None)
    path = choose_path(attn_implementation, first.device if first is not None else None)
    attention = _route_attention(model, models)
    swapped: dict[str, str] = {}
    inside = set()
    linears = []
    for name, module in model.named_modules():
        if type(module) is nn.Linear:  # exactly: a subclass (quantized, adapter) keeps its own forward
            linears.append(module)
            continue
        if hasattr(type(module), "_fastbert_original") or any(name.startswith(p + ".") for p in inside):
            continue
        found = _match(module) if not isinstance(module, nn.LayerNorm) else (
            ("layer_norm", {}) if module.weight is not None else None)
        if found is None:
            continue
        role, parts = found
        module._fastbert_parts = parts
        module._fastbert_kernels = path.kernels
        module.__class__ = _patched_class(type(module), role)
        swapped[name] = role
        inside.add(name)
    if not swapped and attention.startswith("left"):
        raise ValueError(f"fastbert.patch: nothing to patch in {type(model).__name__} (its attention does not go "
                         "through transformers' AttentionInterface and no module matches a fused op)")
    for module in linears:
        module.__class__ = _patched_class(nn.Linear, "linear")
    routed = [m for m in models if getattr(m.config, "_attn_implementation", None) == NAME]
    padding_free = "; ".join(_install_padding_free(m, path) for m in routed) or "no (attention not routed)"
    return PatchReport(model, path.name, attention, swapped, padding_free,
                       _dense_report(len(linears), first.device if first is not None else None))


def _dense_report(linears: int, device) -> str:
    if not linears:
        return "no nn.Linear"
    if device is not None and device.type != "cpu":  # the CPU choice (a measurement) is not asked for then
        return f"{linears} nn.Linear run fastbert.ops.linear (F.linear on {device.type}; oneDNN only on CPU fp32)"
    from .ops.linear import describe

    return f"{linears} nn.Linear run fastbert.ops.linear (on CPU in fp32: {describe()})"


def unpatch(model):
    """Undo :func:`patch`: original classes, attention implementation and padded layers back; returns the model."""
    _remove_padding_free(model)
    for module in model.modules():
        original = getattr(type(module), "_fastbert_original", None)
        if original is not None:
            module.__class__ = original
            for attr in ("_fastbert_parts", "_fastbert_kernels"):
                module.__dict__.pop(attr, None)
    for m in model.modules():
        if "_fastbert_previous_attn" in m.__dict__:
            previous = m.__dict__.pop("_fastbert_previous_attn")
            if previous is not None:
                m.set_attn_implementation(previous)
    return model
