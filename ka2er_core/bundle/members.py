"""What a loaded bundle holds: its members (promptable :class:`Segmenter` or task :class:`Expert`),
read lazily in a moe bundle (:class:`LazyMembers`), and the :class:`Bundle` itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..modeling import ExpertPlan, TaskExpert
from ..modeling.gate import Gate
from ..modeling.normalization import Normalization
from ..modeling.protocols import PromptableModel


@dataclass
class Segmenter:
    """One promptable model (our Swin student or an imported SAM-Med3D) with what a session needs to
    use it."""

    name: str
    model: PromptableModel
    normalization: Normalization
    base_spacing: float
    max_spacing: float

    @property
    def crop_size(self) -> int:
        return self.model.config.crop_size


@dataclass
class Expert:
    """One task expert: segments its task without prompts. Spacing, patch, labels and normalisation
    are in ``plan`` (the model's :class:`~ka2er_core.modeling.ExpertPlan`)."""

    name: str
    model: TaskExpert

    @property
    def plan(self) -> ExpertPlan:
        return self.model.plan


Member = Union[Segmenter, Expert]


class LazyMembers(Mapping):
    """Members by name, each built by its loader on first access (``in``, ``len`` and iteration
    load nothing); ``loaded`` names the members built so far."""

    def __init__(self, loaders: dict[str, Callable[[], Member]]):
        self._loaders = loaders
        self._members: dict[str, Member] = {}

    def __getitem__(self, name: str) -> Member:
        if name not in self._members:
            self._members[name] = self._loaders[name]()
        return self._members[name]

    def __contains__(self, name: object) -> bool:
        return name in self._loaders

    def __iter__(self):
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    @property
    def loaded(self) -> list[str]:
        return list(self._members)


@dataclass
class Bundle:
    """``members``: a dict, or :class:`LazyMembers` for a moe bundle; ``gate``: a moe bundle's gate."""

    path: Optional[Path]
    kind: str
    members: Mapping[str, Member]
    meta: dict[str, Any] = field(default_factory=dict)
    gate: Optional[Gate] = None

    @property
    def default(self) -> Member:
        return next(iter(self.members.values()))
