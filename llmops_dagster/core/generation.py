"""Answer generators behind ``rag.generator``: extractive (no weights), a local model (a transformers
folder or a GGUF file) or an OpenAI-compatible endpoint, all behind one interface.

``generate(question, passages)`` returns a ``Generation``: the text, whether it found an answer, the
passages it cites, token usage, the generator's identity and, when the generator failed, one line
saying why. ``stream(question, passages)`` yields the same text in pieces; its ``result`` is the
``Generation`` once the pieces are used up. ``generator(question, passages)`` gives ``(text, found)``,
the interface ``RagPipeline`` calls.

The prompt template is part of the registered model: ``PromptTemplate.digest()`` versions it, and
``GeneratorConfig.identity()`` carries the digest next to the kind, model and parameters. An
endpoint's key is read from the environment variable that ``api_key_env`` names; it is never a
setting, and never part of an identity or an error message.

No Dagster import; torch, transformers and openai are imported where they are used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from llmops_dagster.core.answer import NO_ANSWER, AnswerConfig, CachedEncode, Encode, extractive_answer
from llmops_dagster.core.landing import file_sha256
from llmops_dagster.core.metrics import normalize_answer

KINDS = ("extractive", "local", "openai")
SETTING = "rag.generator"
PATH_SETTING = f"{SETTING}.path"
BASE_URL_SETTING = f"{SETTING}.base_url"
USAGE_FROM_ENDPOINT, USAGE_COUNTED = "endpoint", "counted"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CITATION = re.compile(r"\[\s*(\d+(?:\s*[,;–-]\s*\d+)*)\s*\]")
_ROUGH_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\S+\s*")
_MAX_ERROR_CHARS = 300
_MIN_CUT_WORDS = 8  # a passage cut shorter than this is left out rather than shown

Passages = Sequence[Any]  # str, or an object with .text (and .heading or .source, like index.Passage)
CountTokens = Callable[[str], int]

DEFAULT_SYSTEM = "You answer questions using only the numbered passages you are given. Reply in one or two sentences."
DEFAULT_CITATION = (
    "Cite the passage each fact comes from by its number in square brackets, like [1]. "
    "If the passages do not answer the question, reply exactly: {no_answer}"
)


class GeneratorUnavailableError(RuntimeError):
    """A generator's smoke check failed: its endpoint or model cannot answer."""


def rough_token_count(text: str) -> int:
    """Words and punctuation marks: close to a BPE count for English, and needs no tokenizer."""
    return len(_ROUGH_TOKEN.findall(text))


def token_counter(tokenizer: Any = None) -> CountTokens:
    """Count with a transformers tokenizer (no special tokens), a callable ``text -> int``, or roughly."""
    if tokenizer is None:
        return rough_token_count
    if hasattr(tokenizer, "encode"):
        return lambda text: len(tokenizer.encode(text, add_special_tokens=False))
    return tokenizer


def cited_numbers(text: str) -> list[int]:
    """Passage numbers cited as [1], [2, 3], [1][2] or [2-4], in order of first mention."""
    numbers: list[int] = []
    for group in _CITATION.finditer(text):
        for part in re.split(r"\s*[,;]\s*", group.group(1)):
            bounds = [int(number) for number in re.split(r"\s*[-–]\s*", part)]
            low, high = bounds[0], bounds[-1]
            numbers.extend(range(low, high + 1) if low < high <= low + 100 else bounds)
    return list(dict.fromkeys(numbers))


def strip_citations(text: str) -> str:
    """The text without its [n] markers: what token F1 against a gold answer should see."""
    return " ".join(_CITATION.sub(" ", text).split())


def says_no_answer(text: str) -> bool:
    """Whether a reply is empty or opens with the no-answer phrase (small models often go on after it)."""
    reply = normalize_answer(strip_citations(text))
    return not reply or reply.startswith(normalize_answer(NO_ANSWER))


def _title_and_text(passage: Any) -> tuple[str, str]:
    if isinstance(passage, str):
        return "", passage
    return getattr(passage, "heading", "") or getattr(passage, "source", "") or "", passage.text


def _passage_texts(passages: Passages) -> list[str]:
    return [_title_and_text(passage)[1] for passage in passages]


@dataclass(frozen=True)
class Prompt:
    """Chat messages, and how many of the passages they show (numbered 1..shown)."""

    messages: list[dict[str, str]]
    shown: int
    truncated: bool  # the last passage shown was cut to fit the budget


