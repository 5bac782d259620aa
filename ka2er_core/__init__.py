"""KA2ER Segment engine: volumes and geometry, data, promptable models and interactive sessions.

Imports nothing from Slicer, Qt or VTK. Public API::

    from ka2er_core import load_volume, save_segmentation, load_bundle, InteractiveSession

``load_bundle`` and ``InteractiveSession`` import torch on first use, so file tools stay fast.
"""

from .errors import Ka2erError
from .io import load_segmentation, load_volume, save_segmentation, save_volume
from .volume import Grid, Volume

__version__ = "0.1.0"

__all__ = ["Grid", "InteractiveSession", "Ka2erError", "Volume", "load_bundle", "load_segmentation",
           "load_volume", "save_segmentation", "save_volume", "__version__"]


def __getattr__(name):
    if name == "InteractiveSession":
        from .inference import InteractiveSession

        return InteractiveSession
    if name == "load_bundle":
        from .bundle import load_bundle

        return load_bundle
    raise AttributeError(f"module 'ka2er_core' has no attribute {name!r}")
