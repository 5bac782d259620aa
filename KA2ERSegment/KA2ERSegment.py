"""KA2ER Segment: interactive prompt-based 3D segmentation in 3D Slicer.

Module / Widget / Logic / Test, as in Slicer's scripted-module template. The Logic turns markups into
world RAS prompts, hands them to the engine (``ka2er_core.InteractiveSession``, or a
``RemoteSession`` on a server) on one worker thread, and writes only the changed region of the mask
into the target segment. The engine never sees Slicer; the Logic never touches the GUI.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import qt

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from KA2ERSegmentLib.dependencies import DependencyInstaller
from KA2ERSegmentLib.geometry import SceneError, box_world, engine_volume, point_world
from KA2ERSegmentLib.segments import read_segment, write_region
from KA2ERSegmentLib.worker import Job, Worker

CHECKOUT = Path(__file__).resolve().parents[1]
if (CHECKOUT / "ka2er_core").is_dir() and str(CHECKOUT) not in sys.path:
    sys.path.append(str(CHECKOUT))  # run from a source checkout: the engine sits beside the module

SHORTCUTS = {"A": "positive point", "S": "negative point", "D": "box", "Z": "undo", "R": "reset",
             "N": "next segment"}
POSITIVE_NODE, NEGATIVE_NODE, BOX_NODE = "KA2ER +", "KA2ER -", "KA2ER box"


class KA2ERSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "KA2ER Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["KA2ER Segment developers"]
        self.parent.helpText = (
            "Click positive and negative points or drag a box; a promptable 3D model returns the "
            "segment, and each further click corrects it. Shortcuts: "
            + ", ".join(f"{key} {action}" for key, action in SHORTCUTS.items()) + ".")
        self.parent.acknowledgementText = (
            "Models after KA2ER (amalgamated task experts) and SAM-Med3D-MoE. The shipped demo model "
            "is for trying the workflow, not for clinical use.")


# ---- Logic -------------------------------------------------------------------------------------


def install_torch() -> bool:
    """Install torch with the PyTorch extension's installer (it picks the build for the GPU)."""
    import PyTorchUtils

    return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is not None


def describe(error: BaseException, device: str = "") -> str:
    """One clear line for the status bar and the error dialog."""
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        return (f"out of memory{' on ' + device if device else ''}: choose device cpu, crop the "
                "volume, or close other programs")
    if isinstance(error, ConnectionError):
        return f"server unreachable: {error}"
    return str(error) or type(error).__name__


