"""smashlib.data: collate functions, SmashDataModule, cfg.add_data, built-in datasets, calibration batches,
and every error they raise. All data is in memory (datasets.Dataset objects) or ships with Python."""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict

from smashlib import MissingComponentError, SmashConfig, SmashError, UnknownNameError
from smashlib.data import (
    COLLATE_FUNCTIONS,
    DATASETS,
    DataError,
    DatasetUnavailableError,
    SmashDataModule,
    audio_processing_collate,
    calibration_batches,
    datasets_table,
    image_classification_collate,
    image_generation_collate,
    pack_texts,
    question_answering_collate,
    split_train_into_train_val_test,
    text_generation_collate,
)
from smashlib.data.collate import IGNORE_INDEX, bind_collate, get_collate, infer_collate
from smashlib.data.pydoc_topics import topic_split
from smashlib.data.splits import carve
from tests.tiny_models import tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "data.md"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def texts():
    return Dataset.from_dict({"text": [f"Document {i} says that small models run fast." for i in range(30)]})


@pytest.fixture
def cfg():
    return SmashConfig(device="cpu")


def pil_image(width: int, height: int, mode: str = "RGB", color=(200, 10, 10)):
    from PIL import Image

    return Image.new(mode, (width, height), color if mode == "RGB" else 128)


# ---------------------------------------------------------------------------------------------- collate
def test_text_generation_collate_pads_to_the_longest_and_masks_padding_in_labels(tokenizer):
    rows = [{"text": "def f(x): return x"}, {"text": "a much longer sentence about the language reference"}]
    batch = text_generation_collate(rows, tokenizer=tokenizer, max_seq_len=512)
    lengths = [len(tokenizer(row["text"])["input_ids"]) for row in rows]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    padding = batch["attention_mask"] == 0
    assert (batch["labels"][padding] == IGNORE_INDEX).all()
    assert torch.equal(batch["labels"][~padding], batch["input_ids"][~padding])
    assert (batch["input_ids"][padding] == tokenizer.pad_token_id).all()


def test_text_generation_collate_truncates_to_max_seq_len(tokenizer):
    batch = text_generation_collate([{"text": "word " * 200}], tokenizer=tokenizer, max_seq_len=16)
    assert batch["input_ids"].shape == (1, 16)


def test_text_collate_pads_with_eos_when_the_tokenizer_has_no_pad_token_and_respects_left_padding(tokenizer):
    import copy

    left = copy.deepcopy(tokenizer)
    left.pad_token = None
    left.padding_side = "left"
    batch = text_generation_collate([{"text": "x"}, {"text": "a longer text here"}], tokenizer=left)
    assert batch["attention_mask"][0, -1] == 1 and batch["attention_mask"][0, 0] == 0  # padded on the left
    assert batch["input_ids"][0, 0] == left.eos_token_id


def test_question_answering_collate_gives_question_inputs_and_answer_labels(tokenizer):
    rows = [{"question": "The capital of France is", "answer": "Paris"}, {"question": "Two plus two is", "answer": "four"}]
    batch = question_answering_collate(rows, tokenizer=tokenizer)
    first_question = tokenizer(rows[0]["question"])["input_ids"]
    first_answer = tokenizer(rows[0]["answer"])["input_ids"]
    assert batch["input_ids"][0, : len(first_question)].tolist() == first_question
    assert batch["labels"][0, : len(first_answer)].tolist() == first_answer
    assert (batch["labels"][0, len(first_answer) :] == IGNORE_INDEX).all()


def test_image_generation_collate_resizes_and_centre_crops_with_pil_and_torch():
    pytest.importorskip("PIL")
    from PIL import Image

    wide = Image.new("RGB", (60, 20), (0, 0, 255))
    wide.paste((255, 0, 0), (20, 0, 40, 20))  # red centre, blue sides: the centre crop keeps only red
    rows = [{"image": wide, "text": "a red square"}, {"image": pil_image(7, 33, "L"), "text": "grey"}]
    batch = image_generation_collate(rows, img_size=10)
    assert batch["text"] == ["a red square", "grey"]
    assert batch["images"].shape == (2, 3, 10, 10) and batch["images"].dtype == torch.uint8
    red, _, blue = batch["images"][0].float().mean(dim=(1, 2)).tolist()
    assert red > 200 and blue < 60
    assert batch["images"][1].float().std() < 1  # the grey image became three equal channels