@dataclass(frozen=True)
class PromptTemplate:
    """How a question and its passages become chat messages. Part of the registered model."""

    system: str = DEFAULT_SYSTEM
    citation_instruction: str = DEFAULT_CITATION  # {no_answer}: the no-answer phrase of core.answer
    passage_format: str = "[{number}] {title}\n{text}"  # "{title}\n" is left out for passages without one
    question_format: str = "Passages:\n{passages}\n\nQuestion: {question}"
    passage_separator: str = "\n\n"
    max_prompt_tokens: int = 1024  # system and user message together; passages that do not fit are dropped
    max_new_tokens: int = 96

    def __post_init__(self) -> None:
        if self.max_prompt_tokens < 16 or self.max_new_tokens < 1:
            raise ValueError(f"{SETTING}: max_prompt_tokens must be at least 16 and max_new_tokens at least 1")
        for name, keys in (("passage_format", ("number", "text")), ("question_format", ("passages", "question"))):
            missing = [key for key in keys if "{" + key + "}" not in getattr(self, name)]
            if missing:
                raise ValueError(f"{SETTING}.template.{name} must contain {', '.join('{' + key + '}' for key in missing)}")

    def digest(self) -> str:
        """sha256 of the template's canonical JSON: the same template gives the same digest."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def format_passage(self, number: int, passage: Any) -> str:
        title, text = _title_and_text(passage)
        layout = self.passage_format if title else self.passage_format.replace("{title}\n", "").replace("{title}", "")
        return layout.format(number=number, title=title, text=text.strip())

    def _messages(self, question: str, blocks: list[str]) -> list[dict[str, str]]:
        system = " ".join(part for part in (self.system, self.citation_instruction.format(no_answer=NO_ANSWER)) if part)
        user = self.question_format.format(passages=self.passage_separator.join(blocks), question=question.strip())
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def prompt(self, question: str, passages: Passages, count_tokens: CountTokens, budget: int | None = None) -> Prompt:
        """The messages with the passages, in rank order, that fit ``budget`` tokens (the template's
        unless a smaller one is given): later passages are dropped, the last one kept is cut."""
        limit = min(self.max_prompt_tokens, budget or self.max_prompt_tokens)

        def fits(blocks: list[str]) -> bool:
            return sum(count_tokens(message["content"]) for message in self._messages(question, blocks)) <= limit

        blocks: list[str] = []
        for number, passage in enumerate(passages, 1):
            block = self.format_passage(number, passage)
            if fits([*blocks, block]):
                blocks.append(block)
                continue
            words = _WORD.findall(block)
            low, high = 0, len(words)  # the longest prefix of words that fits, found by bisection
            while low < high:
                middle = (low + high + 1) // 2
                low, high = (middle, high) if fits([*blocks, "".join(words[:middle]).rstrip() + " …"]) else (low, middle - 1)
            head = len(words) - len(_WORD.findall(_title_and_text(passage)[1].strip()))  # "[n] title" before the text
            if low - head >= _MIN_CUT_WORDS:
                return Prompt(self._messages(question, [*blocks, "".join(words[:low]).rstrip() + " …"]), number, True)
            break
        return Prompt(self._messages(question, blocks), len(blocks), False)

    def messages(self, question: str, passages: Passages, count_tokens: CountTokens = rough_token_count) -> list[dict[str, str]]:
        """OpenAI-style chat messages: the system prompt, then the numbered passages and the question."""
        return self.prompt(question, passages, count_tokens).messages


@dataclass(frozen=True)
class GeneratorConfig:
    """``rag.generator``: what writes the answer, and with which parameters."""

    kind: str = "extractive"
    path: str | None = None  # local: a transformers model folder or a .gguf file
    base_url: str | None = None  # openai: the endpoint, e.g. http://127.0.0.1:8080/v1
    model: str | None = None  # openai: the model the endpoint serves
    api_key_env: str = "OPENAI_API_KEY"  # openai: the variable that holds the key (never the key itself)
    timeout_seconds: float = 60.0  # openai: per request; the client retries timeouts too
    max_retries: int = 2  # openai: the client's retries of 408/409/429/5xx, timeouts and connection errors
    temperature: float = 0.0  # 0: greedy
    template: PromptTemplate = field(default_factory=PromptTemplate)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{SETTING}.kind must be one of {', '.join(KINDS)}, got '{self.kind}'")
        if self.kind == "local" and not self.path:
            raise ValueError(f"{PATH_SETTING} is required when {SETTING}.kind is local (a transformers model folder or a .gguf file)")
        if self.kind == "openai":
            for name in ("base_url", "model"):
                if not getattr(self, name):
                    raise ValueError(f"{SETTING}.{name} is required when {SETTING}.kind is openai")
            if urlsplit(self.base_url).scheme not in ("http", "https"):
                raise ValueError(f"{BASE_URL_SETTING} must be an http(s) URL, got '{_public_url(self.base_url)}'")
        if not _ENV_NAME.fullmatch(self.api_key_env or ""):
            # The value is not echoed: someone may have pasted the key itself here.
            raise ValueError(f"{SETTING}.api_key_env must name an environment variable (letters, digits, _), not hold a key")
        if self.temperature < 0 or self.timeout_seconds <= 0 or self.max_retries < 0:
            raise ValueError(f"{SETTING}: temperature and max_retries must be ≥ 0 and timeout_seconds > 0")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | GeneratorConfig | None) -> GeneratorConfig:
        """Parse ``rag.generator``: the fields above, ``max_new_tokens``, and ``template`` (a mapping
        of PromptTemplate fields). Unknown keys are refused by their full setting name."""
        if isinstance(settings, GeneratorConfig):
            return settings
        raw = dict(settings or {})
        template = raw.pop("template", None)
        template_raw = asdict(template) if isinstance(template, PromptTemplate) else dict(template or {})
        if "max_new_tokens" in raw:
            template_raw["max_new_tokens"] = raw.pop("max_new_tokens")
        known = {f.name for f in fields(cls)} - {"template"}
        template_known = {f.name for f in fields(PromptTemplate)}
        unknown = [f"{SETTING}.{key}" for key in raw if key not in known]
        unknown += [f"{SETTING}.template.{key}" for key in template_raw if key not in template_known]
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**raw, template=PromptTemplate(**template_raw))

    @property
    def max_new_tokens(self) -> int:
        return self.template.max_new_tokens

    def identity(self) -> dict[str, Any]:
        """Kind, model, the parameters that change answers and the template digest. Never the key."""
        if self.kind == "extractive":  # no prompt, no model of its own: the template would change nothing
            return {"kind": "extractive", "model": None, "parameters": {}, "template": None}
        parameters: dict[str, Any] = {"temperature": self.temperature, "max_new_tokens": self.max_new_tokens}
        if self.kind == "openai":
            parameters["base_url"] = _public_url(self.base_url)
        model = Path(self.path).name if self.kind == "local" else self.model
        return {"kind": self.kind, "model": model, "parameters": parameters, "template": self.template.digest()}


def _public_url(url: str | None) -> str:
    """The URL without credentials or query (either may carry a key)."""
    parts = urlsplit(url or "")
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    source: str  # endpoint: reported by it; counted: counted here (its tokenizer, or roughly without one)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Generation:
    """One answer: what the generator said and what it cost. ``error`` is one line when it failed."""

    text: str
    found: bool
    cited: tuple[int, ...]  # 1-based numbers of shown passages that the answer cites
    usage: Usage
    identity: dict[str, Any]
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The fields predictions and the inference log store."""
        return {
            "answer": self.text,
            "found": self.found,
            "cited": list(self.cited),
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "usage_source": self.usage.source,
            "generator": self.identity,
            "error": self.error,
        }


