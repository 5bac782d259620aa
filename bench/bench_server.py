"""Server round trip: the same clicks in-process and through ``ka2er serve`` on loopback.

A 256x256x200 volume (the MNI152 template, as in bench_session.py), the shipped bundle: one click on
white matter, then clicks at the largest error near the current crop (embedding cached, the budget's
case), recorded in-process with :class:`InteractiveSession` and replayed through
:class:`RemoteSession` against a real uvicorn server on 127.0.0.1 in this process. Prints per-click
medians and p95, the loopback overhead (remote minus in-process, click by click) and the ratio, and
the image upload time. Budget: overhead <= 30 ms per click.

    python bench/bench_server.py [--clicks 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench_session import benchmark_volume
from ka2er_core import InteractiveSession, load_bundle
from ka2er_core.geometry import ijk_to_ras_points, ras_to_ijk
from ka2er_core.server.app import create_app
from ka2er_core.server.client import RemoteSession
from ka2er_core.server.serve import BackgroundServer
from ka2er_core.modelspace.clicks import next_click

TOKEN = "benchmark-token-0123456789"


def record_clicks(session: InteractiveSession, truth: np.ndarray, count: int):
    """The first click on ``truth`` and up to ``count`` corrections near the crop centre, with the
    in-process latency of each (ms)."""
    volume = session.volume
    to_ras = lambda kji: ijk_to_ras_points(kji[::-1].astype(float), volume.ijk_to_ras)
    kji, _ = next_click(np.zeros_like(truth), truth)
    clicks = [(to_ras(kji), True)]
    times = [session.add_point(*clicks[0]).latency_ms]
    for _ in range(count):
        crop = session.target.answer.crop.grid
        centre = np.round(ras_to_ijk(ijk_to_ras_points(np.full(3, (crop.shape[0] - 1) / 2),
                                                       crop.ijk_to_ras), volume.ijk_to_ras)).astype(int)
        radius = int(crop.shape[0] * crop.spacing[0] / 5)
        near = np.zeros_like(truth)
        near[tuple(slice(max(c - radius, 0), c + radius) for c in centre[::-1])] = True
        click = next_click((session.mask > 0) & near, truth & near)
        if click is None:
            break
        clicks.append((to_ras(click[0]), click[1]))
        times.append(session.add_point(*clicks[-1]).latency_ms)
    return clicks, times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=20)
    args = parser.parse_args()
    volume, truth = benchmark_volume()
    bundle = load_bundle()
    local = InteractiveSession(bundle, device="cpu", background=True)  # as the server's
    local.set_image(volume)
    clicks, local_ms = record_clicks(local, truth, args.clicks)

    app = create_app(bundle, TOKEN, device="cpu")
    server = BackgroundServer(app)
    try:
        remote = RemoteSession(server.url, token=TOKEN)
        start = time.perf_counter()
        remote.set_image(volume)
        upload_ms = (time.perf_counter() - start) * 1000
        remote_ms = [remote.add_point(*click).latency_ms for click in clicks]
        if not np.array_equal(remote.mask, local.mask):
            raise RuntimeError("the remote mask differs from the in-process one")
        session_mb = app.state.store.nbytes / 2**20
        remote.close()
    finally:
        server.stop()

    cached = slice(1, None)  # the first click computes embeddings on both sides
    overhead = [r - l for r, l in zip(remote_ms[cached], local_ms[cached])]
    median, p95 = statistics.median, lambda v: float(np.percentile(v, 95))
    print(f"volume {volume.shape[::-1]} (i, j, k), {len(clicks) - 1} cached clicks after the first, "
          f"{torch.get_num_threads()} threads; masks identical")
    print(f"image upload (encode + send + decode + session): {upload_ms:.0f} ms; the session holds "
          f"{session_mb:.0f} MB on the server ({volume.array.nbytes / 2**20:.0f} MB image "
          f"{volume.array.dtype}, mask, undo copies, cached embeddings)")
    print(f"click in-process  median {median(local_ms[cached]):6.1f} ms  p95 {p95(local_ms[cached]):6.1f} ms")
    print(f"click over HTTP   median {median(remote_ms[cached]):6.1f} ms  p95 {p95(remote_ms[cached]):6.1f} ms")
    print(f"loopback overhead median {median(overhead):6.1f} ms  p95 {p95(overhead):6.1f} ms  "
          f"(budget 30 ms) | ratio remote / in-process {median(remote_ms[cached]) / median(local_ms[cached]):.2f}")


if __name__ == "__main__":
    main()
