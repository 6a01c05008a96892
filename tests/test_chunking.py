"""Chunker invariants, checked with the embedding model's real tokenizer.

hypothesis is not installed in this environment, so the property test draws its documents from a
seeded ``random.Random`` and is parametrised over the seeds: deterministic, and still many shapes.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from llmops_dagster.core.chunking import Chunk, ChunkConfig, Chunker, chunk_id
from llmops_dagster.core.documents import Block, parse_file
from llmops_dagster.core.embedding import default_model_path, load_tokenizer

CORPUS = Path(__file__).resolve().parent.parent / "sample_corpus"


@pytest.fixture(scope="module")
def tokenizer():
    tok, max_tokens = load_tokenizer(str(default_model_path()))
    return tok, max_tokens


def make(tokenizer, chunk_tokens: int, overlap_tokens: int) -> Chunker:
    """A chunker without context, so that the whole model window is the text's."""
    tok, max_tokens = tokenizer
    return Chunker(tok, ChunkConfig(chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens, context_template=""), max_tokens)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer[0]([text], add_special_tokens=False, truncation=False)["input_ids"][0])


def squash(text: str) -> str:
    return "".join(text.split())


def assert_sections_covered(blocks: list[Block], chunks: list[Chunk]) -> None:
    """Walk each section's chunks through the section's text (whitespace ignored).

    Every chunk must be a piece of its own section's text that starts no later than where the
    previous chunks ended (overlap may step back, gaps may not), and together they must reach the
    end: nothing lost, nothing reordered, nothing borrowed from another section.
    """
    sections: list[tuple[str, str]] = []
    for block in blocks:
        if not block.text.strip():
            continue
        if sections and sections[-1][0] == block.heading:
            sections[-1] = (block.heading, sections[-1][1] + squash(block.text))
        else:
            sections.append((block.heading, squash(block.text)))
    remaining = list(chunks)
    for heading, text in sections:
        reached, previous_start = 0, 0
        while remaining and reached < len(text):
            chunk = remaining.pop(0)
            assert chunk.heading == heading, f"chunk from section {chunk.heading!r} where {heading!r} was expected"
            piece = squash(chunk.text)
            start = text.rfind(piece, previous_start, reached + len(piece))
            assert start != -1, f"chunk {chunk.ordinal} is not the next piece of section {heading!r}: {chunk.text[:60]!r}"
            previous_start, reached = start, max(reached, start + len(piece))
        assert reached == len(text), f"section {heading!r}: text after character {reached} was lost"
    assert not remaining, "chunks left over after every section was covered"


# --- the property test ----------------------------------------------------------------------------

VOCABULARY = (
    "the index keeps vectors of every chunk and query search model table page file retrieval embedding "
    "tokenizer configuration unbelievably antidisestablishmentarianism internationalization "
    "pneumonoultramicroscopicsilicovolcanoconiosis llmops-dagster chunk_tokens https://example.com/a/b?c=d "
    "naïve café straße Zürich über données 日本語 Ελληνικά — e.g. U.S.A. 3.14 42 x ( ) [ ] { } # % 😀"
).split()


def random_document(rng: random.Random) -> list[Block]:
    blocks = []
    page = 1
    for section in range(rng.randint(1, 4)):
        heading = rng.choice(["", f"Section {section}"]) if section == 0 else f"Section {section}"
        for _ in range(rng.randint(1, 4)):
            words = []
            for _ in range(rng.choice([1, 3, 12, 40, 150, 400])):
                word = rng.choice(VOCABULARY)
                if rng.random() < 0.12:
                    word += rng.choice(".!?;:")
                if rng.random() < 0.05:
                    word = word.capitalize()
                words.append(word)
            page += rng.random() < 0.4
            blocks.append(Block(text=" ".join(words), page=page if rng.random() < 0.8 else None, heading=heading))
    return blocks


