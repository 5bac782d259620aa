"""Slicer-side cost of a click: the module's Logic against the vtk-based Slicer stand-in.

A 512x512x300 oblique CT phantom (made at half resolution, each voxel repeated 2x2x2) under a linear
transform; the shipped default model answers in an InteractiveSession on the Logic's worker thread. Per
click this times only what the module adds on Slicer's side: the control point to a world RAS prompt
(``lastSceneMs["prompt"]``) and writing the changed region into the segment
(``lastSceneMs["write"]``). Reference, in the same process: writing the whole mask into the segment
with ``slicer.util.updateSegmentBinaryLabelmapFromArray`` (what a module that ignores the changed
region would do). Prints medians, p95 and the ratio ours / reference.

The stand-in stores segments as numpy arrays, so the write times are those of the region copy and
the vtkOrientedImageData hand-over, not of Slicer's C++ segment update.

    python bench/bench_slicer_logic.py [--clicks 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "Testing"), str(ROOT / "KA2ERSegment")]

import slicer_standin  # noqa: E402

from bench_session import CT_SHAPE as SHAPE, benchmark_phantom  # noqa: E402
from ka2er_core.geometry import ijk_to_ras_points  # noqa: E402
from ka2er_core.modelspace.clicks import next_click  # noqa: E402

def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):6.2f} ms, p95 {np.percentile(values, 95):6.2f} ms"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)

    image, ijk_to_ras, truth = benchmark_phantom()
    slicer = slicer_standin.install()
    sys.modules.setdefault("qt", type(sys)("qt"))
    from KA2ERSegment import KA2ERSegmentLogic

    volume = slicer.util.addVolumeFromArray(image, ijk_to_ras, "phantom")
    moved = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    shift = np.eye(4)
    shift[:3, 3] = (5.0, -3.0, 8.0)
    moved.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    volume.SetAndObserveTransformNodeID(moved.GetID())

    logic = KA2ERSegmentLogic()
    errors, results = [], []
    logic.onError = errors.append
    logic.onResult = lambda segment, result: results.append(result)
    logic.loadModel("", device="cpu")
    logic.setVolume(volume)
    segment_id = logic.setTarget("")
    positive, negative, _ = logic.promptNodes()
    logic.worker.wait(600)

    prompt_ms, write_ms, total_ms, voxels = [], [], [], []
    for _ in range(args.clicks):
        click = next_click(logic.session.mask > 0, truth)
        if click is None:
            break
        kji, is_positive = click
        world = shift @ np.append(ijk_to_ras_points(kji[::-1].astype(float), ijk_to_ras), 1.0)
        node = positive if is_positive else negative
        logic.addPoint(node, node.AddControlPointWorld(list(world[:3])), is_positive)
        logic.worker.wait(600)
        if errors:
            raise SystemExit(f"click failed: {errors[-1]}")
        prompt_ms.append(logic.lastSceneMs["prompt"])
        write_ms.append(logic.lastSceneMs["write"])
        total_ms.append(prompt_ms[-1] + write_ms[-1])
        region = results[-1].region
        voxels.append(0 if region is None else int(np.prod([s.stop - s.start for s in region])))

    mask = logic.session.mask
    reference_ms = []
    for _ in range(max(3, min(len(total_ms), 10))):
        start = time.perf_counter()
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, logic.segmentationNode, segment_id, volume)
        reference_ms.append((time.perf_counter() - start) * 1000)
    logic.worker.stop()

    truth_dice = 2 * ((mask > 0) & truth).sum() / ((mask > 0).sum() + truth.sum())
    print(f"volume {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} (i x j x k), {len(total_ms)} protocol clicks on "
          f"the liver, Dice after them {truth_dice:.3f}")
    print(f"changed region per click: median {statistics.median(voxels) / 1e6:.2f} M voxels "
          f"({statistics.median(voxels) / np.prod(SHAPE):.1%} of the volume)")
    print(f"prompt (control point -> world RAS):      {summary(prompt_ms)}")
    print(f"write (changed region into the segment):  {summary(write_ms)}")
    print(f"Slicer side per click (prompt + write):   {summary(total_ms)}   budget: median <= 20 ms")
    print(f"reference, whole mask written per click:  {summary(reference_ms)}")
    print(f"ratio ours / reference (medians): {statistics.median(total_ms) / statistics.median(reference_ms):.3f}")


if __name__ == "__main__":
    main()