class KA2ERSegmentLogic(ScriptedLoadableModuleLogic):
    """Scene-side work, free of GUI: prompts from markups, engine calls on the worker thread, changed
    regions written into the target segment.

    Callbacks (set by the Widget, or a test): ``onResult(segmentId, result)``, ``onError(text)``.
    Every public call returns at once; :meth:`Worker.deliver` (a GUI timer) applies the results.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.worker = Worker()
        self.session = None  # used on the worker thread only
        self.device = "auto"
        self.volumeNode = None
        self.volume = None  # the engine's view of the volume node's voxels
        self.segmentationNode = None
        self.segmentId = None
        self.undoMarks: dict[str, list] = {}  # segment id -> markups node (or None) per prompt
        self.onResult = None
        self.onError = None
        self.installer = DependencyInstaller(slicer.util.confirmOkCancelDisplay,
                                             slicer.util.pip_install, install_torch)
        self.lastSceneMs = {"prompt": 0.0, "write": 0.0}
        """Slicer-side time of the last prompt: markup to RAS, and the segment write (ms)."""

    # -- model and inputs --

    def loadModel(self, source: str = "", token: str = "", device: str = "auto") -> None:
        """``source``: "" for the shipped demo model, a bundle folder, or a server URL."""
        self.device = device

        def run():
            if source.startswith(("http://", "https://")):
                try:
                    from ka2er_core.server.client import RemoteSession
                except ImportError:
                    raise RuntimeError("this ka2er_core has no server client; choose the shipped "
                                       "model or a bundle folder") from None
                session = RemoteSession(source, token=token)
            else:
                from ka2er_core import InteractiveSession, load_bundle

                session = InteractiveSession(load_bundle(source or None), device=device)
            if volume is not None:
                session.set_image(volume)
                if target is not None:
                    target(session)
            self.session = session
            return session.members

        volume = self.volume
        target = None if self.segmentId is None else self._targetJob(self.segmentId)
        self._submit("loading model", run)

    def setMember(self, member: str) -> None:
        """Pin a member of a mixture-of-experts bundle ("auto": the bundle decides)."""
        self._submit("choosing model", lambda: self.session.pin(None if member == "auto" else member))

    def setVolume(self, volumeNode) -> None:
        """Segment ``volumeNode`` from now on (the engine is told once a model is loaded)."""
        volume = engine_volume(volumeNode)  # a view of the node's voxels, not a copy
        self.volumeNode, self.volume = volumeNode, volume
        self.segmentationNode, self.segmentId = None, None
        self.undoMarks.clear()
        if self.session is not None or self.worker.pending:
            self._submit("reading image", lambda: self.session and self.session.set_image(volume))

    def ensureSegmentation(self, segmentationNode=None):
        """The segmentation to write into, created on demand, referencing the volume's geometry and
        under the same parent transform."""
        if self.volumeNode is None:
            raise SceneError("no volume selected: pick a volume under Inputs first")
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{self.volumeNode.GetName()} segmentation")
            segmentationNode.CreateDefaultDisplayNodes()
        # Transform first: the reference grid is recorded in the segmentation's own coordinates.
        segmentationNode.SetAndObserveTransformNodeID(self.volumeNode.GetTransformNodeID())
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(self.volumeNode)
        self.segmentationNode = segmentationNode
        return segmentationNode

    def setTarget(self, segmentId: str = "") -> str:
        """Make a segment the target ("" adds a new one). An existing segment's mask seeds the
        session, so that clicks correct it instead of starting over."""
        segmentation = self.ensureSegmentation(self.segmentationNode).GetSegmentation()
        if not segmentId:
            name = f"Segment_{segmentation.GetNumberOfSegments() + 1}"
            segmentId = segmentation.AddEmptySegment("", name)
        elif segmentation.GetSegment(segmentId) is None:
            raise SceneError(f"segment {segmentId!r} is not in {self.segmentationNode.GetName()}")
        self.segmentId = segmentId
        target = self._targetJob(segmentId)
        self._submit("choosing segment", lambda: target(self._session()))
        return segmentId

    def _targetJob(self, segmentId: str):
        """What the worker does to make ``segmentId`` the session's target, seeded with the
        segment's current content (read now, on the GUI thread)."""
        existing = read_segment(self.segmentationNode, segmentId, self.volumeNode)

        def run(session):
            session.set_target(segmentId)
            if existing.any() and session.undo_depth == 0:
                session.set_mask(existing)

        return run

    # -- prompts --

    def addPoint(self, markupsNode, index: int, positive: bool = True) -> None:
        """A control point became a prompt; if the engine fails, the point is removed again."""
        start = time.perf_counter()
        ras = point_world(markupsNode, index)
        self.lastSceneMs["prompt"] = (time.perf_counter() - start) * 1000

        def failed(error):
            if index < markupsNode.GetNumberOfControlPoints():
                markupsNode.RemoveNthControlPoint(index)
            self._report(error)

        self._prompt("point", lambda session: session.add_point(ras, positive), markupsNode, failed)

    def addBox(self, roiNode) -> None:
        start = time.perf_counter()
        low, high = box_world(roiNode)
        self.lastSceneMs["prompt"] = (time.perf_counter() - start) * 1000
        self._prompt("box", lambda session: session.add_box(low, high), None, self._report)

    def undo(self) -> None:
        """Undo the last prompt of the target: the segment and the markups go back one step."""
        def run():
            region = self._session().undo()
            return region, None if region is None else self.session.mask[region].copy()

        def done(value):
            region, values = value
            if region is not None:
                self._write(region, values)
                marks = self.undoMarks.get(segmentId, [])
                node = marks.pop() if marks else None
                if node is not None and node.GetNumberOfControlPoints():
                    node.RemoveNthControlPoint(node.GetNumberOfControlPoints() - 1)

        segmentId = self._requireTarget()
        self.worker.submit(Job("undo", run, done, self._report))

    def reset(self) -> None:
        """Clear the target segment and its prompts."""
        from ka2er_core.geometry import foreground_bounds

        def run():
            session = self._session()
            bounds = foreground_bounds(session.mask)
            session.reset()
            if bounds is None:
                return None
            return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(*bounds))

        def done(region):
            if region is not None:
                self._write(region, np.zeros([s.stop - s.start for s in region], np.uint8))
            for node in set(self.undoMarks.pop(segmentId, [])) - {None}:
                node.RemoveAllControlPoints()

        segmentId = self._requireTarget()
        self.worker.submit(Job("reset", run, done, self._report))

    def promptNodes(self):
        """The positive and negative point lists and the box the module places prompts with."""
        found = []
        for className, name in (("vtkMRMLMarkupsFiducialNode", POSITIVE_NODE),
                                ("vtkMRMLMarkupsFiducialNode", NEGATIVE_NODE),
                                ("vtkMRMLMarkupsROINode", BOX_NODE)):
            node = slicer.mrmlScene.GetFirstNodeByName(name)
            found.append(node if node is not None else
                         slicer.mrmlScene.AddNewNodeByClass(className, name))
        return tuple(found)

    # -- internals --

    def _session(self):
        if self.session is None:
            raise RuntimeError("no model loaded: press Load model")
        return self.session

    def _requireTarget(self) -> str:
        if self.segmentId is None:
            raise SceneError("no target segment: pick or add a segment under Inputs")
        return self.segmentId

    def _submit(self, name: str, run) -> None:
        self.worker.submit(Job(name, run, None, self._report))

    def _prompt(self, kind: str, call, markupsNode, failed) -> None:
        segmentId = self._requireTarget()

        def run():
            result = call(self._session())
            values = None if result.region is None else self.session.mask[result.region].copy()
            return result, values

        def done(value):
            result, values = value
            if result.region is not None:
                try:
                    self._write(result.region, values)
                except Exception as error:  # shown as one message, not a traceback in the timer
                    failed(error)
                    return
            self.undoMarks.setdefault(segmentId, []).append(markupsNode)
            if self.onResult is not None:
                self.onResult(segmentId, result)

        self.worker.submit(Job(kind, run, done, failed))

    def _write(self, region, values) -> None:
        start = time.perf_counter()
        write_region(self.segmentationNode, self.segmentId, self.volumeNode, region, values)
        self.lastSceneMs["write"] = (time.perf_counter() - start) * 1000

    def _report(self, error: BaseException) -> None:
        if self.onError is not None:
            self.onError(describe(error, self.device))