@pytest.mark.parametrize("seed", range(40))
def test_chunker_invariants_on_random_documents(tokenizer, seed: int) -> None:
    rng = random.Random(seed)
    chunk_tokens = rng.choice([16, 17, 24, 32, 50, 64, 100, 200, 254])
    overlap_tokens = rng.randrange(0, chunk_tokens // 2)
    chunker = make(tokenizer, chunk_tokens, overlap_tokens)
    blocks = random_document(rng)
    chunks = chunker.chunk("docs/random.md", blocks)

    assert chunks
    assert [chunk.ordinal for chunk in chunks] == list(range(len(chunks)))
    assert len({chunk.id for chunk in chunks}) == len(chunks), "ids are unique within a document"
    for chunk in chunks:
        assert chunk.text.strip() == chunk.text and chunk.text, "no empty or padded chunk"
        real = n_tokens(tokenizer, chunk.text)
        assert chunk.n_tokens == real, "n_tokens is the tokenizer's own count"
        assert real <= chunk_tokens, f"chunk {chunk.ordinal} has {real} > {chunk_tokens} tokens"
        pages = {b.page for b in blocks if b.heading == chunk.heading and b.page is not None}
        if chunk.page is None:
            assert chunk.page_end is None
        else:
            assert chunk.page in pages and chunk.page_end in pages and chunk.page <= chunk.page_end
    assert_sections_covered(blocks, chunks)
    # Deterministic: the same input gives the same chunks.
    assert chunker.chunk("docs/random.md", blocks) == chunks


# --- specific invariants --------------------------------------------------------------------------


def sentence_paragraph(prefix: str, count: int) -> str:
    return " ".join(f"{prefix} sentence {i} talks about the index." for i in range(count))


def test_chunks_never_mix_headings(tokenizer) -> None:
    blocks = [
        Block(" ".join(["apple"] * 30) + ".", heading="Apples"),
        Block(" ".join(["apple"] * 50), heading="Apples"),
        Block(" ".join(["banana"] * 7) + ".", heading="Bananas"),
        Block(" ".join(["cherry"] * 90), heading="Cherries"),
        Block(" ".join(["apple"] * 5), heading="Apples"),  # the heading comes back: a new section
    ]
    chunks = make(tokenizer, 32, 8).chunk("fruit.md", blocks)
    word_of = {"Apples": "apple", "Bananas": "banana", "Cherries": "cherry"}
    for chunk in chunks:
        assert set(re.findall(r"[a-z]+", chunk.text)) == {word_of[chunk.heading]}, chunk
    assert [c.heading for c in chunks][-1] == "Apples"
    assert chunks[-1].text == " ".join(["apple"] * 5), "the returning heading starts a fresh chunk"
    assert_sections_covered(blocks, chunks)


@pytest.mark.parametrize("overlap_tokens", [0, 12])
def test_every_word_lands_in_some_chunk(tokenizer, overlap_tokens: int) -> None:
    # Single-token words, so even token-window cuts fall between words.
    rng = random.Random(3)
    words = "the index keeps vectors of every chunk and query search model table page file run".split()
    blocks = []
    for section in range(3):
        for _ in range(3):
            sentences = [" ".join(rng.choices(words, k=rng.randint(3, 20))) + "." for _ in range(rng.randint(1, 12))]
            blocks.append(Block(" ".join(s.capitalize() for s in sentences), heading=f"S{section}"))
    blocks.append(Block(" ".join(rng.choices(words, k=300)), heading="S3"))  # no punctuation at all
    chunks = make(tokenizer, 40, overlap_tokens).chunk("words.txt", blocks)
    want = Counter(word for block in blocks for word in block.text.split())
    got = Counter(word for chunk in chunks for word in chunk.text.split())
    for word, count in want.items():
        assert got[word] >= count, f"{word!r}: {count} in the input, {got[word]} in the chunks"
    if overlap_tokens == 0:
        assert got == want, "without overlap the chunks partition the words"
    else:
        assert sum(got.values()) > sum(want.values()), "overlap repeats some text"


def test_long_sentence_without_punctuation_is_split_within_limits(tokenizer) -> None:
    words = [f"w{i % 97}" if i % 5 else "configuration" for i in range(1500)]
    sentence = " ".join(words)
    assert n_tokens(tokenizer, sentence) > 2000
    chunks = make(tokenizer, 50, 10).chunk("long.txt", [Block(sentence, page=3)])
    assert len(chunks) >= n_tokens(tokenizer, sentence) // 50
    assert all(0 < chunk.n_tokens <= 50 for chunk in chunks)
    # Token windows follow each other without gaps or repeats (whitespace aside).
    assert squash("".join(chunk.text for chunk in chunks)) == squash(sentence)
    assert {(chunk.page, chunk.page_end) for chunk in chunks} == {(3, 3)}


def test_over_long_word_is_cut_at_token_boundaries(tokenizer) -> None:
    # 90 characters: WordPiece turns words over 100 characters into a single [UNK].
    word = "pneumonoultramicroscopicsilicovolcanoconiosis" * 2
    assert n_tokens(tokenizer, word) > 16
    chunks = make(tokenizer, 16, 0).chunk("w.txt", [Block(word)])
    assert len(chunks) > 1
    assert all(chunk.n_tokens <= 16 for chunk in chunks)
    assert "".join(chunk.text for chunk in chunks) == word


@pytest.mark.parametrize("layout", ["sentences", "paragraphs"])
def test_overlap_repeats_the_tail_of_the_previous_chunk(tokenizer, layout: str) -> None:
    if layout == "sentences":
        blocks = [Block(sentence_paragraph("Alpha", 40), heading="A")]
    else:
        blocks = [Block(f"Alpha sentence {i} talks about the index.", heading="A") for i in range(40)]
    blocks.append(Block(sentence_paragraph("Beta", 20), heading="B"))
    overlapped = make(tokenizer, 64, 20).chunk("o.md", blocks)
    plain = make(tokenizer, 64, 0).chunk("o.md", blocks)

    def sentences(chunk: Chunk) -> list[str]:
        return re.findall(r"(?:Alpha|Beta) sentence \d+ talks about the index\.", chunk.text)

    for chunks, overlap in ((overlapped, 20), (plain, 0)):
        for before, after in itertools.pairwise(chunks):
            shared = [s for s in sentences(after) if s in sentences(before)]
            if before.heading != after.heading:
                assert not shared, "overlap never crosses a heading"
            elif overlap:
                assert shared, f"consecutive chunks {before.ordinal} and {after.ordinal} share no text"
                assert sentences(after)[: len(shared)] == shared == sentences(before)[-len(shared) :]
                assert n_tokens(tokenizer, " ".join(shared)) <= overlap
            else:
                assert not shared
    assert len([c for c in overlapped if c.heading == "A"]) > len([c for c in plain if c.heading == "A"])


def test_ids_are_stable_and_local_to_the_edited_section(tokenizer) -> None:
    chunker = make(tokenizer, 48, 8)
    sections = {name: [Block(sentence_paragraph(name, 12), heading=name)] for name in ("Intro", "Middle", "End")}
    blocks = [block for name in ("Intro", "Middle", "End") for block in sections[name]]
    first = chunker.chunk("guide.md", blocks)
    again = make(tokenizer, 48, 8).chunk("guide.md", list(blocks))
    assert [c.id for c in first] == [c.id for c in again]
    assert all(re.fullmatch(r"[0-9a-f]{32}", c.id) for c in first)
    assert {c.id for c in chunker.chunk("other.md", blocks)}.isdisjoint({c.id for c in first}), "ids include the source"

    edited_middle = [Block(sentence_paragraph("Middle", 12).replace("sentence 3 talks", "sentence 3 now talks at length"), heading="Middle")]
    edited = chunker.chunk("guide.md", sections["Intro"] + edited_middle + sections["End"])

    def ids(chunks: list[Chunk], heading: str) -> list[str]:
        return [c.id for c in chunks if c.heading == heading]

    assert ids(edited, "Intro") == ids(first, "Intro")
    assert ids(edited, "End") == ids(first, "End")
    assert ids(edited, "Middle") != ids(first, "Middle")
    assert set(ids(edited, "Middle")) & set(ids(first, "Middle")), "untouched chunks of the edited section keep their ids too"


def test_repeated_text_gets_distinct_ids(tokenizer) -> None:
    blocks = [Block("Same words here.", heading="A"), Block("Same words here.", heading="B")]
    chunks = make(tokenizer, 32, 0).chunk("dup.md", blocks)
    assert [c.text for c in chunks] == ["Same words here.", "Same words here."]
    assert chunks[0].id == chunk_id("dup.md", "Same words here.", 0)
    assert chunks[1].id == chunk_id("dup.md", "Same words here.", 1)
    assert chunks[0].id != chunks[1].id


def test_pages_come_from_the_blocks(tokenizer) -> None:
    blocks = [
        Block("First page text.", page=1, heading="H"),
        Block("Second page text.", page=2, heading="H"),
        Block("Third page text.", page=3, heading="H"),
        Block("No page here.", page=None, heading="Loose"),
        Block("Page seven text.", page=7, heading="Mixed"),
        Block("Pageless text.", page=None, heading="Mixed"),
    ]
    chunks = make(tokenizer, 200, 0).chunk("p.pdf", blocks)
    assert [(c.heading, c.page, c.page_end) for c in chunks] == [("H", 1, 3), ("Loose", None, None), ("Mixed", 7, 7)]

    many = [Block(sentence_paragraph(f"P{page}", 6), page=page, heading="H") for page in range(1, 9)]
    chunks = make(tokenizer, 40, 10).chunk("p.pdf", many)
    assert chunks[0].page == 1 and chunks[-1].page_end == 8
    for chunk in chunks:
        shown = {int(p) for p in re.findall(r"P(\d+) sentence", chunk.text)}
        assert chunk.page == min(shown) and chunk.page_end == max(shown), chunk
    assert [c.page for c in chunks] == sorted(c.page for c in chunks)


def test_empty_input_gives_no_chunks(tokenizer) -> None:
    chunker = make(tokenizer, 32, 0)
    assert chunker.chunk("e.txt", []) == []
    assert chunker.chunk("e.txt", [Block("   "), Block("\n\t", heading="H")]) == []
    assert chunker.count_tokens([]) == []


def test_sample_corpus_with_default_config(tokenizer) -> None:
    tok, max_tokens = tokenizer
    assert max_tokens == 256  # all-MiniLM-L6-v2 is used with its 256-token training window
    config = ChunkConfig()
    assert (config.chunk_tokens, config.overlap_tokens) == (200, 32)
    chunker = Chunker(tok, config, max_tokens)
    documents = [(path.name, parse_file(path, 10**8).blocks) for path in sorted(CORPUS.iterdir()) if path.is_file()]
    results = {name: chunker.chunk(name, blocks) for name, blocks in documents}
    assert set(results) == {name for name, _ in documents}
    for name, blocks in documents:
        chunks = results[name]
        assert chunks, name
        assert max(c.n_tokens for c in chunks) <= 200
        assert all(c.n_tokens == n_tokens(tokenizer, c.text) for c in chunks)
        assert_sections_covered(blocks, chunks)
    pdf_pages = {(c.page, c.page_end) for c in results["operations-guide.pdf"]}
    assert all(1 <= first <= last <= 6 for first, last in pdf_pages)


# --- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunk_tokens", "overlap_tokens"),
    [(64, 32), (64, 40), (64, 64), (16, 8), (200, 100), (64, -1), (15, 0), (0, 0), (-5, 0)],
)
def test_chunk_config_rejects(chunk_tokens: int, overlap_tokens: int) -> None:
    with pytest.raises(ValueError, match="chunk_tokens|overlap_tokens"):
        ChunkConfig(chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)