@pytest.mark.parametrize(("output_format", "low", "high"), [("float", 0.0, 1.0), ("normalized", -1.0, 1.0)])
def test_image_output_formats_scale_pixels(output_format, low, high):
    pytest.importorskip("PIL")
    from PIL import Image

    image = Image.new("RGB", (4, 4), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 4, 2))
    images = image_generation_collate([{"image": image, "text": ""}], img_size=4, output_format=output_format)["images"]
    assert images.dtype == torch.float32
    assert images.min().item() == pytest.approx(low) and images.max().item() == pytest.approx(high)


def test_image_classification_collate_gives_pixel_values_and_labels(tmp_path):
    pytest.importorskip("PIL")
    path = tmp_path / "picture.png"
    pil_image(30, 40).save(path)
    rows = [{"image": pil_image(50, 50, "L"), "label": 3}, {"image": str(path), "label": 7}]
    batch = image_classification_collate(rows, img_size=16)
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["pixel_values"].dtype == torch.float32
    assert 0.0 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1.0
    assert batch["labels"].tolist() == [3, 7] and batch["labels"].dtype == torch.long


def test_image_errors_name_the_fix():
    pytest.importorskip("PIL")
    with pytest.raises(DataError, match="unknown output_format 'bytes'.*int, float, normalized"):
        image_generation_collate([{"image": pil_image(4, 4), "text": ""}], img_size=4, output_format="bytes")
    with pytest.raises(DataError, match="cannot read an image from a int"):
        image_generation_collate([{"image": 5, "text": ""}], img_size=4)


