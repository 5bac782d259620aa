"""The Python packages the engine needs inside Slicer, and installing them once, with consent.

torch comes from the PyTorch extension's installer (it picks the build for the machine's GPU);
everything else from ``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, Optional

REQUIREMENTS = {  # import name -> pip requirement; kept equal to pyproject.toml by a test
    "torch": "torch>=2.8",
    "monai": "monai>=1.5",
    "numpy": "numpy>=1.24",
    "scipy": "scipy>=1.10",
    "nrrd": "pynrrd>=1.0",
    "nibabel": "nibabel>=5.0",
    "slicerio": "slicerio>=1.1",
    "safetensors": "safetensors>=0.4",
    "einops": "einops>=0.7",
    "matplotlib": "matplotlib>=3.7",
    "skimage": "scikit-image>=0.21",
}


MODEL_ONLY = {"torch", "monai", "einops", "safetensors"}
"""Needed to run a model in Slicer, not to use a server (its client is numpy and the standard library)."""


def missing_packages(model: bool = True) -> list[str]:
    """Import names from :data:`REQUIREMENTS` that this Python cannot import (``model`` False: only
    what the server client needs)."""
    return [name for name in REQUIREMENTS if (model or name not in MODEL_ONLY)
            and importlib.util.find_spec(name) is None]


class DependencyInstaller:
    """Asks once per Slicer session; installs only what is missing and only after a yes."""

    def __init__(self, confirm: Callable[[str], bool], pip_install: Callable[[str], None],
                 install_torch: Optional[Callable[[], bool]] = None):
        self.confirm, self.pip_install, self.install_torch = confirm, pip_install, install_torch
        self.declined = False

    def ensure(self, model: bool = True) -> bool:
        """True when everything imports (after installing with consent); False if the user said no.
        ``model`` False: only what a server session needs (no torch)."""
        missing = missing_packages(model)
        if not missing:
            return True
        if self.declined:
            return False
        listing = ", ".join(REQUIREMENTS[name] for name in missing)
        if not self.confirm(f"KA2ER Segment needs these Python packages: {listing}.\n\n"
                            "Install them now? (Slicer downloads them once; this can take a few "
                            "minutes.)"):
            self.declined = True
            return False
        if "torch" in missing:
            if self.install_torch is None or not self.install_torch():
                raise RuntimeError("PyTorch could not be installed: install the PyTorch extension "
                                   "from the Extensions Manager, restart Slicer and try again")
        rest = [REQUIREMENTS[name] for name in missing if name != "torch"]
        if rest:
            self.pip_install(" ".join(rest))
        importlib.invalidate_caches()
        still = missing_packages(model)
        if still:
            raise RuntimeError(f"still missing after installing: {', '.join(still)}")
        return True
