"""Medical Segmentation Decathlon and nnU-Net v2 dataset folders.

nnU-Net v2: ``dataset.json`` with ``channel_names`` ({"0": "CT"}), ``labels`` ({name: value}, a value
may be a list of values for a region), ``numTraining``, ``file_ending``; images
``imagesTr/{case}_{XXXX}{file_ending}`` (one file per channel), labels ``labelsTr/{case}{file_ending}``;
optional ``imagesTs/`` and ``labelsTs/``.
MSD: ``modality`` ({"0": "MRI"}), ``labels`` ({value: name}), ``training`` [{"image", "label"}] and
``test`` [image] with paths relative to the folder; several channels are one 4D NIfTI, channels last.

Partially labelled data (either format): an optional top-level ``annotated_labels`` {case id: [label
name, ...]} lists the plain labels a case annotates; the others are unknown in that case (their
voxels are 0 in its label map, like the background), and a region is known only where every label
it unites is. Cases not listed annotate every label.

Listing checks that every file is there; :meth:`Case.load` reads the files and checks label values
and geometry. Every problem raises :class:`~ka2er_core.errors.DatasetError` (or
:class:`~ka2er_core.errors.GeometryMismatchError`) naming the file and the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Optional, Union

import nibabel as nib
import numpy as np

from ..errors import DatasetError, GeometryMismatchError, UnreadableFileError
from ..io import load_volume
from ..volume import Volume, check_finite

LabelValue = Union[int, tuple[int, ...]]
"""A label value, or for an nnU-Net v2 region the tuple of values it unites."""


@dataclass(frozen=True)
class Case:
    """One case: ``image_paths`` one per channel (or one 4D MSD file holding ``channels``).

    ``labels`` is the dataset's {name: value or region}; the label map must hold only those values.
    ``annotated``: the plain labels the case annotates (None: all of them).
    """

    case_id: str
    image_paths: tuple[Path, ...]
    label_path: Optional[Path]
    channels: int = 1
    labels: Mapping[str, LabelValue] = field(default_factory=dict, compare=False)
    annotated: Optional[frozenset[str]] = None

    @property
    def unannotated_values(self) -> frozenset[int]:
        """Label values this case leaves unknown (0 in its label map wherever they may be)."""
        if self.annotated is None:
            return frozenset()
        return frozenset(value for name, value in self.labels.items()
                         if isinstance(value, int) and name not in self.annotated)

    def annotates(self, name: str) -> bool:
        """Whether the case's label map tells where label or region ``name`` is."""
        value = self.labels[name]
        return not set(value if isinstance(value, tuple) else (value,)) & self.unannotated_values

    def load(self) -> tuple[list[Volume], Optional[Volume]]:
        """One (k, j, i) Volume per channel and the uint8 label map (or None), all on one grid.

        The label map's ``labels`` are the dataset's plain labels (regions left out).
        """
        if len(self.image_paths) < self.channels:
            images = load_channels(self.image_paths[0], self.channels)
        else:
            images = [load_volume(path) for path in self.image_paths]
        label = self._load_label() if self.label_path else None
        reference = images[0]
        for other in images[1:] + ([label] if label is not None else []):
            _check_same_grid(reference, other)
        return images, label

    def _load_label(self) -> Volume:
        volume = load_volume(self.label_path)
        present = np.unique(volume.array)
        fractional = present[present != np.round(present)]
        if fractional.size:
            raise DatasetError(f"label map holds non-integer values {fractional[:5].tolist()}",
                               path=self.label_path, field="voxels")
        declared = {0} | _label_values(self.labels)
        unknown = sorted(set(int(v) for v in present) - declared)
        if unknown:
            raise DatasetError(f"label values {unknown} are not declared in dataset.json "
                               f"(declared: {sorted(declared)})", path=self.label_path,
                               field="labels")
        contradicting = sorted(set(int(v) for v in present) & self.unannotated_values)
        if contradicting:
            raise DatasetError(f"label map holds value {contradicting[0]}, a label that "
                               f"annotated_labels says case {self.case_id!r} does not annotate",
                               path=self.label_path, field="annotated_labels")
        names = {name: value for name, value in self.labels.items() if isinstance(value, int)}
        return Volume(volume.array.astype(np.uint8, copy=False), volume.ijk_to_ras, names, volume.path)


