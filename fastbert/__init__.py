"""fastbert: fast BERT on NVIDIA GPUs, a drop-in for PyTorch / Hugging Face BERT.

``import fastbert`` is cheap: Triton and the C++ extension are imported on first use.
"""
__version__ = "0.1.0"

from . import ops  # noqa: F401
from .config import BertConfig  # noqa: F401
from .patch import patch, unpatch  # noqa: F401
from .models import (  # noqa: F401
    BertForMaskedLM,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertPreTrainedModel,
)

__all__ = [
    "BertConfig",
    "BertModel",
    "BertForPreTraining",
    "BertForMaskedLM",
    "BertForNextSentencePrediction",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertForQuestionAnswering",
    "ops",
    "patch",
    "unpatch",
    "__version__",
]
