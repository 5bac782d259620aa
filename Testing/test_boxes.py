"""Boxes as users draw them: a Slicer ROI drawn in the RAS-aligned slice views of an oblique volume
runs past the image; it is clipped to the image, the result says so, and the structure inside it is
segmented. A box that misses the image is refused and changes nothing."""

import numpy as np
import pytest

from ka2er_core.bundle import load_bundle
from ka2er_core.data.phantoms import ct_phantom
from ka2er_core.errors import PromptError
from ka2er_core.evaluation.protocol import dice
from ka2er_core.geometry import foreground_bounds, ijk_box_to_ras, ras_box_to_ijk
from ka2er_core.inference import InteractiveSession


@pytest.fixture(scope="module")
def session():
    return InteractiveSession(load_bundle(), device="cpu")


@pytest.mark.parametrize("seed", [10000, 10001])
def test_a_box_past_an_oblique_image_segments_the_structure_inside_it(session, seed):
    phantom = ct_phantom(seed, shape=(40, 64, 64), spacing=(2.0, 2.0, 3.0), oblique=True)
    session.set_image(phantom.image)
    liver = phantom.label.array == phantom.label.labels["liver"]
    lo, hi = foreground_bounds(liver)
    low, high = ijk_box_to_ras(lo[::-1], hi[::-1], phantom.image.ijk_to_ras)
    corners_lo, corners_hi = ras_box_to_ijk(low, high, phantom.image.ijk_to_ras)
    assert np.any(corners_lo < -0.5) or np.any(corners_hi > np.array([63.5, 63.5, 39.5]))

    result = session.add_box(low, high)
    assert result.clipped and result.region is not None
    assert dice(session.mask > 0, liver) > 0.55


def test_a_box_running_past_the_image_is_clipped_and_one_missing_it_is_refused(session):
    phantom = ct_phantom(10002, shape=(24, 40, 40), spacing=(3.0, 3.0, 4.0))
    session.set_image(phantom.image)
    liver = phantom.label.array == phantom.label.labels["liver"]
    lo, hi = foreground_bounds(liver)
    low, high = ijk_box_to_ras(lo[::-1], hi[::-1], phantom.image.ijk_to_ras)
    inside = session.add_box(low, high)
    assert not inside.clipped
    first = session.mask.copy()
    session.undo()
    beyond = session.add_box(low - np.array([0.0, 0.0, 500.0]), high)  # far below the image
    assert beyond.clipped and session.mask.any()
    box = session.target.prompts[-1]
    bottom = phantom.image.ijk_to_ras[2, 3] - 0.5 * 4.0  # the image's lowest S edge
    assert box.low[2] == pytest.approx(bottom) and np.allclose(box.low[:2], low[:2])
    assert np.allclose(box.high, high)
    assert first.any()
    before = session.mask.copy()
    with pytest.raises(PromptError, match="does not overlap the image") as error:
        session.add_box(high + 1000.0, high + 1100.0)
    assert error.value.field == "box"
    np.testing.assert_array_equal(session.mask, before)
    with pytest.raises(PromptError, match="3 finite RAS coordinates"):
        session.add_box((0.0, float("nan"), 0.0), high)


def test_a_remote_box_past_the_image_is_clipped_the_same_way():
    from ka2er_core.server.app import create_app
    from ka2er_core.server.client import RemoteSession
    from ka2er_core.server.serve import BackgroundServer

    phantom = ct_phantom(10000, shape=(40, 64, 64), spacing=(2.0, 2.0, 3.0), oblique=True)
    liver = phantom.label.array == phantom.label.labels["liver"]
    lo, hi = foreground_bounds(liver)
    low, high = ijk_box_to_ras(lo[::-1], hi[::-1], phantom.image.ijk_to_ras)
    local = InteractiveSession(load_bundle(), device="cpu")
    local.set_image(phantom.image)
    expected = local.add_box(low, high)
    token = "t" * 32
    server = BackgroundServer(create_app(load_bundle(), token, device="cpu"))
    try:
        remote = RemoteSession(server.url, token=token)
        remote.set_image(phantom.image)
        result = remote.add_box(low, high)
        assert result.clipped and expected.clipped
        np.testing.assert_array_equal(remote.mask, local.mask)
    finally:
        server.stop()