@dataclass(frozen=True)
class Dataset:
    """A dataset folder: ``labels`` {name: value or region}, background left out; ``meta`` is the JSON."""

    root: Path
    name: str
    channel_names: list[str]
    labels: dict[str, LabelValue]
    file_ending: str
    cases: list[Case]
    test_cases: list[Case] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def _label_values(labels: Mapping[str, LabelValue]) -> set[int]:
    """Every value a label or region names."""
    values = set()
    for value in labels.values():
        values.update(value if isinstance(value, tuple) else (value,))
    return values


def _check_same_grid(reference: Volume, other: Volume) -> None:
    """Raise :class:`GeometryMismatchError` naming both files unless the volumes share a grid."""
    if other.grid.same_as(reference.grid):
        return
    if other.shape != reference.shape:
        detail = f"shape {other.shape} vs {reference.shape} (k, j, i)"
    else:
        difference = np.abs(other.ijk_to_ras - reference.ijk_to_ras).max()
        detail = f"ijk_to_ras differs by up to {difference:.4g} (spacing, origin or direction)"
    raise GeometryMismatchError(f"grid differs from {reference.path}: {detail}", path=other.path,
                                field="geometry")


def load_channels(path: Path, channels: int) -> list[Volume]:
    """The channels of a 4D NIfTI ((i, j, k, c) in nibabel, the MSD layout) as (k, j, i) Volumes."""
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # missing, truncated or not NIfTI
        raise UnreadableFileError(f"not a readable NIfTI file ({type(err).__name__}: {err})",
                                  path=path) from None
    if data.ndim != 4 or data.shape[3] != channels:
        raise DatasetError(f"expected a 4D image with {channels} channels (i, j, k, c) as declared "
                           f"in dataset.json, got shape {data.shape}", path=path, field="dim")
    volumes = []
    for channel in range(channels):
        array = np.ascontiguousarray(data[..., channel].transpose(2, 1, 0))
        check_finite(array, path=path, field=f"channel {channel}")
        volumes.append(Volume(array, image.affine, {}, str(path)))
    return volumes


def load_dataset(folder: Union[str, Path]) -> Dataset:
    """Read ``folder/dataset.json`` (nnU-Net v2 or MSD) and list the cases (files checked, not read)."""
    root = Path(folder)
    manifest = root / "dataset.json"
    meta = _read_json(manifest)
    if "channel_names" in meta or "file_ending" in meta:
        channel_names = _channel_names(meta, "channel_names", manifest)
        labels = _labels_v2(_require(meta, "labels", manifest), manifest)
        ending = _require(meta, "file_ending", manifest)
        if not isinstance(ending, str) or not ending.startswith("."):
            raise DatasetError(f"expected an extension such as \".nii.gz\", got {ending!r}",
                               path=manifest, field="file_ending")
        cases = _cases_v2(root / "imagesTr", root / "labelsTr", ending, len(channel_names), labels,
                          labels_required=True)
        test_cases = _cases_v2(root / "imagesTs", root / "labelsTs", ending, len(channel_names),
                               labels, labels_required=False)
    elif "modality" in meta:
        channel_names = _channel_names(meta, "modality", manifest)
        labels = _labels_msd(_require(meta, "labels", manifest), manifest)
        ending = ".nii.gz"
        cases = _cases_msd(root, manifest, meta, "training", len(channel_names), labels)
        test_cases = _cases_msd(root, manifest, meta, "test", len(channel_names), labels)
    else:
        raise DatasetError("required field is missing (channel_names for nnU-Net v2, modality for "
                           "the Medical Segmentation Decathlon)", path=manifest, field="channel_names")
    if not cases:
        raise DatasetError("no training cases", path=root)
    declared = meta.get("numTraining")
    if declared is not None and declared != len(cases):
        raise DatasetError(f"is {declared} but the folder holds {len(cases)} training cases",
                           path=manifest, field="numTraining")
    if "annotated_labels" in meta:
        annotated = _annotated_labels(meta["annotated_labels"], labels, cases + test_cases, manifest)
        cases, test_cases = ([replace(c, annotated=annotated.get(c.case_id)) for c in listed]
                             for listed in (cases, test_cases))
    return Dataset(root, str(meta.get("name", root.name)), channel_names, labels, ending, cases,
                   test_cases, meta)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError("missing dataset.json: not a Medical Segmentation Decathlon / nnU-Net v2 "
                           "dataset folder", path=path)
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"invalid JSON ({err})", path=path) from None
    if not isinstance(meta, dict):
        raise DatasetError("expected a JSON object", path=path)
    return meta


