"""``ka2er demo``: the shipped model on a held-out MNI152 pseudo-subject, offline.

A simulated clinician, following the evaluation protocol, segments the brain (a box, then corrective
clicks) and the white matter (a click, then corrective clicks); every prompt prints its Dice against
the reference, its latency and the model that answered. Writes the volume, the result and the
reference as Slicer segmentations, slice pictures, a Dice plot and ``report.json``, and says how to
open them in 3D Slicer and how to serve the model to the Slicer module.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .bundle import Bundle, load_bundle
from .data.mni import BRAIN_VALUES, MNI_LABELS, TEST_SEEDS, mni_subject
from .evaluation.protocol import ProtocolRun, dice, first_prompt, run_protocol
from .geometry import (axis_aligned_matrix, canonical_grid, ijk_to_ras_points, orientation_code,
                       resample)
from .inference import InteractiveSession, Result
from .io import load_segmentation, load_volume, save_segmentation, save_volume
from .errors import UnwritableFileError
from .io.atomic import atomic_write, check_output, folder_written_whole
from .modelspace import continuous_voxel
from .volume import Grid, Volume

TARGETS = (("brain", "box", 3), ("white matter", "click", 5))
"""(target, first prompt, prompts). The white matter shares the brain's box, so it starts with a
click (the protocol's first-prompt rule, :func:`~ka2er_core.modelspace.clicks.first_prompts`)."""
SEED = TEST_SEEDS[0]
"""The held-out MNI152 pseudo-subject the demo segments (never used in training)."""
IMAGE_FILE = f"mni_t1_{SEED}.nrrd"


def picture_file(target: str) -> str:
    return f"slices_{target.replace(' ', '_')}.png"


FILES = (IMAGE_FILE, "result.seg.nrrd", "reference.seg.nrrd",
         *(picture_file(target) for target, _, _ in TARGETS), "dice.png", "report.json")
"""What the demo writes into its folder (and all that a folder it replaces may hold)."""
COLORS = {"brain": (0.9, 0.8, 0.5), "white matter": (0.95, 0.95, 0.9), "grey matter": (0.6, 0.4, 0.4)}
VIEWS = {"axial": (2, 0, 1), "coronal": (1, 0, 2), "sagittal": (0, 1, 2)}
"""Each view's RAS axes: normal, horizontal, vertical."""
POSITIVE_END, NEGATIVE_END = "RAS", "LPI"
MODEL_COLOR, REFERENCE_COLOR, BOX_COLOR = "#ffb000", "#00d0ff", "#ff60ff"
CLICK_COLORS = {"+": "#40ff40", "-": "#ff4040"}


class ShownSession:
    """What :func:`run_protocol` drives: passes each prompt to ``session``, reports it as soon as it
    is answered and keeps it (kind and RAS mm) for the pictures."""

    def __init__(self, session: InteractiveSession, truth: np.ndarray, total: int,
                 progress: Callable[[str], None]):
        self.session, self.truth, self.total, self.progress = session, truth, total, progress
        self.prompts: list[tuple[str, np.ndarray]] = []  # ("box" | "+" | "-", (n, 3) RAS)

    @property
    def mask(self) -> np.ndarray:
        return self.session.mask

    def set_target(self, name: str) -> None:
        self.session.set_target(name)

    def add_box(self, corner_a, corner_b) -> Result:
        return self._show("box", [corner_a, corner_b], self.session.add_box(corner_a, corner_b))

    def add_point(self, ras, positive: bool = True) -> Result:
        return self._show("+" if positive else "-", [ras], self.session.add_point(ras, positive))

    def _show(self, kind: str, ras: list, result: Result) -> Result:
        self.prompts.append((kind, np.array(ras, dtype=np.float64)))
        name = "box" if kind == "box" else f"{kind} click"
        self.progress(f"{self.session.target_name:<12} prompt {len(self.prompts)}/{self.total} "
                      f"{name:<7} Dice {dice(self.mask > 0, self.truth):.3f} "
                      f"{result.latency_ms:6.0f} ms  model: {result.member}")
        return result


@dataclass
class DemoRun:
    """What the simulated clinician did and got on the held-out subject: each target's reference,
    final mask, protocol run (Dice and latency per prompt) and prompts (kind and RAS mm)."""

    bundle: str
    device: str
    subject: str
    image: Volume
    references: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    runs: dict[str, ProtocolRun]
    prompts: dict[str, list[tuple[str, np.ndarray]]]


def run_demo(out: Path, progress: Callable[[str], None] = print, bundle: Optional[Path] = None,
             device: str = "auto") -> dict:
    """Run the demo with ``bundle`` (default: the shipped one), writing into ``out``; returns what it
    measured (also written to ``out/report.json``). The files are written into a temporary sibling
    folder that replaces ``out`` only once all of them are written: a failed demo leaves ``out`` as
    it was. An existing ``out`` is replaced only if it holds nothing but an earlier demo's files."""
    start, out = time.perf_counter(), Path(out)
    check_replaceable(out)
    demo = segment_subject(load_bundle(bundle), device, progress)
    with folder_written_whole(out) as folder:
        report = write_files(folder, demo, start)
    print_summary(out, demo, report)
    return report


def check_replaceable(out: Path) -> None:
    """Refuse, before the demo runs, an ``out`` that cannot be written or that holds anything but
    files of an earlier demo (:data:`FILES`): replacing it would lose them."""
    check_output(out, folder=True)
    if not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in FILES or not p.is_file())
    if foreign:
        raise UnwritableFileError(f"ka2er demo replaces its folder whole, and {foreign[0]!r} is not "
                                  "a file it writes: choose another --out, or move it away",
                                  path=out / foreign[0])


