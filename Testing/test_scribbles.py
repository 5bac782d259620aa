"""Scribbles and lassos in the session: their point tokens, the voxels a lasso encloses (against
scikit-image), first prompts and corrections with one undo step each, and bad input refused before
anything changes; over a loopback server, the same masks as in process, and 4xx for bad input; the
click simulation's scribbles and lassos, and a training step on them."""

import json

import numpy as np
import pytest
import torch
from skimage.draw import polygon as skimage_polygon

from conftest import random_ijk_to_ras
from ka2er_core import Volume, load_bundle
from ka2er_core.data import PHANTOM_LABELS, TEST_SEEDS, ct_phantom
from ka2er_core.bundle import Bundle, Segmenter
from ka2er_core.errors import PromptError
from ka2er_core.geometry import ijk_to_ras_points, ras_to_ijk
from ka2er_core.inference import InteractiveSession
from ka2er_core.modeling import ModelConfig, PromptableSegmenter
from ka2er_core.modeling.normalization import Normalization
from ka2er_core.modeling.prompt_encoder import NEGATIVE, POSITIVE
from ka2er_core.modelspace import Scribble, plan_crop
from ka2er_core.modelspace.clicks import component_centre, next_stroke
from ka2er_core.modelspace.strokes import MAX_STROKE_TOKENS, fill_polygon, lasso_voxels
from ka2er_core.server.wire import encode_volume
from test_server import TOKEN

SHAPE = (30, 44, 40)  # (k, j, i)
CENTRE = np.array([20.0, 22.0, 15.0])  # the ball's centre (i, j, k)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = PromptableSegmenter(ModelConfig.tiny()).eval()
    member = Segmenter("general", model, Normalization("mr"), 1.5, 4.0)
    return Bundle(None, "student", {"general": member})


@pytest.fixture(scope="module")
def ball_volume():
    """An oblique, anisotropic, flipped volume with a bright ball (10 voxels across the slice)."""
    rng = np.random.default_rng(3)
    ijk_to_ras = random_ijk_to_ras(rng, spacing=(1.2, 1.1, 1.6))
    k, j, i = np.indices(SHAPE)
    ball = (i - CENTRE[0]) ** 2 + (j - CENTRE[1]) ** 2 + ((k - CENTRE[2]) * 1.4) ** 2 < 100
    array = np.where(ball, 900.0, 100.0) + rng.normal(0, 20, SHAPE)
    return Volume(array.astype(np.float32), ijk_to_ras), ball


def ras(volume, ijk):
    return ijk_to_ras_points(np.asarray(ijk, float), volume.ijk_to_ras)


def ring(centre_ijk, radius, count=16, across=2, wobble=0.0, rng=None):
    """A closed curve (count, 3) (i, j, k) around ``centre_ijk`` in the plane across voxel axis
    ``across``, each point moved by up to ``wobble`` voxels along that axis."""
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    plane = [a for a in range(3) if a != across]
    points = np.tile(np.asarray(centre_ijk, float), (count, 1))
    points[:, plane[0]] += radius * np.cos(angles)
    points[:, plane[1]] += radius * np.sin(angles)
    if wobble:
        points[:, across] += rng.uniform(-wobble, wobble, count)
    return points


def dice(mask, truth):
    return 2 * (mask & truth).sum() / (mask.sum() + truth.sum())


def test_a_scribble_is_at_most_8_tokens_evenly_along_its_part_inside_the_crop():
    start, end = np.array([0.0, 0.0, 0.0]), np.array([400.0, 0.0, 0.0])  # runs far past the crop
    crop = plan_crop(start, start, 32, 1.5, 4.0)
    coords, labels = crop.encode([Scribble(np.array([start, end]), positive=False)])
    assert len(coords) == MAX_STROKE_TOKENS and set(labels) == {NEGATIVE}
    ras_tokens = ijk_to_ras_points(coords, crop.ijk_to_ras)
    assert np.allclose(ras_tokens[:, 1:], 0, atol=1e-6)  # on the line
    assert np.all((coords >= 0) & (coords <= 31))  # inside the crop only
    steps = np.diff(ras_tokens[:, 0])
    assert np.all(steps > 0) and np.ptp(steps) < 1.0  # evenly spaced, in order
    assert ras_tokens[0, 0] == pytest.approx(0.0) and ras_tokens[-1, 0] > 20  # start to crop edge


