"""Image embeddings of crops, computed once and reused by every prompt and target that needs them."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import numpy as np
import torch

from ..modelspace import Crop

EMBEDDING_CACHE_SIZE = 4


class EmbeddingCache:
    """The ``size`` most recently used embeddings, keyed by member name and crop."""

    def __init__(self, size: int = EMBEDDING_CACHE_SIZE):
        self.size = size
        self._entries: OrderedDict = OrderedDict()
        self.computed = 0
        """How many embeddings were computed (cache misses)."""

    def get(self, member_name: str, crop: Crop, compute: Callable[[], object]):
        key = (member_name, tuple(np.round(crop.ijk_to_ras, 4).ravel()))
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        embedding = compute()
        self.computed += 1
        self._entries[key] = embedding
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return embedding

    def clear(self) -> None:
        self._entries.clear()

    @property
    def memory_bytes(self) -> int:
        return sum(tensor_bytes(e) for e in self._entries.values())


def tensor_bytes(value) -> int:
    """Bytes of the tensors in ``value`` (a tensor, a sequence of them, or an object holding them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return sum(tensor_bytes(v) for v in vars(value).values()) if hasattr(value, "__dict__") else 0