def segment_subject(model: Bundle, device: str, progress: Callable[[str], None]) -> DemoRun:
    """The simulated clinician's protocol (:data:`TARGETS`) on the held-out pseudo-subject."""
    session = InteractiveSession(model, device=device)
    progress(f"model {model.path} ({model.kind}, on {session.device}); making the held-out MNI152 "
             f"pseudo-subject, seed {SEED} (never used in training)")
    subject = mni_subject(SEED)
    image, labels = subject.image, subject.label.array
    references = {"brain": np.isin(labels, BRAIN_VALUES),
                  "white matter": labels == MNI_LABELS["white matter"],
                  "grey matter": labels == MNI_LABELS["grey matter"]}
    session.set_image(image)
    shown: dict[str, ShownSession] = {}
    runs: dict[str, ProtocolRun] = {}
    for target, first, prompts in TARGETS:  # a model that takes no boxes starts with a click
        shown[target] = ShownSession(session, references[target], prompts, progress)
        runs[target] = run_protocol(shown[target], image, references[target], prompts,
                                    first_prompt(first, {first}, session.prompt_types), target=target)
    return DemoRun(str(model.path), str(session.device), subject.name, image, references,
                   {target: session.targets[target].mask for target in runs}, runs,
                   {target: view.prompts for target, view in shown.items()})