def _finished(text: str, shown: int, usage: Usage, identity: dict[str, Any], error: str | None = None) -> Generation:
    if error is not None:
        return Generation("", False, (), usage, identity, error)
    text = text.strip()
    if says_no_answer(text):
        return Generation(NO_ANSWER, False, (), usage, identity)
    return Generation(text, True, tuple(n for n in cited_numbers(text) if 1 <= n <= shown), usage, identity)


@dataclass(frozen=True)
class _Outcome:
    """What a generator's raw delta iterator returns when it ends."""

    usage: Usage | None = None
    error: str | None = None


class GenerationStream(Iterator[str]):
    """Text deltas of one answer; ``result`` is its ``Generation`` (reading it uses up the rest).

    Leading whitespace is dropped and trailing whitespace held back, so that for a found answer the
    deltas concatenate to ``result.text`` exactly; a reply that found nothing ends as NO_ANSWER.
    ``close()`` stops the generation early (a client went away); the result then says so.
    """

    def __init__(self, raw: Iterator[str], finish: Callable[[str, _Outcome], Generation]) -> None:
        self._raw, self._finish = raw, finish
        self._parts: list[str] = []
        self._pending = ""
        self._result: Generation | None = None

    @classmethod
    def of(cls, generation: Generation) -> GenerationStream:
        """A stream of an answer already known: its text as one delta."""
        return cls(iter([generation.text]), lambda _text, _outcome: generation)

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        while self._result is None:
            try:
                delta = next(self._raw)
            except StopIteration as stop:
                self._result = self._finish("".join(self._parts), stop.value or _Outcome())
                break
            body = self._pending + (delta if self._parts else delta.lstrip())
            text = body.rstrip()
            self._pending = body[len(text) :]
            if text:
                self._parts.append(text)
                return text
        raise StopIteration

    @property
    def result(self) -> Generation:
        for _ in self:
            pass
        assert self._result is not None
        return self._result

    def close(self) -> None:
        if self._result is None:
            close = getattr(self._raw, "close", None)
            if close is not None:
                close()
            self._result = self._finish("".join(self._parts), _Outcome(error="stream closed by the caller before the answer was complete"))


