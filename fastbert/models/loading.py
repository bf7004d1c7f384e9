"""Reading and writing Hugging Face model folders (local only, never the network): where the weights are, which
keys they use, and the checks that make a mismatch fail loudly instead of loading half a model."""
from __future__ import annotations

import json
import logging
import os

import torch
from torch import nn

logger = logging.getLogger(__name__)

# key prefixes of task heads: present in one class's checkpoint and absent from another's, never an error
HEAD_PREFIXES = ("cls.", "pooler.", "classifier.", "qa_outputs.")


def resolve_model_folder(path: str | os.PathLike) -> str:
    """The folder holding config.json: ``path`` itself, or the Transformer sub-folder a sentence-transformers
    modules.json names. Local paths only."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is not a local model folder (fastbert never downloads weights)")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    modules = os.path.join(path, "modules.json")
    if os.path.isfile(modules):
        with open(modules, encoding="utf-8") as f:
            for module in json.load(f):
                sub = os.path.join(path, module.get("path", ""))
                if module.get("type", "").endswith("Transformer") and os.path.isfile(os.path.join(sub, "config.json")):
                    return sub
    raise FileNotFoundError(f"no config.json in {path!r}")


def read_weights(folder: str) -> dict[str, torch.Tensor]:
    """The tensors of ``folder/model.safetensors`` (or the older ``pytorch_model.bin``)."""
    st = os.path.join(folder, "model.safetensors")
    if os.path.isfile(st):
        from safetensors.torch import load_file

        return load_file(st)
    binary = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(binary):
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {folder!r}")


def normalize_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TF-era names (LayerNorm.gamma/beta) -> weight/bias; drop legacy buffers (position_ids, token_type_ids)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(("embeddings.position_ids", "embeddings.token_type_ids")):
            continue
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[key] = value
    return out


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], base_prefix: str, tied: set[str]) -> None:
    """Load a checkpoint of any BERT class into ``model``: the ``base_prefix`` (e.g. "bert.") is added or stripped
    as needed, heads the checkpoint lacks stay freshly initialised (logged), heads the model lacks are ignored
    (logged); missing encoder weights, unknown keys and shape mismatches raise ValueError."""
    state_dict = normalize_keys(state_dict)
    own = model.state_dict()
    has_base = any(k.startswith(base_prefix) for k in own)
    ckpt_has_base = any(k.startswith(base_prefix) for k in state_dict)
    if has_base and not ckpt_has_base:
        state_dict = {(k if k.startswith("cls.") else base_prefix + k): v for k, v in state_dict.items()}
    elif not has_base and ckpt_has_base:
        state_dict = {k[len(base_prefix):]: v for k, v in state_dict.items() if k.startswith(base_prefix)}

    head_like = HEAD_PREFIXES + (base_prefix + "pooler.",)
    unexpected = sorted(k for k in state_dict if k not in own)
    bad_unexpected = [k for k in unexpected if not k.startswith(head_like)]
    if bad_unexpected:
        raise ValueError(f"checkpoint has keys this {type(model).__name__} does not know: {bad_unexpected[:8]}")
    missing = sorted(k for k in own if k not in state_dict and k not in tied)
    base_missing = [k for k in missing if not k.startswith(head_like)]
    if base_missing:
        raise ValueError(f"checkpoint lacks encoder weights: {base_missing[:8]}" + (" ..." if len(base_missing) > 8 else ""))
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in state_dict if k in own and state_dict[k].shape != own[k].shape]
    if mismatched:
        raise ValueError("checkpoint shapes do not match the config: " + "; ".join(mismatched[:8]))
    if unexpected:
        logger.info("ignored checkpoint weights this %s does not use: %s", type(model).__name__, unexpected)
    if missing:
        logger.warning("%s: newly initialised (not in the checkpoint): %s", type(model).__name__, missing)
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)


def save_weights(model: nn.Module, folder: str, tied: set[str]) -> None:
    """``folder/model.safetensors`` with the model's tensors (tied copies written once, as Hugging Face does)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in tied}
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