def _annotated_labels(mapping, labels: dict[str, LabelValue], cases: list[Case],
                      path: Path) -> dict[str, frozenset[str]]:
    """``annotated_labels`` {case id: [plain label name, ...]} checked against the cases and labels."""
    if not isinstance(mapping, dict):
        raise DatasetError(f"expected {{case id: [label name, ...]}}, got {mapping!r}", path=path,
                           field="annotated_labels")
    case_ids = {case.case_id for case in cases}
    plain = sorted(name for name, value in labels.items() if isinstance(value, int))
    annotated = {}
    for case_id, names in mapping.items():
        where = f"annotated_labels.{case_id}"
        if case_id not in case_ids:
            raise DatasetError(f"no case {case_id!r} in the dataset", path=path, field=where)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DatasetError(f"expected a list of label names, got {names!r}", path=path, field=where)
        unknown = sorted(set(names) - set(plain))
        if unknown:
            raise DatasetError(f"{unknown[0]!r} is not a plain label (expected some of {plain}; a "
                               "region is annotated when every label it unites is)", path=path,
                               field=where)
        annotated[case_id] = frozenset(names)
    return annotated


def _require(meta: dict, key: str, path: Path):
    if key not in meta:
        raise DatasetError("required field is missing", path=path, field=key)
    return meta[key]