class _Generator:
    """What the three generators share: ``generate`` is the stream's result, and ``__call__`` is
    the ``(text, found)`` interface of RagPipeline."""

    config: GeneratorConfig
    identity: dict[str, Any]

    @property
    def name(self) -> str:
        """A short label (kind:model), as the serving layer shows a generator."""
        return f"{self.identity['kind']}:{self.identity['model']}" if self.identity["model"] else self.identity["kind"]

    def stream(self, question: str, passages: Passages) -> GenerationStream:
        raise NotImplementedError

    def generate(self, question: str, passages: Passages) -> Generation:
        return self.stream(question, passages).result

    def __call__(self, question: str, passages: Passages) -> tuple[str, bool]:
        # This interface has no place for the error, so a failed generation says so in the text.
        generation = self.generate(question, passages)
        return (f"Generation failed: {generation.error}", False) if generation.error else (generation.text, generation.found)

    def _unprompted(self, question: str, passages: Passages, count_tokens: CountTokens) -> Generation:
        """No passages to show: none were retrieved, or the question leaves no room for one."""
        usage = Usage(count_tokens(question), 0, USAGE_COUNTED)
        budget = self.config.template.max_prompt_tokens
        error = f"the question leaves no room for a passage within max_prompt_tokens={budget}" if passages else None
        return Generation(NO_ANSWER, False, (), usage, dict(self.identity), error)


class ExtractiveGenerator(_Generator):
    """The best sentences of the passages (core.answer); needs no weights.

    The supporting passages go into ``cited``, not into the text as [n] markers: the text stays the
    passages' own sentences, which token F1 against gold answers (and the tuned max_sentences) expect.
    """

    def __init__(self, encode: Encode, answer_config: AnswerConfig | None = None, tokenizer: Any = None) -> None:
        self.config = GeneratorConfig()
        self.answer_config = settings = answer_config or AnswerConfig()
        self.encode = encode if isinstance(encode, CachedEncode) else CachedEncode(encode)
        self.count_tokens = token_counter(tokenizer)
        parameters = {"max_sentences": settings.max_sentences, "max_passages": settings.max_passages, "min_score": settings.min_score}
        self.identity = {**self.config.identity(), "parameters": parameters}

    def stream(self, question: str, passages: Passages) -> GenerationStream:
        texts = _passage_texts(passages)
        if not texts:
            return GenerationStream.of(self._unprompted(question, (), self.count_tokens))
        answer = extractive_answer(question, texts, self.encode, self.answer_config)
        read = [question, *texts[: self.answer_config.max_passages]]
        # The canned NO_ANSWER is nobody's output: 0 completion tokens, as when nothing was retrieved.
        usage = Usage(sum(map(self.count_tokens, read)), self.count_tokens(answer.text) if answer.found else 0, USAGE_COUNTED)
        cited = tuple(index + 1 for index in answer.supporting)
        return GenerationStream.of(Generation(answer.text, answer.found, cited if answer.found else (), usage, dict(self.identity)))

    def check(self) -> None:
        vectors = self.encode(["Is the embedding model there?"])
        if len(vectors) != 1:
            raise GeneratorUnavailableError("the embedding model behind the extractive generator returned no vector")