# ---- Widget ------------------------------------------------------------------------------------


class KA2ERSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs, model, prompt buttons with shortcuts, status. Placing a control point of
    the positive or negative list, or finishing the box, runs a prediction."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.timer = None
        self.shortcuts = []

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        panel = slicer.util.loadUI(self.resourcePath("UI/KA2ERSegment.ui"))
        self.layout.addWidget(panel)
        self.ui = slicer.util.childWidgetVariables(panel)
        panel.setMRMLScene(slicer.mrmlScene)

        self.logic = KA2ERSegmentLogic()
        self.logic.onResult = self.onResult
        self.logic.onError = self.onError
        self.ui.shortcutsLabel.text = "Shortcuts: " + ", ".join(
            f"<b>{key}</b> {action}" for key, action in SHORTCUTS.items())

        self.ui.loadModelButton.connect("clicked()", self.onLoadModel)
        self.ui.modelSourceComboBox.connect("currentIndexChanged(int)", self.updateModelFields)
        self.ui.memberComboBox.connect("currentTextChanged(QString)", self.onMember)
        self.ui.volumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onVolume)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentation)
        self.ui.segmentComboBox.connect("activated(int)", self.onSegmentChosen)
        self.ui.newSegmentButton.connect("clicked()", lambda: self.chooseTarget(""))
        self.ui.positivePointButton.connect("toggled(bool)", lambda on: self.place(on, 0))
        self.ui.negativePointButton.connect("toggled(bool)", lambda on: self.place(on, 1))
        self.ui.boxButton.connect("toggled(bool)", lambda on: self.place(on, 2))
        self.ui.undoButton.connect("clicked()", lambda: self.guarded(self.logic.undo))
        self.ui.resetButton.connect("clicked()", lambda: self.guarded(self.logic.reset))
        self.ui.nextSegmentButton.connect("clicked()", lambda: self.chooseTarget(""))
        self.updateModelFields()

        positive, negative, box = self.logic.promptNodes()
        for node, color in ((positive, (0.2, 0.9, 0.2)), (negative, (0.95, 0.2, 0.2)),
                            (box, (0.9, 0.8, 0.1))):
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*color)
        self.addObserver(positive, positive.PointPositionDefinedEvent, self.onPositivePoint)
        self.addObserver(negative, negative.PointPositionDefinedEvent, self.onNegativePoint)
        self.addObserver(box, box.PointPositionDefinedEvent, self.onBox)
        self.addObserver(box, box.PointEndInteractionEvent, self.onBox)

        self.timer = qt.QTimer()
        self.timer.setInterval(30)
        self.timer.connect("timeout()", self.poll)
        self.timer.start()
        buttons = {"A": self.ui.positivePointButton, "S": self.ui.negativePointButton,
                   "D": self.ui.boxButton}
        actions = {"Z": self.ui.undoButton.click, "R": self.ui.resetButton.click,
                   "N": self.ui.nextSegmentButton.click}
        for key in SHORTCUTS:
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", buttons[key].toggle if key in buttons else actions[key])
            shortcut.setEnabled(False)
            self.shortcuts.append(shortcut)
        self.onVolume(self.ui.volumeSelector.currentNode())

    def enter(self):
        for shortcut in self.shortcuts:
            shortcut.setEnabled(True)

    def exit(self):
        for shortcut in self.shortcuts:
            shortcut.setEnabled(False)
        self.place(False, None)

    def cleanup(self):
        self.removeObservers()
        if self.timer is not None:
            self.timer.stop()
        if self.logic is not None:
            self.logic.worker.stop()

    # -- reactions --

    def guarded(self, action, *args):
        """Run ``action``; a bad scene shows one message and changes nothing."""
        try:
            return action(*args)
        except (SceneError, RuntimeError) as error:
            self.onError(describe(error))
            return None

    def updateModelFields(self, *unused):
        source = self.ui.modelSourceComboBox.currentIndex  # 0 shipped, 1 folder, 2 server
        self.ui.bundlePathLineEdit.enabled = source == 1
        self.ui.serverUrlLineEdit.enabled = source == 2
        self.ui.serverTokenLineEdit.enabled = source == 2

    def onLoadModel(self):
        remote = self.ui.modelSourceComboBox.currentIndex == 2
        try:
            if not self.logic.installer.ensure(model=not remote):
                self.onError("KA2ER Segment needs more Python packages; nothing was installed")
                return
        except RuntimeError as error:
            self.onError(str(error))
            return
        source = ["", self.ui.bundlePathLineEdit.currentPath,
                  self.ui.serverUrlLineEdit.text.strip()][self.ui.modelSourceComboBox.currentIndex]
        self.logic.loadModel(source, self.ui.serverTokenLineEdit.text, self.ui.deviceComboBox.currentText)

    def onMember(self, member):
        if member and self.logic.session is not None:
            self.logic.setMember(member)

    def onVolume(self, node):
        if node is None:
            return
        self.guarded(self.logic.setVolume, node)
        self.onSegmentation(self.ui.segmentationSelector.currentNode())

    def onSegmentation(self, node):
        if self.logic.volumeNode is None:
            return
        self.logic.segmentationNode = node
        self.refreshSegments()

    def refreshSegments(self):
        self.ui.segmentComboBox.clear()
        node = self.logic.segmentationNode
        if node is None:
            return
        segmentation = node.GetSegmentation()
        for n in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(n)
            self.ui.segmentComboBox.addItem(segmentation.GetSegment(segmentId).GetName(), segmentId)

    def onSegmentChosen(self, index):
        self.chooseTarget(self.ui.segmentComboBox.itemData(index))

    def chooseTarget(self, segmentId):
        if self.guarded(self.logic.ensureSegmentation, self.ui.segmentationSelector.currentNode()) is None:
            return
        self.ui.segmentationSelector.setCurrentNode(self.logic.segmentationNode)
        segmentId = self.guarded(self.logic.setTarget, segmentId)
        if segmentId is None:
            return
        positive, negative, _ = self.logic.promptNodes()
        positive.RemoveAllControlPoints()
        negative.RemoveAllControlPoints()
        self.refreshSegments()
        self.ui.segmentComboBox.setCurrentIndex(self.ui.segmentComboBox.findData(segmentId))

    def place(self, on: bool, which):
        """Start (or stop) persistent placement of positive points, negative points or the box."""
        buttons = [self.ui.positivePointButton, self.ui.negativePointButton, self.ui.boxButton]
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        if which is None:
            for button in buttons:
                button.checked = False
        if not on:
            if not any(button.checked for button in buttons):
                interaction.SwitchToViewTransformMode()
            return
        if self.logic.segmentId is None:
            self.chooseTarget(self.ui.segmentComboBox.currentData or "")
        for index, button in enumerate(buttons):
            if index != which and button.checked:
                button.blockSignals(True)
                button.checked = False
                button.blockSignals(False)
        node = self.logic.promptNodes()[which]
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selection.SetActivePlaceNodeID(node.GetID())
        if which == 2:  # a new box replaces the old one: drag it once
            node.RemoveAllControlPoints()
            interaction.SwitchToSinglePlaceMode()
        else:
            interaction.SwitchToPersistentPlaceMode()

    def onPositivePoint(self, caller, event):
        self.guarded(self.logic.addPoint, caller, caller.GetNumberOfControlPoints() - 1, True)

    def onNegativePoint(self, caller, event):
        self.guarded(self.logic.addPoint, caller, caller.GetNumberOfControlPoints() - 1, False)

    def onBox(self, caller, event):
        if caller.GetControlPointPlacementComplete():
            self.ui.boxButton.checked = False
            self.guarded(self.logic.addBox, caller)

    def poll(self):
        """GUI timer: deliver finished work, show progress while the worker is busy."""
        self.logic.worker.deliver()
        busy = self.logic.worker.pending > 0
        self.ui.progressBar.maximum = 0 if busy else 100
        if busy and self.logic.worker.running:
            self.ui.statusLabel.text = (f"{self.logic.worker.running}... (a click in a new region "
                                        "computes its image embedding first)")
        if not busy and self.ui.memberComboBox.count == 1 and self.logic.session is not None:
            self.ui.memberComboBox.addItems(self.logic.session.members)

    def onResult(self, segmentId, result):
        self.ui.statusLabel.text = (f"{segmentId}: {result.latency_ms:.0f} ms, confidence "
                                    f"{result.score:.2f}, answered by {result.expert}")

    def onError(self, text):
        self.ui.statusLabel.text = f"Error: {text}"
        slicer.util.errorDisplay(text, windowTitle="KA2ER Segment")


