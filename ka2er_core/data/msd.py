"""Medical Segmentation Decathlon and nnU-Net v2 dataset folders.

nnU-Net v2: ``dataset.json`` with ``channel_names``, ``labels`` ({name: value}, a value may be a list
of values for a region), ``numTraining``, ``file_ending``; images ``imagesTr/{case}_{XXXX}{ending}``
(one file per channel), labels ``labelsTr/{case}{ending}``; optional ``imagesTs/`` and ``labelsTs/``.
MSD: ``modality``, ``labels`` ({value: name}), ``training`` [{"image", "label"}] with 4D images for
several channels (channels last in the NIfTI).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import DatasetError, GeometryMismatchError
from ..io import load_volume
from ..io.nifti_format import load_nifti_channels
from ..volume import Volume

LabelValue = Union[int, tuple[int, ...]]


@dataclass(frozen=True)
class Case:
    """One case: ``image_paths`` one per channel (or one 4D MSD file), ``label_path`` if labelled."""

    case_id: str
    image_paths: tuple[Path, ...]
    label_path: Optional[Path]
    channels: int
    label_values: frozenset = frozenset()

    def load(self) -> tuple[list[Volume], Optional[Volume]]:
        """Channel Volumes (k, j, i) and the label map, checked to share one grid."""
        if len(self.image_paths) == 1 and self.channels > 1:
            images = load_nifti_channels(self.image_paths[0], self.channels)
        else:
            images = [load_volume(p) for p in self.image_paths]
        label = load_volume(self.label_path) if self.label_path else None
        reference = images[0]
        for other in images[1:] + ([label] if label is not None else []):
            if not other.grid.same_as(reference.grid):
                raise GeometryMismatchError(
                    f"grid differs from {reference.path} (shape {other.shape} vs {reference.shape}, "
                    "or spacing/origin/direction)", path=other.path, field="geometry")
        if label is not None and self.label_values:
            present = set(int(v) for v in np.unique(label.array)) - {0}
            unknown = present - set(self.label_values)
            if unknown:
                raise DatasetError(f"label values {sorted(unknown)} are not declared in dataset.json "
                                   f"(declared: {sorted(self.label_values)})", path=label.path,
                                   field="labels")
        return images, label


@dataclass(frozen=True)
class Dataset:
    """A dataset folder: ``labels`` maps names to a value or a tuple of values (a region)."""

    root: Path
    name: str
    channel_names: list[str]
    labels: dict[str, LabelValue]
    file_ending: str
    cases: list[Case]
    test_cases: list[Case] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError("missing dataset.json", path=path)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"invalid JSON ({err})", path=path) from None
    if not isinstance(meta, dict):
        raise DatasetError("expected a JSON object", path=path)
    return meta


def _require(meta: dict, key: str, path: Path):
    if key not in meta:
        raise DatasetError(f"required field is missing", path=path, field=key)
    return meta[key]


def _label_values(labels: dict[str, LabelValue]) -> frozenset:
    values = set()
    for value in labels.values():
        values.update(value if isinstance(value, tuple) else (value,))
    return frozenset(values)


def _cases_v2(root: Path, images_dir: str, labels_dir: str, channels: int, ending: str,
              values: frozenset, require_labels: bool) -> list[Case]:
    images = root / images_dir
    if not images.is_dir():
        if require_labels:
            raise DatasetError("missing folder", path=images)
        return []
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
    found: dict[str, set[int]] = {}
    for path in images.iterdir():
        match = pattern.match(path.name)
        if match:
            found.setdefault(match.group(1), set()).add(int(match.group(2)))
        elif path.name.endswith(ending):
            raise DatasetError(f"image file name must end in _XXXX{ending} (channel number)",
                               path=path)
    label_folder = root / labels_dir
    label_files = ({p.name[: -len(ending)] for p in label_folder.iterdir() if p.name.endswith(ending)}
                   if label_folder.is_dir() else set())
    for orphan in sorted(label_files - set(found)):
        raise DatasetError("label without image", path=label_folder / f"{orphan}{ending}")
    cases = []
    for case_id in sorted(found):
        for channel in range(channels):
            if channel not in found[case_id]:
                raise DatasetError(f"missing channel {channel} of {channels} for case {case_id!r}",
                                   path=images / f"{case_id}_{channel:04d}{ending}")
        label = label_folder / f"{case_id}{ending}"
        if case_id not in label_files:
            if require_labels:
                raise DatasetError(f"image without label (case {case_id!r})", path=label)
            label = None
        cases.append(Case(case_id, tuple(images / f"{case_id}_{c:04d}{ending}" for c in range(channels)),
                          label, channels, values))
    return cases


def load_dataset(folder: Union[str, Path]) -> Dataset:
    """Read a dataset folder's ``dataset.json`` and list its cases (files are checked, not loaded)."""
    root = Path(folder)
    manifest = root / "dataset.json"
    meta = _read_json(manifest)
    if "channel_names" in meta or "file_ending" in meta:  # nnU-Net v2
        channel_names = [str(v) for _, v in sorted(_require(meta, "channel_names", manifest).items(),
                                                   key=lambda kv: int(kv[0]))]
        labels = {}
        for name, value in _require(meta, "labels", manifest).items():
            if name == "background":
                continue
            labels[name] = tuple(int(v) for v in value) if isinstance(value, list) else int(value)
        ending = _require(meta, "file_ending", manifest)
        values = _label_values(labels)
        cases = _cases_v2(root, "imagesTr", "labelsTr", len(channel_names), ending, values, True)
        test_cases = _cases_v2(root, "imagesTs", "labelsTs", len(channel_names), ending, values, False)
        declared = meta.get("numTraining")
        if declared is not None and declared != len(cases):
            raise DatasetError(f"numTraining is {declared} but imagesTr holds {len(cases)} cases",
                               path=manifest, field="numTraining")
    else:  # Medical Segmentation Decathlon
        channel_names = [str(v) for _, v in sorted(_require(meta, "modality", manifest).items(),
                                                   key=lambda kv: int(kv[0]))]
        labels = {str(name): int(value) for value, name in _require(meta, "labels", manifest).items()
                  if int(value) != 0}
        ending = ".nii.gz"
        values = _label_values(labels)
        cases = []
        for index, entry in enumerate(_require(meta, "training", manifest)):
            try:
                image, label = root / entry["image"], root / entry["label"]
            except (KeyError, TypeError):
                raise DatasetError("each entry needs 'image' and 'label'", path=manifest,
                                   field=f"training[{index}]") from None
            for path in (image, label):
                if not path.is_file():
                    raise DatasetError("file listed in dataset.json is missing", path=path,
                                       field=f"training[{index}]")
            case_id = image.name[: -len(ending)] if image.name.endswith(ending) else image.stem
            cases.append(Case(case_id, (image,), label, len(channel_names), values))
        test_cases = []
    if not cases:
        raise DatasetError("no training cases", path=root)
    return Dataset(root, str(meta.get("name", root.name)), channel_names, labels, ending, cases,
                   test_cases, meta)
