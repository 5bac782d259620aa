"""KA2ER Segment: interactive prompt-based 3D segmentation in 3D Slicer.

Module / Widget / Logic / Test and the parameter node, as in Slicer's scripted-module template. The
Logic turns markups into world RAS prompts, hands them to the engine (``ka2er_core.InteractiveSession``,
or a ``RemoteSession`` on a server) on one worker thread, and writes only the changed region of the
mask into the target segment. The engine never sees Slicer; the Logic never touches the GUI.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from KA2ERSegmentLib.choices import (AUTO, CURVE_KINDS, DEVICES, PROMPT_NODES, ModelSource,
                                     PromptKind, offered_kinds, source_kind)
from KA2ERSegmentLib.dependencies import DependencyInstaller
from KA2ERSegmentLib.errors import SceneError, describe_error
from KA2ERSegmentLib.geometry import box_world, curve_world, engine_volume, point_world
from KA2ERSegmentLib.segments import read_segment, segment_ids, write_region
from KA2ERSegmentLib.status import background_text
from KA2ERSegmentLib.targets import TargetSync, seed_targets
from KA2ERSegmentLib.worker import Job, Worker

CHECKOUT = Path(__file__).resolve().parents[1]
if (CHECKOUT / "ka2er_core").is_dir() and str(CHECKOUT) not in sys.path:
    sys.path.append(str(CHECKOUT))  # run from a source checkout: the engine sits beside the module

PLACE_KEYS = {"A": PromptKind.POSITIVE_POINT, "S": PromptKind.NEGATIVE_POINT, "D": PromptKind.BOX,
              "F": PromptKind.POSITIVE_SCRIBBLE, "G": PromptKind.NEGATIVE_SCRIBBLE,
              "C": PromptKind.POSITIVE_LASSO, "V": PromptKind.NEGATIVE_LASSO}
ACTION_KEYS = {"Z": "undo", "R": "reset", "N": "next segment"}
SHORTCUTS = {**{key: kind.value for key, kind in PLACE_KEYS.items()}, **ACTION_KEYS}
BACKGROUND_POLL_TICKS = 33
"""GUI timer ticks (30 ms) between questions about the background embeddings: about a second."""


class KA2ERSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "KA2ER Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["KA2ER Segment developers"]
        self.parent.helpText = (
            "Click positive and negative points, drag a box, draw a scribble (a curve) or a lasso (a "
            "closed curve on one slice); a promptable 3D model returns the segment, and each further "
            "prompt corrects it. Shortcuts: "
            + ", ".join(f"{key} {action}" for key, action in SHORTCUTS.items()) + ".")
        self.parent.acknowledgementText = (
            "Models after KA2ER (amalgamated task experts) and SAM-Med3D-MoE. The shipped models are "
            "for trying the workflow, not for clinical use.")


# ---- Parameter node ----------------------------------------------------------------------------


@parameterNodeWrapper
class KA2ERSegmentParameterNode:
    """The module's choices, kept in the scene: saved with it, restored when it is loaded.

    volume - the CT or MR volume to segment.
    segmentation, segmentId - where the mask goes ("": no target segment yet).
    source - the model: "" for the shipped one, a bundle folder, or a server URL (a server's token is
        not kept: a saved scene must not carry it).
    device - where a local model runs (auto: CUDA when available).
    member - which member of a mixture-of-experts bundle answers (auto: its gate decides).
    overlap - whether a segment may take voxels of the segmentation's other segments (off: they are
        background to every prompt and never overwritten).
    """

    volume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    segmentId: str = ""
    source: str = ""
    device: Annotated[str, Choice(DEVICES)] = AUTO
    member: str = AUTO
    overlap: bool = True


# ---- Logic -------------------------------------------------------------------------------------


def install_torch() -> bool:
    """Install torch with the PyTorch extension's installer (it picks the build for the GPU)."""
    import PyTorchUtils

    return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is not None


