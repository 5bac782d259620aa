"""``ka2er evaluate --protocol cvpr25``: the protocol of the CVPR 2025 challenge "Foundation Models for
Interactive 3D Biomedical Image Segmentation" (JunMa11/CVPR-MedSegFMCompetition, ``get_boxes.py`` and
``CVPR25_iter_eval.py``), per target on the volume's own grid.

- **Box** (:func:`challenge_box`): the z-range of the whole target (z: the array's first axis, k, as
  the challenge's (D, H, W) arrays), and the 2D box of the target on its middle slice (the slice of
  the middle foreground voxel in array order), each side pushed out by a random 0-5 pixels scaled by
  the slice size / 256 and clipped to the image (seeded by case and target, :func:`box_rng`: the
  same box for every method, whichever other cases are scored with it).
- **Clicks** (:func:`challenge_click`): 5, each at the maximum of the Euclidean distance transform
  (in voxels, the image border counting as outside) of the largest 26-connected error component;
  positive where the target was missed, negative on a false positive; none once the mask is perfect.
  A model that takes no boxes starts from an empty mask (the challenge's Dice 0 for the box step).
- **Metrics** (:func:`challenge_scores`): DSC and NSD after every prediction (NSD: MONAI's
  :func:`~monai.metrics.compute_surface_dice`, 2 mm tolerance, voxel spacing in mm, sub-voxel
  surfaces as the challenge's surface Dice; 0 where DSC <= 0.2, as the challenge scores it); DSC AUC
  and NSD AUC: the trapezoid area under the values after the clicks (the box prediction left out, as
  the challenge does), unit step, so 5 clicks give 0..4 (perfect masks: 4.0); final DSC and NSD after
  the last click.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import InitVar, dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from ..errors import EmptyMaskError
from ..geometry import foreground_bounds
from ..inference.protocols import Session
from ..volume import Volume
from .protocol import ProtocolRun, run_protocol

PROMPTS = 6
"""The challenge's predictions per target: the box, then 5 clicks."""
TOLERANCE_MM = 2.0
NSD_MIN_DSC = 0.2
BOX_SEED, CLICK_SEED = 2025, 42
METRICS = ("dsc_auc", "nsd_auc", "final_dsc", "final_nsd")


def box_rng(case: str, target: str) -> np.random.RandomState:
    """The seeded draw of a target's box margins (the challenge seeds 2025 once per run)."""
    return np.random.RandomState([BOX_SEED, zlib.crc32(f"{case}/{target}".encode())])


