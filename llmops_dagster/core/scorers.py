"""Model-based scorers of answers, each optional and local: toxicity and perplexity.

``monitoring.scorers.toxicity`` names a local text-classification model directory and the label
that means toxic; an answer's toxicity is that label's probability as the model's own head gives it
(softmax for single-label models, sigmoid for multi-label ones such as toxic-bert).
``monitoring.scorers.perplexity`` names a local causal language model; an answer's perplexity is
exp(mean negative log-likelihood of its tokens), truncated to ``max_tokens``.

Settings are checked when they are read, without loading a model: the directory exists and holds a
config.json and tokenizer files, the toxic label is one of the classifier's labels, and the
perplexity model is a causal LM. Models load on first use. An answer that cannot be scored gets no
score and a reason; no score is ever made up. No Dagster here, and torch and transformers are
imported only when a model is loaded.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOXICITY, PERPLEXITY = "toxicity", "perplexity"
SCORERS = (TOXICITY, PERPLEXITY)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")
_CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")


class ScorerSettingsError(ValueError):
    """A ``monitoring.scorers`` setting that cannot work: the message names it."""


class ScorerLoadError(RuntimeError):
    """A configured scorer model that passed the settings checks but does not load."""


def _model_dir(value: Any, name: str) -> Path:
    if not isinstance(value, str | Path) or not str(value).strip():
        raise ScorerSettingsError(f"{name}: a local model directory, got {value!r}")
    path = Path(value).expanduser().resolve()
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise ScorerSettingsError(f"{name}: {path} {what}; give a local model directory (model hubs are not reached)")
    if not any((path / file).is_file() for file in _TOKENIZER_FILES):
        raise ScorerSettingsError(f"{name}: {path} has no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    return path


def _model_config(path: Path, name: str) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ScorerSettingsError(f"{name}: {path / 'config.json'} is not readable JSON: {error}") from None
    if not isinstance(config, dict):
        raise ScorerSettingsError(f"{name}: {path / 'config.json'} is not a JSON object")
    return config


def classifier_labels(path: Path) -> list[str]:
    """The labels a classifier directory declares, as transformers names them: its ``id2label``, or
    LABEL_0 … LABEL_{n-1} without one."""
    config = _model_config(path, str(path))
    id2label = config.get("id2label")
    if isinstance(id2label, Mapping) and id2label:
        return [str(id2label[key]) for key in sorted(id2label, key=lambda key: int(key))]
    return [f"LABEL_{index}" for index in range(int(config.get("num_labels") or 2))]


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ScorerSettingsError(f"{name}: a whole number ≥ 1, got {value!r}")
    return value


@dataclass(frozen=True)
class ToxicitySettings:
    """A local text-classification model and its toxic label; answers go in batches of
    ``batch_size``, cut to ``max_tokens`` tokens."""

    model: Path
    label: str = "toxic"
    batch_size: int = 16
    max_tokens: int = 512

    def describe(self) -> str:
        return f"on: model {self.model}, label {self.label!r}, first {self.max_tokens} tokens of each answer"


@dataclass(frozen=True)
class PerplexitySettings:
    """A local causal language model; answers go in batches of ``batch_size``, cut to ``max_tokens``
    tokens (the logits of a batch take batch_size × max_tokens × vocabulary floats)."""

    model: Path
    batch_size: int = 4
    max_tokens: int = 256

    def describe(self) -> str:
        return f"on: model {self.model}, first {self.max_tokens} tokens of each answer"


@dataclass(frozen=True)
class ScorersConfig:
    """The ``monitoring.scorers`` section; a scorer left out is off. ``threads`` caps torch's threads
    while scoring (None: half the cores this process may use, at least one)."""

    toxicity: ToxicitySettings | None = None
    perplexity: PerplexitySettings | None = None
    threads: int | None = None

    @property
    def configured(self) -> tuple[str, ...]:
        return tuple(name for name in SCORERS if getattr(self, name) is not None)

    def states(self) -> dict[str, str]:
        """Scorer → "on: model …" or "off: why"."""
        return {
            name: settings.describe() if settings is not None else f"off: monitoring.scorers.{name} is not set"
            for name, settings in ((TOXICITY, self.toxicity), (PERPLEXITY, self.perplexity))
        }

    def describe(self) -> str:
        """One line for metadata and summaries: which scorers are on (with their model) and which are off."""
        if not self.configured:
            return (
                "off: no local scorer model is configured (monitoring.scorers.toxicity and monitoring.scorers.perplexity "
                "are not set), so no toxicity or perplexity is reported"
            )
        return "; ".join(f"{name} {state}" for name, state in self.states().items())

    @classmethod
    def from_mapping(cls, raw: Any) -> ScorersConfig:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ScorerSettingsError(f"monitoring.scorers: a mapping with toxicity, perplexity and/or threads, got {raw!r}")
        unknown = sorted(set(raw) - {TOXICITY, PERPLEXITY, "threads"})
        if unknown:
            raise ScorerSettingsError(f"monitoring.scorers: unknown key(s) {unknown}; known: toxicity, perplexity, threads")
        threads = None if raw.get("threads") is None else _positive(raw["threads"], "monitoring.scorers.threads")
        return cls(toxicity=_toxicity(raw.get(TOXICITY)), perplexity=_perplexity(raw.get(PERPLEXITY)), threads=threads)


def _section(raw: Any, name: str, keys: set[str]) -> dict[str, Any] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"model": raw}
    if not isinstance(raw, Mapping):
        raise ScorerSettingsError(f"{name}: a mapping with {', '.join(sorted(keys))}, got {raw!r}")
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise ScorerSettingsError(f"{name}: unknown key(s) {unknown}; known: {', '.join(sorted(keys))}")
    if "model" not in raw:
        raise ScorerSettingsError(f"{name}.model: required, a local model directory")
    values = dict(raw)
    values["model"] = _model_dir(raw["model"], f"{name}.model")
    for key in ("batch_size", "max_tokens"):
        if key in values:
            values[key] = _positive(values[key], f"{name}.{key}")
    return values


def _toxicity(raw: Any) -> ToxicitySettings | None:
    name = f"monitoring.scorers.{TOXICITY}"
    values = _section(raw, name, {"model", "label", "batch_size", "max_tokens"})
    if values is None:
        return None
    label = str(values.get("label", ToxicitySettings.label))
    labels = classifier_labels(values["model"])
    if label not in labels:
        raise ScorerSettingsError(f"{name}.label: the classifier at {values['model']} has no label {label!r}; its labels: {', '.join(labels)}")
    return ToxicitySettings(**{**values, "label": label})


def _perplexity(raw: Any) -> PerplexitySettings | None:
    name = f"monitoring.scorers.{PERPLEXITY}"
    values = _section(raw, name, {"model", "batch_size", "max_tokens"})
    if values is None:
        return None
    architectures = _model_config(values["model"], f"{name}.model").get("architectures") or []
    if architectures and not any(str(kind).endswith(_CAUSAL_HEADS) for kind in architectures):
        raise ScorerSettingsError(f"{name}.model: {values['model']} is a {', '.join(architectures)}, not a causal language model")
    return PerplexitySettings(**values)


# --- scoring ---------------------------------------------------------------------------------------


def default_threads() -> int:
    """Half the cores this process may run on, at least one: the scorers share the machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // 2)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the block, then put back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ToxicityScorer:
    """Probability of the toxic label per text, from a transformers text-classification pipeline
    that returns every label."""

    name = TOXICITY

    def __init__(self, settings: ToxicitySettings) -> None:
        self.settings = settings
        self._pipeline: Any = None

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    def _load(self) -> Any:
        if self._pipeline is None:
            from transformers import pipeline

            try:
                classifier = pipeline("text-classification", model=str(self.settings.model), tokenizer=str(self.settings.model), device="cpu")
            except Exception as error:
                raise ScorerLoadError(f"monitoring.scorers.toxicity: {self.settings.model} did not load: {error}") from error
            labels = set(classifier.model.config.id2label.values())
            if self.settings.label not in labels:
                raise ScorerLoadError(f"monitoring.scorers.toxicity.label: {self.settings.label!r} is not one of {sorted(labels)}")
            self._pipeline = classifier
        return self._pipeline

    def score(self, texts: Sequence[str]) -> list[float]:
        classifier = self._load()
        outputs = classifier(list(texts), top_k=None, batch_size=self.settings.batch_size, truncation=True, max_length=self.settings.max_tokens)
        return [next(float(entry["score"]) for entry in output if entry["label"] == self.settings.label) for output in outputs]