def _as_int(text, path: Path, field_name: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise DatasetError(f"expected an integer, got {text!r}", path=path,
                           field=field_name) from None


def _channel_names(meta: dict, key: str, path: Path) -> list[str]:
    """``{"0": name, "1": name}`` -> [name, name]; keys must be 0..N-1."""
    mapping = _require(meta, key, path)
    if not isinstance(mapping, dict) or not mapping:
        raise DatasetError(f"expected {{\"0\": name, ...}}, got {mapping!r}", path=path, field=key)
    numbered = {_as_int(number, path, key): str(name) for number, name in mapping.items()}
    if sorted(numbered) != list(range(len(numbered))):
        raise DatasetError(f"channel numbers must be 0..{len(numbered) - 1}, got {sorted(numbered)}",
                           path=path, field=key)
    return [numbered[c] for c in range(len(numbered))]


def _checked_value(value: int, path: Path, field_name: str) -> int:
    if not 0 <= value <= 255:
        raise DatasetError(f"label value {value} is outside 0..255 (label maps are uint8)", path=path,
                           field=field_name)
    return value


def _labels_v2(mapping, path: Path) -> dict[str, LabelValue]:
    """nnU-Net v2 ``{name: value or [values]}``, background (value 0) left out."""
    if not isinstance(mapping, dict):
        raise DatasetError(f"expected {{name: value}}, got {mapping!r}", path=path, field="labels")
    labels: dict[str, LabelValue] = {}
    for name, value in mapping.items():
        where = f"labels.{name}"
        if isinstance(value, list):
            labels[name] = tuple(_checked_value(_as_int(v, path, where), path, where) for v in value)
        elif isinstance(value, int) and not isinstance(value, bool):
            if value != 0:
                labels[name] = _checked_value(value, path, where)
        else:
            raise DatasetError(f"expected an integer or a list of integers, got {value!r}",
                               path=path, field=where)
    return labels


def _labels_msd(mapping, path: Path) -> dict[str, int]:
    """MSD ``{"0": "background", "1": name}`` -> {name: 1}."""
    if not isinstance(mapping, dict):
        raise DatasetError(f"expected {{value: name}}, got {mapping!r}", path=path, field="labels")
    values = {str(name): _checked_value(_as_int(value, path, "labels"), path, "labels")
              for value, name in mapping.items()}
    return {name: value for name, value in values.items() if value != 0}


def _visible_files(folder: Path, ending: str) -> list[Path]:
    """Files of ``folder`` ending in ``ending``, without hidden ones (macOS ``._`` copies in MSD tars)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith(ending) and not p.name.startswith("."))


def _cases_v2(images: Path, label_folder: Path, ending: str, channels: int, labels: dict, *,
              labels_required: bool) -> list[Case]:
    if labels_required and not images.is_dir():
        raise DatasetError("missing folder", path=images)
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
    found: dict[str, set[int]] = {}
    for path in _visible_files(images, ending):
        match = pattern.match(path.name)
        if not match:
            raise DatasetError(f"image file name must end in _XXXX{ending} (XXXX: channel number)",
                               path=path)
        found.setdefault(match.group(1), set()).add(int(match.group(2)))
    label_ids = {p.name[: -len(ending)]: p for p in _visible_files(label_folder, ending)}
    orphans = sorted(set(label_ids) - set(found))
    if orphans:
        raise DatasetError(f"label without image (no {images.name}/{orphans[0]}_0000{ending})",
                           path=label_ids[orphans[0]])
    cases = []
    for case_id, numbers in sorted(found.items()):
        paths = tuple(images / f"{case_id}_{c:04d}{ending}" for c in range(channels))
        for channel, path in enumerate(paths):
            if channel not in numbers:
                raise DatasetError(f"missing channel {channel} of {channels} for case {case_id!r}",
                                   path=path, field="channel_names")
        extra = sorted(numbers - set(range(channels)))
        if extra:
            raise DatasetError(f"channel {extra[0]} is not declared (channel_names has {channels})",
                               path=images / f"{case_id}_{extra[0]:04d}{ending}",
                               field="channel_names")
        label = label_ids.get(case_id)
        if label is None and labels_required:
            raise DatasetError(f"image without label (case {case_id!r})",
                               path=label_folder / f"{case_id}{ending}")
        cases.append(Case(case_id, paths, label, channels, labels))
    return cases


def _cases_msd(root: Path, manifest: Path, meta: dict, key: str, channels: int,
               labels: dict) -> list[Case]:
    """MSD ``training`` ([{"image", "label"}], required) or ``test`` ([image], optional) entries."""
    entries = _require(meta, key, manifest) if key == "training" else meta.get(key, [])
    if not isinstance(entries, list):
        raise DatasetError(f"expected a list, got {type(entries).__name__}", path=manifest, field=key)
    cases = []
    for index, entry in enumerate(entries):
        where = f"{key}[{index}]"
        if isinstance(entry, dict):
            image, label = entry.get("image"), entry.get("label")
        else:
            image, label = entry, None
        labelled = isinstance(label, str) or (label is None and key == "test")
        if not isinstance(image, str) or not labelled:
            expected = '{"image": path, "label": path}' if key == "training" else "an image path"
            raise DatasetError(f"expected {expected}, got {entry!r}", path=manifest, field=where)
        image, label = root / image, (root / label if label else None)
        if not image.is_file():
            raise DatasetError("image listed in dataset.json is missing", path=image, field=where)
        if label is not None and not label.is_file():
            raise DatasetError("label listed in dataset.json is missing (image without label)",
                               path=label, field=where)
        case_id = image.name[: -len(".nii.gz")] if image.name.endswith(".nii.gz") else image.stem
        cases.append(Case(case_id, (image,), label, channels, labels))
    return cases