def challenge_box(truth: np.ndarray, rng: Optional[np.random.RandomState] = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (k, j, i) bounds (lo, hi) of the challenge's box: k from the target's first to last
    slice; j, i from its 2D box on the middle slice (``z_indices[len // 2]`` of the foreground
    voxels), widened by ``int(shift * size / 256)`` with shift drawn from 0..5 by ``rng`` (none
    without one)."""
    per_slice = truth.reshape(truth.shape[0], -1).sum(axis=1)
    total = int(per_slice.sum())
    if total == 0:
        raise EmptyMaskError("the reference mask is empty: no box to draw", field="target")
    z = np.flatnonzero(per_slice)
    middle = int(np.searchsorted(np.cumsum(per_slice), total // 2, side="right"))
    rows, columns = np.flatnonzero(truth[middle].any(1)), np.flatnonzero(truth[middle].any(0))
    y_lo, y_hi, x_lo, x_hi = rows[0], rows[-1], columns[0], columns[-1]
    height, width = truth.shape[1:]
    shift = int(rng.randint(0, 6, 1)[0]) if rng is not None else 0
    dy, dx = int(shift * height / 256), int(shift * width / 256)
    lo = np.array([z[0], max(0, y_lo - dy), max(0, x_lo - dx)])
    hi = np.array([z[-1], min(height - 1, y_hi + dy), min(width - 1, x_hi + dx)])
    return lo, hi


def challenge_click(prediction: np.ndarray, truth: np.ndarray) -> Optional[tuple[np.ndarray, bool]]:
    """((k, j, i), positive) at the distance-transform maximum of the largest 26-connected error
    component (ties: the challenge's seeded pick); None if the mask is perfect."""
    errors, count = ndimage.label(prediction != truth, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return None
    sizes = np.bincount(errors.ravel())
    sizes[0] = 0
    largest = errors == int(np.argmax(sizes))
    lo, hi = foreground_bounds(largest)
    crop = largest[tuple(slice(a, b + 1) for a, b in zip(lo, hi))]
    # the challenge pads by a quarter of the crop (at least 1 voxel): the image border is outside
    distance = ndimage.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1, 1:-1]
    peaks = np.argwhere(distance == distance.max())
    centre = lo + peaks[np.random.RandomState(CLICK_SEED).choice(len(peaks))]
    return centre, bool(truth[tuple(centre)])


def surface_dice(prediction: np.ndarray, truth: np.ndarray, spacing_kji,
                 tolerance: float = TOLERANCE_MM) -> float:
    """Normalised surface Dice at ``tolerance`` mm (MONAI, sub-voxel surfaces); 1 for two empty masks,
    0 when one of them is empty."""
    import torch
    from monai.metrics import compute_surface_dice

    if not prediction.any() or not truth.any():
        return float(prediction.any() == truth.any())

    def onehot(mask):
        return torch.from_numpy(np.stack([~mask, mask])[None].astype(np.float32))
    with warnings.catch_warnings():  # MONAI 1.6 warns about an argument it passes itself
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_surface_dice(onehot(prediction), onehot(truth), [tolerance],
                                     spacing=[float(s) for s in spacing_kji], use_subvoxels=True)
    return float(value.item())


def auc(values) -> Optional[float]:
    """Trapezoid area under ``values`` at unit steps (None for fewer than two)."""
    values = np.asarray(values, float)
    return float(np.sum((values[1:] + values[:-1]) / 2)) if len(values) > 1 else None


def challenge_scores(dsc: list[float], nsd: list[float], clicks: int) -> dict:
    """DSC/NSD AUC over the last ``clicks`` values (the predictions after each click) and the final
    values."""
    return {"dsc_auc": auc(dsc[-clicks:]) if clicks else None,
            "nsd_auc": auc(nsd[-clicks:]) if clicks else None,
            "final_dsc": dsc[-1], "final_nsd": nsd[-1]}


@dataclass
class ChallengeRun(ProtocolRun):
    """A :class:`ProtocolRun` that also records NSD (``spacing``: the volume's, (k, j, i) mm)."""

    nsd: list[float] = field(default_factory=list)
    spacing: InitVar[Optional[np.ndarray]] = None

    def __post_init__(self, spacing):
        self.voxel_mm = spacing

    def record(self, prompt: str, mask: np.ndarray, truth: np.ndarray, result) -> None:
        super().record(prompt, mask, truth, result)
        self.nsd.append(surface_dice(mask, truth, self.voxel_mm) if self.dice[-1] > NSD_MIN_DSC
                        else 0.0)

    def record_none(self, prompt: str) -> None:
        super().record_none(prompt)
        self.nsd.append(self.nsd[-1] if self.nsd else 0.0)

    def to_dict(self) -> dict:
        clicks = sum(prompt != "box" and prompt != "no box" for prompt in self.prompts)
        return {**super().to_dict(), **challenge_scores(self.dice, self.nsd, clicks)}


def run_cvpr25(session: Session, image: Volume, truth: np.ndarray, prompts: int = PROMPTS,
               target: str = "target", rng: Optional[np.random.RandomState] = None) -> ChallengeRun:
    """Drive ``session`` (image already set) through the challenge's box and ``prompts - 1`` clicks
    for one target (:func:`~.protocol.run_protocol` with the challenge's box and clicks); ``rng``
    perturbs the box (see :func:`challenge_box`). A model that takes no boxes starts from an empty
    mask (the challenge's "no box" case)."""
    first = "box" if "box" in getattr(session, "prompt_types", ("box",)) else "none"
    run = ChallengeRun(spacing=np.asarray(image.spacing, float)[::-1])
    return run_protocol(session, image, truth, prompts, first, target,
                        box=lambda mask: challenge_box(mask, rng), click=challenge_click, run=run)


def summarise_metrics(group: list[dict]) -> dict:
    """Means over a task and target's runs of the challenge's metrics and of NSD per prompt; {} for
    runs of the default protocol."""
    if not group or "nsd" not in group[0]:
        return {}
    means = {name: (float(np.mean([g[name] for g in group]))
                    if all(g[name] is not None for g in group) else None) for name in METRICS}
    return {"mean_nsd": np.array([g["nsd"] for g in group]).mean(axis=0).round(4).tolist(),
            **{name: None if value is None else round(value, 4) for name, value in means.items()}}


def format_metrics(row: dict) -> str:
    """The challenge's metrics of one summary row, for the text table ("" without them)."""
    if "final_nsd" not in row:
        return ""
    cells = [f"{label} {'n/a' if row[name] is None else format(row[name], '.3f')}"
             for label, name in (("DSC AUC", "dsc_auc"), ("NSD AUC", "nsd_auc"),
                                 ("final DSC", "final_dsc"), ("final NSD", "final_nsd"))]
    return "  " + " ".join(cells)


def compare_metrics(reports: dict[str, dict]) -> dict:
    """{"cvpr25": {"metrics", "rows": [{"task", "target", "values": {method: [DSC AUC, NSD AUC, final
    DSC, final NSD]}}], "mean_over_shared_targets": {method: [...]}, "shared_targets"}} when any
    report has the challenge's metrics, else {}. A mean takes the targets every such method has."""
    methods = [m for m, report in reports.items()
               if any("final_nsd" in row for row in report["summary"])]
    if not methods:
        return {}
    rows: dict[tuple[str, str], dict[str, list]] = {}
    for method in methods:
        for row in reports[method]["summary"]:
            rows.setdefault((row["task"], row["target"]), {})[method] = [row[m] for m in METRICS]
    shared = [key for key, values in rows.items() if len(values) == len(methods)]
    means = {m: [None if any(rows[k][m][i] is None for k in shared) or not shared else
                 round(float(np.mean([rows[k][m][i] for k in shared])), 4)
                 for i in range(len(METRICS))] for m in methods}
    return {"cvpr25": {"metrics": list(METRICS), "methods": methods,
                       "rows": [{"task": task, "target": target, "values": values}
                                for (task, target), values in sorted(rows.items())],
                       "mean_over_shared_targets": means, "shared_targets": len(shared)}}


def format_compared(comparison: dict) -> list[str]:
    """Markdown lines of the challenge's metrics per task and target and method ([] without them)."""
    table = comparison.get("cvpr25")
    if not table:
        return []
    methods = table["methods"]

    def cell(values):
        return "n/a" if values is None else " / ".join(
            "n/a" if v is None else f"{v:.3f}" for v in values)
    lines = ["", "| task: target (cvpr25) | " + " | ".join(
        f"{m} (DSC AUC / NSD AUC / final DSC / final NSD)" for m in methods) + " |",
        "| --- |" + " --- |" * len(methods)]
    lines += [f"| {row['task']}: {row['target']} | "
              + " | ".join(cell(row["values"].get(m)) for m in methods) + " |" for row in table["rows"]]
    lines.append(f"| **mean over the {table['shared_targets']} targets** | "
                 + " | ".join(cell(table["mean_over_shared_targets"][m]) for m in methods) + " |")
    return lines
