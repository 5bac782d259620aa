"""Model bundles: a folder with ``bundle.json`` and weights as ``.safetensors``.

``bundle.json`` records the format version, the kind (student | moe | expert), the architecture
config, labels, base and maximum crop spacing, normalisation, training summary, measured metrics and
a sha256 of every weight file, checked at load. No pickle is ever read. A member is a promptable
:class:`Segmenter` (our model, or SAM-Med3D's with ``"architecture": {"type": "sam_med3d", ...}``) or
a task :class:`Expert` (``"architecture": {"type": "expert", "plan": ...}``, plus ``"variant":
"nnunet"`` for an imported nnU-Net, whose decoder differs: see
:class:`~ka2er_core.modeling.expert.NnUNetExpert`).

A ``moe`` bundle (SAM-Med3D-MoE) holds the general promptable model, task-tuned copies of it and a
:class:`~ka2er_core.modeling.gate.Gate` (``"gate"``: its config, threshold included, and weights).
Its members share the general model's normalisation, spacings and crop size (checked at load) and
are read lazily: every file's sha256 is checked when the bundle is loaded, and again when a member's
weights are first read, so memory grows with the members a session actually uses.

The parts, one module each:

- :mod:`.schema`: the format, every field of ``bundle.json`` checked in one place when it is read;
- :mod:`.members`: what a loaded bundle holds (:class:`Bundle`, :class:`Segmenter`, :class:`Expert`);
- :mod:`.registry`: the model builders, a member's ``"architecture"`` entry to its network;
- :mod:`.store`: save and load (a weight file's header checked before the safetensors library reads
  it), and the shipped bundles;
- :mod:`.inspect`: what a bundle holds, read without building a model (``ka2er bundle inspect``).
"""

from .members import Bundle, Expert, Member, Segmenter
from .schema import BundleError
from .store import (DEFAULT_BUNDLE, MOE_BUNDLE, STUDENT_BUNDLE, load_bundle, load_expert, save_bundle,
                    save_moe_bundle)

__all__ = ["Bundle", "BundleError", "DEFAULT_BUNDLE", "Expert", "MOE_BUNDLE", "Member", "STUDENT_BUNDLE",
           "Segmenter", "load_bundle", "load_expert", "save_bundle", "save_moe_bundle"]