class PerplexityScorer:
    """exp(mean token negative log-likelihood) per text under a causal language model: padded
    batches with attention masks, the first ``max_tokens`` tokens of each text."""

    name = PERPLEXITY

    def __init__(self, settings: PerplexitySettings) -> None:
        self.settings = settings
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(str(self.settings.model))
                model = AutoModelForCausalLM.from_pretrained(str(self.settings.model))
            except Exception as error:
                raise ScorerLoadError(f"monitoring.scorers.perplexity: {self.settings.model} did not load: {error}") from error
            if tokenizer.pad_token is None:  # GPT-style tokenizers have none; padded positions are masked out anyway
                tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
            tokenizer.padding_side = "right"
            self._model, self._tokenizer = model.eval(), tokenizer
        return self._model, self._tokenizer

    def score(self, texts: Sequence[str]) -> list[float]:
        """Perplexity per text; NaN for a text of fewer than two tokens (nothing to predict)."""
        import torch

        model, tokenizer = self._load()
        batch = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=self.settings.max_tokens)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets, mask = batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:].to(torch.float32)
            # Position t predicts token t + 1; a padded target contributes nothing.
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), targets, reduction="none") * mask
            counts = mask.sum(dim=1)
            mean = nll.sum(dim=1) / counts.clamp(min=1)
        return [math.exp(value) if count > 0 else math.nan for value, count in zip(mean.tolist(), counts.tolist(), strict=True)]


