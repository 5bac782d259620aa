"""Gate benchmark (SAM-Med3D-MoE): what routing costs per target, and memory per member used.

A moe bundle is built from the shipped student: the student as the general model, two copies of it
as task members, a gate of the student's size whose threshold (1.05) is never reached, so that the
gate runs and the general model always answers. The gate routes a target's first prompt (its
corrections stay with that member and skip the gate). On a 256x256x200 volume (the MNI152 1 mm
template, as in bench_session.py), each timed click starts a new target at the same white-matter
point (embeddings cached) in the moe session and in a session on the student alone (no gate),
interleaved; printed: the routing step (prompt encoding, gate features, MLP, selection), both
first-click latencies, their difference and ratio; then a correction's latency in the moe session,
where no gate runs. Then resident memory after using the general member only, and after pinning and
using every member (weights are read on first use).

    python bench/bench_gate.py [--clicks 20] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench_session import benchmark_volume, resident_mb
from ka2er_core import InteractiveSession, load_bundle
from ka2er_core.bundle import STUDENT_BUNDLE, save_moe_bundle
from ka2er_core.geometry import ijk_to_ras_points, ras_to_ijk
from ka2er_core.modeling.gate import Gate
from ka2er_core.modelspace.clicks import next_click

TASK_MEMBERS = ("task A", "task B")


def moe_from_student(folder: Path) -> Path:
    """The student as general model plus copies as task members, and a gate that never routes away."""
    student = load_bundle(STUDENT_BUNDLE).default
    members = [student] + [replace(student, name=name) for name in TASK_MEMBERS]
    gate = Gate.for_model([m.name for m in members], student.model)
    gate.threshold = 1.05
    return save_moe_bundle(folder / "moe", members, gate.eval())


def clicks_near_crop(session: InteractiveSession, truth: np.ndarray, count: int,
                     rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` RAS points on ``truth`` within 15 mm of the centre of the session's current crop,
    where a correcting click reuses that crop's cached embedding."""
    volume, crop = session.volume, session.target.answer.crop.grid
    centre_ras = ijk_to_ras_points(np.full(3, (crop.shape[0] - 1) / 2), crop.ijk_to_ras)
    centre = ras_to_ijk(centre_ras, volume.ijk_to_ras)[::-1]  # (k, j, i) of the 1 mm volume
    near = np.argwhere(truth)
    near = near[np.linalg.norm(near - centre, axis=1) < 15]
    picks = near[rng.choice(len(near), size=count, replace=False)]
    return [ijk_to_ras_points(kji[::-1].astype(float), volume.ijk_to_ras) for kji in picks]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    volume, truth = benchmark_volume()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_bundle(moe_from_student(Path(tmp)))
        start_mb = resident_mb()
        routed = InteractiveSession(bundle, device="cpu", background=False)  # the clicks alone
        plain = InteractiveSession(load_bundle(STUDENT_BUNDLE), device="cpu", background=False)
        kji, _ = next_click(np.zeros_like(truth), truth)  # white matter: starts with a click
        first = ijk_to_ras_points(kji[::-1].astype(float), volume.ijk_to_ras)
        for session in (routed, plain):
            session.set_image(volume)
            session.add_point(first)
        second = clicks_near_crop(routed, truth, 1, rng)[0]  # a correction: a crop at base spacing
        for session in (routed, plain):
            session.add_point(second)

        route, gate_ms = routed._route, []

        def timed_route(*route_args):
            start = time.perf_counter()
            route(*route_args)
            gate_ms.append((time.perf_counter() - start) * 1000)

        routed._route = timed_route
        with_gate, without_gate, corrections = [], [], []
        computed = routed.embeddings.computed, plain.embeddings.computed
        for n in range(args.clicks):
            for session, times in ((routed, with_gate), (plain, without_gate)):
                session.set_target(f"new target {n}")
                times.append(session.add_point(first).latency_ms)
        if (routed.embeddings.computed, plain.embeddings.computed) != computed:
            raise RuntimeError("a timed click computed a new embedding")
        if len(gate_ms) != args.clicks:
            raise RuntimeError(f"the gate ran {len(gate_ms)} times for {args.clicks} new targets")
        routed.set_target("Segment_1")
        for point in clicks_near_crop(routed, truth, 5, rng):
            corrections.append(routed.add_point(point).latency_ms)
        if len(gate_ms) != args.clicks:
            raise RuntimeError("a correction ran the gate")
        one_member_mb, loaded = resident_mb(), list(bundle.members.loaded)

        for name in TASK_MEMBERS:  # pin and use every member: weights read, own embedding computed
            routed.pin(name)
            routed.add_point(clicks_near_crop(routed, truth, 1, rng)[0])
        all_members_mb = resident_mb()

    median = statistics.median
    overhead = median(with_gate) - median(without_gate)
    print(f"volume 256x256x200, crop {routed.target.answer.crop.grid.shape[0]}^3, {len(with_gate)} new "
          f"targets started by one click (embeddings cached), {torch.get_num_threads()} threads")
    print(f"routing of a new target (gate)          median {median(gate_ms):6.2f} ms")
    print(f"first click with gate (moe, general)    median {median(with_gate):6.1f} ms")
    print(f"first click without gate (student)      median {median(without_gate):6.1f} ms")
    print(f"gate overhead per new target {overhead:+.1f} ms (target <= 10 ms), ratio with/without "
          f"{median(with_gate) / median(without_gate):.3f}")
    print(f"correction in the moe session (no gate) median {median(corrections):6.1f} ms "
          f"({len(corrections)} clicks)")
    print(f"resident memory: {start_mb:.0f} MB after loading the moe bundle; "
          f"{one_member_mb:.0f} MB having used {loaded} (plus a plain student session); "
          f"{all_members_mb:.0f} MB after using all {len(bundle.members)} members "
          f"(+{all_members_mb - one_member_mb:.0f} MB: weights and one embedding each)")


if __name__ == "__main__":
    main()
