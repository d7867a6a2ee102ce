"""The built-in datasets, by name: one entry each, saying where it comes from, which task it serves,
which collate function reads it, and how many rows of each split are taken by default.

``SmashDataModule.from_string(name)`` and ``cfg.add_data(name)`` read this table; the docs' dataset
table is generated from it (:func:`smashlib.data.table.datasets_table`). Adding a dataset = one entry.
The sizes bound what is downloaded and kept: calibration and evaluation need hundreds of samples, not
the millions some of these sources hold.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from smashlib.data.local_texts import LocalTextsSource
from smashlib.data.pydoc_topics import PydocSource
from smashlib.data.sources import CocoSource, HubFileSource, HubSource, first_caption, messages_to_text
from smashlib.errors import UnknownNameError, did_you_mean


class Source(Protocol):
    def describe(self) -> str: ...

    def markdown(self) -> str: ...

    def load(self, name: str, sizes: tuple[int, int, int], seed: int, collate_fn: str) -> tuple[Any, Any, Any]: ...


TEXT = (1024, 128, 128)
IMAGES = (256, 64, 64)
AUDIO = (64, 16, 16)


@dataclass(frozen=True)
class BuiltinDataset:
    """One built-in dataset."""

    name: str
    task: str
    collate_fn: str
    source: Source
    #: Default rows of (train, validation, test); ``max_samples=`` overrides them.
    sizes: tuple[int, int, int] = TEXT
    #: Default arguments of the collate function (e.g. the image size the source is made for).
    collate_args: Mapping[str, Any] = field(default_factory=dict)
    license: str = "see the source"
    notes: str = ""


def _entries(*entries: BuiltinDataset) -> dict[str, BuiltinDataset]:
    return {entry.name: entry for entry in entries}


TEXT_GENERATION = "text_generation_collate"
IMAGE_GENERATION = "image_generation_collate"
IMAGE_CLASSIFICATION = "image_classification_collate"
AUDIO_PROCESSING = "audio_processing_collate"
QUESTION_ANSWERING = "question_answering_collate"

DATASETS: dict[str, BuiltinDataset] = _entries(
    # ------------------------------------------------------------------ text generation
    BuiltinDataset(
        "PydocTopics", "text generation", TEXT_GENERATION, PydocSource(), license="PSF",
        notes="Python's own help pages; no download, works offline. Topics (not paragraphs) are split, by characters 80/10/10.",
    ),
    BuiltinDataset(
        "LocalTexts", "text generation", TEXT_GENERATION, LocalTextsSource(), license="PSF and each licence's own terms",
        notes=("Several kinds mixed: PydocTopics and Debian's licence texts, split by whole documents 80/10/10 and "
               "interleaved; no download. The default calibration data of the recommended recipes."),
    ),
    BuiltinDataset(
        "WikiText", "text generation", TEXT_GENERATION,
        HubSource("Salesforce/wikitext", "wikitext-2-raw-v1", val="validation", test="test", nonempty="text"),
        license="CC BY-SA 3.0", notes="Wikipedia articles (WikiText-2 raw), one line per row; empty lines dropped.",
    ),
    BuiltinDataset(
        "TinyWikiText", "text generation", TEXT_GENERATION,
        HubSource("Salesforce/wikitext", "wikitext-2-raw-v1", nonempty="text"), sizes=(768, 96, 96),
        license="CC BY-SA 3.0", notes="960 rows of WikiText-2's train split, divided 80/10/10: for quick runs.",
    ),
    BuiltinDataset(
        "SmolTalk", "text generation", TEXT_GENERATION,
        HubSource("HuggingFaceTB/smoltalk", "everyday-conversations", test="test", prepare=messages_to_text),
        license="Apache-2.0", notes="Chats flattened to `role: content` lines.",
    ),
    BuiltinDataset(
        "SmolSmolTalk", "text generation", TEXT_GENERATION,
        HubSource("HuggingFaceTB/smol-smoltalk", test="test", streaming=True, prepare=messages_to_text),
        license="Apache-2.0", notes="The chat mix SmolLM2-135M/360M were tuned on, streamed; chats flattened.",
    ),
    BuiltinDataset(
        "C4", "text generation", TEXT_GENERATION,
        HubSource("allenai/c4", "en", val="validation", streaming=True),
        license="ODC-BY", notes="Web text, streamed (the source is 300 GB); test carved from validation.",
    ),
    BuiltinDataset(
        "OpenAssistant", "text generation", TEXT_GENERATION,
        HubSource("timdettmers/openassistant-guanaco", test="test"),
        license="Apache-2.0", notes="Assistant conversations in one `text` column.",
    ),
    BuiltinDataset(
        "PubChem", "text generation", TEXT_GENERATION,
        HubSource("alxfgh/PubChem10M_SELFIES", streaming=True, rename=(("SELFIES", "text"),)),
        license="see the source", notes="Molecules as SELFIES strings, streamed from 10M rows.",
    ),
    # ------------------------------------------------------------------ question answering
    BuiltinDataset(
        "Polyglot", "question answering", QUESTION_ANSWERING,
        HubSource("Polyglot-or-Not/Fact-Completion", train="English", rename=(("stem", "question"), ("true", "answer"))),
        license="Apache-2.0", notes="English fact completions: `stem` -> question, `true` -> answer.",
    ),
    # ------------------------------------------------------------------ image generation
    BuiltinDataset(
        "COCO", "image generation", IMAGE_GENERATION,
        CocoSource("phiyodr/coco2017", val="validation", prepare=first_caption),
        sizes=IMAGES, collate_args={"img_size": 512}, license="CC BY 4.0",
        notes="Captions from the Hub; only the sampled images are fetched from images.cocodataset.org.",
    ),
    BuiltinDataset(
        "LAION256", "image generation", IMAGE_GENERATION,
        HubSource("nannullna/laion_subset", train="artwork"),
        sizes=(320, 64, 64), collate_args={"img_size": 512}, notes="452 LAION artworks with captions.",
    ),
    BuiltinDataset(
        "OpenImage", "image generation", IMAGE_GENERATION,
        HubSource(
            "data-is-better-together/open-image-preferences-v1", train="cleaned", streaming=True,
            rename=(("prompt", "text"), ("image_quality_dev", "image")),
        ),
        sizes=IMAGES, collate_args={"img_size": 1024}, license="Apache-2.0",
        notes="Prompts with FLUX.1-dev images, streamed (the source is 17 GB).",
    ),
    # ------------------------------------------------------------------ image classification
    BuiltinDataset(
        "ImageNet", "image classification", IMAGE_CLASSIFICATION,
        HubSource("zh-plus/tiny-imagenet", val="valid", streaming=True),
        sizes=IMAGES, collate_args={"img_size": 224}, notes="Tiny ImageNet (200 classes, 64x64 images), streamed.",
    ),
    BuiltinDataset(
        "MNIST", "image classification", IMAGE_CLASSIFICATION,
        HubSource("ylecun/mnist", test="test"), sizes=IMAGES, collate_args={"img_size": 28}, license="MIT",
        notes="Grey digits, converted to 3 channels.",
    ),
    BuiltinDataset(
        "CIFAR10", "image classification", IMAGE_CLASSIFICATION,
        HubSource("uoft-cs/cifar10", test="test", streaming=True, rename=(("img", "image"),)),
        sizes=IMAGES, collate_args={"img_size": 32}, notes="10 classes, 32x32 images, streamed.",
    ),
    # ------------------------------------------------------------------ audio
    BuiltinDataset(
        "CommonVoice", "audio", AUDIO_PROCESSING,
        HubSource("mozilla-foundation/common_voice_17_0", "en", val="validation", test="test", streaming=True, audio="audio"),
        sizes=AUDIO, license="CC0-1.0",
        notes="Gated: accept its terms on the Hub and log in (`hf auth login`) first. Streamed.",
    ),
    BuiltinDataset(
        "LibriSpeech", "audio", AUDIO_PROCESSING,
        HubSource(
            "openslr/librispeech_asr", "clean", train="train.100", val="validation", test="test", streaming=True,
            audio="audio", rename=(("text", "sentence"),),
        ),
        sizes=AUDIO, license="CC BY 4.0", notes="Read English audiobooks with transcripts, streamed.",
    ),
    BuiltinDataset(
        "AIPodcast", "audio", AUDIO_PROCESSING,
        HubFileSource("reach-vb/random-audios", filename="sam_altman_lex_podcast_367.flac"),
        sizes=(1, 1, 1), notes="One long podcast recording (no transcript), the same row in every split.",
    ),
)


def get_dataset(name: str) -> BuiltinDataset:
    """The built-in dataset called ``name`` (case-sensitive, as listed in the docs)."""
    try:
        return DATASETS[name]
    except KeyError:
        folded = {key.lower(): key for key in DATASETS}
        hint = f" Did you mean '{folded[name.lower()]}'?" if name.lower() in folded else did_you_mean(name, DATASETS)
        raise UnknownNameError(
            f"unknown dataset '{name}'.{hint} Built-in datasets: {', '.join(DATASETS)}. "
            "For your own data pass datasets.Dataset objects or a list of texts to cfg.add_data."
        ) from None
