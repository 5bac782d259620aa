"""Data: MNI152 pseudo-subjects, procedural phantoms, and MSD / nnU-Net v2 dataset folders.

Every generator returns a :class:`Subject` (image and uint8 label map as (k, j, i) Volumes on one RAS
grid); :func:`load_dataset` reads dataset folders; :func:`write_sample_dataset` writes the sample.
"""

from .mni import BRAIN_VALUES, MNI_LABELS, TEST_SEEDS, TRAIN_SEEDS, mni152, mni_subject
from .msd import Case, Dataset, load_dataset
from .phantoms import PHANTOM_LABELS, ct_phantom, mr_phantom
from .sample import SAMPLE_TASKS, write_sample_dataset
from .subject import Subject

__all__ = ["BRAIN_VALUES", "Case", "Dataset", "MNI_LABELS", "PHANTOM_LABELS", "SAMPLE_TASKS",
           "Subject", "TEST_SEEDS", "TRAIN_SEEDS", "ct_phantom", "load_dataset", "mni152",
           "mni_subject", "mr_phantom", "write_sample_dataset"]