@dataclass
class Scores:
    """Scores aligned with the texts asked for (None where there is none) and the reasons why not."""

    values: list[float | None]
    skipped: Counter[str] = field(default_factory=Counter)
    reasons: list[str | None] = field(default_factory=list)


def score_texts(scorer: Any, texts: Sequence[str | None], *, cache: dict[str, float | None] | None = None) -> Scores:
    """``scorer.score`` over the texts, ``scorer.batch_size`` at a time. A missing or blank text
    scores None (``empty_answer``). A batch that raises is retried text by text, and a text that
    still raises scores None (``failed:<error type>``), as does a NaN or infinite score
    (``not_finite``: for perplexity, a text of one token). ``cache`` (text → score) spares scoring
    a text twice."""
    cache = {} if cache is None else cache
    failures: dict[str, str] = {}
    wanted = list(dict.fromkeys(text for text in texts if isinstance(text, str) and text.strip() and text not in cache))
    for start in range(0, len(wanted), max(1, scorer.batch_size)):
        batch = wanted[start : start + scorer.batch_size]
        try:
            cache.update(zip(batch, scorer.score(batch), strict=True))
        except ScorerLoadError:
            raise
        except Exception:
            for text in batch:
                try:
                    [cache[text]] = scorer.score([text])
                except ScorerLoadError:
                    raise
                except Exception as error:
                    failures[text] = f"failed:{type(error).__name__}"
    result = Scores(values=[])
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            reason: str | None = "empty_answer"
            value = None
        elif text in failures:
            reason, value = failures[text], None
        else:
            value = cache.get(text)
            reason = None if value is not None and math.isfinite(value) else "not_finite"
            value = value if reason is None else None
        result.values.append(value)
        result.reasons.append(reason)
        if reason:
            result.skipped[reason] += 1
    return result


class AnswerScorers:
    """The configured scorers, each loaded on first use and scoring a text once (the reference
    window's answers and the current window's often repeat)."""

    def __init__(self, config: ScorersConfig) -> None:
        self.config = config
        self.scorers: dict[str, Any] = {}
        if config.toxicity is not None:
            self.scorers[TOXICITY] = ToxicityScorer(config.toxicity)
        if config.perplexity is not None:
            self.scorers[PERPLEXITY] = PerplexityScorer(config.perplexity)
        self._caches: dict[str, dict[str, float | None]] = {name: {} for name in self.scorers}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.scorers)

    def score(self, texts: Sequence[str | None]) -> dict[str, Scores]:
        """Scorer name → its scores of ``texts``. torch is imported only when there is text to score."""
        if not self.scorers or not any(isinstance(text, str) and text.strip() for text in texts):
            return {name: score_texts(scorer, texts) for name, scorer in self.scorers.items()}
        with torch_threads(self.config.threads or default_threads()):
            return {name: score_texts(scorer, texts, cache=self._caches[name]) for name, scorer in self.scorers.items()}