class KA2ERSegmentLogic(ScriptedLoadableModuleLogic, VTKObservationMixin):
    """Scene-side work, free of GUI: prompts from markups, engine calls on the worker thread, changed
    regions written into the target segment.

    The choices live in the parameter node. Before each prompt the session is brought in step with
    them and with the target segment, which may have been edited outside the module since (then the
    session starts again from it). Closing the scene drops the session and every node of that scene.

    Callbacks (set by the Widget, or a test): ``onResult(segmentId, result)``, ``onError(text)``,
    ``onBackground(status)`` (how far the session's background embeddings are, :meth:`refreshBackground`).
    Every public call returns at once; :meth:`Worker.deliver` (a GUI timer) applies the results.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        VTKObservationMixin.__init__(self)
        self.worker = Worker()
        self.session = None  # used on the worker thread only
        self.parameterNode = self.getParameterNode()
        self.imageNode = None
        """The volume node whose voxels the session was given (the parameter node may name another
        one since: the session follows before the next prompt)."""
        self.volume = None  # the engine's view of imageNode's voxels
        self.targetSync = TargetSync()
        self.observedSegmentation = None
        self.writesPending = 0
        """Jobs submitted whose results are still to be written into a segment."""
        self.undoMarks: dict[str, list] = {}  # segment id -> markups node (or None) per prompt
        self.onResult = None
        self.onError = None
        self.onBackground = None
        self.background = None
        """The session's last reported background status (``refreshBackground``)."""
        self.askingBackground = False
        self.lastSceneMs = {"prompt": 0.0, "write": 0.0}
        """Slicer-side time of the last prompt: markup to RAS, and the segment write (ms)."""
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

    def getParameterNode(self):
        return KA2ERSegmentParameterNode(super().getParameterNode())

    def cleanup(self) -> None:
        """The module is unloaded: stop observing and stop the worker."""
        self.removeObservers()
        self.worker.stop()

    # -- choices, as the parameter node keeps them --

    @property
    def volumeNode(self):
        return self.parameterNode.volume

    @property
    def segmentationNode(self):
        return self.parameterNode.segmentation

    @segmentationNode.setter
    def segmentationNode(self, segmentationNode):
        """Another segmentation has other segments: no target is chosen in it yet."""
        if segmentationNode is not self.parameterNode.segmentation:
            self.parameterNode.segmentation = segmentationNode
            self.parameterNode.segmentId = ""

    @property
    def segmentId(self):
        return self.parameterNode.segmentId or None

    # -- model and inputs --

    def loadModel(self, source: str = "", token: str = "", device: str = AUTO) -> None:
        """``source``: "" for the shipped model, a bundle folder, or a server URL. Source and
        device are kept in the parameter node (the token is not); the member chosen before answers
        again if the new model has it."""
        parameters = self.parameterNode
        parameters.source, parameters.device = source, device
        member = parameters.member
        volume = None
        if self.volumeNode is not None:
            self._takeImage()
            volume = self.volume
        self.targetSync.forget()  # the new session has no targets yet

        def run():
            if source_kind(source) is ModelSource.SERVER:
                try:
                    from ka2er_core.server.client import RemoteSession
                except ImportError:
                    raise RuntimeError("this ka2er_core has no server client; choose the shipped "
                                       "model or a bundle folder") from None
                session = RemoteSession(source, token=token)
            else:
                from ka2er_core import InteractiveSession, load_bundle

                session = InteractiveSession(load_bundle(source or None), device=device,
                                             background=True)
            if volume is not None:
                session.set_image(volume)
            if member != AUTO and member in session.members:
                session.pin(member)
            self._replaceSession(session)
            return session.members

        def done(members):
            if member != AUTO and member not in members:
                self.parameterNode.member = AUTO

        self.worker.submit(Job("loading model", run, done, self._report))

    def setMember(self, member: str) -> None:
        """Pin a member of a mixture-of-experts bundle (AUTO: the bundle decides)."""
        self.parameterNode.member = member
        self._submit("choosing model", lambda: self._session().pin(None if member == AUTO else member))

    def setVolume(self, volumeNode) -> None:
        """Segment ``volumeNode`` from now on; another volume than before starts without a
        segmentation or target. The engine is given the image now if a model is loaded."""
        engine_volume(volumeNode)  # a volume the engine cannot take is refused before it is kept
        if volumeNode is not self.volumeNode:
            self.parameterNode.volume = volumeNode
            self.segmentationNode = None
        self._followVolume()

    def ensureSegmentation(self, segmentationNode=None):
        """The segmentation to write into, created on demand, referencing the volume's geometry and
        under the same parent transform."""
        volumeNode = self.volumeNode
        if volumeNode is None:
            raise SceneError("no volume selected: pick a volume under Inputs first")
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{volumeNode.GetName()} segmentation")
            segmentationNode.CreateDefaultDisplayNodes()
        # Transform first: the reference grid is recorded in the segmentation's own coordinates.
        segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        self.segmentationNode = segmentationNode
        return segmentationNode

    def setTarget(self, segmentId: str = "") -> str:
        """Make a segment the target ("" adds a new one). The session starts from the segment's
        content (unless it holds it already, undo history and all), so clicks correct it."""
        segmentation = self.ensureSegmentation(self.segmentationNode).GetSegmentation()
        if not segmentId:
            name = f"Segment_{segmentation.GetNumberOfSegments() + 1}"
            segmentId = segmentation.AddEmptySegment("", name)
        elif segmentation.GetSegment(segmentId) is None:
            raise SceneError(f"segment {segmentId!r} is not in {self.segmentationNode.GetName()}")
        self.parameterNode.segmentId = segmentId
        if self._sessionExpected():  # read and seed now, not at the first click
            self._edit("choosing segment", lambda session: None, None, self._report)
        return segmentId

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

    def addCurve(self, curveNode, positive: bool = True) -> None:
        """A Markups curve became a prompt: an open curve a scribble, a closed one (drawn on one
        slice) a lasso whose enclosed voxels are in the target (negative: out of it). If the engine
        refuses it, the curve is cleared."""
        start = time.perf_counter()
        points = curve_world(curveNode)
        self.lastSceneMs["prompt"] = (time.perf_counter() - start) * 1000
        if curveNode.GetCurveClosed():
            kind, call = "lasso", lambda session: session.add_lasso(points, positive)
        else:
            kind, call = "scribble", lambda session: session.add_scribble(points, positive)

        def failed(error):
            curveNode.RemoveAllControlPoints()
            self._report(error)

        self._prompt(kind, call, None, failed)

    def addBox(self, roiNode) -> None:
        start = time.perf_counter()
        low, high = box_world(roiNode)
        self.lastSceneMs["prompt"] = (time.perf_counter() - start) * 1000
        self._prompt("box", lambda session: session.add_box(low, high), None, self._report)

    def undo(self) -> None:
        """Undo the last prompt of the target: the segment and the markups go back one step."""

        def change(session):
            region = session.undo()
            return region, changedValues(session, region)

        def apply(segmentId, write, value):
            region, values = value
            if region is None:
                return
            write(region, values)
            marks = self.undoMarks.get(segmentId, [])
            node = marks.pop() if marks else None
            if node is not None and node.GetNumberOfControlPoints():
                node.RemoveNthControlPoint(node.GetNumberOfControlPoints() - 1)

        self._edit("undo", change, apply, self._report)

    def reset(self) -> None:
        """Clear the target segment and its prompts."""
        from ka2er_core.geometry import foreground_bounds

        def change(session):
            bounds = foreground_bounds(session.mask)
            session.reset()
            if bounds is None:
                return None
            return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(*bounds))

        def apply(segmentId, write, region):
            if region is not None:
                write(region, np.zeros([s.stop - s.start for s in region], np.uint8))
            for node in set(self.undoMarks.pop(segmentId, [])) - {None}:
                node.RemoveAllControlPoints()

        self._edit("reset", change, apply, self._report)

    @property
    def busy(self) -> bool:
        """Work for the user is queued or running (not counting a background status question)."""
        return self.worker.pending > int(self.askingBackground)

    def refreshBackground(self) -> None:
        """Ask the session how far its background embeddings are, on the worker and only when it has
        nothing else to do (a server's session answers over HTTP); ``onBackground(status)`` gets the
        answer. A failed question is not reported: the next one asks again."""
        if self.session is None or self.worker.pending:
            return

        def answered(status):
            self.askingBackground, self.background = False, status
            if self.onBackground is not None:
                self.onBackground(status)

        def unanswered(error):
            self.askingBackground = False

        self.askingBackground = True
        self.worker.submit(Job("background status", lambda: self._session().background, answered,
                               unanswered))

    def promptNode(self, kind: PromptKind):
        """The markups node prompts of ``kind`` are placed with (added to the scene if missing)."""
        className, name, _ = PROMPT_NODES[kind]
        node = slicer.mrmlScene.GetFirstNodeByName(name)
        return node if node is not None else slicer.mrmlScene.AddNewNodeByClass(className, name)

    def promptNodes(self):
        """The positive and negative point lists and the box."""
        return tuple(self.promptNode(kind) for kind in (PromptKind.POSITIVE_POINT,
                                                        PromptKind.NEGATIVE_POINT, PromptKind.BOX))

    # -- scene events --

    def onSceneStartClose(self, caller, event) -> None:
        """The scene is closing: what was queued for it never runs or writes, the session (it views
        the closing volume) is let go, and no node of the closing scene is kept."""
        self.worker.discard()
        self.worker.submit(Job("closing session", lambda: self._replaceSession(None)))
        self.writesPending = 0
        self.imageNode = self.volume = None
        self._observeSegmentation(None)
        self.undoMarks.clear()

    def onSceneEndClose(self, caller, event) -> None:
        """The new, empty scene has a parameter node of its own (Slicer reset the old one)."""
        self.parameterNode = self.getParameterNode()

    def onSegmentationEdited(self, caller, event) -> None:
        """A segment of the target's segmentation changed; unless this module wrote it, the target
        is read again before the next prompt."""
        self.targetSync.segmentation_changed()

    # -- internals --

    def _session(self):
        if self.session is None:
            raise RuntimeError("no model loaded: press Load model")
        return self.session

    def _sessionExpected(self) -> bool:
        """A model is loaded, or work that may load one is queued."""
        return self.session is not None or self.worker.pending > 0

    def _replaceSession(self, session) -> None:
        """On the worker thread: use ``session`` from now on and close the one it replaces (a
        server's session is ended there instead of waiting to expire)."""
        previous, self.session = self.session, session
        close = getattr(previous, "close", None)
        if close is not None:
            close()

    def _requireTarget(self) -> str:
        segmentId, segmentationNode = self.segmentId, self.segmentationNode
        if segmentId is None or segmentationNode is None:
            raise SceneError("no target segment: pick or add a segment under Inputs")
        if segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
            raise SceneError(f"segment {segmentId!r} is no longer in {segmentationNode.GetName()}: "
                             "pick or add a segment under Inputs")
        return segmentId

    def _takeImage(self) -> bool:
        """Point the engine's view at the parameter node's volume; True if it is another one."""
        volumeNode = self.volumeNode
        if volumeNode is not None and volumeNode is self.imageNode:
            return False
        self.volume = engine_volume(volumeNode)  # a view of the node's voxels, not a copy
        self.imageNode = volumeNode
        self.undoMarks.clear()
        self.targetSync.forget()
        return True

    def _followVolume(self) -> None:
        """Give the session the parameter node's volume if it has another one."""
        if self._takeImage() and self._sessionExpected():
            volume = self.volume
            self._submit("reading image",
                         lambda: self.session is not None and self.session.set_image(volume))

    def _observeSegmentation(self, segmentationNode) -> None:
        """Watch ``segmentationNode``'s segments for changes made outside the module (content
        edited, a segment removed)."""
        if segmentationNode is self.observedSegmentation:
            return
        events = (slicer.vtkSegmentation.SourceRepresentationModified,
                  slicer.vtkSegmentation.SegmentRemoved)
        for event in events if self.observedSegmentation is not None else ():
            self.removeObserver(self.observedSegmentation, event, self.onSegmentationEdited)
        self.observedSegmentation = segmentationNode
        self.targetSync.forget()
        for event in events if segmentationNode is not None else ():
            self.addObserver(segmentationNode, event, self.onSegmentationEdited)

    def _targetInStep(self):
        """What an edit's job does first, on the worker: make the target segment the session's
        target, started again from the segment's content if something other than this module
        changed it (or the session never saw it), with the other segments too when segments may
        not overlap; set the session's overlap choice. Also gives the session the parameter node's
        volume if it changed. The segments are read here, on the GUI thread."""
        segmentId, overlap = self._requireTarget(), self.parameterNode.overlap
        self._followVolume()
        self._observeSegmentation(self.segmentationNode)
        if self.targetSync.in_step(segmentId, others=not overlap):
            return lambda session: seed_targets(session, segmentId, None, {}, overlap)
        if self.writesPending:  # results already asked for go into the segment before it is read
            self.worker.wait()
        segmentationNode, imageNode = self.segmentationNode, self.imageNode
        content = read_segment(segmentationNode, segmentId, imageNode)
        others = {} if overlap else {other: read_segment(segmentationNode, other, imageNode)
                                     for other in segment_ids(segmentationNode) if other != segmentId}
        self.targetSync.mirror(segmentId, others=not overlap)
        return lambda session: seed_targets(session, segmentId, content, others, overlap)

    def _regionWriter(self):
        """A function writing a changed region into the target segment as it is now. The module's
        own writes are not outside edits."""
        segmentationNode, segmentId, imageNode = self.segmentationNode, self.segmentId, self.imageNode

        def write(region, values):
            start = time.perf_counter()
            with self.targetSync.own_write():
                write_region(segmentationNode, segmentId, imageNode, region, values)
            self.lastSceneMs["write"] = (time.perf_counter() - start) * 1000

        return write

    def _submit(self, name: str, run) -> None:
        self.worker.submit(Job(name, run, None, self._report))

    def _edit(self, name: str, change, apply, failed) -> None:
        """Submit an edit of the target: ``change(session)`` runs on the worker once the session is
        in step with the target segment; ``apply(segmentId, write, value)`` then writes what changed
        with ``write(region, values)`` into that segment (the target when the edit was asked for).
        Until then the segment lags the session; if the edit or the write fails, the session may be
        ahead of it, so the segment is read again before the next edit."""
        inStep, segmentId, write = self._targetInStep(), self.segmentId, self._regionWriter()
        self.writesPending += 1

        def run():
            session = self._session()
            inStep(session)
            return change(session)

        def fail(error):
            self.targetSync.forget()
            failed(error)

        def written(value):
            self.writesPending -= 1
            try:
                if apply is not None:
                    apply(segmentId, write, value)
            except Exception as error:  # shown as one message, not a traceback in the timer
                fail(error)

        def notWritten(error):
            self.writesPending -= 1
            fail(error)

        self.worker.submit(Job(name, run, written, notWritten))

    def _prompt(self, kind: str, call, markupsNode, failed) -> None:
        def change(session):
            result = call(session)
            return result, changedValues(session, result.region)

        def apply(segmentId, write, value):
            result, values = value
            if result.region is not None:
                write(result.region, values)
            self.undoMarks.setdefault(segmentId, []).append(markupsNode)
            if self.onResult is not None:
                self.onResult(segmentId, result)

        self._edit(kind, change, apply, failed)

    def _report(self, error: BaseException) -> None:
        if self.onError is not None:
            self.onError(describe_error(error, self.parameterNode.device))