def write_files(folder: Path, demo: DemoRun, start: float) -> dict:
    """Write :data:`FILES` into ``folder``: the volume, the result and the reference as Slicer
    segmentations (the result read back and compared), slice pictures, the Dice plot and
    ``report.json``; returns the report."""
    image = demo.image
    image_path = save_volume(folder / IMAGE_FILE, image)
    result_path = save_segmentation(folder / "result.seg.nrrd", demo.masks, reference=image,
                                    colors=COLORS)
    save_segmentation(folder / "reference.seg.nrrd", demo.references, reference=image, colors=COLORS)
    readback = load_segmentation(result_path).masks
    identical = (np.array_equal(load_volume(image_path).array, image.array)
                 and all(np.array_equal(readback[name] > 0, mask > 0)
                         for name, mask in demo.masks.items()))
    for target, run in demo.runs.items():
        draw_slices(folder / picture_file(target), image, demo.masks[target],
                    demo.references[target], target, demo.prompts[target], run.dice[-1])
    draw_dice(folder / "dice.png", demo.runs, SEED)
    report = {"subject": demo.subject, "bundle": demo.bundle, "device": demo.device,
              "targets": {target: {"first": "box" if run.prompts[0] == "box" else "click",
                                   **run.to_dict(),
                                   "ras": [ras.round(2).tolist() for _, ras in demo.prompts[target]]}
                          for target, run in demo.runs.items()},
              "files_identical_after_readback": bool(identical),
              "seconds": round(time.perf_counter() - start, 1)}
    with atomic_write(folder / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    return report


def print_summary(out: Path, demo: DemoRun, report: dict) -> None:
    """What the demo measured, where its files are and how to open them in 3D Slicer or serve the
    model to the Slicer module."""
    image, runs = demo.image, demo.runs
    image_path, result_path = out / IMAGE_FILE, out / "result.seg.nrrd"
    click = demo.prompts["white matter"][-1][1][0]
    voxel = continuous_voxel(click, image)
    latencies = [ms for run in runs.values() for ms in run.latency_ms]
    print("; ".join(f"{target}: Dice {run.dice[-1]:.3f} after {len(run.dice)} prompts"
                    for target, run in runs.items()) + f"; median latency {np.median(latencies):.0f} ms")
    print(f"volume {' x '.join(map(str, image.shape[::-1]))} voxels of "
          f"{' x '.join(f'{s:g}' for s in image.spacing)} mm, {orientation_code(image.ijk_to_ras)}; "
          f"files read back identical: {report['files_identical_after_readback']}")
    print(f"last click RAS {click.round(1).tolist()} mm = voxel (i, j, k) {voxel.round(1).tolist()}")
    print(f"wrote to {out.resolve()}: {image_path.name} (the volume), result.seg.nrrd (the demo's "
          "segments),\n  reference.seg.nrrd, slices_brain.png, slices_white_matter.png, dice.png, "
          "report.json")
    print()
    print(f"Open in 3D Slicer: File > Add Data, choose {image_path.name} and result.seg.nrrd "
          "(reference.seg.nrrd to\n  compare), or drag and drop them onto the Slicer window; or "
          "start Slicer with them:")
    print(f'  Slicer --python-code "slicer.util.loadVolume(r\'{image_path.resolve()}\'); '
          f'slicer.util.loadSegmentation(r\'{result_path.resolve()}\')"')
    print("Segment in Slicer with this model through the server the KA2ER module talks to:")
    print('  python -c "import secrets; print(secrets.token_urlsafe(32))" > TOKEN')
    print("  ka2er serve --token-file TOKEN --host 0.0.0.0 --port 8000")
    print('  then in the module choose "server", enter http://HOST:8000 (HOST: this machine\'s '
          "address)\n  and the token from the file TOKEN")


def plane_through(canvas: Grid, normal: int, ras: np.ndarray) -> Grid:
    """The one-voxel-thick plane of the axis-aligned ``canvas`` normal to RAS axis ``normal`` that
    passes nearest ``ras``."""
    spacing, origin = canvas.spacing, canvas.origin
    size = canvas.shape[2 - normal]
    origin[normal] += np.clip(np.round((ras[normal] - origin[normal]) / spacing[normal]), 0, size - 1
                              ) * spacing[normal]
    shape = list(canvas.shape)
    shape[2 - normal] = 1
    return Grid(tuple(shape), axis_aligned_matrix(origin, spacing))


THIN = 0.5
"""A panel goes through the target's centre instead of the last prompt when the slice through the
prompt cuts less than this share of the target that the slice through its centre cuts."""


def panel_planes(canvas: Grid, image: Volume, truth: np.ndarray, focus: np.ndarray
                 ) -> dict[str, tuple[Grid, str]]:
    """Each view's plane of ``canvas`` and what it passes through: "last click" (the point ``focus``,
    RAS mm), or "target's centre" (the centroid of ``truth``) where the slice through ``focus`` cuts
    less than :data:`THIN` of what the slice through the centre cuts (a click at a pole would show a
    sliver of the target)."""
    kji = np.argwhere(truth).mean(axis=0) if truth.any() else (np.array(truth.shape) - 1) / 2
    centre = ijk_to_ras_points(kji[::-1], image.ijk_to_ras)
    truth8 = truth.astype(np.uint8)

    def area(plane: Grid) -> int:
        return int(resample(truth8, image.ijk_to_ras, plane, order=0).sum())

    planes = {}
    for view, (normal, _, _) in VIEWS.items():
        at_focus, at_centre = plane_through(canvas, normal, focus), plane_through(canvas, normal, centre)
        planes[view] = ((at_focus, "last click") if area(at_focus) >= THIN * area(at_centre)
                        else (at_centre, "target's centre"))
    return planes


def draw_slices(path: Path, image: Volume, mask: np.ndarray, truth: np.ndarray, target: str,
                prompts: list[tuple[str, np.ndarray]], final_dice: float) -> Path:
    """Axial, coronal and sagittal slices through the last prompt, in RAS mm (so at the true aspect),
    radiological convention as 3D Slicer shows them: the mask and reference outlines, clicks as + / -
    and the box where it crosses the slice. A panel whose slice through the prompt would show a
    sliver of the target passes through the target's centre instead (:func:`panel_planes`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    canvas = canonical_grid(image.grid, [float(image.spacing.min())] * 3)
    focus = prompts[-1][1].mean(axis=0)  # the last click (or the box's centre)
    low, high = np.percentile(image.array[::2, ::2, ::2], (1, 99.5))
    figure = Figure(figsize=(13, 5.2), dpi=100)
    FigureCanvasAgg(figure)
    planes = panel_planes(canvas, image, truth, focus)
    for axes, (view, (normal, across, up)) in zip(figure.subplots(1, 3), VIEWS.items()):
        plane, through = planes[view]
        pixels, mask2d, truth2d = (
            resample(array, image.ijk_to_ras, plane, order=order).squeeze(2 - normal)
            for array, order in ((image.array, 1), (mask.astype(np.uint8), 0), (truth.astype(np.uint8), 0)))
        step = plane.spacing
        xs = plane.origin[across] + step[across] * np.arange(pixels.shape[1])
        ys = plane.origin[up] + step[up] * np.arange(pixels.shape[0])
        axes.imshow(pixels, cmap="gray", vmin=low, vmax=high, origin="lower", interpolation="bilinear",
                    extent=(xs[0] - step[across] / 2, xs[-1] + step[across] / 2,
                            ys[0] - step[up] / 2, ys[-1] + step[up] / 2))
        for outline, color in ((truth2d, REFERENCE_COLOR), (mask2d, MODEL_COLOR)):
            if 0 < outline.sum() < outline.size:
                axes.contour(xs, ys, outline, levels=[0.5], colors=color, linewidths=1.2)
        depth = plane.origin[normal]
        for number, (kind, ras) in enumerate(prompts, 1):
            if kind == "box" and ras[0, normal] <= depth <= ras[1, normal]:
                axes.add_patch(Rectangle((ras[0, across], ras[0, up]), ras[1, across] - ras[0, across],
                                         ras[1, up] - ras[0, up], fill=False, edgecolor=BOX_COLOR,
                                         linestyle="--", linewidth=1.2))
            elif kind != "box" and abs(ras[0, normal] - depth) <= step[normal]:
                axes.plot(ras[0, across], ras[0, up], marker="P" if kind == "+" else "_",
                          markersize=13, markeredgewidth=3, color=CLICK_COLORS[kind])
                axes.annotate(str(number), (ras[0, across], ras[0, up]), xytext=(6, 6),
                              textcoords="offset points", color=CLICK_COLORS[kind], fontsize=9)
        axes.invert_xaxis()  # patient's right (or front) on the screen's left
        axes.set_aspect("equal")
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_title(f"{view} through the {through}, {POSITIVE_END[normal]} = {depth:.0f} mm",
                       fontsize=10)
        for x, y, letter in ((0.03, 0.5, POSITIVE_END[across]), (0.97, 0.5, NEGATIVE_END[across]),
                             (0.5, 0.96, POSITIVE_END[up]), (0.5, 0.04, NEGATIVE_END[up])):
            axes.text(x, y, letter, transform=axes.transAxes, color="white", ha="center",
                      va="center", fontsize=10, fontweight="bold")
    legend = [Line2D([], [], color=MODEL_COLOR, label="model"),
              Line2D([], [], color=REFERENCE_COLOR, label="reference"),
              Line2D([], [], color=CLICK_COLORS["+"], marker="P", linestyle="", label="+ click"),
              Line2D([], [], color=CLICK_COLORS["-"], marker="_", markeredgewidth=3, linestyle="",
                     label="- click"),
              Line2D([], [], color=BOX_COLOR, linestyle="--", label="box")]
    figure.legend(handles=legend, loc="lower center", ncol=5, frameon=False)
    figure.suptitle(f"{target}: outlines after {len(prompts)} prompts (Dice {final_dice:.3f}), "
                    "slices through the last click\n(or the target's centre where that slice cuts a sliver of "
                    "it); radiological convention as in 3D Slicer: patient's right on the left of the "
                    "screen", fontsize=11)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    with atomic_write(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def draw_dice(path: Path, runs: dict[str, ProtocolRun], seed: int) -> Path:
    """Dice against the prompt number, one line per target, each point marked with its prompt."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for target, run in runs.items():
        numbers = np.arange(1, len(run.dice) + 1)
        axes.plot(numbers, run.dice, marker="o", label=target)
        for number, score, kind in zip(numbers, run.dice, run.prompts):
            axes.annotate(kind, (number, score), xytext=(0, 7), textcoords="offset points",
                          ha="center", fontsize=8)
    axes.set_xticks(np.arange(1, max(len(run.dice) for run in runs.values()) + 1))
    axes.set_xlabel("prompt (box, + click, - click)")
    axes.set_ylabel("Dice against the reference")
    axes.set_ylim(0, 1.05)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    axes.set_title(f"KA2ER demo: held-out MNI152 pseudo-subject (seed {seed})", fontsize=10)
    figure.tight_layout()
    with atomic_write(path) as tmp:
        figure.savefig(tmp, format="png")
    return path