def test_audio_processing_collate_accepts_tensors_arrays_paths_and_datasets_values(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setenv("SMASHLIB_CACHE", str(tmp_path / "cache"))
    wav = tmp_path / "speech.wav"
    wav.write_bytes(b"RIFF....WAVE")
    rows = [
        {"audio": torch.zeros(16), "sentence": "tensor"},
        {"audio": np.ones(8, dtype=np.float32), "sentence": "array"},
        {"audio": str(wav), "sentence": "path"},
        {"audio": {"array": [0.5, 0.25], "sampling_rate": 16000}, "sentence": "decoded"},
        {"audio": {"bytes": b"fLaC-bytes", "path": "clip.flac"}, "sentence": "undecoded"},
    ]
    batch = audio_processing_collate(rows)
    assert batch["sentence"] == ["tensor", "array", "path", "decoded", "undecoded"]
    assert batch["audio"][0].shape == (16,) and batch["audio"][1].dtype == torch.float32
    assert batch["audio"][2] == str(wav)
    assert batch["audio"][3].tolist() == [0.5, 0.25]
    written = Path(batch["audio"][4])
    assert written.suffix == ".flac" and written.read_bytes() == b"fLaC-bytes"
    with pytest.raises(DataError, match="cannot read audio from a float"):
        audio_processing_collate([{"audio": 1.5, "sentence": ""}])


def test_audio_processing_collate_reads_a_path_column_when_there_is_no_audio(tmp_path):
    wav = tmp_path / "speech.wav"
    wav.write_bytes(b"RIFF....WAVE")
    rows = Dataset.from_dict({"path": [str(wav)] * 3, "sentence": ["a", "b", "c"]})
    assert infer_collate(rows.column_names) == "audio_processing_collate"
    module = SmashDataModule(rows, rows, rows, "audio_processing_collate")  # checks columns and one batch
    batch = audio_processing_collate(list(rows))
    assert batch == {"audio": [str(wav)] * 3, "sentence": ["a", "b", "c"]}
    assert module is not None
    with pytest.raises(DataError, match="no column 'audio'"):
        SmashDataModule(Dataset.from_dict({"sentence": ["a"]}), None, None, "audio_processing_collate")


def test_collate_registry_errors_and_inference(tokenizer):
    with pytest.raises(UnknownNameError, match="Did you mean 'text_generation_collate'"):
        get_collate("text_generaton_collate")
    with pytest.raises(DataError, match="has no argument 'img_size': it takes max_seq_len"):
        bind_collate(get_collate("text_generation_collate"), {"img_size": 3}, tokenizer)
    with pytest.raises(MissingComponentError, match=r"needs a tokenizer.*cfg.add_tokenizer"):
        bind_collate(get_collate("text_generation_collate"), {}, None)
    assert infer_collate(["text", "id"]) == "text_generation_collate"
    assert infer_collate(["question", "answer", "text"]) == "question_answering_collate"
    assert infer_collate(["image", "label"]) == "image_classification_collate"
    assert infer_collate(["audio", "sentence"]) == "audio_processing_collate"
    assert infer_collate(["image", "text", "label"]) is None  # generation or classification: ambiguous
    assert infer_collate(["pixels"]) is None


# ---------------------------------------------------------------------------------------------- splits
def test_split_train_into_train_val_test_is_80_10_10_disjoint_and_reproducible():
    data = Dataset.from_dict({"text": [f"row {i}" for i in range(200)]})
    train, val, test = split_train_into_train_val_test(data, seed=42)
    assert (len(train), len(val), len(test)) == (160, 20, 20)
    rows = [set(split["text"]) for split in (train, val, test)]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    again = split_train_into_train_val_test(data, seed=42)
    assert [split["text"] for split in again] == [split["text"] for split in (train, val, test)]
    other = split_train_into_train_val_test(data, seed=7)
    assert other[1]["text"] != val["text"]


def test_split_errors():
    with pytest.raises(DataError, match=r"cannot split 5 rows 80/10/10 \(need at least 10\)"):
        split_train_into_train_val_test(Dataset.from_dict({"text": ["a"] * 5}))
    with pytest.raises(DataError, match="needs a datasets.Dataset, not a list"):
        split_train_into_train_val_test(["a"] * 20)


def test_carve_shrinks_in_proportion_when_the_source_is_small():
    parts = carve(Dataset.from_dict({"x": list(range(20))}), (80, 10, 10), seed=0)
    assert [len(part) for part in parts] == [16, 2, 2]
    assert len(set().union(*(part["x"] for part in parts))) == 20


# ---------------------------------------------------------------------------------------------- module
def test_module_checks_columns_at_once_and_names_the_missing_one(tokenizer):
    wrong = Dataset.from_dict({"content": ["text"] * 4, "id": [1, 2, 3, 4]})
    with pytest.raises(DataError, match=r"the train split of 'custom' has no column 'text'.*columns present: 'content', 'id'"):
        SmashDataModule(wrong, wrong, wrong, "text_generation_collate", tokenizer=tokenizer)
    good = Dataset.from_dict({"image": ["x.png"], "label": [1]})
    with pytest.raises(DataError, match="the val split .* no column 'label'"):
        SmashDataModule(good, Dataset.from_dict({"image": ["x.png"]}), good, "image_classification_collate")


def test_module_tries_the_collate_function_on_the_first_rows():
    pytest.importorskip("PIL")
    rows = Dataset.from_dict({"image": [pil_image(8, 8)] * 3, "label": ["cat", "dog", "cat"]})
    with pytest.raises(DataError, match=r"image_classification_collate cannot batch the first rows of the train split.*ValueError"):
        SmashDataModule(rows, rows, rows, "image_classification_collate")


def test_module_rejects_rows_that_are_not_dicts_and_bad_arguments(tokenizer, texts):
    with pytest.raises(DataError, match="yields str rows; text_generation_collate needs rows that are dicts"):
        SmashDataModule(["a", "b"], ["a"], ["a"], "text_generation_collate", tokenizer=tokenizer)
    with pytest.raises(DataError, match="batch_size must be a positive integer"):
        SmashDataModule(texts, texts, texts, batch_size=0)
    with pytest.raises(DataError, match="collate_fn must be a name or a callable"):
        SmashDataModule(texts, texts, texts, collate_fn=3)
    with pytest.raises(DataError, match=r"datasets must be \(train, val, test\)"):
        SmashDataModule.from_datasets((texts, texts), "text_generation_collate")
    with pytest.raises(DataError, match="max_samples takes one positive integer or three"):
        SmashDataModule.from_string("PydocTopics", max_samples=(1, 2))
    with pytest.raises(DataError, match="text_generation_collate has no argument 'img_size': it takes max_seq_len"):
        SmashDataModule(texts, texts, texts, collate_args={"img_size": 3})  # reported before any tokenizer
    with pytest.raises(DataError, match="unknown split 'validation': use one of train, val, test"):
        SmashDataModule(texts, texts, texts).dataloader("validation")


def test_module_defers_the_tokenizer_and_then_names_add_tokenizer(texts):
    module = SmashDataModule(texts, texts, texts, "text_generation_collate")  # fine: no batch built yet
    with pytest.raises(MissingComponentError, match=r"cfg.add_tokenizer\(...\) \(before or after cfg.add_data\)"):
        next(iter(module.train_dataloader()))


def test_dataloaders_batch_limit_and_shuffle(tokenizer, texts):
    module = SmashDataModule.from_datasets((texts, texts, texts), "text_generation_collate", tokenizer=tokenizer, batch_size=4)
    assert len(list(module.val_dataloader())) == 8  # 30 rows in batches of 4
    module.limit_datasets((12, 5, 3))
    assert module.sizes() == {"train": 12, "val": 5, "test": 3}
    assert [batch["input_ids"].shape[0] for batch in module.val_dataloader()] == [4, 1]
    first_val = next(iter(module.val_dataloader(batch_size=12)))["input_ids"]
    assert torch.equal(first_val, next(iter(module.val_dataloader(batch_size=12)))["input_ids"])
    torch.manual_seed(1)
    shuffled = next(iter(module.train_dataloader(batch_size=12)))["input_ids"]
    unshuffled = next(iter(module.dataloader("train", batch_size=12)))["input_ids"]
    assert not torch.equal(shuffled, unshuffled)
    with pytest.raises(DataError, match="limit_datasets takes one integer or three"):
        module.limit_datasets((1, 2))


def test_streamed_splits_work_and_have_unknown_size(tokenizer, texts):
    stream = texts.to_iterable_dataset()
    module = SmashDataModule(stream, stream, stream, "text_generation_collate", tokenizer=tokenizer, batch_size=8)
    assert module.sizes() == {"train": None, "val": None, "test": None}
    assert sum(batch["input_ids"].shape[0] for batch in module.train_dataloader()) == 30
    module.limit_datasets(5)
    assert sum(batch["input_ids"].shape[0] for batch in module.test_dataloader()) == 5


def test_a_custom_collate_callable_is_tried_and_used(texts):
    def lengths(rows):
        return torch.tensor([len(row["text"]) for row in rows])

    module = SmashDataModule(texts, texts, texts, lengths, batch_size=30)
    assert module.collate_name == "lengths"
    assert next(iter(module.val_dataloader())).tolist() == [len(text) for text in texts["text"]]

    def broken(rows):
        return rows[0]["missing"]

    with pytest.raises(DataError, match=r"broken cannot batch the first rows of the train split.*KeyError"):
        SmashDataModule(texts, texts, texts, broken)


# ---------------------------------------------------------------------------------------------- cfg.add_data
def test_add_data_by_name_records_name_and_sizes_not_the_data(cfg, tokenizer, tmp_path):
    cfg.add_tokenizer(tokenizer)
    cfg.add_data("PydocTopics", max_samples=(40, 8, 8), batch_size=4)
    module = cfg.components.data
    assert isinstance(module, SmashDataModule) and module.batch_size == 4
    cfg.save_json(tmp_path / "smash_config.json")
    saved = json.loads((tmp_path / "smash_config.json").read_text())["components"]["data"]
    assert saved == {
        "name": "PydocTopics", "collate_fn": "text_generation_collate",
        "sizes": {"train": 40, "val": 8, "test": 8}, "source": "pydoc_data.topics (ships with Python)",
    }
    assert len(json.dumps(saved)) < 300  # names and sizes only
    module.limit_datasets(5)
    assert cfg.to_json_dict()["components"]["data"]["sizes"] == {"train": 5, "val": 5, "test": 5}


def test_add_data_before_add_tokenizer_works_as_transformers_users_expect(cfg, tokenizer):
    cfg.add_data("PydocTopics", max_samples=8)
    cfg.add_tokenizer(tokenizer)
    batch = next(iter(cfg.components.data.test_dataloader(batch_size=2)))
    assert batch["input_ids"].shape[0] == 2


def test_add_data_with_a_tokenizer_checks_the_data_at_once(cfg, tokenizer):
    cfg.add_tokenizer(tokenizer)
    bad = Dataset.from_dict({"text": [None, None, None]})
    with pytest.raises(DataError, match="text_generation_collate cannot batch the first rows of the train split"):
        cfg.add_data((bad, bad, bad), collate_fn="text_generation_collate")


def test_add_data_accepts_splits_with_or_without_collate_fn(cfg, texts):
    qa = Dataset.from_dict({"question": ["Two plus two is"] * 4, "answer": ["four"] * 4})
    cfg.add_data((qa, qa, qa))
    assert cfg.components.data.collate_name == "question_answering_collate"
    cfg.add_data((texts, texts, texts), collate_fn="text_generation_collate", collate_args={"max_seq_len": 8}, name="mine")
    assert cfg.components.descriptions["data"]["name"] == "mine"
    assert cfg.components.data.collate_args == {"max_seq_len": 8}
    ambiguous = Dataset.from_dict({"image": ["a.png"], "text": ["a"], "label": [1]})
    with pytest.raises(DataError, match="cannot tell which collate function fits columns.*pass collate_fn="):
        cfg.add_data((ambiguous, ambiguous, ambiguous))


def test_add_data_splits_one_dataset_and_takes_dataset_dicts_and_texts(cfg, texts):
    cfg.add_data(texts)
    assert cfg.components.descriptions["data"]["sizes"] == {"train": 24, "val": 3, "test": 3}
    cfg.add_data(DatasetDict(train=texts, validation=texts.select(range(4)), test=texts.select(range(2))))
    assert cfg.components.data.sizes() == {"train": 30, "val": 4, "test": 2}
    cfg.add_data(DatasetDict(train=texts))
    assert cfg.components.data.sizes() == {"train": 24, "val": 3, "test": 3}
    cfg.add_data([f"text number {i}" for i in range(20)])
    assert cfg.components.descriptions["data"] == {
        "name": "20 texts", "collate_fn": "text_generation_collate", "sizes": {"train": 16, "val": 2, "test": 2}
    }


def test_add_data_keeps_a_data_module(cfg, texts, tokenizer):
    module = SmashDataModule(texts, texts, texts, name="mine")
    cfg.add_data(module)
    assert cfg.components.data is module
    cfg.add_tokenizer(tokenizer)
    assert module.resolved_tokenizer() is tokenizer  # the config's tokenizer, attached afterwards


def test_add_data_errors_name_the_accepted_forms(cfg, texts):
    with pytest.raises(DataError, match="cannot use a int. Pass a built-in dataset's name"):
        cfg.add_data(3)
    with pytest.raises(DataError, match="unknown argument.*shuffle: it takes collate_fn"):
        cfg.add_data(texts, shuffle=True)
    with pytest.raises(DataError, match="max_samples applies to built-in datasets only"):
        cfg.add_data(texts, max_samples=3)
    with pytest.raises(DataError, match="'PydocTopics' comes with its collate function"):
        cfg.add_data("PydocTopics", collate_fn="question_answering_collate")
    with pytest.raises(DataError, match="name does not apply when cfg.add_data gets a str"):
        cfg.add_data("PydocTopics", name="x")
    with pytest.raises(DataError, match="batch_size does not apply when cfg.add_data gets a SmashDataModule"):
        cfg.add_data(SmashDataModule(texts, texts, texts), batch_size=2)
    with pytest.raises(UnknownNameError, match="unknown dataset 'wikitext'. Did you mean 'WikiText'"):
        cfg.add_data("wikitext")
    assert cfg.components.data is None  # nothing was attached by the failed calls


# ---------------------------------------------------------------------------------------------- PydocTopics
def test_pydoc_topics_is_deterministic_and_splits_whole_topics():
    first = SmashDataModule.from_string("PydocTopics")
    second = SmashDataModule.from_string("PydocTopics")
    assert first.train_dataset["text"] == second.train_dataset["text"]
    topics = [set(split["topic"]) for split in (first.train_dataset, first.val_dataset, first.test_dataset)]
    assert not (topics[0] & topics[1]) and not (topics[0] & topics[2]) and not (topics[1] & topics[2])
    chars = [sum(map(len, split["text"])) for split in (first.train_dataset, first.val_dataset, first.test_dataset)]
    assert all(share > 0.07 for share in (chars[1] / sum(chars), chars[2] / sum(chars)))  # ~10% each
    assert all(len(text) > 0 for text in first.test_dataset["text"])
    assert topic_split(1) != topic_split(42)
    small = SmashDataModule.from_string("PydocTopics", max_samples=(10, 3, 2), seed=5)
    assert small.sizes() == {"train": 10, "val": 3, "test": 2}


def test_local_texts_mixes_kinds_in_every_split_and_keeps_documents_whole():
    """LocalTexts, the default calibration of the recommended recipes: each split holds every kind the
    machine has (pydoc always; Debian's licences here), no document is in two splits, and the first rows
    already alternate between kinds (a calibration reading only a prefix still sees both)."""
    module = SmashDataModule.from_string("LocalTexts")
    splits = (module.train_dataset, module.val_dataset, module.test_dataset)
    kinds = {"python documentation"} | ({"licences"} if Path("/usr/share/common-licenses").is_dir() else set())
    assert all(set(split["kind"]) == kinds for split in splits)
    documents = [set(zip(split["kind"], split["document"])) for split in splits]
    assert not (documents[0] & documents[1]) and not (documents[0] & documents[2]) and not (documents[1] & documents[2])
    assert set(module.train_dataset["kind"][:4]) == kinds
    assert SmashDataModule.from_string("LocalTexts").train_dataset["text"] == module.train_dataset["text"]


def test_local_texts_without_the_licence_folder_warns_and_keeps_the_other_kinds(monkeypatch, tmp_path):
    from smashlib.data import local_texts

    monkeypatch.setattr(local_texts, "LICENCES", tmp_path / "missing")
    with pytest.warns(UserWarning, match="no licences on this machine"):
        module = SmashDataModule.from_string("LocalTexts")
    assert set(module.train_dataset["kind"]) == {"python documentation"}


# ---------------------------------------------------------------------------------------------- calibration
def test_calibration_batches_are_full_windows_without_padding(cfg, tokenizer):
    cfg.add_data("PydocTopics")
    cfg.add_tokenizer(tokenizer)
    batches = calibration_batches(cfg.components, n_samples=10, seq_len=256, batch_size=4)
    assert [batch["input_ids"].shape for batch in batches] == [(4, 256), (4, 256), (2, 256)]
    assert all(batch["attention_mask"].all() for batch in batches)
    assert (torch.cat([b["input_ids"] for b in batches]) == tokenizer.eos_token_id).any()  # documents joined by EOS
    again = calibration_batches(cfg.components, n_samples=10, seq_len=256, batch_size=4)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    other_seed = calibration_batches(cfg.components, n_samples=10, seq_len=256, batch_size=4, seed=1)
    assert not torch.equal(batches[0]["input_ids"], other_seed[0]["input_ids"])
    test_batches = calibration_batches(cfg.components, n_samples=2, seq_len=64, split="test")
    test_texts = list(cfg.components.data.test_dataset["text"])
    random.Random(0).shuffle(test_texts)
    assert torch.equal(test_batches[0]["input_ids"], pack_texts(test_texts, tokenizer, 64, n_samples=2)[0]["input_ids"])


def test_calibration_batches_errors(cfg, tokenizer):
    with pytest.raises(MissingComponentError, match=r"needs data: call cfg.add_data\(...\)"):
        calibration_batches(cfg.components)
    cfg.add_data(["short text"] * 12)
    with pytest.raises(MissingComponentError, match=r"needs a tokenizer: call cfg.add_tokenizer"):
        calibration_batches(cfg.components)
    cfg.add_tokenizer(tokenizer)
    with pytest.raises(DataError, match="fewer than 4096 tokens"):
        calibration_batches(cfg.components, seq_len=4096)
    with pytest.warns(UserWarning, match=r"only \d+ sequences of 4 tokens; 500 were asked for"):
        calibration_batches(cfg.components, n_samples=500, seq_len=4)


def test_calibration_batches_of_non_text_data_are_collated_batches(cfg):
    pytest.importorskip("PIL")
    images = Dataset.from_dict({"image": [pil_image(8, 8)] * 6, "label": [0, 1, 2, 3, 4, 5]})
    cfg.add_data((images, images, images), collate_args={"img_size": 8})
    batches = calibration_batches(cfg.components, n_samples=4, batch_size=2)
    assert [batch["pixel_values"].shape for batch in batches] == [(2, 3, 8, 8)] * 2


def test_pack_texts(tokenizer):
    batches = pack_texts(["one two three"] * 50, tokenizer, seq_len=8)  # n_samples=None: every full window
    total = sum(batch["input_ids"].numel() for batch in batches)
    tokens = 50 * (len(tokenizer("one two three", add_special_tokens=False)["input_ids"]) + 1)
    assert total == tokens - tokens % 8
    with pytest.raises(DataError, match="must be positive"):
        pack_texts(["x"], tokenizer, seq_len=0)


# ---------------------------------------------------------------------------------------------- the Hub
def test_offline_hub_fails_fast_with_the_dataset_named_and_the_local_alternative():
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as caught:
        SmashDataModule.from_string("WikiText")
    assert time.perf_counter() - start < 30
    message = str(caught.value)
    assert "'WikiText'" in message and "Salesforce/wikitext" in message and "HF_HUB_OFFLINE is set" in message
    assert "cfg.add_data((train, val, test), collate_fn='text_generation_collate')" in message
    assert "'PydocTopics'" in message
    assert isinstance(caught.value, SmashError) and isinstance(caught.value, OSError)


@pytest.mark.parametrize("name", [name for name, entry in DATASETS.items() if not getattr(entry.source, "works_offline", False)])
def test_every_hub_dataset_fails_fast_offline(name):
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError, match=f"'{name}' could not be loaded"):
        SmashDataModule.from_string(name)
    assert time.perf_counter() - start < 30