def gguf_cache_root() -> Path:
    from llmops_dagster.core.quantization import cache_root

    return cache_root() / "gguf"


def converted_gguf(gguf: Path, cache_dir: Path | None = None, digest: str | None = None) -> Path:
    """A transformers folder holding the GGUF file's model, converted once and kept under
    ``cache_dir/<sha256 of the file>``: transformers parses a GGUF in pure Python (28-40 s for
    SmolLM2-135M on 2 cores), while the saved folder loads in about 0.5 s with the same logits."""
    digest = digest or file_sha256(gguf)
    target = (cache_dir or gguf_cache_root()) / digest
    if target.is_dir():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed in, so a concurrent loader never reads half a folder.
    scratch = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=target.parent))
    try:
        folder, name = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True))
        # Dequantized, the weights are plain tensors; only the GGUF quantizer's flag blocks saving them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(scratch))
        tokenizer.save_pretrained(str(scratch))
        (scratch / "llmops-source.json").write_text(json.dumps({"gguf": name, "sha256": digest}))
        scratch.chmod(0o755)  # mkdtemp's 0700 would stay on the cached folder
        try:
            os.rename(scratch, target)
        except OSError:
            if not target.is_dir():  # else another process converted it first
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def local_model_folder(path: str, cache_dir: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """The transformers folder that ``rag.generator.path`` names, converting a GGUF file once, and
    what identifies the weights beyond the file name (a GGUF file's sha256)."""
    given = Path(path).expanduser()
    if given.is_dir():
        if not (given / "config.json").is_file():
            raise ValueError(f"{PATH_SETTING} '{path}' is a folder without config.json, so not a transformers model folder")
        return given, {}
    if given.is_file():
        if given.suffix.lower() != ".gguf":
            raise ValueError(f"{PATH_SETTING} '{path}' is neither a transformers model folder nor a .gguf file")
        digest = file_sha256(given)
        return converted_gguf(given, cache_dir, digest), {"sha256": digest}
    raise FileNotFoundError(f"{PATH_SETTING} '{path}' does not exist (a transformers model folder or a .gguf file)")


class LocalGenerator(_Generator):
    """A local transformers model (a folder, or a GGUF file converted once into the cache), prompted
    through its chat template when it has one. One generation runs at a time (a lock): requests that
    share the model wait rather than interleave inside ``generate``."""

    def __init__(self, config: GeneratorConfig, cache_dir: Path | None = None) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        self.config = config
        folder, weights = local_model_folder(config.path or "", cache_dir)
        self.folder = folder
        model_config = AutoConfig.from_pretrained(str(folder))
        self.encoder_decoder = bool(getattr(model_config, "is_encoder_decoder", False))
        loader = AutoModelForSeq2SeqLM if self.encoder_decoder else AutoModelForCausalLM
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = loader.from_pretrained(str(folder), dtype=torch.float32).to(self.device).eval()
        self.count_tokens = token_counter(self.tokenizer)
        window = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None) or 1024
        # A decoder's window holds prompt and answer; the chat template's markers need a few tokens more.
        self.prompt_budget = window if self.encoder_decoder else window - config.max_new_tokens - 32
        self.identity = {**config.identity(), **weights}
        self._lock = threading.Lock()

    def _inputs(self, prompt: Prompt) -> dict[str, Any]:
        if getattr(self.tokenizer, "chat_template", None):
            inputs = self.tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        else:
            inputs = self.tokenizer("\n\n".join(message["content"] for message in prompt.messages) + "\nAnswer:", return_tensors="pt")
        return {name: tensor.to(self.device) for name, tensor in inputs.items()}

    def _generation_kwargs(self) -> dict[str, Any]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        kwargs: dict[str, Any] = {"max_new_tokens": self.config.max_new_tokens, "pad_token_id": pad}
        if self.config.temperature > 0:
            return {**kwargs, "do_sample": True, "temperature": self.config.temperature}
        return {**kwargs, "do_sample": False}

    def stream(self, question: str, passages: Passages) -> GenerationStream:
        prompt = self.config.template.prompt(question, passages, self.count_tokens, self.prompt_budget)
        if prompt.shown == 0:
            return GenerationStream.of(self._unprompted(question, passages, self.count_tokens))
        inputs = self._inputs(prompt)
        prompt_tokens = int(inputs["input_ids"].shape[1])

        def finish(text: str, outcome: _Outcome) -> Generation:
            return _finished(text, prompt.shown, outcome.usage or Usage(prompt_tokens, 0, USAGE_COUNTED), dict(self.identity), outcome.error)

        return GenerationStream(self._deltas(inputs, prompt_tokens), finish)

    def _deltas(self, inputs: dict[str, Any], prompt_tokens: int) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, TextIteratorStreamer

        stop = threading.Event()

        class StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        done: dict[str, Any] = {}

        def work() -> None:
            try:
                with self._lock, torch.inference_mode():
                    output = self.model.generate(**inputs, **self._generation_kwargs(), streamer=streamer, stopping_criteria=[StopWhenAsked()])
                done["completion_tokens"] = int(output.shape[1]) - (0 if self.encoder_decoder else prompt_tokens)
            except Exception as error:  # reported in the Generation; the streamer must still end
                done["error"] = f"local model {self.identity['model']}: {type(error).__name__}: {error}"
                streamer.end()

        worker = threading.Thread(target=work, name="llmops-generate", daemon=True)
        worker.start()
        try:
            yield from streamer
        finally:
            stop.set()
            worker.join()
        if "error" in done:
            return _Outcome(error=_one_line(done["error"]))
        return _Outcome(Usage(prompt_tokens, done["completion_tokens"], USAGE_COUNTED))

    def check(self) -> None:
        """One short generation: the model loads and runs."""
        generation = self.generate("What is this passage about?", ["A smoke check of the local generator."])
        if generation.error:
            raise GeneratorUnavailableError(generation.error)


