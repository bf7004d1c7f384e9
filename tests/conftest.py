"""Test set-up shared by every test file.

Triton decides between its interpreter and its compiler when a kernel is *defined*, so TRITON_INTERPRET must be
set before anything imports fastbert.ops. On a machine without CUDA we set it, and the Triton kernels run on CPU
tensors in the interpreter (with bf16 dots made exact by interpreter_bf16.py); with CUDA the kernels are compiled
and the GPU-marked tests run too.
"""
import importlib.util
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

if INTERPRET and importlib.util.find_spec("triton") is not None:
    # The interpreter multiplies the raw bits of bf16 tensors in tl.dot (triton issue 11584): widen bf16 dot
    # operands exactly to fp32 first. Raises on a Triton version the patch was not checked against.
    import interpreter_bf16  # noqa: E402

    interpreter_bf16.install()


def pytest_collection_modifyitems(config, items):
    """GPU-marked tests skip without CUDA, each with its reason from gpu_only.py (the one list of them)."""
    import gpu_only

    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(pytest.mark.skip(reason=gpu_only.reason(item.nodeid)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_config():
    """Factory: a 2-layer, hidden-64 BertConfig without dropout, ``tiny_config(attn_implementation="fused")``."""
    import helpers

    return helpers.tiny_config


@pytest.fixture
def padded_batch():
    """Factory: ``padded_batch(mode="right", batch=3, seqlen=19, seed=0)`` -> input_ids, attention_mask, labels."""
    import helpers

    return helpers.padded_batch


@pytest.fixture
def packed_batch():
    """Factory: ``packed_batch(padded)`` -> input_ids / labels [total], cu_seqlens, max_seqlen."""
    import helpers

    return helpers.packed_batch


@pytest.fixture
def device():
    """The device kernel tests run on: CUDA when present, else CPU through the Triton interpreter."""
    return torch.device("cuda" if HAS_CUDA else "cpu")
