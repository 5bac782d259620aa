"""The bundle's models on one image: members moved to the device on first use, each crop's image
embedding computed once per member, prompts decoded on a crop, the gate's routing."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..bundle import Bundle, Segmenter
from ..modeling.normalization import image_modality, subsample
from ..modelspace import Crop, Prompt
from ..modelspace.preprocessing import outside_value
from ..volume import Volume
from .embeddings import EmbeddingCache
from .router import Router


class ImageModels:
    """``bundle``'s members answering prompts on one image (:meth:`set_image`) on ``device``."""

    def __init__(self, bundle: Bundle, device: torch.device):
        self.bundle, self.device = bundle, device
        self.router = Router(bundle, device)
        self.embeddings = EmbeddingCache()
        self.volume: Optional[Volume] = None
        self._ready: set[str] = set()  # members moved to the device

    def set_image(self, volume: Volume) -> None:
        """Answer on ``volume`` (not copied) from now on; forgets the cached embeddings."""
        self.volume = volume
        sample = subsample(volume.array)
        self.router.set_modality(image_modality(volume.array, sample))
        # One tuple, replaced at once: the background worker may be embedding the previous image.
        self._image = (volume, sample, {}, outside_value(volume.array))  # {}: normalisation -> statistics
        self.embeddings.clear()

    def member(self, name: str) -> Segmenter:
        """Member ``name``, loaded (a moe bundle reads weights on first use) and on the device."""
        member = self.bundle.members[name]
        if name not in self._ready:
            member.model.to(self.device)
            self._ready.add(name)
        return member

    def correctors(self, member: Segmenter, pinned: bool) -> list[Segmenter]:
        """The members whose embeddings a correction answered by ``member`` may need: ``member``,
        then (with a gate and no member pinned) the general model, which the gate reads when
        ``member``'s answer changes nothing, if it is on the device already."""
        general = self.router.general
        if pinned or self.router.gate is None or general == member.name or general not in self._ready:
            return [member]
        return [member, self.member(general)]

    def route(self, prompts: list[Prompt], crop: Crop) -> Segmenter:
        """The member the router chooses for ``prompts`` on ``crop`` (the gate reads the general
        model's embedding of the crop; without a gate, the bundle's default)."""
        if self.router.gate is None:
            return self.member(self.router.default)
        general = self.member(self.router.general)
        coords, labels = self.tokens(prompts, crop)
        return self.member(self.router.choose(general.model, self.embedding(crop, general),
                                              coords, labels))

    def embedding(self, crop: Crop, member: Segmenter):
        """``member``'s embedding of ``crop`` of the image (computed on the first request)."""
        return self.embeddings.get(member.name, crop, lambda: self._embed(crop, member))

    def keep_embedding(self, crop: Crop, member: Segmenter, budget: int, wanted=()) -> bool:
        """Compute ``member``'s embedding of ``crop`` ahead of the prompts and keep it while kept
        embeddings fit in ``budget`` bytes (:meth:`EmbeddingCache.keep`); False when it does not."""
        return self.embeddings.keep(member.name, crop, lambda: self._embed(crop, member), budget, wanted)

    def _embed(self, crop: Crop, member: Segmenter):
        volume, sample, statistics, fill = self._image
        norm = member.normalization  # its statistics of this image, computed once
        stats = statistics.get(norm) or statistics.setdefault(norm, norm.statistics(volume.array, sample))
        image = crop.sample(volume, norm, stats, fill)
        with torch.inference_mode():
            return member.model.embed(torch.from_numpy(image)[None, None].to(self.device))

    def tokens(self, prompts: list[Prompt], crop: Crop):
        """Prompt coordinates (1, N, 3) and kinds (1, N) on ``crop``, on the device."""
        coords, labels = crop.encode(prompts)
        return (torch.tensor(coords, dtype=torch.float32, device=self.device)[None],
                torch.tensor(labels, dtype=torch.long, device=self.device)[None])

    def decode(self, member: Segmenter, prompts: list[Prompt], crop: Crop, prior: np.ndarray):
        """``member``'s answer to ``prompts`` on ``crop``, given the previous mask as crop logits
        ``prior``: logits (S, S, S) and the predicted IoU."""
        embedding = self.embedding(crop, member)
        coords, labels = self.tokens(prompts, crop)
        mask = (torch.from_numpy((prior > 0).astype(np.float32))[None, None].to(self.device)
                if bool((prior > 0).any()) else None)
        with torch.inference_mode():
            logits, iou = member.model.decode(embedding, coords, labels, mask)
        return logits[0, 0].float().cpu().numpy(), float(iou[0])