class OpenAIGenerator(_Generator):
    """An OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, Ollama, ...).

    Retries are the client's own: 408/409/429/5xx, timeouts and connection errors, with exponential
    backoff that honours Retry-After, up to ``max_retries``. A question whose request still fails
    gets a Generation with ``error`` set; it never raises, so a batch loses no row.
    """

    def __init__(self, config: GeneratorConfig, tokenizer: Any = None) -> None:
        import openai

        self.config = config
        self.url = _public_url(config.base_url)
        self._key = os.environ.get(config.api_key_env) or None
        self.client = openai.OpenAI(
            base_url=config.base_url, api_key=self._key or "not-needed", timeout=config.timeout_seconds, max_retries=config.max_retries
        )
        self.count_tokens = token_counter(tokenizer)  # for the prompt budget, and usage when the endpoint reports none
        self.identity = config.identity()

    def _request(self, prompt: Prompt) -> dict[str, Any]:
        # max_tokens, not max_completion_tokens: the one that compatible servers all accept.
        return {
            "model": self.config.model,
            "messages": prompt.messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_new_tokens,
        }

    def _counted(self, prompt: Prompt, text: str) -> Usage:
        return Usage(sum(self.count_tokens(message["content"]) for message in prompt.messages), self.count_tokens(text), USAGE_COUNTED)

    def generate(self, question: str, passages: Passages) -> Generation:
        prompt = self.config.template.prompt(question, passages, self.count_tokens)
        if prompt.shown == 0:
            return self._unprompted(question, passages, self.count_tokens)
        try:
            response = self.client.chat.completions.create(**self._request(prompt))
            text = response.choices[0].message.content or ""
        except Exception as error:  # any failure of one question becomes its Generation's error
            return _finished("", prompt.shown, self._counted(prompt, ""), dict(self.identity), self._describe(error))
        usage = response.usage
        counted = Usage(usage.prompt_tokens, usage.completion_tokens, USAGE_FROM_ENDPOINT) if usage else self._counted(prompt, text)
        return _finished(text, prompt.shown, counted, dict(self.identity))

    def stream(self, question: str, passages: Passages) -> GenerationStream:
        prompt = self.config.template.prompt(question, passages, self.count_tokens)
        if prompt.shown == 0:
            return GenerationStream.of(self._unprompted(question, passages, self.count_tokens))

        def finish(text: str, outcome: _Outcome) -> Generation:
            return _finished(text, prompt.shown, outcome.usage or self._counted(prompt, text), dict(self.identity), outcome.error)

        return GenerationStream(self._deltas(prompt), finish)

    def _deltas(self, prompt: Prompt) -> Iterator[str]:
        chunks = None
        usage = None
        try:
            chunks = self.client.chat.completions.create(**self._request(prompt), stream=True, stream_options={"include_usage": True})
            for chunk in chunks:
                if chunk.usage:
                    usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens, USAGE_FROM_ENDPOINT)
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        except Exception as error:  # a failure mid-stream ends the stream; the result carries it
            return _Outcome(error=self._describe(error))
        finally:
            if chunks is not None:
                chunks.close()
        return _Outcome(usage)

    def _describe(self, error: BaseException) -> str:
        return describe_failure(error, self.url, self.config, self._key)

    def check(self) -> None:
        """A one-token chat, without retries: the endpoint is reachable, takes the key and serves the model."""
        client = self.client.with_options(max_retries=0, timeout=min(self.config.timeout_seconds, 10.0))
        try:
            client.chat.completions.create(model=self.config.model, messages=[{"role": "user", "content": "ping"}], max_tokens=1)
        except Exception as error:
            cause = failure_cause(error, self.config, self._key)
            raise GeneratorUnavailableError(f"generator endpoint {self.url} (setting {BASE_URL_SETTING}): {cause}") from None


