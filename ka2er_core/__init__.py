"""KA2ER Segment engine: volumes and geometry, data, promptable models and interactive sessions.

Imports nothing from Slicer, Qt or VTK. Public API::

    from ka2er_core import load_volume, save_volume, save_segmentation, Volume
"""

from .errors import Ka2erError
from .io import load_segmentation, load_volume, save_segmentation, save_volume
from .volume import Grid, Volume

__version__ = "0.1.0"

__all__ = ["Grid", "Ka2erError", "Volume", "load_segmentation", "load_volume",
           "save_segmentation", "save_volume", "__version__"]
