"""The shipped default (the moe bundle) on held-out data: it segments, clicks land where SimpleITK
says, and corrective clicks improve a damaged mask; the gate routes a T1 brain box and a T1
white-matter click to their members, each better than the general model, and no CT click to them."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ka2er_core import InteractiveSession, load_bundle, save_volume
from ka2er_core.bundle import STUDENT_BUNDLE
from ka2er_core.data import MNI_LABELS, PHANTOM_LABELS, TEST_SEEDS, ct_phantom, mni_subject
from ka2er_core.data.mni import BRAIN_VALUES
from ka2er_core.evaluation.protocol import dice, run_protocol
from ka2er_core.geometry import ijk_to_ras_points, ras_to_lps
from ka2er_core.modelspace.clicks import component_centre, next_click


@pytest.fixture(scope="module")
def session():
    return InteractiveSession(load_bundle(), device="cpu")


@pytest.fixture(scope="module")
def subject():
    return mni_subject(TEST_SEEDS[5])


def test_brain_from_a_box_and_two_clicks(session, subject):
    session.set_image(subject.image)
    run = run_protocol(session, subject.image, np.isin(subject.label.array, BRAIN_VALUES), 3,
                       target="brain")
    assert run.dice[-1] >= 0.85, run.dice
    assert max(run.dice) == pytest.approx(run.dice[-1], abs=0.05)


def test_click_lands_on_the_voxel_simpleitk_names(session, tmp_path):
    """An oblique, anisotropic, flipped phantom: a positive click inside the spine selects the voxel
    SimpleITK finds for that RAS point, and the mask comes back on the volume's (k, j, i) grid."""
    phantom = ct_phantom(TEST_SEEDS[1], oblique=True, shape=(40, 96, 96), spacing=(3.2, 3.2, 5.0))
    path = save_volume(tmp_path / "oblique_ct.nrrd", phantom.image)
    reference = sitk.ReadImage(str(path))
    session.set_image(phantom.image)
    session.set_target("spine")
    truth = phantom.label.array == 4
    centre, _ = component_centre(truth)
    ras = ijk_to_ras_points(centre[::-1].astype(float), phantom.image.ijk_to_ras)
    session.add_point(ras, positive=True)
    index = reference.TransformPhysicalPointToIndex(tuple(ras_to_lps(ras)))
    assert session.mask.shape == phantom.image.shape
    assert session.mask[index[2], index[1], index[0]] == 1
    assert dice(session.mask > 0, truth) > 0.5


def test_corrective_clicks_improve_a_damaged_mask(session, subject):
    session.set_image(subject.image)
    session.set_target("white matter")
    truth = subject.label.array == MNI_LABELS["white matter"]
    damaged = ndimage.binary_erosion(truth, iterations=1)
    k, j, i = np.indices(truth.shape)
    centre, _ = component_centre(truth)
    damaged[(k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 < 36] = False  # a hole
    blob = np.argwhere(~np.isin(subject.label.array, BRAIN_VALUES) & (subject.image.array > 100))[0]
    damaged[(k - blob[0]) ** 2 + (j - blob[1]) ** 2 + (i - blob[2]) ** 2 < 25] = True  # a blob
    session.set_mask(damaged)
    start = dice(damaged, truth)
    scores = []
    for _ in range(3):
        (kk, jj, ii), positive = next_click(session.mask > 0, truth)
        session.add_point(ijk_to_ras_points(np.array([ii, jj, kk], float), subject.image.ijk_to_ras),
                          positive)
        scores.append(dice(session.mask > 0, truth))
    assert scores[-1] > start, (start, scores)
    assert min(scores) > start, (start, scores)  # no click lowers it below the start


def test_the_shipped_bundles_fit_the_budget_and_the_moe_loads_lazily():
    from ka2er_core.bundle import MOE_BUNDLE, STUDENT_BUNDLE, load_bundle

    weights = [p for folder in (STUDENT_BUNDLE, MOE_BUNDLE) for p in folder.glob("*.safetensors")]
    assert sum(p.stat().st_size for p in weights) <= 30 * 2**20
    for folder in (STUDENT_BUNDLE, MOE_BUNDLE):
        assert "Not for" in (folder / "README.md").read_text()  # the model card says what not
    moe = load_bundle(MOE_BUNDLE)
    assert moe.kind == "moe" and moe.gate is not None
    assert moe.members.loaded == []
    session = InteractiveSession(moe, device="cpu")
    subject = mni_subject(TEST_SEEDS[4])
    session.set_image(subject.image)
    brain = np.isin(subject.label.array, BRAIN_VALUES)
    session.pin("general")  # the gate bypassed: the general model answers the brain box
    pinned = run_protocol(session, subject.image, brain, 1, target="brain (general)")
    assert pinned.dice[-1] > 0.85 and moe.members.loaded == ["general"]
    session.pin(None)  # the gate routes the same box on a T1 image to the T1 brain member
    routed = run_protocol(session, subject.image, brain, 1, target="brain (routed)")
    assert routed.members == ["mni-t1-brain"] and moe.members.loaded == ["general", "mni-t1-brain"]
    assert routed.dice[-1] > pinned.dice[-1] + 0.02, (routed.dice, pinned.dice)
    white_matter = subject.label.array == MNI_LABELS["white matter"]
    click = ijk_to_ras_points(component_centre(white_matter)[0][::-1].astype(float),
                              subject.image.ijk_to_ras)
    session.pin("general")  # the gate bypassed: the general model answers the white-matter click
    session.set_target("white matter (general)")
    assert session.add_point(click).member == "general"
    general = dice(session.mask > 0, white_matter)
    session.pin(None)  # the gate routes a click on T1 white matter to the T1 white-matter member
    session.set_target("white matter (routed)")
    assert session.add_point(click).member == "mni-t1-wm"
    assert moe.members.loaded == ["general", "mni-t1-brain", "mni-t1-wm"]
    assert dice(session.mask > 0, white_matter) > general + 0.1, general


def test_ct_prompts_never_reach_the_members_tuned_on_mr(session):
    """Every task member of the shipped gate was fine-tuned on MNI (MR) images, so clicks on CT,
    even on small oblique phantoms unlike any crop the gate learned from, are answered by the
    general model, as the student alone answers them (no forgetting)."""
    assert set(map(tuple, session.bundle.gate.modalities.values())) == {("mr",)}
    student = InteractiveSession(load_bundle(STUDENT_BUNDLE), device="cpu")
    for n, name in enumerate(("liver", "lesion", "spine")):
        phantom = ct_phantom(TEST_SEEDS[n], shape=(18 + n, 40, 40), spacing=(4.0, 3.0, 3.0),
                             oblique=True)
        truth = phantom.label.array == PHANTOM_LABELS[name]
        click = ijk_to_ras_points(component_centre(truth)[0][::-1].astype(float),
                                  phantom.image.ijk_to_ras)
        for each in (session, student):
            each.set_image(phantom.image)
            assert each.add_point(click).member == "general", name
        assert np.array_equal(session.mask, student.mask), name
