"""A refined answer is pasted whole or not at all (issue 19, item 5): a failure while rendering one
of its pieces leaves the mask, the undo history and the prompts as they were."""

import numpy as np
import pytest
import torch

import ka2er_core.modelspace.paste as paste_module
from ka2er_core.bundle import Bundle, Segmenter
from ka2er_core.inference import InteractiveSession
from ka2er_core.modeling import ModelConfig, PromptableSegmenter
from ka2er_core.modeling.normalization import Normalization
from ka2er_core.volume import Volume

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def slabs_session():
    """A "model" that thresholds the crop it sees, on 4 mm slabs over 160 mm: a click zooms out to
    3.7 mm and ``refine`` adds base-spacing tiles (as in test_session's refine test)."""
    model = PromptableSegmenter(ModelConfig.tiny()).eval()
    model.embed = lambda image: image  # the "embedding" is the crop
    model.decode = lambda image, coords, labels, mask=None: (image, torch.ones(1))
    i = np.arange(200)
    slabs = np.zeros((60, 200, 200), bool)  # (k, j, i), 1 mm voxels, RAS = ijk
    slabs[10:50, 20:180, 20:180] = ((i[20:180] // 4) % 2 == 0)[None, None, :]
    image = Volume(np.where(slabs, 1000.0, -1000.0).astype(np.float32), np.eye(4))
    member = Segmenter("general", model, Normalization("ct"), 1.5, 4.0)
    session = InteractiveSession(Bundle(None, "student", {"general": member}), device="cpu",
                                 refine=True)
    session.set_image(image)
    return session


def test_a_fault_in_a_refinement_tile_leaves_the_mask_and_its_history_as_they_were(
        slabs_session, monkeypatch):
    session = slabs_session
    session.set_target("slabs")
    rendered = paste_module.sample_logits
    calls = []

    def second_piece_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory in the first refinement tile")
        return rendered(*args, **kwargs)

    monkeypatch.setattr(paste_module, "sample_logits", second_piece_fails)
    with pytest.raises(RuntimeError, match="refinement tile"):
        session.add_point((97.0, 100.0, 30.0))
    assert len(calls) == 2
    assert not session.mask.any()
    assert session.undo_depth == 0 and session.target.prompts == [] and session.target.answer is None

    calls.clear()
    monkeypatch.setattr(paste_module, "sample_logits", rendered)
    result = session.add_point((97.0, 100.0, 30.0))  # the same click, nothing failing: pieces pasted
    assert session.mask.any() and session.undo_depth == 1 and result.region is not None
    first = session.mask.copy()

    monkeypatch.setattr(paste_module, "sample_logits", second_piece_fails)
    with pytest.raises(RuntimeError, match="refinement tile"):  # a new box over the same target
        session.add_box((60.0, 60.0, 15.0), (140.0, 140.0, 45.0))
    np.testing.assert_array_equal(session.mask, first)
    assert session.undo_depth == 1 and len(session.target.prompts) == 1
    session.undo()
    assert not session.mask.any()
