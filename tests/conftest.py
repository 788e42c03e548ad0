"""Test fixtures (the offline setup and network guard live in the root conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import photos as photo_data


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Real photographs: ../shared/photos when present, else scikit-image's."""
    return photo_data.load_photos()


@pytest.fixture(scope="session")
def lite0():  # type: ignore[no-untyped-def]
    """The real pretrained EfficientNet-Lite0 encoder (CPU), built once."""
    from crossscale.encode import create_encoder

    return create_encoder("efficientnet-lite0", device="cpu", batch_size=32)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP checkpoint saved with save_pretrained (no download)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 64,
        "max_position_embeddings": 16,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    path = tmp_path_factory.mktemp("tiny-clip")
    import torch

    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    save_tiny_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SigLIP checkpoint (model, image processor, tokenizer), built offline."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**tower, "vocab_size": 64, "max_position_embeddings": 16, "pad_token_id": 1, "eos_token_id": 1}
    vision = {**tower, "image_size": 32, "patch_size": 8}
    path = tmp_path_factory.mktemp("tiny-siglip")
    torch.manual_seed(0)
    SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    save_tiny_tokenizer(path)
    return path


WORDS = "a red green blue kite cat dog photo of the in sky and bird plane car house tree coffee cup rocket"


def save_tiny_tokenizer(path: Path) -> None:
    """A word-level tokenizer of a few dozen words (ids < 64), saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "[UNK]": 2}
    for word in WORDS.split():
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="[UNK]",
    ).save_pretrained(path)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
