"""InteractiveSession mechanics with a real (untrained) tiny model: geometry of prompts and pastes
against SimpleITK, undo, failure safety, the embedding cache and zoom-out."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import random_ijk_to_ras
from ka2er_core import Volume, save_volume
from ka2er_core.bundle import Bundle, Segmenter
from ka2er_core.errors import GeometryMismatchError, PromptError
from ka2er_core.geometry import ijk_to_ras_points, ras_to_ijk, ras_to_lps
from ka2er_core.inference import InteractiveSession
from ka2er_core.modelspace import plan_crop
from ka2er_core.modelspace.paste import region_slices, sample_logits
from ka2er_core.modeling import ModelConfig, PromptableSegmenter
from ka2er_core.modeling.normalization import Normalization

SHAPE = (30, 40, 36)


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    model = PromptableSegmenter(ModelConfig.tiny()).eval()
    return Bundle(None, "student", {"general": Segmenter("general", model, Normalization("mr"), 1.5, 4.0)})


@pytest.fixture
def volume(rng):
    return Volume(rng.normal(100, 20, SHAPE).astype(np.float32),
                  random_ijk_to_ras(rng, spacing=(0.9, 1.3, 2.2)))


def centre_ras(volume, offset=(0, 0, 0)):
    return ijk_to_ras_points(np.array(SHAPE[::-1]) / 2 + np.array(offset), volume.ijk_to_ras)


def test_pasted_voxel_is_the_voxel_simpleitk_names(tmp_path, rng, volume):
    """Crop logits positive only around a RAS point land on SimpleITK's voxel for that point."""
    path = save_volume(tmp_path / "oblique.nrrd", volume)
    reference = sitk.ReadImage(str(path))
    for _ in range(10):
        point = ijk_to_ras_points(rng.uniform(3, np.array(SHAPE[::-1]) - 4), volume.ijk_to_ras)
        crop = plan_crop(point, point, 64, 1.5, 4.0)
        at = ras_to_ijk(point, crop.ijk_to_ras)
        k, j, i = np.indices(crop.shape)
        distance = np.sqrt((i - at[0]) ** 2 + (j - at[1]) ** 2 + (k - at[2]) ** 2) * 1.5
        logits = torch.from_numpy((3.0 - distance).astype(np.float32))  # a 3 mm ball
        region = region_slices(crop, volume.grid)
        mask, reached = sample_logits(logits, crop, volume.grid, region)
        full = np.zeros(SHAPE, bool)
        full[region] = mask & reached
        expected = reference.TransformPhysicalPointToIndex(tuple(ras_to_lps(point)))
        assert full[expected[2], expected[1], expected[0]]
        assert full.sum() < 60  # a small ball, not a smear


def test_prompts_outside_the_image_or_malformed_are_refused(bundle, volume):
    session = InteractiveSession(bundle, device="cpu")
    with pytest.raises(PromptError, match="set_image"):
        session.add_point((0, 0, 0))
    session.set_image(volume)
    far = centre_ras(volume, (500, 0, 0))
    with pytest.raises(PromptError, match="outside the image"):
        session.add_point(far)
    with pytest.raises(PromptError, match="3 finite"):
        session.add_point((np.nan, 0, 0))
    with pytest.raises(PromptError, match="box corner"):
        session.add_box(centre_ras(volume), (0, np.inf, 0))
    with pytest.raises(PromptError, match="does not overlap the image"):  # past it: clipped (test_boxes)
        session.add_box(far, centre_ras(volume, (600, 0, 0)))
    assert session.mask.sum() == 0 and session.target.history == []


def test_clicks_undo_exactly_and_share_the_embedding(bundle, volume, monkeypatch):
    session = InteractiveSession(bundle, device="cpu", background=False)  # counts the prompts' embeddings
    session.set_image(volume)
    calls = []
    original = bundle.default.model.embed
    monkeypatch.setattr(bundle.default.model, "embed", lambda x: calls.append(1) or original(x))
    session.add_box(centre_ras(volume, (-6, -6, -3)), centre_ras(volume, (6, 6, 3)))
    after_box = session.mask.copy()
    result = session.add_point(centre_ras(volume, (1, 0, 0)), positive=False)
    assert result.member == "general" and np.isfinite(result.score)
    assert result.region is not None
    outside = np.ones(SHAPE, bool)
    outside[result.region] = False
    assert np.array_equal(session.mask[outside], after_box[outside])  # only the region changes
    embeds_after_two = len(calls)
    session.undo()
    np.testing.assert_array_equal(session.mask, after_box)
    session.undo()
    assert session.mask.sum() == 0
    assert session.undo() is None
    # A second target reuses the cached embedding of the same crop.
    session.set_target("other")
    session.add_box(centre_ras(volume, (-6, -6, -3)), centre_ras(volume, (6, 6, 3)))
    assert len(calls) == embeds_after_two
    np.testing.assert_array_equal(session.targets["other"].mask, after_box)


