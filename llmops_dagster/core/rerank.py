"""A second stage over the fused candidates: late interaction (ColBERT's MaxSim) with the embedding
model's own token vectors.

A passage's score is the mean, over the query's tokens, of each token's best cosine similarity to
any token of the passage (context and text). Unlike the pooled vector, it rewards a passage in
which every part of the question finds a match. No second model is needed: the bundled MiniLM's
contextual token vectors do it, and they are cached per passage, so a passage that comes back for
several queries is encoded once.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import cache

import numpy as np

RERANKERS = ("none", "maxsim")


class MaxSimReranker:
    def __init__(self, model_path: str, cache_size: int = 8192) -> None:
        from transformers import AutoModel

        from llmops_dagster.core.embedding import load_tokenizer

        self.tokenizer, self.max_tokens = load_tokenizer(model_path)
        self.model = AutoModel.from_pretrained(model_path).eval()
        self._passage_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.tokens: Callable[[list[str]], list[np.ndarray]] = self._tokens

    def through(self, route: Callable) -> MaxSimReranker:
        """This reranker with its model calls made through ``route`` (the server runs every model call
        on one thread); model and caches are shared."""
        routed = copy.copy(self)
        routed.tokens = route(self._tokens)
        return routed

    def _tokens(self, texts: list[str]) -> list[np.ndarray]:
        """Unit-norm contextual vectors of each text's tokens, without [CLS], [SEP] and padding."""
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        with torch.inference_mode():
            hidden = torch.nn.functional.normalize(self.model(**batch).last_hidden_state, dim=-1)
        lengths = batch["attention_mask"].sum(1).tolist()
        return [hidden[i, 1 : int(length) - 1].numpy() for i, length in enumerate(lengths)]

    def _cached(self, cache: OrderedDict[str, np.ndarray], keyed: Sequence[tuple[str, str]]) -> list[np.ndarray]:
        """Token vectors of (key, text) pairs, encoding in batches only the keys the cache lacks.
        Safe across threads; the model runs outside the lock."""
        with self._lock:
            known = {key: cache[key] for key, _ in keyed if key in cache}
        missing = [(key, text) for key, text in dict(keyed).items() if key not in known]
        for start in range(0, len(missing), 16):
            part = missing[start : start + 16]
            known.update(zip((key for key, _ in part), self.tokens([text for _, text in part]), strict=True))
        with self._lock:
            for key, _ in keyed:
                cache[key] = known[key]
                cache.move_to_end(key)
            while len(cache) > self._cache_size:
                cache.popitem(last=False)
        return [known[key] for key, _ in keyed]

    def prepare(self, queries: Sequence[str]) -> None:
        """Encode many queries' tokens in batches up front (an evaluation), rather than one by one."""
        self._cached(self._queries, [(query, query) for query in queries])

    def scores(self, query: str, passages: Sequence[tuple[str, str]]) -> list[float]:
        """MaxSim of the query against each (passage id, passage text)."""
        if not passages:
            return []
        query_tokens = self._cached(self._queries, [(query, query)])[0]
        passage_tokens = self._cached(self._passage_cache, passages)
        return [float((query_tokens @ tokens.T).max(axis=1).mean()) if len(tokens) else 0.0 for tokens in passage_tokens]


@cache
def load_reranker(model_path: str) -> MaxSimReranker:
    """One reranker per process and model."""
    return MaxSimReranker(model_path)
