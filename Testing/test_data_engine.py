"""The generalist's data engine: shapes, SynthSeg-style rendering, scenes, crops, and the checks'
folders (real scan, held-out family)."""

import json
from pathlib import Path

import numpy as np
import pytest

from ka2er_core.data.engine import (HELD_OUT_FAMILIES, DataEngine, EngineConfig, SceneTarget,
                                    acquire)
from ka2er_core.data.render import label_means, render, thick_slices
from ka2er_core.data.shapes import GENERATORS, Canvas, shape_scene
from ka2er_core.modeling.normalization import Normalization

REALCHECK = Path(__file__).resolve().parents[2] / "shared" / "realcheck"


@pytest.mark.parametrize("family", sorted(GENERATORS))
def test_every_family_draws_a_seeded_nonempty_shape(family):
    canvas = Canvas((40, 48, 44), (1.0, 1.2, 1.2))
    made = [GENERATORS[family](canvas, np.random.default_rng(seed)) for seed in (3, 3, 4)]
    parts = [m if isinstance(m, tuple) else (m,) for m in made]
    assert all(p.shape == canvas.shape and p.dtype == bool for group in parts for p in group)
    assert any(p.any() for p in parts[0])
    assert all(np.array_equal(a, b) for a, b in zip(parts[0], parts[1]))  # same seed, same shape
    assert not all(np.array_equal(a, b) for a, b in zip(parts[0], parts[2]))
    if len(parts[0]) == 2:  # shell (wall, content), nested (outer part, inner): disjoint
        assert not (parts[0][0] & parts[0][1]).any()


def test_scene_paints_objects_over_background_regions_and_records_unions():
    scene = shape_scene(np.random.default_rng(0), (40, 48, 48), (1.0, 1.0, 1.0),
                        families=["shell", "nested"], objects=(3, 3))
    values = set(np.unique(scene.label).tolist())
    assert 0 not in values and set(scene.background) <= values
    assert values - set(scene.background)  # objects
    assert scene.unions and all(len(u) == 2 and set(u) <= values for u in scene.unions)
    with pytest.raises(ValueError):
        shape_scene(np.random.default_rng(0), (8, 8, 8), (1, 1, 1), families=["cube"])


def test_rendering_randomises_contrast_and_keeps_units():
    label = np.zeros((24, 32, 32), np.uint16)
    label[:, :, 16:] = 1
    label[8:16, 8:24, 4:12] = 2
    means = [render(label, (1, 1, 1), np.random.default_rng(seed))[label == 2].mean()
             - render(label, (1, 1, 1), np.random.default_rng(seed))[label == 1].mean()
             for seed in range(8)]
    assert min(means) < 0 < max(means)  # contrast inverts between draws
    mr = render(label, (1, 1, 1), np.random.default_rng(0))
    assert mr.dtype == np.float32 and mr.min() >= 0 and mr.shape == label.shape
    ct = render(label, (1, 1, 1), np.random.default_rng(0), modality="ct", air=[0])
    assert abs(np.median(ct[label == 0]) + 1000) < 100
    assert Normalization("auto").statistics(ct)[2] == 1.0  # read as CT by the model's own rule
    shared = label_means([1, 2, 3], np.random.default_rng(0), tissue={1: 0, 2: 0, 3: 1}, share=1.0)
    assert abs(shared[1] - shared[2]) < 0.15


def test_thick_slices_average_the_image_and_keep_middle_labels():
    image = np.arange(8, dtype=np.float32)[:, None, None] * np.ones((8, 3, 3), np.float32)
    label = np.arange(8, dtype=np.uint8)[:, None, None] * np.ones((8, 3, 3), np.uint8)
    thick, labels, spacing = thick_slices(image, {"label": label}, (1.0, 0.5, 0.5), axis=0, factor=4)
    assert thick.shape == (2, 3, 3) and np.allclose(thick[:, 0, 0], [1.5, 5.5])
    assert labels["label"][:, 0, 0].tolist() == [2, 6]
    assert spacing.tolist() == [4.0, 0.5, 0.5]


def test_acquisition_gives_a_legal_oblique_grid_that_keeps_the_labels_aligned():
    image = np.random.default_rng(0).random((20, 24, 28)).astype(np.float32)
    labels = {"label": (image > 0.5).astype(np.uint8)}
    volume, maps = acquire(image, labels, np.array([1.0, 0.8, 0.8]), np.random.default_rng(1),
                           oblique_share=1.0, thick_share=0.0)
    assert volume.shape == image.shape and np.array_equal(maps["label"], labels["label"])
    assert np.allclose(sorted(volume.spacing), [0.8, 0.8, 1.0])
    direction = volume.ijk_to_ras[:3, :3] / volume.spacing
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-9)


def test_engine_scenes_hold_targets_on_their_grid_and_never_the_held_out_family():
    assert "branching" in HELD_OUT_FAMILIES
    assert not set(EngineConfig().families) & set(HELD_OUT_FAMILIES)
    engine = DataEngine(EngineConfig(sources={"shapes": 1.0, "phantoms": 1.0}))
    rng = np.random.default_rng(0)
    sources = set()
    for _ in range(6):
        scene = engine.scene(rng)
        sources.add(scene.source)
        assert scene.targets and scene.modality in ("mr", "ct")
        for target in scene.targets:
            mask = target.mask(scene)
            assert mask.shape == scene.image.shape and mask.sum() >= 50
    assert sources == {"shapes", "phantoms"}
    with pytest.raises(ValueError, match="unknown scene sources"):
        DataEngine(EngineConfig(sources={"real scans": 1.0}))


