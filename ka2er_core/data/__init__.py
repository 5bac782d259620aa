"""Data: MNI152 pseudo-subjects, procedural phantoms, and MSD / nnU-Net v2 dataset folders."""

from .mni import MNI_LABELS, TEST_SEEDS, TRAIN_SEEDS, mni152, mni_subject
from .msd import Case, Dataset, load_dataset
from .phantoms import PHANTOM_LABELS, ct_phantom, mr_phantom
from .subject import Subject

__all__ = ["Case", "Dataset", "MNI_LABELS", "PHANTOM_LABELS", "Subject", "TEST_SEEDS", "TRAIN_SEEDS",
           "ct_phantom", "load_dataset", "mni152", "mni_subject", "mr_phantom"]