def test_the_lasso_fills_what_scikit_image_fills_on_an_oblique_volume(rng):
    grid = Volume(np.zeros(SHAPE, np.float32), random_ijk_to_ras(rng, spacing=(0.8, 1.3, 2.0)))
    for across in range(3):
        count = 11
        radii = rng.uniform(3, 9, count)  # a star: not convex
        angles = np.sort(rng.uniform(0, 2 * np.pi, count))
        centre = np.array([20.2, 21.8, 15.1])
        points = np.tile(centre, (count, 1))
        plane = [a for a in range(3) if a != across]
        points[:, plane[0]] += radii * np.cos(angles)
        points[:, plane[1]] += radii * np.sin(angles)
        jitter = rng.uniform(-0.6, 0.6, count)  # drawn in a RAS-aligned view
        points[:, across] += jitter - jitter.mean()
        region, filled = lasso_voxels(ras(grid, points), grid)
        expected = np.zeros(SHAPE, bool)
        rows, columns = plane[::-1]  # (k, j, i) order of the slice's axes
        rr, cc = skimage_polygon(points[:, rows], points[:, columns],
                                 shape=(SHAPE[2 - rows], SHAPE[2 - columns]))
        index = [slice(None)] * 3
        index[2 - across] = int(round(centre[across]))
        slice_ = np.zeros((SHAPE[2 - rows], SHAPE[2 - columns]), bool)
        slice_[rr, cc] = True
        expected[tuple(index)] = slice_
        got = np.zeros(SHAPE, bool)
        got[region] = filled
        assert region[2 - across].stop - region[2 - across].start == 1
        assert (got != expected).sum() <= 2  # skimage decides pixels on the border its own way
        assert got.sum() > 30


def test_fill_polygon_keeps_the_hole_of_a_self_overlapping_curve():
    square = np.array([[1, 1], [1, 9], [9, 9], [9, 1]], float) - 0.5
    assert fill_polygon(square, (10, 10)).sum() == 64
    twice = np.concatenate([square, square])  # drawn round twice: even-odd cancels
    assert fill_polygon(twice, (10, 10)).sum() == 0


def test_a_positive_lasso_first_then_a_negative_one_each_one_undo_step(tiny, ball_volume):
    volume, ball = ball_volume
    session = InteractiveSession(tiny, device="cpu")
    session.set_image(volume)
    contour = ras(volume, ring(CENTRE, 6, across=2))
    result = session.add_lasso(contour)
    region, filled = lasso_voxels(contour, volume)
    assert session.mask[region][filled].all() and session.undo_depth == 1
    assert all(r.start <= s.start and s.stop <= r.stop for r, s in zip(result.region, region))
    first = session.mask.copy()

    inner = ras(volume, ring(CENTRE, 3, across=2))
    inner_region, inner_filled = lasso_voxels(inner, volume)
    session.add_lasso(inner, positive=False)
    assert not session.mask[inner_region][inner_filled].any() and session.undo_depth == 2
    undone = session.undo()
    np.testing.assert_array_equal(session.mask, first)
    assert undone is not None
    session.undo()
    assert session.mask.sum() == 0


def test_scribbles_become_the_models_point_tokens_as_first_prompt_and_correction(tiny, ball_volume,
                                                                                monkeypatch):
    volume, ball = ball_volume
    session = InteractiveSession(tiny, device="cpu")
    session.set_image(volume)
    seen = []
    decode = session.models.decode
    monkeypatch.setattr(session.models, "decode", lambda member, prompts, crop, prior: seen.append(
        (crop, crop.encode(prompts))) or decode(member, prompts, crop, prior))
    line = ras(volume, [[13, 22, 15], [20, 24, 15], [27, 22, 15]])
    result = session.add_scribble(line)
    crop, (coords, labels) = seen[-1]
    assert 2 <= len(labels) <= MAX_STROKE_TOKENS and set(labels) == {POSITIVE}
    on_line = ras_to_ijk(ijk_to_ras_points(coords, crop.ijk_to_ras), volume.ijk_to_ras)
    assert np.all(np.abs(on_line[:, 2] - 15) < 0.01)  # on the scribble's slice, end to end
    assert on_line[:, 0].min() < 14 and on_line[:, 0].max() > 26
    assert result.region is not None and session.undo_depth == 1

    before = session.mask.copy()
    session.add_scribble(ras(volume, [[5, 5, 5], [8, 6, 5]]), positive=False)
    _, (coords, labels) = seen[-1]
    assert labels.count(NEGATIVE) >= 2 and labels.count(POSITIVE) >= 2  # the first scribble stays
    assert session.undo_depth == 2
    session.undo()
    np.testing.assert_array_equal(session.mask, before)


def test_the_shipped_model_segments_a_ball_from_a_scribble_or_a_lasso(ball_volume):
    volume, ball = ball_volume
    session = InteractiveSession(load_bundle(), device="cpu")
    session.set_image(volume)
    session.add_scribble(ras(volume, [[14, 22, 15], [20, 23, 15], [26, 22, 15]]))
    assert dice(session.mask > 0, ball) > 0.7  # as one click at the centre (0.74 on this ball)
    session.reset()
    session.add_lasso(ras(volume, ring(CENTRE, 5, across=0)))
    assert dice(session.mask > 0, ball) > 0.7


