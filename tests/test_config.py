import json

import pytest

import fastbert
from fastbert import BertConfig


def test_defaults_are_bert_base():
    c = BertConfig()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (768, 12, 12, 3072)
    assert c.layer_norm_eps == 1e-12 and c.hidden_act == "gelu" and c.attn_implementation == "auto"


def test_json_round_trip_keeps_unknown_keys(tmp_path):
    raw = {"hidden_size": 384, "num_attention_heads": 12, "intermediate_size": 1536, "num_hidden_layers": 6,
           "architectures": ["BertModel"], "gradient_checkpointing": False, "model_type": "bert"}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    c = BertConfig.from_pretrained(tmp_path)
    assert c.hidden_size == 384 and c.extra["architectures"] == ["BertModel"]
    c.save_pretrained(tmp_path / "out")
    again = json.loads((tmp_path / "out" / "config.json").read_text())
    assert again["architectures"] == ["BertModel"] and again["hidden_size"] == 384
    assert BertConfig.from_pretrained(tmp_path / "out") == c


def test_hf_config_round_trip():
    transformers = pytest.importorskip("transformers")
    c = BertConfig(hidden_size=128, num_attention_heads=4, intermediate_size=256, num_hidden_layers=2)
    hf = c.to_hf(attn_implementation="sdpa")
    assert isinstance(hf, transformers.BertConfig) and hf.hidden_size == 128 and hf._attn_implementation == "sdpa"
    back = BertConfig.from_hf(hf)
    assert back.hidden_size == 128 and back.intermediate_size == 256


@pytest.mark.parametrize("field,value,match", [
    ("attn_implementation", "flash", "attn_implementation"),
    ("hidden_size", 100, "multiple of num_attention_heads"),
    ("hidden_dropout_prob", 1.0, "hidden_dropout_prob"),
    ("hidden_act", "swish", "hidden_act"),
    ("vocab_size", 0, "vocab_size"),
])
def test_bad_config_raises(field, value, match):
    with pytest.raises(ValueError, match=match):
        BertConfig(**{field: value})


def test_model_does_not_mutate_callers_config():
    c = BertConfig(hidden_size=64, num_attention_heads=2, intermediate_size=128, num_hidden_layers=1, vocab_size=100)
    m = fastbert.BertModel(c)
    m.set_attn_implementation("sdpa")
    assert c.attn_implementation == "auto" and m.config.attn_implementation == "sdpa"
    assert m.encoder.layer[0].attention.self.config.attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="attn_implementation"):
        m.set_attn_implementation("nope")


def test_saved_folder_loads_in_transformers_with_any_attn_implementation(tmp_path):
    transformers = pytest.importorskip("transformers")
    for impl in ("eager", "sdpa", "fused"):
        model = fastbert.BertModel(BertConfig(hidden_size=64, num_attention_heads=2, intermediate_size=128,
                                              num_hidden_layers=1, vocab_size=100, attn_implementation=impl))
        model.save_pretrained(tmp_path / impl)
        saved = json.loads((tmp_path / impl / "config.json").read_text())
        assert "attn_implementation" not in saved and saved["fastbert_attn_implementation"] == impl
        transformers.BertModel.from_pretrained(tmp_path / impl)  # transformers must not see "fused"
        assert fastbert.BertModel.from_pretrained(tmp_path / impl).config.attn_implementation == impl
        assert fastbert.BertModel.from_pretrained(tmp_path / impl, attn_implementation="sdpa").config.attn_implementation == "sdpa"