# ---- Test (runs inside Slicer) -----------------------------------------------------------------


class KA2ERSegmentTest(ScriptedLoadableModuleTest):
    """Self-test for a real Slicer: the MNI152 template, a box and clicks on the brain, Dice against
    the template's brain mask."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_brain_from_box_and_clicks()

    def test_brain_from_box_and_clicks(self):
        if not DependencyInstaller(lambda text: True, slicer.util.pip_install, install_torch).ensure():
            raise RuntimeError("dependencies are missing")
        try:
            from ka2er_core.data.mni import mni152
        except ImportError:  # running the self-test is the consent; say what it installs
            self.delayDisplay("Installing nilearn (it ships the MNI152 template)")
            slicer.util.pip_install("nilearn")
        from ka2er_core.data.mni import mni152

        self.delayDisplay("Building a volume from the MNI152 template")
        image, labels = mni152()
        volumeNode = slicer.util.addVolumeFromArray(np.ascontiguousarray(image.array, np.float32),
                                                    image.ijk_to_ras, "MNI152 T1")
        brain = labels.array > 0

        logic = KA2ERSegmentLogic()
        logic.loadModel("", device="cpu")
        logic.setVolume(volumeNode)
        logic.ensureSegmentation()
        segmentId = logic.setTarget("")
        positive, _, box = logic.promptNodes()
        k, j, i = np.nonzero(brain)
        corners = [image.ijk_to_ras @ np.array([*c, 1.0]) for c in
                   ((i.min(), j.min(), k.min()), (i.max(), j.max(), k.max()))]
        box.SetCenter(*((corners[0][:3] + corners[1][:3]) / 2))
        box.SetSize(*np.abs(corners[1][:3] - corners[0][:3]))
        logic.addBox(box)
        for index, (kk, jj, ii) in enumerate(np.argwhere(brain)[:: max(1, brain.sum() // 3)][:3]):
            positive.AddControlPoint((image.ijk_to_ras @ np.array([ii, jj, kk, 1.0]))[:3].tolist())
            logic.addPoint(positive, index, True)
        logic.worker.wait(timeout=300)

        result = read_segment(logic.segmentationNode, segmentId, volumeNode) > 0
        dice = 2 * (result & brain).sum() / (result.sum() + brain.sum())
        self.delayDisplay(f"Brain Dice {dice:.3f}")
        self.assertGreater(dice, 0.9)
        logic.worker.stop()
        self.delayDisplay("Test passed")
