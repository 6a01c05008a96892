"""The transformers generator, with a tiny randomly initialised local model (no hub, no download)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops_dagster.core.embedding import default_model_path
from llmops_dagster.core.rag import TransformersGenerator


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))  # any local tokenizer will do
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=128, n_embd=32, n_layer=1, n_head=2,
                        pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_generates_from_passages_within_the_model_window(tiny_decoder: Path) -> None:
    generator = TransformersGenerator(str(tiny_decoder), max_new_tokens=8)
    long_passage = "The champion alias moves only after every blocking check has passed. " * 40  # > 128 tokens
    prompt = generator._prompt("When does the champion move?", [long_passage, "second passage"])
    assert len(generator.pipeline.tokenizer(prompt)["input_ids"]) <= 128 - 8
    text, found = generator("When does the champion move?", [long_passage, "second passage"])
    assert found and text
    assert generator("anything", []) == ("No answer found in the indexed documents.", False)


def test_a_generator_path_that_is_not_a_model_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a local model folder"):
        TransformersGenerator(str(tmp_path), max_new_tokens=8)