@pytest.mark.parametrize(("chunk_tokens", "overlap_tokens"), [(64, 31), (64, 0), (16, 7), (254, 126)])
def test_chunk_config_accepts(chunk_tokens: int, overlap_tokens: int) -> None:
    config = ChunkConfig(chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens, context_template="")
    assert config.fingerprint("minilm") == f"minilm:{chunk_tokens}:{overlap_tokens}"


def test_chunk_config_odd_size_allows_overlap_just_below_half() -> None:
    ChunkConfig(chunk_tokens=65, overlap_tokens=32)


def test_chunker_rejects_chunks_that_do_not_fit_the_model_window(tokenizer) -> None:
    tok, max_tokens = tokenizer
    Chunker(tok, ChunkConfig(chunk_tokens=max_tokens - 2, overlap_tokens=0, context_template=""), max_tokens)
    for too_big in (max_tokens - 1, max_tokens, 300, 512):
        with pytest.raises(ValueError) as caught:
            Chunker(tok, ChunkConfig(chunk_tokens=too_big, overlap_tokens=0, context_template=""), max_tokens)
        message = str(caught.value)
        assert f"chunk_tokens={too_big}" in message
        assert f"at most {max_tokens - 2}" in message and f"{max_tokens}-token window" in message


# --- context ----------------------------------------------------------------------------------------


