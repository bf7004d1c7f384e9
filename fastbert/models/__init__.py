"""The BERT encoder and its heads (``bert``), and local checkpoint folders (``loading``)."""
from .bert import (  # noqa: F401
    BertForMaskedLM,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertPreTrainedModel,
)
from .loading import resolve_model_folder  # noqa: F401
