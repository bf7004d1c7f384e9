"""BertConfig: the fields of Hugging Face's BertConfig, read from / written to its config.json."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any

ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "fused")  # "auto": see fastbert.ops.dispatch.choose_path
HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
# transformers' GELU activation names -> torch's ``approximate`` argument ("gelu" is the exact erf form)
GELU_APPROXIMATE = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}
JSON_ATTN_KEY = "fastbert_attn_implementation"
IGNORE_INDEX = -100  # label of positions without a target (Hugging Face's ignore_index)


@dataclasses.dataclass
class BertConfig:
    """Hyper-parameters of a BERT encoder. Defaults are BERT-base (uncased).

    ``attn_implementation`` picks the path: "eager" (HF's naive matmul + additive mask + softmax + dropout +
    matmul), "sdpa" (torch.nn.functional.scaled_dot_product_attention), "fused" (fastbert's Triton kernels:
    attention, dropout+residual+LayerNorm, bias+GELU) or "auto" (the fastest correct one for the model's device;
    ``fastbert.ops.choose_path`` decides). Keys of config.json this class does not know (architectures,
    id2label, ...) are kept in ``extra`` and written back unchanged.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    num_labels: int = 2
    classifier_dropout: float | None = None
    attn_implementation: str = "auto"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size", "num_labels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertConfig.hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {value!r}")
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"BertConfig.hidden_act must be one of {HIDDEN_ACTS}, got {self.hidden_act!r}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"BertConfig.attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {self.attn_implementation!r}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def model_type(self) -> str:
        """Hugging Face's name for the architecture (sentence-transformers and Trainer read it)."""
        return "bert"

    # ---------------------------------------------------------------- dict / json round trip
    @classmethod
    def from_dict(cls, config: dict[str, Any], **overrides: Any) -> "BertConfig":
        config = {**config, **overrides}
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in config.items() if k in known}
        extra = {k: v for k, v in config.items() if k not in known and k != "extra"}
        if "id2label" in config and "num_labels" not in config:
            kwargs["num_labels"] = len(config["id2label"])
        # config.json keeps our choice under its own key: transformers reads "attn_implementation" as its own
        # setting and rejects "fused", so a folder we save must not carry it under that name
        saved_impl = extra.pop(JSON_ATTN_KEY, None)
        if saved_impl is not None and "attn_implementation" not in overrides:
            kwargs["attn_implementation"] = saved_impl
        if kwargs.get("attn_implementation") not in (None, *ATTN_IMPLEMENTATIONS) and "attn_implementation" not in overrides:
            kwargs.pop("attn_implementation")  # transformers' own value (e.g. "flash_attention_2"): not ours to read
        extra.pop("_attn_implementation", None)  # transformers' runtime field, never a setting of ours
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The config.json content: HF's fields, the extra keys, and our attention choice under JSON_ATTN_KEY."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)
               if f.name not in ("extra", "attn_implementation")}
        out.update(copy.deepcopy(self.extra))
        out[JSON_ATTN_KEY] = self.attn_implementation
        out.setdefault("model_type", "bert")
        return out

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> "BertConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), **overrides)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "BertConfig":
        """Read ``path/config.json`` (or ``path`` itself when it is a file). Local files only."""
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"no config.json at {path!r} (fastbert loads local folders only, never the network)")
        return cls.from_json_file(file, **overrides)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    # ---------------------------------------------------------------- Hugging Face interop
    def to_hf(self, attn_implementation: str | None = None):
        """The equivalent ``transformers.BertConfig`` (needs transformers). ``attn_implementation`` "eager"/"sdpa"
        picks HF's attention; by default our eager/sdpa choice carries over and "fused" / "auto" map to "sdpa"."""
        import transformers

        fields = {k: v for k, v in self.to_dict().items() if k != JSON_ATTN_KEY}
        impl = attn_implementation or ("sdpa" if self.attn_implementation in ("fused", "auto") else self.attn_implementation)
        config = transformers.BertConfig(**fields)
        config._attn_implementation = impl
        return config

    @classmethod
    def from_hf(cls, hf_config: Any, **overrides: Any) -> "BertConfig":
        """From a ``transformers.BertConfig`` (or anything with ``to_dict()``)."""
        return cls.from_dict(hf_config.to_dict(), **overrides)

    def replace(self, **changes: Any) -> "BertConfig":
        """A validated copy with some fields changed (the original is never mutated)."""
        changes.setdefault("extra", copy.deepcopy(self.extra))
        return dataclasses.replace(self, **changes)