def _retries_taken(error: BaseException) -> int:
    """The client stamps each attempt with x-stainless-retry-count; the failed one is the last."""
    request = getattr(error, "request", None)
    if request is None and getattr(error, "response", None) is not None:
        request = error.response.request  # type: ignore[attr-defined]
    try:
        return int(request.headers.get("x-stainless-retry-count", 0)) if request is not None else 0
    except (TypeError, ValueError):
        return 0


def describe_failure(error: BaseException, url: str, config: GeneratorConfig, key: str | None = None) -> str:
    """One line naming the endpoint and the cause, e.g. ``http://host/v1: rate limited (429) after 3 retries``."""
    return _one_line(f"{url}: {failure_cause(error, config, key)}")


def failure_cause(error: BaseException, config: GeneratorConfig, key: str | None = None) -> str:
    """Why a request to the endpoint failed, in a few words, with the retries the client made; the key is masked."""
    import httpx2
    import openai

    if isinstance(error, openai.APITimeoutError | httpx2.TimeoutException):
        cause = f"no answer within {config.timeout_seconds:g} s (timeout)"
    elif isinstance(error, openai.APIConnectionError):
        cause = f"unreachable ({error.__cause__ or error})"
    elif isinstance(error, openai.APIStatusError):
        status = error.status_code
        if status == 429:
            cause = "rate limited (429)"
        elif status in (401, 403):
            cause = f"refused the key in ${config.api_key_env} ({status})"
        elif status == 404:
            cause = f"not found (404): does it serve model '{config.model}' ({SETTING}.model)?"
        elif status >= 500:
            cause = f"server error ({status})"
        else:
            cause = f"HTTP {status}: {error.message}"
    else:
        cause = f"{type(error).__name__}: {error}"
    retries = _retries_taken(error)
    if retries:
        cause += f" after {retries} {'retry' if retries == 1 else 'retries'}"
    message = _one_line(cause)
    return message.replace(key, "***") if key and len(key) >= 4 else message


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_ERROR_CHARS else line[: _MAX_ERROR_CHARS - 1] + "…"


Generator = ExtractiveGenerator | LocalGenerator | OpenAIGenerator


def build_generator(
    config: GeneratorConfig | Mapping[str, Any] | None,
    encode: Encode | None = None,
    tokenizer: Any = None,
    answer_config: AnswerConfig | None = None,
    cache_dir: Path | None = None,
) -> Generator:
    """The generator ``rag.generator`` describes. The extractive one needs ``encode`` (the retrieval
    embedder's); ``tokenizer`` counts its tokens and an endpoint's when it reports none."""
    config = GeneratorConfig.from_settings(config)
    if config.kind == "extractive":
        if encode is None:
            raise ValueError("the extractive generator needs the embedding model's encode function")
        return ExtractiveGenerator(encode, answer_config, tokenizer)
    if config.kind == "local":
        return LocalGenerator(config, cache_dir)
    return OpenAIGenerator(config, tokenizer)