def test_unreachable_hub_is_reported_before_any_request(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:1")  # nothing listens on port 1
    import datasets

    def must_not_be_called(*args, **kwargs):
        raise AssertionError("load_dataset was called although the Hub is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", must_not_be_called)
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError, match=r"'C4'.*cannot connect to 127.0.0.1:1.*set HF_HUB_OFFLINE=1"):
        SmashDataModule.from_string("C4")
    assert time.perf_counter() - start < 15


def _hub_rows(repo: str, split: str, count: int, tmp_path: Path) -> dict[str, list]:
    """Rows with the columns each Hub source has (as its dataset card lists them), made up locally."""
    from PIL import Image

    def image(i):
        return Image.new("RGB", (24 + i % 5, 20), (i * 7 % 255, 80, 160))

    def picture_url(i):
        path = tmp_path / f"{split}-{i:012d}.jpg"
        if not path.exists():
            image(i).save(path)
        return path.as_uri()

    def wav(i):
        path = tmp_path / f"{split}-{i}.wav"
        path.write_bytes(b"RIFF" + bytes([i % 256]) * 8)
        return str(path)

    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    n = range(count)
    schemas = {
        "Salesforce/wikitext": lambda: {"text": ["" if i % 3 == 0 else f" = Heading {i} = \n line {i}\n" for i in n]},
        "HuggingFaceTB/smoltalk": lambda: {"messages": [chat] * count, "full_topic": ["x"] * count},
        "HuggingFaceTB/smol-smoltalk": lambda: {"messages": [chat] * count, "source": ["x"] * count},
        "allenai/c4": lambda: {"text": [f"web page {i}" for i in n], "timestamp": ["t"] * count, "url": ["u"] * count},
        "timdettmers/openassistant-guanaco": lambda: {"text": [f"### Human: q{i} ### Assistant: a{i}" for i in n]},
        "alxfgh/PubChem10M_SELFIES": lambda: {"CID": list(n), "SELFIES": [f"[C][C][O]{i}" for i in n]},
        "Polyglot-or-Not/Fact-Completion": lambda: {
            "stem": [f"The capital of country {i} is" for i in n], "true": [f"City {i}" for i in n],
            "false": [["x"]] * count, "subject": ["s"] * count, "relation": ["r"] * count,
        },
        "phiyodr/coco2017": lambda: {
            "file_name": [f"{i:012d}.jpg" for i in n], "coco_url": [picture_url(i) for i in n],
            "captions": [[f"a photo number {i}", "another caption"] for i in n], "image_id": list(n),
        },
        "nannullna/laion_subset": lambda: {"image": [image(i) for i in n], "text": [f"art {i}" for i in n]},
        "data-is-better-together/open-image-preferences-v1": lambda: {
            "prompt": [f"prompt {i}" for i in n], "image_quality_dev": [image(i) for i in n],
            "image_simplified_dev": [image(i) for i in n], "quality_prompt": ["q"] * count,
        },
        "zh-plus/tiny-imagenet": lambda: {"image": [image(i) for i in n], "label": [i % 200 for i in n]},
        "ylecun/mnist": lambda: {"image": [Image.new("L", (28, 28), i) for i in n], "label": [i % 10 for i in n]},
        "uoft-cs/cifar10": lambda: {"img": [image(i) for i in n], "label": [i % 10 for i in n]},
        "mozilla-foundation/common_voice_17_0": lambda: {
            "client_id": ["c"] * count, "audio": [wav(i) for i in n], "sentence": [f"said {i}" for i in n],
        },
        "openslr/librispeech_asr": lambda: {
            "file": ["f.flac"] * count, "audio": [wav(i) for i in n], "text": [f"READ {i}" for i in n], "id": list(map(str, n)),
        },
    }
    return schemas[repo]()


