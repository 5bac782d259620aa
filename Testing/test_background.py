"""Background embeddings: the lattice of correction crops, the worker that embeds them ahead of the
clicks, its byte budget, cancellation by a new image, and answers that do not depend on it."""

import dataclasses
import threading

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

from conftest import random_ijk_to_ras
from ka2er_core import Volume
from ka2er_core.bundle import Bundle, Segmenter
from ka2er_core.geometry import ijk_to_ras_points
from ka2er_core.inference import InteractiveSession
from ka2er_core.inference.embeddings import EmbeddingCache
from ka2er_core.modeling import ModelConfig, PromptableSegmenter
from ka2er_core.modeling.normalization import Normalization
from ka2er_core.modelspace.crop import centred_crop, plan_crop
from ka2er_core.modelspace.lattice import Lattice

SHAPE = (40, 48, 44)
WAIT_S = 600  # a bound on a hung worker, not a timing requirement


@pytest.fixture(scope="module")
def bundle():
    """A 32^3-crop model at 3 mm: crops of 96 mm on a lattice of 48 mm, several over the volume."""
    torch.manual_seed(0)
    model = PromptableSegmenter(dataclasses.replace(ModelConfig.tiny(), crop_size=32)).eval()
    return Bundle(None, "student", {"general": Segmenter("general", model, Normalization("mr"), 3.0, 6.0)})


@pytest.fixture
def volume(rng):
    """A bright ball of radius 40 mm in noise, on an oblique, flipped 2.5 mm grid."""
    array = rng.normal(100, 10, SHAPE).astype(np.float32)
    k, j, i = np.indices(SHAPE)
    array[(k - 20) ** 2 + (j - 24) ** 2 + (i - 22) ** 2 < 16 ** 2] += 100
    return Volume(array, random_ijk_to_ras(rng, spacing=(2.5, 2.5, 2.5)))


def ras(volume, kji):
    return ijk_to_ras_points(np.asarray(kji, float)[::-1], volume.ijk_to_ras)


def block():
    """A mask to correct: a block whose faces cross several lattice cells."""
    mask = np.zeros(SHAPE, np.uint8)
    mask[6:34, 8:40, 7:37] = 1
    return mask


CORRECTIONS = (((20, 24, 7), False), ((33, 24, 22), True), ((20, 8, 22), False), ((6, 39, 36), True))
"""Clicks on the block's faces, far apart: each lands in another lattice crop."""


def test_a_click_lands_within_a_quarter_crop_of_its_lattice_crops_centre(rng, volume):
    lattice = Lattice(volume.grid, 32, 3.0)
    for point in rng.uniform(-200, 200, (50, 3)):
        crop = lattice.nearest(point)
        assert crop.size == 32 and crop.spacing == 3.0
        centre = (crop.size - 1) / 2
        assert np.all(np.abs(crop.to_crop(point) - centre) <= crop.size / 4 + 1e-6)
        inside_cell = ijk_to_ras_points(centre + rng.uniform(-7.9, 7.9, 3), crop.ijk_to_ras)
        assert lattice.nearest(inside_cell).same_as(crop)