@pytest.fixture(scope="module")
def clicked(tiny, ball_volume):
    """A session with one click (every bad prompt below must leave it so)."""
    volume, _ = ball_volume
    session = InteractiveSession(tiny, device="cpu")
    session.set_image(volume)
    session.add_point(ras(volume, CENTRE))
    return session, volume


@pytest.mark.parametrize("call, message", [
    (lambda s, v: s.add_scribble([ras(v, [5, 5, 5])]), "scribble needs 2 to 500 points, got 1"),
    (lambda s, v: s.add_scribble("along the edge"), "scribble must be a list of RAS points"),
    (lambda s, v: s.add_scribble([ras(v, [5, 5, 5]), [np.nan, 0, 0]]),
     "scribble point 1 must be 3 finite"),
    (lambda s, v: s.add_scribble(np.zeros((501, 3))), "needs 2 to 500 points, got 501"),
    (lambda s, v: s.add_scribble(ras(v, [[5, 5, 5], [500, 5, 5]])), "scribble point 1 RAS .* outside"),
    (lambda s, v: s.add_lasso(ras(v, [[5, 5, 5], [9, 5, 5]])), "lasso needs 3 to 500 points, got 2"),
    (lambda s, v: s.add_lasso(ras(v, [[5, 5, 5], [9, 9, 9], [12, 5, 14]])), "must lie on one slice"),
    (lambda s, v: s.add_lasso(ras(v, [[5, 5, 5], [9, 5, 5], [13, 5, 5]])), "lie on a line"),
    (lambda s, v: s.add_lasso(ras(v, [[5.1, 5.1, 5], [5.4, 5.1, 5], [5.4, 5.4, 5]])),
     "encloses no voxel centre"),
])
def test_bad_scribbles_and_lassos_are_refused_and_change_nothing(clicked, call, message):
    session, volume = clicked
    before = session.mask.copy()
    with pytest.raises(PromptError, match=message) as error:
        call(session, volume)
    assert error.value.field.split()[0] in ("scribble", "lasso")
    np.testing.assert_array_equal(session.mask, before)
    assert session.undo_depth == 1


# ---- over a server ----


@pytest.fixture(scope="module")
def server():
    from ka2er_core.server.app import Limits, create_app
    from test_server import LiveServer

    live = LiveServer(create_app(load_bundle(), TOKEN, Limits(max_upload_bytes=8 << 20), device="cpu"))
    yield live
    live.stop()


