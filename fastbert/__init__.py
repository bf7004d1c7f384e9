"""fastbert: fast BERT on NVIDIA GPUs, a drop-in for PyTorch / Hugging Face BERT.

``import fastbert`` is cheap: the names below load on first access (models and ops import torch; Triton is imported
only when a fused op or the "fused" path is first used; the C++ extension only by ``fastbert.data``). It also makes
``attn_implementation="fastbert"`` available to transformers (registered when transformers' modeling code loads).
"""
import importlib

from . import hf as _hf

__version__ = "0.1.0"

_EXPORTS = {
    "BertConfig": ".config",
    "BertModel": ".models",
    "BertForPreTraining": ".models",
    "BertForMaskedLM": ".models",
    "BertForNextSentencePrediction": ".models",
    "BertForSequenceClassification": ".models",
    "BertForTokenClassification": ".models",
    "BertForQuestionAnswering": ".models",
    "BertPreTrainedModel": ".models",
    "patch": ".hf",
    "unpatch": ".hf",
}
_SUBMODULES = ("ops", "models", "data", "config", "info", "hf")

__all__ = [*_EXPORTS, "ops", "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


_hf.install_import_hook()


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