def test_context_window_is_shared_with_the_text(tokenizer) -> None:
    tok, max_tokens = tokenizer
    Chunker(tok, ChunkConfig(chunk_tokens=max_tokens - 2 - 48, context_tokens=48), max_tokens)
    with pytest.raises(ValueError, match="context_tokens=48"):
        Chunker(tok, ChunkConfig(chunk_tokens=max_tokens - 2 - 47, context_tokens=48), max_tokens)


def test_context_template_names_only_known_fields() -> None:
    with pytest.raises(ValueError, match="author"):
        ChunkConfig(context_template="{author}: {heading}")
    ChunkConfig(context_template="{heading}")


def test_context_is_the_title_and_heading_path_and_changes_the_ids(tokenizer) -> None:
    tok, max_tokens = tokenizer
    blocks = [
        Block("Debian is a free operating system.", 9, "1.2 What is Debian?", ("Definitions", "1.2 What is Debian?")),
        Block("Linux is a kernel.", 10, "1.3 What is Linux?", ("Definitions", "1.3 What is Linux?")),
    ]
    with_context = Chunker(tok, ChunkConfig(), max_tokens).chunk("faq.pdf", blocks, title="The FAQ")
    plain = make(tokenizer, 200, 32).chunk("faq.pdf", blocks, title="The FAQ")
    assert [c.context for c in with_context] == ["The FAQ\nDefinitions › 1.2 What is Debian?", "The FAQ\nDefinitions › 1.3 What is Linux?"]
    assert [c.text for c in with_context] == [c.text for c in plain], "the displayed passage stays the clean text"
    assert [c.context for c in plain] == ["", ""]
    assert {c.id for c in with_context}.isdisjoint({c.id for c in plain}), "another context is another vector"
    assert ChunkConfig().fingerprint("m") != ChunkConfig(context_template="{heading}").fingerprint("m")


def test_context_is_shortened_to_its_budget(tokenizer) -> None:
    tok, max_tokens = tokenizer
    chunker = Chunker(tok, ChunkConfig(context_tokens=12), max_tokens)
    path = ("A very long chapter title that goes on and on", "Section", "Where to find the answer")
    context = chunker.context("An even longer document title with many words in it", path)
    assert n_tokens(tokenizer, context) <= 12
    assert context.endswith("Where to find the answer") or "Where to find" in context, "the heading is kept first"