@pytest.mark.parametrize("name", [name for name, entry in DATASETS.items() if hasattr(entry.source, "repo")])
def test_every_hub_dataset_turns_its_hub_columns_into_checked_splits(name, tokenizer, tmp_path, monkeypatch):
    """The Hub itself cannot be reached here: each source's split names, renames, filters, sampling and
    carving run against local data with the columns that source has on the Hub."""
    pytest.importorskip("PIL")
    import datasets
    import huggingface_hub

    entry = DATASETS[name]
    requested = []

    def fake_load_dataset(repo, config=None, split=None, streaming=False):
        requested.append((repo, config, split, streaming))
        table = Dataset.from_dict(_hub_rows(repo, split, 40, tmp_path))
        return table.to_iterable_dataset() if streaming else table

    def fake_download(repo, filename, repo_type=None):
        path = tmp_path / filename
        path.write_bytes(b"fLaC")
        return str(path)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    arguments = {"img_size": 8} if "img_size" in entry.collate_args else None
    module = SmashDataModule.from_string(name, tokenizer=tokenizer, max_samples=(6, 3, 2), collate_args=arguments)
    expected = (1, 1, 1) if name == "AIPodcast" else (6, 3, 2)
    assert tuple(module.sizes().values()) == expected
    assert module.collate_name == entry.collate_fn
    for split in ("train", "val", "test"):
        assert set(get_collate(entry.collate_fn).columns) <= set(module.split(split).column_names)
        assert next(iter(module.dataloader(split, batch_size=2))) is not None
    for repo, config, split, streaming in requested:
        assert (repo, config, streaming) == (entry.source.repo, entry.source.config, entry.source.streaming)
        assert split in {entry.source.train, entry.source.val, entry.source.test}
    if entry.source.nonempty:
        assert all(text.strip() for text in module.train_dataset["text"])
    key = next((column for column in ("question", "text") if column in module.train_dataset.column_names), None)
    if key and name not in ("SmolTalk", "SmolSmolTalk", "AIPodcast"):  # their made-up rows repeat
        source = entry.source
        carved_together = (
            ("train", "val", "test") if source.val is None and source.test is None
            else ("train", "val") if source.val is None
            else ("val", "test") if source.test is None
            else ()
        )
        values = [value for split in carved_together for value in module.split(split)[key]]
        assert len(set(values)) == len(values), "splits carved from one Hub split overlap"


