"""Which member of a bundle answers a prompt: the gate's choice among the members allowed on the
image's modality (SAM-Med3D-MoE), or the one member of a bundle without a gate."""

from __future__ import annotations

from typing import Optional

import torch

from ..bundle import Bundle
from ..modeling.gate import route


class Router:
    def __init__(self, bundle: Bundle, device: torch.device):
        self.gate = bundle.gate
        self.default = next(iter(bundle.members))
        self.device = device
        self._eligible: Optional[torch.Tensor] = None
        if self.gate is not None:
            self.gate.to(device)

    @property
    def general(self) -> str:
        """The member whose embedding the gate reads (the bundle's first)."""
        return self.default if self.gate is None else self.gate.members[0]

    def set_modality(self, modality: str) -> None:
        """Allow only the members tuned on ``modality`` ("ct" or "mr") from now on."""
        if self.gate is not None:
            self._eligible = self.gate.eligible(modality).to(self.device)

    def choose(self, general_model, embedding, coords: torch.Tensor, labels: torch.Tensor) -> str:
        """The member that answers prompts (``coords``, ``labels``) on a crop, given the general
        model and its ``embedding`` of the crop."""
        if self.gate is None:
            return self.default
        with torch.inference_mode():
            logits = self.gate(self.gate.inputs(general_model, embedding, coords, labels))
        chosen = int(route(torch.softmax(logits[0], -1), self.gate.threshold, self._eligible))
        return self.gate.members[chosen]