def test_failed_prediction_keeps_the_previous_mask(bundle, volume, monkeypatch):
    session = InteractiveSession(bundle, device="cpu")
    session.set_image(volume)
    session.add_box(centre_ras(volume, (-6, -6, -3)), centre_ras(volume, (6, 6, 3)))
    before, prompts = session.mask.copy(), list(session.target.prompts)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(bundle.default.model, "decode", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        session.add_point(centre_ras(volume, (2, 0, 0)))
    np.testing.assert_array_equal(session.mask, before)
    assert session.target.prompts == prompts and len(session.target.history) == 1


def test_set_mask_is_the_undo_base_and_checks_the_grid(bundle, volume):
    session = InteractiveSession(bundle, device="cpu")
    session.set_image(volume)
    start = np.zeros(SHAPE, np.uint8)
    start[10:20, 15:25, 12:24] = 1
    session.set_mask(start)
    np.testing.assert_array_equal(session.mask, start)
    session.add_point(centre_ras(volume), positive=True)
    session.undo()
    np.testing.assert_array_equal(session.mask, start)
    with pytest.raises(GeometryMismatchError, match="mask shape"):
        session.set_mask(np.zeros((3, 3, 3)))


def test_object_larger_than_the_crop_zooms_out(bundle, volume, monkeypatch):
    """A prediction touching every crop face makes the session zoom out to the coarsest spacing."""
    session = InteractiveSession(bundle, device="cpu")
    big = Volume(np.zeros((60, 200, 200), np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))
    session.set_image(big)
    crops = []

    def everything(embedding, coords, labels, mask=None):
        crops.append(1)
        s = bundle.default.crop_size
        return torch.ones(1, 1, s, s, s), torch.ones(1)

    monkeypatch.setattr(bundle.default.model, "decode", everything)
    session.add_point((100.0, 100.0, 30.0))
    assert len(crops) > 1
    assert session.target.answer.crop.grid.spacing[0] == pytest.approx(4.0)
    # 64 voxels at 4 mm cover 252 mm: the whole 200 x 200 x 60 mm volume is foreground.
    assert session.mask.all()


def test_block_paste_equals_a_full_render_when_only_a_ball_changes(rng, volume):
    """Old and new crop logits differ in one small ball: rendering only the changed cells gives
    exactly the full render of the new logits."""
    from ka2er_core.modelspace.paste import changed_cells

    crop = plan_crop(centre_ras(volume), centre_ras(volume), 64, 1.0, 4.0)
    k, j, i = np.indices(crop.shape)
    old = (12.0 - np.sqrt((i - 30) ** 2 + (j - 33) ** 2 + (k - 31) ** 2)).astype(np.float32)
    new = old.copy()
    ball = (i - 42) ** 2 + (j - 33) ** 2 + (k - 31) ** 2 < 16  # on the boundary
    new[ball] += 6.0  # the object grows locally
    whole = region_slices(crop, volume.grid)
    mask = np.zeros(SHAPE, bool)
    rendered, reached = sample_logits(torch.from_numpy(old), crop, volume.grid, whole)
    mask[whole] = rendered & reached
    cells, box = changed_cells(new, old)
    assert 0 < cells.sum() < 40  # a handful of 4^3 cells out of 4096
    region = region_slices(crop, volume.grid, *box)
    part, part_reached = sample_logits(torch.from_numpy(new), crop, volume.grid, region, cells)
    assert part_reached.sum() < part_reached.size  # the box's voxels outside the cells are left alone
    mask[region] = np.where(part_reached, part, mask[region])
    expected = np.zeros(SHAPE, bool)
    rendered, reached = sample_logits(torch.from_numpy(new), crop, volume.grid, whole)
    expected[whole] = rendered & reached
    assert mask.sum() > 0
    np.testing.assert_array_equal(mask, expected)


def test_pinning_a_member_makes_it_answer(volume):
    torch.manual_seed(1)
    members = {name: Segmenter(name, PromptableSegmenter(ModelConfig.tiny()).eval(), Normalization("mr"),
                               1.5, 4.0) for name in ("general", "brain")}
    session = InteractiveSession(Bundle(None, "moe", members), device="cpu")
    session.set_image(volume)
    assert session.members == ["general", "brain"]
    assert session.add_point(centre_ras(volume)).member == "general"
    session.pin("brain")
    assert session.add_point(centre_ras(volume, (2, 0, 0))).member == "brain"
    session.pin(None)
    assert session.add_point(centre_ras(volume, (-2, 0, 0))).member == "general"
    with pytest.raises(PromptError, match="unknown member 'liver'"):
        session.pin("liver")


def test_refine_sharpens_a_zoomed_out_answer_in_one_undo_step(monkeypatch):
    """A "model" that thresholds the crop it sees: 4 mm slabs 4 mm apart over 160 mm are blurred at
    the 3.7 mm zoom-out and found again by the base-spacing (1.5 mm) tiles of ``refine``."""
    model = PromptableSegmenter(ModelConfig.tiny()).eval()
    member = Segmenter("general", model, Normalization("ct"), 1.5, 4.0)  # HU 40 -> 0
    i = np.arange(200)
    slabs = np.zeros((60, 200, 200), bool)  # (k, j, i), 1 mm voxels, RAS = ijk
    slabs[10:50, 20:180, 20:180] = ((i[20:180] // 4) % 2 == 0)[None, None, :]
    big = Volume(np.where(slabs, 1000.0, -1000.0).astype(np.float32), np.eye(4))
    monkeypatch.setattr(model, "embed", lambda image: image)  # the "embedding" is the crop
    monkeypatch.setattr(model, "decode", lambda image, coords, labels, mask=None: (image, torch.ones(1)))

    def dice(mask):
        return 2 * np.count_nonzero(mask & slabs) / (np.count_nonzero(mask) + np.count_nonzero(slabs))

    scores = {}
    for refine in (False, True):
        session = InteractiveSession(Bundle(None, "student", {"general": member}), device="cpu",
                                     refine=refine)
        session.set_image(big)
        result = session.add_point((97.0, 100.0, 30.0))  # in the slab i = 96..99
        scores[refine] = dice(session.mask > 0)
        assert session.undo_depth == 1 and result.region is not None
        outside = np.ones(slabs.shape, bool)
        outside[result.region] = False
        assert not session.mask[outside].any()  # the region holds every pasted voxel
        session.undo()
        assert not session.mask.any()
    assert session.embeddings.computed > 4  # the tiles: one embedding each
    assert scores[True] > scores[False] + 0.1, scores  # measured 0.90 vs 0.75


def test_without_overlap_other_segments_are_background_and_never_overwritten(bundle, volume,
                                                                             monkeypatch):
    """A model that marks everything: with overlap (the default) the second segment covers the
    first; without, it takes every voxel but the first segment's, which stays as it was."""
    decode = bundle.default.model.decode

    def everything(*args, **kwargs):
        logits, iou = decode(*args, **kwargs)
        return torch.ones_like(logits), iou

    monkeypatch.setattr(bundle.default.model, "decode", everything)
    first = np.zeros(SHAPE, np.uint8)
    first[10:20, 12:25, 8:20] = 1
    for overlap in (True, False):
        session = InteractiveSession(bundle, device="cpu", overlap=overlap)
        session.set_image(volume)
        session.set_target("first")
        session.set_mask(first)
        session.set_target("second")
        session.add_box(centre_ras(volume, (-3, -3, -2)), centre_ras(volume, (7, 7, 4)))
        second = session.mask > 0
        assert second.sum() > first.sum()
        np.testing.assert_array_equal(session.targets["first"].mask, first)  # never overwritten
        shared = int((second & (first > 0)).sum())
        assert shared == first.sum() if overlap else shared == 0
        if not overlap:
            session.overlap = True  # the option may change between prompts
            session.add_point(centre_ras(volume), positive=True)
            assert (session.mask[first > 0] > 0).any()