def changedValues(session, region):
    """On the worker: a copy of the session's mask over ``region`` (None for no region)."""
    return None if region is None else session.mask[region].copy()


# ---- Widget ------------------------------------------------------------------------------------


class KA2ERSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs, model, prompt buttons with shortcuts, status. Placing a control point of
    the positive or negative list, or finishing the box, runs a prediction. The inputs, device and
    member show the parameter node; the model source is kept in it when a model is loaded."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.installer = None
        self.timer = None
        self.shortcuts = []
        self.placeButtons = {}
        self.shownSource = None  # the source the model fields were last set from
        self.resultText = ""  # the status line's report of the last prompt
        self.ticks = 0
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        panel = slicer.util.loadUI(self.resourcePath("UI/KA2ERSegment.ui"))
        self.layout.addWidget(panel)
        self.ui = slicer.util.childWidgetVariables(panel)
        panel.setMRMLScene(slicer.mrmlScene)

        self.logic = KA2ERSegmentLogic()
        self.logic.onResult = self.onResult
        self.logic.onError = self.onError
        self.logic.onBackground = self.onBackground
        self.installer = DependencyInstaller(slicer.util.confirmOkCancelDisplay,
                                             slicer.util.pip_install, install_torch)
        self.ui.shortcutsLabel.text = "Shortcuts: " + ", ".join(
            f"<b>{key}</b> {action}" for key, action in SHORTCUTS.items())

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.loadModelButton.connect("clicked()", self.onLoadModel)
        self.ui.modelSourceComboBox.connect("currentIndexChanged(int)", self.updateModelFields)
        self.ui.memberComboBox.connect("currentTextChanged(QString)", self.onMember)
        self.ui.volumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onVolume)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentation)
        self.ui.segmentComboBox.connect("activated(int)", self.onSegmentChosen)
        self.ui.newSegmentButton.connect("clicked()", lambda: self.chooseTarget(""))
        self.placeButtons = {PromptKind.POSITIVE_POINT: self.ui.positivePointButton,
                             PromptKind.NEGATIVE_POINT: self.ui.negativePointButton,
                             PromptKind.BOX: self.ui.boxButton,
                             PromptKind.POSITIVE_SCRIBBLE: self.ui.positiveScribbleButton,
                             PromptKind.NEGATIVE_SCRIBBLE: self.ui.negativeScribbleButton,
                             PromptKind.POSITIVE_LASSO: self.ui.positiveLassoButton,
                             PromptKind.NEGATIVE_LASSO: self.ui.negativeLassoButton}
        for kind, button in self.placeButtons.items():
            button.connect("toggled(bool)", lambda on, kind=kind: self.place(on, kind))
        self.ui.undoButton.connect("clicked()", lambda: self.guarded(self.logic.undo))
        self.ui.resetButton.connect("clicked()", lambda: self.guarded(self.logic.reset))
        self.ui.nextSegmentButton.connect("clicked()", lambda: self.chooseTarget(""))
        self.updateModelFields()
        self.observePromptNodes()
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        self.addObserver(interaction, interaction.EndPlacementEvent, self.onEndPlacement)

        self.timer = qt.QTimer()
        self.timer.setInterval(30)
        self.timer.connect("timeout()", self.poll)
        self.timer.start()
        actions = {"undo": self.ui.undoButton.click, "reset": self.ui.resetButton.click,
                   "next segment": self.ui.nextSegmentButton.click}
        for key in SHORTCUTS:
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", self.placeButtons[PLACE_KEYS[key]].toggle
                             if key in PLACE_KEYS else actions[ACTION_KEYS[key]])
            shortcut.setEnabled(False)
            self.shortcuts.append(shortcut)
        self.initializeParameterNode()

    def enter(self):
        self.initializeParameterNode()
        for shortcut in self.shortcuts:
            shortcut.setEnabled(True)

    def exit(self):
        for shortcut in self.shortcuts:
            shortcut.setEnabled(False)
        self.place(False, None)
        self.setParameterNode(None)  # the GUI follows the parameter node again on enter

    def cleanup(self):
        self.setParameterNode(None)
        self.removeObservers()
        if self.timer is not None:
            self.timer.stop()
        if self.logic is not None:
            self.logic.cleanup()

    # -- parameter node and scene --

    def onSceneStartClose(self, caller, event):
        """The parameter node and the prompt nodes are about to go: stop using them."""
        self.place(False, None)
        self.setParameterNode(None)
        for method in (self.onPositivePoint, self.onNegativePoint, self.onBox):
            self.removeObservers(method)

    def onSceneEndClose(self, caller, event):
        """A new, empty scene: new prompt nodes, no model loaded, a new parameter node."""
        self.observePromptNodes()
        self.resetMembers()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        """Follow the module's parameter node; pick the first volume if none is chosen yet."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.volume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.volume = firstVolumeNode

    def setParameterNode(self, inputParameterNode):
        """Show ``inputParameterNode`` (None: none). Widgets with a SlicerParameterName property
        (volume, segmentation, device, overlap) are bound to it; the others are updated on its
        changes."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        self._parameterNodeGuiTag = None
        self.shownSource = None
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                             self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        """What connectGui does not bind: the target segment, the model source, the member."""
        parameters = self._parameterNode
        if parameters is None:
            return
        self.refreshSegments(parameters.segmentId)
        if parameters.source != self.shownSource:  # restored with a scene, or reset by a close
            self.showSource(parameters.source)
        self.showMember(parameters.member)

    # -- reactions --

    def guarded(self, action, *args):
        """Run ``action``; a bad scene shows one message and changes nothing."""
        try:
            return action(*args)
        except (SceneError, RuntimeError) as error:
            self.onError(describe_error(error))
            return None

    def modelSource(self) -> str:
        """The model the panel names: "" (shipped), a bundle folder or a server URL."""
        kind = ModelSource(self.ui.modelSourceComboBox.currentIndex)
        if kind is ModelSource.FOLDER:
            return self.ui.bundlePathLineEdit.currentPath
        if kind is ModelSource.SERVER:
            return self.ui.serverUrlLineEdit.text.strip()
        return ""

    def showSource(self, source: str):
        kind = source_kind(source)
        self.ui.modelSourceComboBox.currentIndex = int(kind)
        if kind is ModelSource.FOLDER:
            self.ui.bundlePathLineEdit.currentPath = source
        elif kind is ModelSource.SERVER:
            self.ui.serverUrlLineEdit.text = source
        self.shownSource = source

    def updateModelFields(self, *unused):
        kind = ModelSource(self.ui.modelSourceComboBox.currentIndex)
        self.ui.bundlePathLineEdit.enabled = kind is ModelSource.FOLDER
        self.ui.serverUrlLineEdit.enabled = kind is ModelSource.SERVER
        self.ui.serverTokenLineEdit.enabled = kind is ModelSource.SERVER

    def onLoadModel(self):
        source = self.modelSource()
        try:
            if not self.installer.ensure(model=source_kind(source) is not ModelSource.SERVER):
                self.onError("KA2ER Segment needs more Python packages; nothing was installed")
                return
        except RuntimeError as error:
            self.onError(str(error))
            return
        self.resetMembers()
        self.guarded(self.logic.loadModel, source, self.ui.serverTokenLineEdit.text,
                     self.ui.deviceComboBox.currentText)

    def resetMembers(self):
        """Only AUTO in the member list until a model is loaded (without telling the Logic)."""
        self.ui.memberComboBox.blockSignals(True)
        self.ui.memberComboBox.clear()
        self.ui.memberComboBox.addItem(AUTO)
        self.ui.memberComboBox.blockSignals(False)

    def showMember(self, member: str):
        index = self.ui.memberComboBox.findText(member)
        if index >= 0 and index != self.ui.memberComboBox.currentIndex:
            self.ui.memberComboBox.currentIndex = index

    def onMember(self, member):
        if member and self.logic.session is not None:
            self.logic.setMember(member)

    def onVolume(self, node):
        if node is not None:
            self.guarded(self.logic.setVolume, node)

    def onSegmentation(self, node):
        self.logic.segmentationNode = node

    def refreshSegments(self, selectedId: str = ""):
        self.ui.segmentComboBox.clear()
        node = self.logic.segmentationNode
        if node is None:
            return
        segmentation = node.GetSegmentation()
        for segmentId in segment_ids(node):
            self.ui.segmentComboBox.addItem(segmentation.GetSegment(segmentId).GetName(), segmentId)
        self.ui.segmentComboBox.setCurrentIndex(self.ui.segmentComboBox.findData(selectedId))

    def onSegmentChosen(self, index):
        self.chooseTarget(self.ui.segmentComboBox.itemData(index))

    def chooseTarget(self, segmentId):
        """Make ``segmentId`` the target ("" a new segment); the point lists start empty."""
        if self.guarded(self.logic.ensureSegmentation, self.ui.segmentationSelector.currentNode()) is None:
            return
        if self.guarded(self.logic.setTarget, segmentId) is None:
            return
        for kind in (PromptKind.POSITIVE_POINT, PromptKind.NEGATIVE_POINT, *CURVE_KINDS):
            self.logic.promptNode(kind).RemoveAllControlPoints()

    def place(self, on: bool, kind):
        """Start (or stop) persistent placement of prompts of ``kind`` (None: stop any placement)."""
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        if kind is None:
            for button in self.placeButtons.values():
                button.checked = False
        if not on:
            if not any(button.checked for button in self.placeButtons.values()):
                interaction.SwitchToViewTransformMode()
            return
        if self.logic.segmentId is None:
            self.chooseTarget(self.ui.segmentComboBox.currentData or "")
        for other, button in self.placeButtons.items():
            if other is not kind and button.checked:
                button.blockSignals(True)
                button.checked = False
                button.blockSignals(False)
        node = self.logic.promptNode(kind)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selection.SetActivePlaceNodeID(node.GetID())
        if kind is PromptKind.BOX or kind in CURVE_KINDS:  # a new one replaces the old: draw it once
            node.RemoveAllControlPoints()
            interaction.SwitchToSinglePlaceMode()
        else:
            interaction.SwitchToPersistentPlaceMode()

    def observePromptNodes(self):
        """Colour the scene's prompt nodes and run a prediction when a prompt is placed."""
        nodes = {kind: self.logic.promptNode(kind) for kind in PromptKind}
        for kind, node in nodes.items():
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*PROMPT_NODES[kind].color)
        positive, negative, box = self.logic.promptNodes()
        self.addObserver(positive, positive.PointPositionDefinedEvent, self.onPositivePoint)
        self.addObserver(negative, negative.PointPositionDefinedEvent, self.onNegativePoint)
        self.addObserver(box, box.PointPositionDefinedEvent, self.onBox)
        self.addObserver(box, box.PointEndInteractionEvent, self.onBox)

    def onPositivePoint(self, caller, event):
        self.guarded(self.logic.addPoint, caller, caller.GetNumberOfControlPoints() - 1, True)

    def onNegativePoint(self, caller, event):
        self.guarded(self.logic.addPoint, caller, caller.GetNumberOfControlPoints() - 1, False)

    def onBox(self, caller, event):
        if caller.GetControlPointPlacementComplete():
            self.placeButtons[PromptKind.BOX].checked = False
            self.guarded(self.logic.addBox, caller)

    def onEndPlacement(self, caller, event):
        """A curve being drawn is finished (double-click or right-click): it becomes a scribble or
        a lasso, and its button is released."""
        for kind in CURVE_KINDS:
            if self.placeButtons[kind].checked:
                self.placeButtons[kind].checked = False
                node = self.logic.promptNode(kind)
                if node.GetNumberOfControlPoints():
                    self.guarded(self.logic.addCurve, node, kind.positive)

    def poll(self):
        """GUI timer: deliver finished work, show progress while the worker is busy, and when it is
        idle, ask about the background embeddings every :data:`BACKGROUND_POLL_TICKS` ticks."""
        self.logic.worker.deliver()
        busy = self.logic.busy
        self.ticks += 1
        if not busy and self.ticks % BACKGROUND_POLL_TICKS == 0:
            self.logic.refreshBackground()
        self.ui.progressBar.maximum = 0 if busy else 100
        if busy and self.logic.worker.running:
            self.ui.statusLabel.text = (f"{self.logic.worker.running}... (a click in a new region "
                                        "computes its image embedding first)")
        if not busy and self.ui.memberComboBox.count == 1 and self.logic.session is not None:
            self.ui.memberComboBox.addItems(self.logic.session.members)
            if self._parameterNode:
                self.showMember(self._parameterNode.member)
            offered = offered_kinds(self.logic.session.prompt_types)
            for kind, button in self.placeButtons.items():
                button.enabled = kind in offered

    def onResult(self, segmentId, result):
        self.resultText = (f"{segmentId}: {result.latency_ms:.0f} ms, confidence {result.score:.2f}, "
                           f"answered by {result.member}")
        self.ui.statusLabel.text = self.resultText

    def onBackground(self, status):
        readiness = background_text(status)
        if readiness and not self.logic.busy:
            self.ui.statusLabel.text = f"{self.resultText}; {readiness}" if self.resultText else readiness

    def onError(self, text):
        self.ui.statusLabel.text = f"Error: {text}"
        slicer.util.errorDisplay(text, windowTitle="KA2ER Segment")


# ---- Test (runs inside Slicer) -----------------------------------------------------------------


class KA2ERSegmentTest(ScriptedLoadableModuleTest):
    """Self-test for a real Slicer: the MNI152 template, a box and clicks on the brain, Dice against
    the template's brain mask; then closing the scene leaves nothing behind."""

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
        self.assertEqual(logic.parameterNode.segmentId, segmentId)

        self.delayDisplay("Closing the scene")
        slicer.mrmlScene.Clear()
        logic.worker.wait()
        self.assertIsNone(logic.session)
        self.assertIsNone(logic.volumeNode)
        self.assertIsNone(logic.segmentId)
        logic.cleanup()
        self.delayDisplay("Test passed")