# ---------------------------------------------------------------------------------------------- docs
def test_docs_table_is_generated_from_the_registry():
    document = DOCS.read_text(encoding="utf-8")
    table = re.search(r"<!-- datasets-table:begin.*?-->\n(.*)\n<!-- datasets-table:end -->", document, re.DOTALL)
    assert table, "docs/data.md lost its table markers"
    assert table.group(1) == datasets_table(), "regenerate it: python -m smashlib.data docs/data.md"
    for name in DATASETS:
        assert f"| `{name}` |" in table.group(1)


def test_docs_describe_every_collate_function():
    document = DOCS.read_text(encoding="utf-8")
    for name in COLLATE_FUNCTIONS:
        assert f"| `{name}` |" in document


def _expected_output(code: str) -> str:
    """The ``# ...`` comment lines right after each print() of a docs block: what it must print."""
    expected, after_print = [], False
    for line in code.splitlines():
        stripped = line.strip()
        if after_print and stripped.startswith("# "):
            expected.append(stripped[2:])
            continue
        after_print = stripped.startswith("print(")
    return " ".join(expected)


@pytest.mark.real_model
def test_docs_examples_run_and_print_what_the_docs_show(smollm2_path, monkeypatch, capsys):
    """Every python block of docs/data.md runs, in order, in one namespace (except those marked not-run),
    and prints what the comments under its print() calls say."""
    document = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"(<!-- not-run:[^\n]*-->\n)?```python\n(.*?)```", document, re.DOTALL)
    runnable = [code for marker, code in blocks if not marker]
    assert len(runnable) >= 5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace: dict = {}
    for code in runnable:
        capsys.readouterr()
        exec(compile(code, str(DOCS), "exec"), namespace)  # noqa: S102 - our own documentation
        printed = " ".join(capsys.readouterr().out.split())
        assert printed == " ".join(_expected_output(code).split()), code


def test_import_smashlib_data_stays_light():
    code = "import sys, smashlib, smashlib.data; print(sorted(m for m in ('datasets', 'PIL') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
