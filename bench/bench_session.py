"""Click-path benchmark: ours vs a SAM-Med3D-sized reference, timed in the same process.

Ours: the shipped default bundle (or --bundle) in an InteractiveSession on a 256x256x200 volume (the
MNI152 1 mm template placed in that grid): image embedding of a new crop, then per-click latency from
a RAS click to the mask pasted into the volume grid: protocol clicks (largest error anywhere; some
need a new crop embedding: no background embeddings here, see bench_background.py) and clicks near
one crop (embedding cached, the budget's case); peak memory.
Reference: modules of SAM-Med3D's published size, written here from its paper (ViT-B image encoder on
a 128^3 crop, 16^3 patches -> 8^3 tokens, 768 wide, 12 blocks; 384-wide prompt encoder and two-way
mask decoder over the 8^3 tokens, upsampled to 128^3). Random weights: only time is compared.
Prints medians, p95 and the ratios ours / reference.

    python bench/bench_session.py [--bundle PATH] [--clicks 20]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ka2er_core import InteractiveSession, Volume, load_bundle
from ka2er_core.data.mni import BRAIN_VALUES, MNI_LABELS, mni152
from ka2er_core.data.phantoms import PHANTOM_LABELS, ct_phantom
from ka2er_core.geometry import ijk_to_ras_points, ras_to_ijk
from ka2er_core.modeling.common import MLP
from ka2er_core.modeling.transformer import TwoWayTransformer
from ka2er_core.modelspace.clicks import next_click


class ReferenceEncoder(nn.Module):
    """ViT-B at 128^3: 16^3 patches, 768 wide, 12 blocks of 12 heads, neck to 384."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv3d(1, 768, 16, stride=16)
        self.pos = nn.Parameter(torch.zeros(1, 512, 768))
        layer = nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, 12)
        self.neck = nn.Conv3d(768, 384, 1)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        tokens = self.blocks(tokens)
        return self.neck(tokens.transpose(1, 2).reshape(1, 768, 8, 8, 8))


class ReferenceDecoder(nn.Module):
    """384-wide prompt encoding + two-way transformer over 8^3 tokens, upsampled to 128^3."""

    def __init__(self):
        super().__init__()
        self.gaussian = nn.Parameter(torch.randn(3, 192))
        self.transformer = TwoWayTransformer(384, 2, 8, 2048)
        self.tokens = nn.Parameter(torch.randn(1, 2, 384))
        self.mask_down = nn.Conv3d(1, 384, 4, stride=4)
        self.up = nn.Sequential(nn.ConvTranspose3d(384, 96, 2, 2), nn.GELU(),
                                nn.ConvTranspose3d(96, 48, 2, 2), nn.GELU())
        self.hyper = MLP(384, 384, 48, 3)

    def forward(self, embedding, points, previous):
        pe = torch.cat([torch.sin(points @ self.gaussian), torch.cos(points @ self.gaussian)], -1)
        grid = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, 8)] * 3, indexing="ij"), -1)
        dense_pe = torch.cat([torch.sin(grid @ self.gaussian), torch.cos(grid @ self.gaussian)], -1)
        dense_pe = dense_pe.permute(3, 0, 1, 2)[None]
        tokens = torch.cat([self.tokens, pe], 1)
        tokens, src = self.transformer(embedding + self.mask_down(previous), dense_pe, tokens)
        src = self.up(src.transpose(1, 2).reshape(1, 384, 8, 8, 8))
        low = torch.einsum("bc,bcdhw->bdhw", self.hyper(tokens[:, 1]), src)[:, None]
        return F.interpolate(low, size=(128, 128, 128), mode="trilinear", align_corners=False)