@pytest.mark.parametrize("source", ["mni-parcels", "mni-real"])
def test_mni_sources_split_tissues_into_targets_a_box_names(source):
    engine = DataEngine(EngineConfig(sources={source: 1.0}, thick_share=0.0))
    scene = engine.scene(np.random.default_rng(0))
    kinds = {t.kind for t in scene.targets}
    assert "brain" in kinds
    assert kinds & {"parcel", "supervoxel"}
    for target in scene.targets:
        if target.kind in ("parcel", "supervoxel", "merged supervoxels", "brain"):
            assert target.first == frozenset({"box"})  # regions only a box identifies
    brain = next(t for t in scene.targets if t.kind == "brain").mask(scene)
    parts = [t.mask(scene) for t in scene.targets if t.kind in ("parcel", "supervoxel")]
    assert all((part & ~brain).sum() <= 0.05 * part.sum() for part in parts)


def test_component_targets_keep_the_largest_component():
    label = np.zeros((10, 10, 10), np.uint8)
    label[1:3, 1:3, 1:3] = 1
    label[5:9, 5:9, 5:9] = 1
    target = SceneTarget("shape component", (1,), component=True)

    class Holder:
        labels = {"label": label}

    assert target.mask(Holder()).sum() == 64


def test_scene_sampler_cuts_session_crops_and_collates_click_rounds():
    from ka2er_core.training.generalist import SceneCrops, SceneSampler

    crops = SceneCrops(Normalization("auto"), 32, 1.5, 4.0)
    sampler = SceneSampler(DataEngine(EngineConfig(sources={"shapes": 1.0})), crops, batch_size=3, pool=2)
    rng = np.random.default_rng(0)
    for _ in range(3):
        samples, batch = sampler.draw(rng)
        assert batch["images"].shape == batch["truths"].shape == (3, 1, 32, 32, 32)
        assert all((s.truth > 0.5).any() for s in samples)
        assert len(sampler.scenes) == 2


def test_realcheck_folder_holds_the_twelve_largest_labels(tmp_path):
    from ka2er_core.data.msd import load_dataset
    from ka2er_core.data.realcheck import largest_labels, write_realcheck_dataset
    from ka2er_core.io import load_volume

    folder = write_realcheck_dataset(REALCHECK, tmp_path)
    dataset = load_dataset(folder)
    assert len(dataset.labels) == 12 and len(dataset.test_cases) == 1
    images, label = dataset.test_cases[0].load()
    atlas = load_volume(REALCHECK / "inia19-NeuroMaps.nii.gz").array
    values = json.loads((folder / "dataset.json").read_text())["ka2er"]["neuromaps_values"]
    assert values == largest_labels(atlas) and 0 not in values
    counts = np.bincount(label.array.ravel())
    assert [int(counts[i]) for i in range(1, 13)] == [int((atlas == v).sum()) for v in values]
    assert counts[1] >= counts[12]


def test_heldout_folder_has_one_vessel_tree_per_case(tmp_path):
    from ka2er_core.data.heldout import TARGET, write_heldout_dataset
    from ka2er_core.data.msd import load_dataset

    dataset = load_dataset(write_heldout_dataset(tmp_path, cases=1))
    assert TARGET in dataset.labels
    _, label = dataset.test_cases[0].load()
    assert label.array.max() == 1 and label.array.sum() >= 50


def test_ka2er_data_writes_the_checks_and_names_a_bad_folder(tmp_path, capsys):
    from ka2er_core.cli import main

    assert main(["data", "--out", str(tmp_path), "--heldout", "1"]) == 0
    assert (tmp_path / "Dataset901_HeldOutVesselTrees" / "dataset.json").is_file()
    assert main(["data", "--out", str(tmp_path), "--realcheck", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "nowhere" in error[0] and "inia19-t1-brain.nii.gz" in error[0]


def test_engine_scenes_folder_holds_non_overlapping_targets_a_gate_can_learn_from(tmp_path):
    """``ka2er data --scenes``: each case an engine scene whose targets that do not overlap are its
    labels; every label is a whole target of the scene (nothing cut by another)."""
    from ka2er_core.cli import main
    from ka2er_core.data.msd import load_dataset
    from ka2er_core.data.scenes import MAX_OBJECTS, SEED_OFFSET, scene_case

    assert main(["data", "--out", str(tmp_path), "--scenes", "2", "--test", "1"]) == 0
    dataset = load_dataset(tmp_path / "Dataset950_EngineScenes")
    assert len(dataset.cases) == 2 and len(dataset.test_cases) == 1
    assert set(dataset.labels) == {f"object {n}" for n in range(1, MAX_OBJECTS + 1)}
    case = dataset.cases[0]
    _, label = case.load()
    scene = DataEngine().scene(np.random.default_rng(int(case.case_id.split("_")[1])))
    assert int(case.case_id.split("_")[1]) > SEED_OFFSET
    np.testing.assert_array_equal(label.array, scene_case(scene).array)
    values = [v for v in np.unique(label.array) if v]
    assert values == list(range(1, len(values) + 1))
    masks = [t.mask(scene) for t in scene.targets]
    for value in values:  # each label is exactly one of the scene's targets
        assert any(np.array_equal(label.array == value, mask) for mask in masks)
