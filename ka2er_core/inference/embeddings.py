"""Image embeddings of crops, computed once and reused by every prompt and target that needs them.

Two threads use the cache: the prompt path (:meth:`EmbeddingCache.get`) and the background worker
(:meth:`EmbeddingCache.keep`, :mod:`.prefetch`). Embeddings are computed outside the lock; a prompt
that needs the very crop the worker is computing waits for it rather than computing it twice.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Collection, Hashable, Optional

import numpy as np
import torch

from ..modelspace import Crop

EMBEDDING_CACHE_SIZE = 4


def embedding_key(member_name: str, crop: Crop) -> Hashable:
    return member_name, tuple(np.round(crop.ijk_to_ras, 4).ravel())


class EmbeddingCache:
    """The ``size`` most recently used embeddings of the prompt path, keyed by member name and crop,
    and the embeddings the background worker keeps (within its byte budget, until :meth:`clear`)."""

    def __init__(self, size: int = EMBEDDING_CACHE_SIZE):
        self.size = size
        self._recent: OrderedDict = OrderedDict()
        self._kept: dict = {}
        self._computing: dict = {}  # key -> Event, set when the background computation ends
        self._entry_bytes: dict[str, int] = {}  # member name -> bytes of one of its embeddings
        self._generation = 0  # counts clear(): a computation started before one is not stored
        self._lock = threading.Lock()
        self.computed = 0
        """How many embeddings the prompt path computed (cache misses)."""
        self.kept = 0
        """How many embeddings the background computed."""

    def get(self, member_name: str, crop: Crop, compute: Callable[[], object]):
        key = embedding_key(member_name, crop)
        while True:
            with self._lock:
                found = self._lookup(key)
                if found is not None:
                    return found
                pending = self._computing.get(key)
            if pending is None:
                break
            pending.wait()  # the background is computing this very crop: its result is nearer
        embedding = compute()
        with self._lock:
            self.computed += 1
            self._note_size(member_name, embedding)
            self._recent[key] = embedding
            while len(self._recent) > self.size:
                self._recent.popitem(last=False)
        return embedding

    def keep(self, member_name: str, crop: Crop, compute: Callable[[], object], budget: int,
             wanted: Collection[Hashable] = ()) -> bool:
        """Compute (or take from the recent ones) ``member_name``'s embedding of ``crop`` and keep it
        if kept embeddings fit in ``budget`` bytes with it, dropping kept ones not in ``wanted`` to
        make room; False when it does not fit."""
        key = embedding_key(member_name, crop)
        with self._lock:
            if key in self._kept or key in self._computing:
                return True
            if not self._make_room(self._entry_bytes.get(member_name, 0), budget, wanted):
                return False
            if key in self._recent:
                self._kept[key] = self._recent.pop(key)
                return True
            done, generation = self._computing.setdefault(key, threading.Event()), self._generation
        embedding, fits = None, False
        try:
            embedding = compute()
        finally:
            with self._lock:
                self._computing.pop(key, None)
                if embedding is not None and generation == self._generation:
                    self._note_size(member_name, embedding)
                    fits = self._make_room(tensor_bytes(embedding), budget, wanted)
                    if fits:
                        self._kept[key] = embedding
                        self.kept += 1
            done.set()
        return fits

    def holds(self, keys: Collection[Hashable]) -> int:
        """How many of ``keys`` are cached."""
        with self._lock:
            return sum(self._lookup(key) is not None for key in keys)

    def entry_bytes(self, member_name: str) -> Optional[int]:
        """Bytes of one embedding of ``member_name`` (None before the first one)."""
        return self._entry_bytes.get(member_name)

    def clear(self) -> None:
        with self._lock:
            self._recent.clear()
            self._kept.clear()
            self._generation += 1

    @property
    def memory_bytes(self) -> int:
        with self._lock:
            return sum(map(tensor_bytes, self._recent.values())) + self._kept_bytes()

    @property
    def kept_bytes(self) -> int:
        """Bytes of the embeddings the background keeps."""
        with self._lock:
            return self._kept_bytes()

    def _kept_bytes(self) -> int:
        return sum(map(tensor_bytes, self._kept.values()))

    def _lookup(self, key):
        if key in self._recent:
            self._recent.move_to_end(key)
            return self._recent[key]
        return self._kept.get(key)

    def _note_size(self, member_name: str, embedding) -> None:
        self._entry_bytes.setdefault(member_name, tensor_bytes(embedding))

    def _make_room(self, needed: int, budget: int, wanted: Collection[Hashable]) -> bool:
        spare = [k for k in self._kept if k not in wanted]
        while self._kept_bytes() + needed > budget:
            if not spare:
                return False
            del self._kept[spare.pop()]
        return True


def tensor_bytes(value) -> int:
    """Bytes of the tensors in ``value`` (a tensor, a sequence of them, or an object holding them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return sum(tensor_bytes(v) for v in vars(value).values()) if hasattr(value, "__dict__") else 0
