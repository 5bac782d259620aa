"""The module's Slicer-free helpers (KA2ERSegmentLib), tested directly: the worker thread, keeping the
session's target in step with its segment, the choices as named values, error messages and the
dependency check."""

import sys
import threading
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

MODULE = Path(__file__).resolve().parents[1] / "KA2ERSegment"
UI = MODULE / "Resources" / "UI" / "KA2ERSegment.ui"
sys.path.insert(0, str(MODULE))

from KA2ERSegmentLib import dependencies  # noqa: E402
from KA2ERSegmentLib.choices import (PROMPT_NODES, ModelSource, PromptKind,  # noqa: E402
                                     source_kind)
from KA2ERSegmentLib.errors import describe_error  # noqa: E402
from KA2ERSegmentLib.targets import TargetSync, seed_target  # noqa: E402
from KA2ERSegmentLib.worker import Job, Worker  # noqa: E402

sys.path.remove(str(MODULE))


@pytest.fixture
def worker():
    worker = Worker()
    yield worker
    worker.stop()


def test_jobs_run_in_order_and_callbacks_come_on_the_delivering_thread(worker):
    ran, delivered = [], []
    for n in range(3):
        worker.submit(Job(f"job {n}", lambda n=n: ran.append(threading.current_thread()) or n,
                          lambda value: delivered.append((value, threading.current_thread()))))
    worker.submit(Job("failing", lambda: 1 / 0, None, lambda error: delivered.append(type(error))))
    worker.wait()
    assert worker.pending == 0 and threading.current_thread() not in ran
    assert delivered == [(0, threading.current_thread()), (1, threading.current_thread()),
                         (2, threading.current_thread()), ZeroDivisionError]


def test_discarded_jobs_never_run_and_call_back_nothing(worker):
    started, release = threading.Event(), threading.Event()
    ran, delivered = [], []
    worker.submit(Job("running", lambda: started.set() or release.wait(10) and ran.append("running"),
                      delivered.append, delivered.append))
    started.wait(10)
    worker.submit(Job("queued", lambda: ran.append("queued"), delivered.append, delivered.append))
    worker.discard()
    worker.submit(Job("after", lambda: ran.append("after") or "after", delivered.append))
    release.set()
    worker.wait()
    assert ran == ["running", "after"] and delivered == ["after"] and worker.pending == 0


def test_only_changes_outside_own_writes_end_the_mirror():
    sync = TargetSync()
    assert not sync.in_step("Segment_1")
    sync.mirror("Segment_1")
    with sync.own_write():
        sync.segmentation_changed()
    assert sync.in_step("Segment_1") and not sync.in_step("Segment_2")
    sync.segmentation_changed()
    assert not sync.in_step("Segment_1")
    sync.mirror("Segment_2")
    with pytest.raises(RuntimeError), sync.own_write():
        raise RuntimeError("a failed write")
    sync.segmentation_changed()  # the failed write's block is over
    assert not sync.in_step("Segment_2")


def test_a_target_is_seeded_only_when_the_segment_differs_from_the_session():
    from ka2er_core import InteractiveSession, Volume, load_bundle

    session = InteractiveSession(load_bundle(), device="cpu")
    session.set_image(Volume(np.zeros((6, 8, 10), np.float32), np.eye(4)))
    content = np.zeros((6, 8, 10), np.uint8)
    assert seed_target(session, "Liver", content) is False  # an empty target is an empty segment
    content[2:4, 3:6, 4:8] = 1
    assert seed_target(session, "Liver", content) is True
    np.testing.assert_array_equal(session.mask, content)
    assert seed_target(session, "Liver", content.copy()) is False
    assert seed_target(session, "Spleen", np.zeros_like(content)) is False
    assert not session.mask.any()  # Spleen's
    session.set_target("Liver")
    np.testing.assert_array_equal(session.mask, content)


def test_model_sources_are_told_apart_in_the_panels_order():
    assert [source_kind(s) for s in ("", "/data/bundles/liver", "http://gpu:8765", "https://a.b")] \
        == [ModelSource.SHIPPED, ModelSource.FOLDER, ModelSource.SERVER, ModelSource.SERVER]
    combo = next(w for w in ET.parse(UI).getroot().iter("widget")
                 if w.get("name") == "modelSourceComboBox")
    assert len(combo.findall("item")) == len(ModelSource)


def test_every_prompt_kind_has_its_own_node():
    assert set(PROMPT_NODES) == set(PromptKind)
    assert len({node.name for node in PROMPT_NODES.values()}) == len(PromptKind)


@pytest.mark.parametrize("error, text", [
    (MemoryError(), "out of memory on cuda: choose device cpu, crop the volume, or close other programs"),
    (RuntimeError("CUDA out of memory. Tried to allocate"), "out of memory on cuda: choose device cpu"),
    (ConnectionError("connection refused"), "server unreachable: connection refused"),
    (ValueError(), "ValueError"),
    (RuntimeError("no model loaded: press Load model"), "no model loaded: press Load model"),
])
def test_errors_are_described_in_one_line(error, text):
    assert describe_error(error, "cuda").startswith(text)


def test_dependencies_are_installed_once_with_consent(monkeypatch):
    monkeypatch.setitem(dependencies.REQUIREMENTS, "ka2er_not_installed", "ka2er-not-installed>=1")
    asked, installed = [], []
    declining = dependencies.DependencyInstaller(lambda text: asked.append(text) or False,
                                                 installed.append)
    assert declining.ensure() is False and declining.ensure() is False
    assert len(asked) == 1 and "ka2er-not-installed>=1" in asked[0] and installed == []

    agreeing = dependencies.DependencyInstaller(lambda text: True, installed.append)
    with pytest.raises(RuntimeError, match="still missing after installing: ka2er_not_installed"):
        agreeing.ensure()
    assert installed == ["ka2er-not-installed>=1"]  # only what is missing


def test_a_server_session_does_not_ask_for_torch(monkeypatch):
    find_spec = dependencies.importlib.util.find_spec
    monkeypatch.setattr(dependencies.importlib.util, "find_spec",
                        lambda name: None if name in ("torch", "monai") else find_spec(name))
    asked = []
    installer = dependencies.DependencyInstaller(lambda text: asked.append(text) or False, print)
    assert installer.ensure(model=False) is True and asked == []
    assert installer.ensure() is False and "torch" in asked[0] and "monai" in asked[0]


def test_the_module_requires_what_pyproject_requires():
    pyproject = tomllib.loads((MODULE.parent / "pyproject.toml").read_text())
    assert sorted(dependencies.REQUIREMENTS.values()) == sorted(pyproject["project"]["dependencies"])


def test_a_points_only_model_is_offered_no_box_tool():
    from KA2ERSegmentLib.choices import PromptKind, offered_kinds

    assert offered_kinds(("point", "box", "scribble", "lasso")) == list(PromptKind)
    assert offered_kinds(("point", "scribble", "lasso")) == [kind for kind in PromptKind
                                                             if kind is not PromptKind.BOX]
    assert offered_kinds(("point",)) == [PromptKind.POSITIVE_POINT, PromptKind.NEGATIVE_POINT]