def test_scribbles_and_lassos_over_a_server_equal_the_in_process_session(server):
    from ka2er_core.server.client import RemoteSession

    subject = ct_phantom(TEST_SEEDS[0], shape=(24, 48, 48), spacing=(4.0, 3.0, 3.0), oblique=True)
    volume, liver = subject.image, subject.label.array == PHANTOM_LABELS["liver"]
    local = InteractiveSession(load_bundle(), device="cpu", background=True)  # as the server's
    remote = RemoteSession(server.url, token=TOKEN)
    assert {"scribble", "lasso"} <= set(remote.prompt_types)
    assert remote.prompt_types == local.prompt_types
    centre = component_centre(liver)[0][::-1].astype(float)  # (i, j, k)
    inside = np.argwhere(liver)[:, ::-1]
    along = inside[np.argsort(inside[:, 0])][[len(inside) // 5, len(inside) // 2, 4 * len(inside) // 5]]
    steps = [("scribble", (ras(volume, along), True)),
             ("lasso", (ras(volume, ring(centre, 2.5, across=2)), False)),
             ("lasso", (ras(volume, ring(centre, 4, across=1)), True)),
             ("scribble", (ras(volume, [centre + (0, 6, 0), centre + (0, 9, 0)]), False))]
    for session in (local, remote):
        session.set_image(volume)
    for kind, (points, positive) in steps:
        a = getattr(local, f"add_{kind}")(points, positive)
        b = getattr(remote, f"add_{kind}")(points, positive)
        np.testing.assert_array_equal(local.mask, remote.mask)
        assert a.region == b.region and a.member == b.member and abs(a.score - b.score) < 1e-5
        assert local.undo_depth == remote.undo_depth
    assert dice(remote.mask > 0, liver) > 0.5
    assert local.undo() == remote.undo()
    np.testing.assert_array_equal(local.mask, remote.mask)
    remote.close()


def test_bad_scribbles_and_lassos_get_4xx_naming_the_field_and_the_server_keeps_serving(server):
    volume = Volume(np.zeros((20, 30, 30), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    status, reply = server.raw("POST", "/sessions", encode_volume(volume))
    assert status == 201
    base = f"/sessions/{reply['session']}/targets/one"
    json_headers = {"Content-Type": "application/json"}
    square = [[10, 10, 20], [30, 10, 20], [30, 30, 20], [10, 30, 20]]
    cases = [
        ("scribbles", b'{"points": "along", "positive": true}', "points"),
        ("scribbles", b'{"points": [[1, 2, 3], [NaN, 2, 3]]}', "points.1"),
        ("scribbles", json.dumps({"points": square, "positive": "yes"}).encode(), "positive"),
        ("scribbles", json.dumps({"points": square, "extra": 1}).encode(), "extra"),
        ("lassos", json.dumps({"points": [[1.0, 2.0, 3.0]] * 501}).encode(), "points"),
        ("scribbles", json.dumps({"points": [[10, 10, 20]]}).encode(), "scribble: scribble needs 2"),
        ("scribbles", json.dumps({"points": [[10, 10, 20], [900, 10, 20]]}).encode(),
         "scribble point 1: scribble point 1 RAS"),
        ("lassos", json.dumps({"points": [[10, 10, 3], [30, 10, 20], [30, 30, 40]]}).encode(),
         "lasso: a lasso must lie on one slice"),
    ]
    for route, body, expected in cases:
        status, reply = server.raw("POST", f"{base}/{route}", body, json_headers)
        assert status == 422 and expected in reply["detail"], (route, body[:60], status, reply)
    status, reply = server.raw("POST", f"{base}/lassos", json.dumps({"points": square}).encode(),
                               json_headers)
    assert status == 200 and reply["undo_depth"] == 1
    bits = reply["changed"]
    assert bits is not None and [s1 - s0 for s0, s1 in bits["region"]][0] >= 1


# ---- click simulation: the model learns scribbles and lassos ----


def ellipsoid(shape, centre, radii):
    k, j, i = np.indices(shape)
    return sum(((c - m) / r) ** 2 for c, m, r in zip((k, j, i), centre, radii)) < 1


def test_simulated_scribbles_and_lassos_lie_in_the_largest_error_with_its_sign():
    truth = ellipsoid((32, 32, 32), (16, 16, 16), (6, 8, 13))
    missed = truth & (np.indices(truth.shape)[0] > 18)  # a slab of the truth, long along i
    prediction = truth & ~missed
    kinds = set()
    for seed in range(12):
        points, positive = next_stroke(prediction, truth, np.random.default_rng(seed), 6)
        assert positive and 2 <= len(points) <= 6
        assert missed[tuple(points.T)].all()  # every point in the missed region
        flat = [axis for axis in range(3) if np.ptp(points[:, axis]) == 0]
        kinds.add("lasso" if flat else "scribble")
        if not flat:
            assert np.ptp(points[:, 2]) > 12  # along the region's long axis (i)
    assert kinds == {"lasso", "scribble"}

    extra = ellipsoid(truth.shape, (16, 16, 28), (3, 3, 3)) & ~truth
    points, positive = next_stroke(truth | extra, truth, np.random.default_rng(0), 4)
    assert not positive and extra[tuple(points.T)].all()
    assert next_stroke(truth, truth, np.random.default_rng(0), 4) is None


def test_a_training_step_learns_from_simulated_strokes(monkeypatch):
    import ka2er_core.training.promptable as promptable
    from dataclasses import replace
    from ka2er_core.training.samples import CropSample

    monkeypatch.setattr(promptable, "STROKE_PROBABILITY", 1.0)  # every correction a stroke
    torch.manual_seed(0)
    model = PromptableSegmenter(replace(ModelConfig.tiny(), crop_size=32))
    rng = np.random.default_rng(0)
    samples = []
    for centre in ((14, 16, 18), (17, 15, 12)):
        truth = ellipsoid((32, 32, 32), centre, (5, 7, 9))
        image = np.where(truth, 1.0, -1.0).astype(np.float32) + rng.normal(0, 0.1, truth.shape)
        samples.append(CropSample(image.astype(np.float32), truth, np.array([centre[::-1]], float),
                                  np.array([POSITIVE]), "task", "target"))
    batch = promptable.collate(samples, rng, max_extra_clicks=2, correct_probability=0.0)
    batch["extra_clicks"] = 2
    seen = []
    decode = model.decode
    monkeypatch.setattr(model, "decode", lambda embedding, coords, labels, mask: seen.append(
        labels.clone()) or decode(embedding, coords, labels, mask))
    loss, metrics = promptable.PromptableStep(model)(**batch)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0
                                        for p in model.parameters())
    trained = seen[-1]  # the trained prediction saw the first click and two strokes per item
    assert trained.shape[1] >= 1 + 2 * 2
    assert ((trained == POSITIVE) | (trained == NEGATIVE)).sum(dim=1).min() >= 1 + 2 * 2
