"""Correction clicks once the background embeddings are ready: ours against the cached click and a
SAM-Med3D-sized reference, timed in the same process; memory of a 512x512x300 CT session.

On the 256x256x200 volume (bench_session.benchmark_volume: the 1 mm MNI152 template), per target:
the brain (a box around it first) and the white matter (a click first, as ``ka2er evaluate --first
auto`` does: its box is the brain's). A new session with background embeddings (the default):
``set_image``, the first prompt (timed), then wait until the background is ready (reported in
seconds after ``set_image``), then ``--clicks`` protocol clicks, each at the centre of the largest
error anywhere, waiting after each until the background has settled again (a user looks at the
answer before the next click; the waits are reported). Per click: RAS click to mask pasted
(``Result.latency_ms``) and whether the prompt path computed an embedding. References in the same
process: the cached click (then as many clicks at the largest error near the current crop's centre,
bench_session.clicks_near_one_crop) and SAM-Med3D-sized prompt encoder + mask decoder + upsampling
(bench_session.ReferenceDecoder), timed before and after the sessions.

``--ct-memory``: a session on the 512x512x300 CT phantom (bench_session.benchmark_phantom: a box on
the liver, protocol clicks, the background ready after each): ``session.memory_bytes``, the bytes of
the background embeddings and the process's peak resident memory (model and torch included).

    python bench/bench_background.py [--bundle PATH] [--clicks 10] [--background-mb MB]
    python bench/bench_background.py --ct-memory [--clicks 5] [--background-mb MB]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench_session import (ReferenceDecoder, ReferenceEncoder, benchmark_phantom, benchmark_volume,
                           clicks_near_one_crop, peak_memory_mb, reset_peak_memory, resident_mb, time_it)
from ka2er_core import InteractiveSession, Volume, load_bundle
from ka2er_core.geometry import foreground_bounds, ijk_to_ras_points
from ka2er_core.inference.prefetch import BACKGROUND_BYTES
from ka2er_core.modelspace.clicks import next_click

READY_WAIT_S = 600.0  # a bound on a hung worker


def ras(volume: Volume, kji) -> np.ndarray:
    return ijk_to_ras_points(np.asarray(kji, dtype=float)[::-1], volume.ijk_to_ras)


def first_prompt(session: InteractiveSession, volume: Volume, truth: np.ndarray, box: bool):
    if box:
        low, high = foreground_bounds(truth)
        return session.add_box(ras(volume, low), ras(volume, high))
    kji, _ = next_click(np.zeros_like(truth), truth)
    return session.add_point(ras(volume, kji))


def correct(session: InteractiveSession, volume: Volume, truth: np.ndarray, clicks: int) -> dict:
    """Protocol clicks, each once the background has settled: latencies, embeddings computed on the
    prompt path, the waits for the background, and the peak resident memory of each click's session
    work (the click simulation's distance transforms on the whole volume left out)."""
    record = {"ms": [], "computed": 0, "wait_s": [], "peak_mb": []}
    for _ in range(clicks):
        click = next_click(session.mask > 0, truth)
        if click is None:
            break
        kji, positive = click
        reset_peak_memory()
        computed = session.embeddings.computed
        result = session.add_point(ras(volume, kji), positive)
        record["computed"] += session.embeddings.computed - computed
        record["ms"].append(result.latency_ms)
        start = time.perf_counter()
        session.prefetcher.wait(READY_WAIT_S)
        record["wait_s"].append(time.perf_counter() - start)
        record["peak_mb"].append(peak_memory_mb())
    return record


def p95(values) -> float:
    return float(np.percentile(values, 95))


def reference_decoder_ms() -> list[float]:
    """SAM-Med3D-sized prompt encoder + mask decoder + upsampling to 128^3, 20 runs."""
    encoder, decoder = ReferenceEncoder().eval(), ReferenceDecoder().eval()
    embedding = encoder(torch.randn(1, 1, 128, 128, 128))
    points, previous = torch.rand(1, 3, 3), torch.zeros(1, 1, 32, 32, 32)
    return time_it(lambda: decoder(embedding, points, previous), 20)


def bench_clicks(bundle, options: dict, clicks: int) -> None:
    reference_before = reference_decoder_ms()  # before and after: a check on a quiet machine
    rows, everything = [], {"ms": [], "cached_ms": []}
    for target, box in (("brain", True), ("white matter", False)):
        volume, truth = benchmark_volume(target)
        session = InteractiveSession(bundle, **options)
        start = time.perf_counter()
        session.set_image(volume)
        result = first_prompt(session, volume, truth, box)
        first_s = time.perf_counter() - start
        status = session.prefetcher.wait(READY_WAIT_S)
        ready_s = time.perf_counter() - start
        record = correct(session, volume, truth, clicks)
        record["cached_ms"] = clicks_near_one_crop(session, volume, truth, clicks)
        session.prefetcher.wait(READY_WAIT_S)
        dice = 2 * np.count_nonzero((session.mask > 0) & truth) / (np.count_nonzero(session.mask)
                                                                  + np.count_nonzero(truth))
        rows.append((target, "box" if box else "click", result.member, first_s, ready_s, status, record,
                     dice))
        everything["ms"] += record["ms"]
        everything["cached_ms"] += record["cached_ms"]
        session.close()

    reference_ms = reference_before + reference_decoder_ms()

    median = statistics.median
    print(f"volume 256x256x200, {torch.get_num_threads()} threads, {clicks} protocol clicks per target "
          "once the background embeddings are ready")
    for target, first, member, first_s, ready_s, status, record, dice in rows:
        print(f"{target:12s} first prompt ({first}, answered by {member}) {first_s:5.2f} s | background "
              f"ready {ready_s:5.1f} s after set_image ({status.ready}/{status.planned} crops, "
              f"{status.bytes / 2**20:.0f} MB) | clicks median {median(record['ms']):6.1f} ms, p95 "
              f"{p95(record['ms']):6.1f} ms, {record['computed']} embeddings computed on the click path | "
              f"settled again after a click: median {median(record['wait_s']):4.1f} s, max "
              f"{max(record['wait_s']):4.1f} s | Dice after {len(record['ms'])} clicks {dice:.3f}")
    ours, cached, reference = median(everything["ms"]), median(everything["cached_ms"]), median(reference_ms)
    print(f"all {len(everything['ms'])} correction clicks: median {ours:6.1f} ms, "
          f"p95 {p95(everything['ms']):6.1f} ms | cached click (then {len(everything['cached_ms'])} clicks "
          f"near one crop, bench_session's) median {cached:6.1f} ms, ratio {ours / cached:.2f}"
          f" | SAM-Med3D-size decoder+upsampling median {reference:6.1f} ms (before the sessions "
          f"{median(reference_before):.1f}, after {median(reference_ms[20:]):.1f}), "
          f"ratio {ours / reference:.2f}")


def bench_ct_memory(bundle, options: dict, clicks: int) -> None:
    image, ijk_to_ras, liver = benchmark_phantom()
    volume = Volume(image, ijk_to_ras)
    before_mb = resident_mb()
    if not reset_peak_memory():
        print("no /proc/self/clear_refs here: the peak below is the process's, phantom making included")
    session = InteractiveSession(bundle, **options)
    session.set_image(volume)
    first_prompt(session, volume, liver, box=True)
    session.prefetcher.wait(READY_WAIT_S)
    peak_mb = peak_memory_mb()
    record = correct(session, volume, liver, clicks)
    status = session.prefetcher.wait(READY_WAIT_S)
    peak_mb = max([peak_mb] + record["peak_mb"])
    print(f"CT 512x512x300 int16, a box on the liver and {len(record['ms'])} protocol clicks, the background "
          f"ready ({status.ready}/{status.planned} crops): session.memory_bytes "
          f"{session.memory_bytes / 2**20:.0f} MB, of which background embeddings "
          f"{status.bytes / 2**20:.0f} MB (budget {status.budget / 2**20:.0f} MB); peak resident memory of "
          f"the process during the session's work: {peak_mb:.0f} MB (model, torch and the liver's truth mask "
          f"included), {peak_mb - before_mb:.0f} MB over its {before_mb:.0f} MB before the session")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--clicks", type=int, default=None, help="per target (default 10; --ct-memory 5)")
    parser.add_argument("--ct-memory", action="store_true")
    parser.add_argument("--background-mb", type=int, default=BACKGROUND_BYTES >> 20,
                        help="the sessions' budget of background embeddings (default: the session's)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    bundle = load_bundle(args.bundle)
    options = {"device": "auto", "background_bytes": args.background_mb << 20}
    if args.ct_memory:
        bench_ct_memory(bundle, options, args.clicks or 5)
    else:
        bench_clicks(bundle, options, args.clicks or 10)


if __name__ == "__main__":
    main()