def test_surface_crops_are_the_cells_the_mask_border_crosses_nearest_first(volume):
    lattice = Lattice(volume.grid, 32, 3.0)
    mask = block()
    near = ras(volume, (6, 8, 7))
    crops = lattice.surface_crops(mask, volume.grid, near)
    assert len(crops) > 1
    distances = [np.linalg.norm(c.to_crop(near) - (c.size - 1) / 2) for c in crops]
    assert distances == sorted(distances)
    faces = np.argwhere(mask.astype(bool) & ~binary_erosion(mask))
    for kji in faces[:: len(faces) // 50]:
        assert any(c.same_as(lattice.nearest(ras(volume, kji))) for c in crops)
    assert lattice.surface_crops(np.zeros(SHAPE, np.uint8), volume.grid, near) == []


def test_a_correction_in_a_crop_the_background_embedded_computes_no_embedding(bundle, volume):
    """The same clicks give the same masks whether their lattice crops were embedded by the worker
    (ready before each click) or on the prompt path (a budget of 0 bytes: the worker plans none)."""
    masks = {}
    for budget in (0, 1 << 30):
        session = InteractiveSession(bundle, device="cpu", background=True, background_bytes=budget)
        session.set_image(volume)
        session.set_mask(block())
        status = session.prefetcher.wait(WAIT_S)
        assert status.done
        for kji, positive in CORRECTIONS:
            computed = session.embeddings.computed
            session.add_point(ras(volume, kji), positive)
            assert session.embeddings.computed == computed + (budget == 0)
            session.prefetcher.wait(WAIT_S)
        masks[budget] = session.mask.copy()
        if budget:
            assert status.planned >= len(CORRECTIONS) and status.ready == status.planned
            assert status.bytes > 0 and session.embeddings.kept >= status.planned
        else:
            assert status.planned == 0 and session.embeddings.kept == 0
    assert not np.array_equal(masks[0], block())  # the clicks changed something
    np.testing.assert_array_equal(masks[0], masks[1 << 30])


def test_without_background_nothing_runs_and_a_correction_is_answered_in_a_crop_centred_on_the_click(
        bundle, volume):
    for background in (False, True):
        session = InteractiveSession(bundle, device="cpu", background=background)
        session.set_image(volume)
        session.set_mask(block())
        click = ras(volume, CORRECTIONS[0][0])
        session.add_point(click, positive=False)
        crop = session.target.answer.crop
        centred = plan_crop(click, click, 32, 3.0, 6.0)
        assert crop.same_as(centred) != background
        assert crop.same_as(Lattice(volume.grid, 32, 3.0).nearest(click)) == background
        if not background:
            status = session.background
            assert status.done and status.planned == 0 and session.embeddings.kept == 0
            assert session.prefetcher._thread is None


def test_the_byte_budget_holds_and_is_counted_in_the_session(bundle, volume):
    probe = InteractiveSession(bundle, device="cpu", background=False)
    probe.set_image(volume)
    probe.set_mask(block())
    probe.add_point(ras(volume, CORRECTIONS[0][0]), positive=False)
    entry = probe.embeddings.entry_bytes("general")
    session = InteractiveSession(bundle, device="cpu", background=True,
                                 background_bytes=int(2.5 * entry))
    session.set_image(volume)
    session.set_mask(block())
    status = session.prefetcher.wait(WAIT_S)
    assert status.ready == 2 and status.done
    assert status.bytes == 2 * entry <= status.budget
    assert session.memory_bytes >= volume.array.nbytes + session.mask.nbytes + status.bytes
    session.add_point(ras(volume, CORRECTIONS[1][0]), positive=True)  # a new plan around this click
    status = session.prefetcher.wait(WAIT_S)
    assert status.bytes <= status.budget and status.ready == 2


def test_the_background_follows_the_current_target(bundle, volume):
    session = InteractiveSession(bundle, device="cpu", background=True)
    session.set_image(volume)
    lattice = Lattice(volume.grid, 32, 3.0)
    small = np.zeros(SHAPE, np.uint8)
    small[2:6, 2:6, 2:6] = 1  # a corner: fewer cells than the block
    plans = {}
    for name, mask in (("block", block()), ("small", small)):
        session.set_target(name)
        session.set_mask(mask)
        plans[name] = session.prefetcher.wait(WAIT_S).planned
        assert plans[name] == len(lattice.surface_crops(mask, volume.grid, np.zeros(3)))
    assert plans["small"] < plans["block"]
    session.set_target("block")  # back: its corrections are prepared again
    status = session.prefetcher.wait(WAIT_S)
    assert status.planned == plans["block"] and status.ready == status.planned
    session.set_target("empty")  # a new target has nothing to prepare: the plan stays
    assert session.background.planned == plans["block"]


def test_a_new_image_cancels_the_background_and_drops_its_work(bundle, volume, monkeypatch):
    session = InteractiveSession(bundle, device="cpu", background=True)
    session.set_image(volume)
    model = bundle.members["general"].model
    started, release = threading.Event(), threading.Event()
    original = model.embed

    def held(image):  # the prompt path embeds at once; the background waits for release
        if threading.current_thread() is not threading.main_thread():
            started.set()
            release.wait(WAIT_S)
        return original(image)

    monkeypatch.setattr(model, "embed", held)
    session.set_mask(block())
    assert started.wait(WAIT_S)  # the worker is inside its first crop
    other = Volume(volume.array[::-1].copy(), volume.ijk_to_ras)
    session.set_image(other)
    status = session.background
    assert status.planned == 0 and status.ready == 0
    release.set()
    status = session.prefetcher.wait(WAIT_S)
    assert status.done and status.bytes == 0 and session.embeddings.kept == 0
    assert session.prefetcher._thread is None


def test_a_prompt_needing_the_crop_the_worker_is_embedding_takes_the_workers_embedding():
    cache = EmbeddingCache()
    crop = centred_crop(np.zeros(3), 8, 1.0)
    inside, release = threading.Event(), threading.Event()

    def background():
        inside.set()
        release.wait(WAIT_S)
        return torch.ones(4)

    worker = threading.Thread(target=cache.keep, args=("general", crop, background, 1 << 20))
    worker.start()
    assert inside.wait(WAIT_S)
    answers = []
    prompt = threading.Thread(
        target=lambda: answers.append(cache.get("general", crop, lambda: torch.zeros(4))))
    prompt.start()
    release.set()
    worker.join(WAIT_S)
    prompt.join(WAIT_S)
    assert torch.equal(answers[0], torch.ones(4))  # not computed twice
    assert cache.computed == 0 and cache.kept == 1 and cache.kept_bytes == 16