def time_it(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def benchmark_volume(target: str = "white matter") -> tuple[Volume, np.ndarray]:
    """The 1 mm MNI152 template centred in a 256x256x200 grid, and its ``target`` ("brain" or one
    of :data:`MNI_LABELS`)."""
    image, labels = mni152(1)
    array = np.zeros((200, 256, 256), np.float32)
    label = np.zeros((200, 256, 256), bool)
    k, j, i = image.shape
    offset = ((200 - k) // 2, (256 - j) // 2, (256 - i) // 2)
    box = tuple(slice(o, o + n) for o, n in zip(offset, image.shape))
    array[box] = image.array
    values = BRAIN_VALUES if target == "brain" else (MNI_LABELS[target],)
    label[box] = np.isin(labels.array, values)
    matrix = image.ijk_to_ras.copy()
    matrix[:3, 3] -= matrix[:3, :3] @ np.array(offset[::-1], dtype=float)
    return Volume(array, matrix), label


CT_SHAPE = (300, 512, 512)  # (k, j, i)


def benchmark_phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image (k, j, i) int16 HU, its IJK-to-RAS and the liver mask, on a 512x512x300 grid: an
    oblique CT phantom made at half resolution, each voxel repeated 2x2x2."""
    coarse = ct_phantom(0, shape=[n // 2 for n in CT_SHAPE], spacing=(1.4, 1.4, 2.0), oblique=True)
    fine = np.diag([0.5, 0.5, 0.5, 1.0])
    fine[:3, 3] = -0.25  # fine voxel n sits at coarse index n / 2 - 1/4
    repeat = lambda a: a.repeat(2, 0).repeat(2, 1).repeat(2, 2)  # noqa: E731
    image = repeat(np.clip(coarse.image.array, -1024, 3071).astype(np.int16))
    liver = repeat(coarse.label.array == PHANTOM_LABELS["liver"])
    return image, coarse.image.ijk_to_ras @ fine, liver


def clicks_near_one_crop(session: InteractiveSession, volume: Volume, truth: np.ndarray,
                         clicks: int) -> list[float]:
    """Local refinement, the budget's cached click: each click at the largest error near the current
    crop's centre (its embedding cached), once the session's background has settled; latencies in ms."""
    click_ms = []
    for _ in range(clicks):
        crop = session.target.answer.crop.grid
        near = np.zeros_like(truth)
        centre = np.round(ras_to_ijk(ijk_to_ras_points(np.full(3, (crop.shape[0] - 1) / 2),
                                                       crop.ijk_to_ras), volume.ijk_to_ras)).astype(int)
        radius = int(crop.shape[0] * crop.spacing[0] / 5)  # mm = voxels of the 1 mm volume
        near[tuple(slice(max(c - radius, 0), c + radius) for c in centre[::-1])] = True
        click = next_click((session.mask > 0) & near, truth & near)
        if click is None:
            break
        computed = session.embeddings.computed
        kji, positive = click
        session.prefetcher.wait()
        result = session.add_point(ijk_to_ras_points(kji[::-1].astype(float), volume.ijk_to_ras), positive)
        if session.embeddings.computed > computed:
            raise RuntimeError("a click near the crop centre computed a new embedding")
        click_ms.append(result.latency_ms)
    return click_ms


def reset_peak_memory() -> bool:
    """Start the process's peak resident memory count again (Linux: /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def peak_memory_mb() -> float:
    """Peak resident memory since the last reset (Linux), else over the process's life."""
    try:
        return proc_status_mb("VmHWM")
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resident_mb() -> float:
    """Resident memory now (Linux; 0 elsewhere)."""
    try:
        return proc_status_mb("VmRSS")
    except (OSError, StopIteration):
        return 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--clicks", type=int, default=20)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    volume, truth = benchmark_volume()
    session = InteractiveSession(load_bundle(args.bundle), device="auto", background=False)
    session.set_image(volume)
    start = time.perf_counter()  # white matter shares the brain's box: it starts with a click
    kji, _ = next_click(np.zeros_like(truth), truth)
    session.add_point(ijk_to_ras_points(kji[::-1].astype(float), volume.ijk_to_ras))
    first_ms = (time.perf_counter() - start) * 1000
    protocol_ms, protocol_new = [], 0
    for _ in range(args.clicks):  # the protocol: each click at the largest error, anywhere
        click = next_click(session.mask > 0, truth)
        if click is None:
            break
        computed = session.embeddings.computed
        kji, positive = click
        result = session.add_point(ijk_to_ras_points(kji[::-1].astype(float), volume.ijk_to_ras), positive)
        protocol_ms.append(result.latency_ms)
        protocol_new += session.embeddings.computed > computed
    click_ms = clicks_near_one_crop(session, volume, truth, args.clicks)
    crop = session.target.answer.crop.grid
    answering = session.bundle.members[session.target.member or session.members[0]].model
    embed_ms = time_it(lambda: answering.embed(
        torch.zeros(1, 1, *crop.shape, device=session.device)), 3)
    peak_mb = peak_memory_mb()

    encoder, decoder = ReferenceEncoder().eval(), ReferenceDecoder().eval()
    crop128 = torch.randn(1, 1, 128, 128, 128)
    ref_embed_ms = time_it(lambda: encoder(crop128), 3)
    embedding = encoder(crop128)
    points, previous = torch.rand(1, 3, 3), torch.zeros(1, 1, 32, 32, 32)
    ref_click_ms = time_it(lambda: decoder(embedding, points, previous), args.clicks)

    median = statistics.median
    p95 = lambda values: float(np.percentile(values, 95))
    print(f"volume 256x256x200, crop {crop.shape[0]}^3 at {crop.spacing[0]:.2f} mm, "
          f"{len(protocol_ms)} protocol clicks then {len(click_ms)} clicks near one crop on white "
          f"matter, {torch.get_num_threads()} threads")
    print(f"first prompt (click, embeddings + decodes + paste): {first_ms:.0f} ms")
    print(f"image embedding  ours {median(embed_ms):7.1f} ms | SAM-Med3D-size {median(ref_embed_ms):7.1f} ms"
          f" | ratio {median(embed_ms) / median(ref_embed_ms):.3f}")
    print(f"click (protocol) ours median {median(protocol_ms):6.1f} ms p95 {p95(protocol_ms):6.1f} ms, "
          f"{protocol_new} of {len(protocol_ms)} clicks needed a new crop embedding")
    print(f"click (cached)   ours median {median(click_ms):6.1f} ms p95 {p95(click_ms):6.1f} ms | "
          f"SAM-Med3D-size decoder+upsampling median {median(ref_click_ms):6.1f} ms | "
          f"ratio {median(click_ms) / median(ref_click_ms):.3f}")
    print(f"peak resident memory of this process: {peak_mb:.0f} MB (includes the reference models)")


if __name__ == "__main__":
    main()
