"""The local generator with a transformers folder: a tiny randomly initialised decoder (no hub, no download)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops_dagster.core.embedding import default_model_path
from llmops_dagster.core.generation import NO_ANSWER, GeneratorConfig, LocalGenerator, PromptTemplate


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


def local(folder: Path, new_tokens: int = 8) -> LocalGenerator:
    return LocalGenerator(GeneratorConfig(kind="local", path=str(folder), template=PromptTemplate(max_new_tokens=new_tokens)))


def test_generates_from_passages_within_the_model_window(tiny_decoder: Path) -> None:
    generator = local(tiny_decoder)
    long_passage = "The champion alias moves only after every blocking check has passed. " * 40  # > 128 tokens
    generation = generator.generate("When does the champion move?", [long_passage, "second passage"])
    assert generation.error is None
    assert generation.usage.prompt_tokens + generation.usage.completion_tokens <= 128
    assert 0 < generation.usage.completion_tokens <= 8
    assert generator.identity["kind"] == "local" and generator.identity["model"] == tiny_decoder.name
    assert generator("anything", []) == (NO_ANSWER, False)


def test_a_generator_path_that_is_not_a_model_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rag.generator.path"):
        local(tmp_path)
