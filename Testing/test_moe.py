"""SAM-Med3D-MoE: moe bundles (round trip, checksums, members read on first use), routing in the
session (the gate's choice follows the task, a target keeps its member for corrections, pinning
bypasses the gate, other bundles never call it), ka2er finetune and ka2er train-gate."""

import copy
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import ka2er_core.bundle.store as store_module
import ka2er_core.inference.session as session_module
from ka2er_core import Volume, load_volume, save_volume
from ka2er_core.bundle import (STUDENT_BUNDLE, BundleError, Segmenter, load_bundle, save_bundle,
                               save_moe_bundle)
from ka2er_core.cli import main
from ka2er_core.data.msd import load_dataset
from ka2er_core.data.sample import write_sample_dataset
from ka2er_core.errors import DatasetError
from ka2er_core.geometry import foreground_bounds, ijk_box_to_ras, ijk_to_ras_points
from ka2er_core.inference import InteractiveSession
from ka2er_core.io.checksum import sha256
from ka2er_core.modeling import ModelConfig, PromptableSegmenter
from ka2er_core.modeling.gate import Gate
from ka2er_core.modeling.normalization import Normalization
from ka2er_core.modeling.prompt_encoder import (BOX_HIGH, BOX_LOW, FLAT_BOX_HIGH,
                                                FLAT_BOX_LOW, NEGATIVE, PAD, POSITIVE)
from ka2er_core.training.gate import (PROMPT_SETS, choose_threshold, hold_out_last_case,
                                      member_modalities, moe_members, train_gate)
from ka2er_core.training.promptable import CropSampler, load_training_items
from ka2er_core.training.samples import LabelledImage

pytestmark = pytest.mark.usefixtures("one_thread")

KIDNEYS_AND_SPINE = {"right kidney": 2, "left kidney": 3, "spine": 4}
MEMBERS = ("general", "liver", "brain")
SHAPE = (30, 40, 36)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """CT and MR phantom tasks (2 training cases, 1 test case each), kidneys and spine only: the
    targets the damaged members of the routing test get consistently wrong."""
    folders = write_sample_dataset(tmp_path_factory.mktemp("data"), n_train=2, n_test=1,
                                   tasks=["Dataset003_CTPhantom", "Dataset004_MRPhantom"])
    for folder in folders:
        meta = json.loads((folder / "dataset.json").read_text())
        meta["labels"] = {"background": 0, **KIDNEYS_AND_SPINE}
        (folder / "dataset.json").write_text(json.dumps(meta))
        for path in folder.glob("labels*/*.nii.gz"):
            label = load_volume(path)
            kept = np.isin(label.array, list(KIDNEYS_AND_SPINE.values()))
            save_volume(path, Volume(np.where(kept, label.array, 0).astype(np.uint8), label.ijk_to_ras))
    return folders


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    """A moe bundle of three random tiny members and a random gate (threshold 0.7)."""
    torch.manual_seed(0)
    members = [Segmenter(name, PromptableSegmenter(ModelConfig.tiny()).eval(), Normalization("mr"),
                         1.5, 4.0) for name in MEMBERS]
    gate = Gate.for_model(MEMBERS, members[0].model)
    gate.threshold = 0.7
    path = save_moe_bundle(tmp_path_factory.mktemp("moe") / "bundle", members, gate.eval(),
                           labels=["liver", "brain"])
    return path, members, gate


@pytest.fixture
def volume(rng):
    return Volume(rng.normal(100, 20, SHAPE).astype(np.float32), np.diag([1.2, 1.1, 2.0, 1.0]))


def centre_ras(volume, offset=(0, 0, 0)):
    return ijk_to_ras_points(np.array(SHAPE[::-1]) / 2 + np.array(offset), volume.ijk_to_ras)


def copy_of(path: Path, destination: Path) -> Path:
    shutil.copytree(path, destination)
    return destination


def count_gate_calls(gate: Gate, monkeypatch) -> list:
    """A list that grows by one each time ``gate`` runs."""
    calls = []
    forward = gate.forward
    monkeypatch.setattr(gate, "forward", lambda features: calls.append(1) or forward(features))
    return calls


def always(gate: Gate, member: str) -> None:
    """Make ``gate`` pick ``member`` whatever it sees."""
    with torch.no_grad():
        bias = torch.zeros(len(gate.members))
        bias[gate.members.index(member)] = 100.0
        gate.mlp.layers[-1].bias.copy_(bias)
    gate.threshold = 0.5


def test_moe_bundle_round_trip_checksums_and_shared_normalisation(tiny_moe, tmp_path):
    path, members, gate = tiny_moe
    bundle = load_bundle(path)
    assert bundle.kind == "moe" and list(bundle.members) == list(MEMBERS)
    assert bundle.gate.members == list(MEMBERS) and bundle.gate.threshold == 0.7
    features = torch.randn(4, bundle.gate.norm.normalized_shape[0])
    torch.testing.assert_close(bundle.gate(features), gate(features))
    for member in members:
        loaded = bundle.members[member.name].model.state_dict()
        assert all(torch.equal(loaded[key], value) for key, value in member.model.state_dict().items())

    for damaged in ("brain.safetensors", "gate.safetensors"):
        copy = copy_of(path, tmp_path / damaged)
        data = bytearray((copy / damaged).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / damaged).write_bytes(bytes(data))
        with pytest.raises(BundleError, match=re.escape(damaged) + r": sha256: .*changed"):
            load_bundle(copy)  # refused at load, before any member is used

    half = save_moe_bundle(tmp_path / "half", members, gate, member_dtype=torch.float16)
    sizes = {m: (half / f"{m}.safetensors").stat().st_size / (path / f"{m}.safetensors").stat().st_size
             for m in MEMBERS}
    assert sizes["general"] == 1 and all(0.45 < sizes[m] < 0.55 for m in MEMBERS[1:])
    halved = load_bundle(half)
    for member in members:  # float32 in memory; the general model exact, the others rounded
        loaded = halved.members[member.name].model.state_dict()
        for key, value in member.model.state_dict().items():
            assert loaded[key].dtype == value.dtype
            expected = value if member.name == "general" or not value.is_floating_point() else (
                value.half().to(value.dtype))
            assert torch.equal(loaded[key], expected), (member.name, key)

    copy = copy_of(path, tmp_path / "ct liver")
    meta = json.loads((copy / "bundle.json").read_text())
    meta["members"]["liver"]["normalization"]["kind"] = "ct"
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"members\.liver\.normalization: .*general model"):
        load_bundle(copy)


def test_gate_reads_fine_stages_at_the_prompts_and_older_gates_still_load(tiny_moe, tmp_path):
    path, members, gate = tiny_moe
    general = members[0].model
    embedding = general.embed(torch.randn(1, 1, 64, 64, 64))
    # crop voxel (i, j, k) = 2 m + 0.5 is the centre of cell m of the 32^3 finest stage
    coords, labels = torch.tensor([[[20.5, 30.5, 40.5]]]), torch.tensor([[POSITIVE]])
    features = gate.inputs(general, embedding, coords, labels)
    assert gate.prompt_stages == [0, 1] and features.shape[1] == gate.norm.normalized_shape[0]
    stage = embedding.stages[0]  # (1, C0, 32, 32, 32), axes (k, j, i)
    under_click = gate.fine_channels
    extra = sum(gate.stage_channels[s] for s in (0, 1)) + under_click
    sampled = features[0, -extra:][:stage.shape[1]]
    torch.testing.assert_close(sampled, stage[0, :, 20, 15, 10])
    # The full-resolution features at the positive click: halfway between voxels 20 and 21 (i),
    # 30 and 31 (j), 40 and 41 (k), i.e. the mean of that 2^3 block; a negative click gives 0.
    assert under_click == general.config.fine_channels
    block = embedding.fine[0, :, 40:42, 30:32, 20:22].mean((1, 2, 3))
    torch.testing.assert_close(features[0, -under_click:], block)
    negative = gate.inputs(general, embedding, coords, torch.tensor([[NEGATIVE]]))
    assert torch.count_nonzero(negative[0, -under_click:]) == 0

    older = copy_of(path, tmp_path / "older")  # a gate written before prompt stages existed
    plain = Gate.for_model(MEMBERS, general, prompt_stages=(), fine=False)
    meta = json.loads((older / "bundle.json").read_text())
    del meta["gate"]["prompt_stages"], meta["gate"]["fine_channels"]
    from safetensors.torch import save_file
    save_file(plain.state_dict(), str(older / "gate.safetensors"))
    meta["sha256"]["gate.safetensors"] = sha256(older / "gate.safetensors")
    (older / "bundle.json").write_text(json.dumps(meta))
    loaded = load_bundle(older).gate
    assert loaded.prompt_stages == [] and loaded.fine_channels == 0
    assert loaded.inputs(general, embedding, coords, labels).shape[1] == features.shape[1] - extra


def with_spare_channel(model: PromptableSegmenter, gain: float, offset: float,
                       logit_weight: float) -> PromptableSegmenter:
    """A copy of ``model`` whose last full-resolution feature channel is GELU(gain * image +
    offset) at each voxel (normalised intensity) and adds ``logit_weight`` times itself to every mask
    logit; that channel's other uses are removed."""
    model = copy.deepcopy(model)
    first, _, second = model.image_encoder.fine
    last = model.mask_decoder.hyper_fine.layers[-1]
    c = first.out_channels - 1
    with torch.no_grad():
        first.weight[c] = 0
        first.weight[c, 0, 1, 1, 1] = gain
        first.bias[c] = offset
        second.weight[:, c] = 0
        second.weight[c] = 0
        second.weight[c, c, 1, 1, 1] = 1.0
        second.bias[c] = 0
        last.weight[c] = 0
        last.bias[c] = logit_weight
    return model


def test_the_gate_routes_each_task_to_the_member_that_segments_it(phantoms, tmp_path):
    """General: the shipped student, except that MR's bright tissue (normalised intensity above 1.3:
    fat, kidney; CT's window stops at 1) floods into every mask. Member "MRPhantom": the student with
    every mask dilated (+6 on its logits). On CT the general model's masks are better, on MR the
    member's; after brief training (ka2er train-gate) a kidney box on a held-out CT image goes to
    the general model and the same box on a held-out MR image to the member."""
    student = load_bundle().default
    floods_bright = with_spare_channel(student.model, gain=100, offset=-130, logit_weight=50)
    dilates = with_spare_channel(student.model, gain=0, offset=10, logit_weight=0.6)
    save_bundle(tmp_path / "general", replace(student, model=floods_bright))
    save_bundle(tmp_path / "MRPhantom", replace(student, model=dilates))
    out = tmp_path / "moe"
    assert main(["train-gate", "--general", str(tmp_path / "general"),
                 "--member", str(tmp_path / "MRPhantom"), "--dataset", str(phantoms[0]),
                 "--dataset", str(phantoms[1]), "--out", str(out), "--steps", "128", "--reuse", "8",
                 "--lr", "0.01", "--temperature", "0.05", "--validation-crops", "6"]) == 0
    bundle = load_bundle(out)
    assert list(bundle.members) == ["general", "MRPhantom"]
    assert bundle.gate.modalities == {}  # its bundle names no training datasets: any modality
    assert bundle.meta["training"]["prompts"] == "first"
    selection = bundle.meta["metrics"]["gate_selection"]
    assert bundle.gate.threshold == selection["threshold"] < 1
    assert selection["dice_routed"] > selection["dice_general"] + 0.02

    members = {}
    for folder in phantoms:
        images, label = load_dataset(folder).test_cases[0].load()
        session = InteractiveSession(bundle, device="cpu")
        session.set_image(images[0])
        lo, hi = foreground_bounds(label.array == KIDNEYS_AND_SPINE["right kidney"])
        box = ijk_box_to_ras(lo[::-1], hi[::-1], images[0].ijk_to_ras)
        members[folder.name] = session.add_box(*box).member
    assert members == {"Dataset003_CTPhantom": "general", "Dataset004_MRPhantom": "MRPhantom"}


def test_the_threshold_keeps_small_gains_and_forgets_no_target():
    """Validation crops: on 10 of target a a member (gate probability 0.62) gains 0.03 Dice, on 5 of
    b (0.82) 0.03, on 90 of c (0.3) it would lose 0.6. The mean gain of routing a and b is 0.004
    Dice: kept (threshold 0.6). Add 4 crops of d (0.72) where it loses 0.02, a gain on average over
    all crops but a fall of d's Dice beyond the limit: only b is routed (0.8). The same crops of d
    on CT, where the member (tuned on MR) may not answer, stay with the general model: 0.6 again."""
    class Logits(torch.nn.Identity):
        """A gate whose input is its logits; its member answers on MR only."""

        def eligible(self, modality):
            return torch.tensor([True, modality == "mr"])

    def crops(target, count, probability, general, member, modality="mr"):
        logits = torch.tensor([[0.0, float(np.log(probability / (1 - probability)))]]).repeat(count, 1)
        dice = torch.tensor([[general, member]]).repeat(count, 1)
        return target, logits, dice, [modality] * count

    def choose(*parts):
        kept = type("Kept", (), {"features": [p[1] for p in parts], "dice": [p[2] for p in parts],
                                 "targets": [p[0] for p in parts for _ in range(len(p[1]))],
                                 "modalities": [m for p in parts for m in p[3]]})
        return choose_threshold(Logits(), kept, crops=len(kept.targets), seed=0)

    parts = [crops("a", 10, 0.62, 0.90, 0.93), crops("b", 5, 0.82, 0.90, 0.93),
             crops("c", 90, 0.3, 0.80, 0.20)]
    threshold, selection = choose(*parts)
    assert threshold == 0.6 and selection["largest_target_fall"] <= 0
    assert selection["routed_to_task_members"] == pytest.approx(15 / 105)
    assert selection["dice_routed"] == pytest.approx(selection["dice_general"] + 15 * 0.03 / 105)
    threshold, selection = choose(*parts, crops("d", 4, 0.72, 0.90, 0.88))
    assert threshold == 0.8 and selection["routed_to_task_members"] == pytest.approx(5 / 109)
    threshold, selection = choose(*parts, crops("d", 4, 0.72, 0.90, 0.88, modality="ct"))
    assert threshold == 0.6 and selection["routed_to_task_members"] == pytest.approx(15 / 109)
    assert selection["largest_target_fall"] <= 0


def test_members_answer_only_on_the_modalities_they_were_tuned_on(tiny_moe, volume, tmp_path,
                                                                   capsys):
    """train-gate reads each member's training datasets off its bundle and its modalities off
    their images; the session's gate never routes an image of another modality to it; a bad entry
    is refused."""
    _, members, _ = tiny_moe
    for member, datasets in (("liver", ["CT"]), ("brain", ["MR", "elsewhere"]), ("mixed", ["both"]),
                             ("unknown", ["elsewhere"])):
        save_bundle(tmp_path / member, replace(members[1], name=member),
                    training={"datasets": datasets})
    others = [tmp_path / member for member in ("brain", "mixed", "unknown")]
    _, _, datasets = moe_members(tmp_path / "liver", others)
    assert datasets == {"brain": ["MR", "elsewhere"], "mixed": ["both"], "unknown": ["elsewhere"]}
    items = [LabelledImage(None, None, (0.0, 1.0, 1.0), task, modality=modality)
             for task, modality in (("CT", "ct"), ("MR", "mr"), ("MR", "mr"), ("both", "ct"),
                                    ("both", "mr"))]
    messages = []
    modalities = member_modalities({"liver": ["CT"], **datasets}, items, messages.append)
    assert modalities == {"liver": ["ct"], "brain": ["mr"], "mixed": ["ct", "mr"]}
    assert len(messages) == 1 and messages[0].startswith("unknown: ")

    path = copy_of(tiny_moe[0], tmp_path / "moe")
    meta = json.loads((path / "bundle.json").read_text())
    meta["gate"]["modalities"] = {"liver": ["ct"], "brain": ["mr"]}
    (path / "bundle.json").write_text(json.dumps(meta))
    bundle = load_bundle(path)
    assert bundle.gate.eligible("ct").tolist() == [True, True, False]
    assert main(["bundle", "inspect", str(path)]) == 0
    assert re.search(r"liver +answers on ct only", capsys.readouterr().out)
    ct = Volume(volume.array - 1100, volume.ijk_to_ras)  # the same image in HU: air is there
    for image, expected in ((volume, {"brain": "brain", "liver": "general"}),
                            (ct, {"brain": "general", "liver": "liver"})):
        for member, answer in expected.items():
            always(bundle.gate, member)
            session = InteractiveSession(bundle, device="cpu")
            session.set_image(image)
            assert session.add_point(centre_ras(image)).member == answer, (member, answer)

    meta["gate"]["modalities"] = {"brain": ["pet"]}
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"gate: .*'brain'.*\('ct', 'mr'\)"):
        load_bundle(path)


def test_pinning_bypasses_the_gate(tiny_moe, volume, monkeypatch):
    bundle = load_bundle(tiny_moe[0])
    calls = count_gate_calls(bundle.gate, monkeypatch)
    session = InteractiveSession(bundle, device="cpu")
    session.set_image(volume)
    assert session.add_point(centre_ras(volume)).member in MEMBERS and len(calls) == 1
    session.pin("liver")
    for offset in ((2, 0, 0), (0, 3, 0)):
        assert session.add_point(centre_ras(volume, offset)).member == "liver"
    assert len(calls) == 1
    session.pin(None)
    session.set_target("second")
    session.add_point(centre_ras(volume))
    assert len(calls) == 2


def test_members_are_read_on_first_use_only(tiny_moe, volume, monkeypatch):
    read = []
    load_file = store_module.load_file
    monkeypatch.setattr(store_module, "load_file",
                        lambda file: read.append(Path(file).name) or load_file(file))
    bundle = load_bundle(tiny_moe[0])
    bundle.gate.threshold = 1.05  # never reached: the general model answers, the gate still runs
    session = InteractiveSession(bundle, device="cpu")
    session.set_image(volume)
    results = [session.add_point(centre_ras(volume, offset)) for offset in ((0, 0, 0), (3, 0, 0))]
    assert [r.member for r in results] == ["general", "general"]
    assert bundle.members.loaded == ["general"]
    assert sorted(read) == ["gate.safetensors", "general.safetensors"]

    always(bundle.gate, "brain")
    session.set_target("second")
    assert session.add_point(centre_ras(volume)).member == "brain"
    assert bundle.members.loaded == ["general", "brain"] and "liver.safetensors" not in read


def test_bundles_without_a_gate_never_call_one(tiny_moe, volume, monkeypatch):
    calls = []
    gate_forward = Gate.forward
    monkeypatch.setattr(Gate, "forward",
                        lambda self, features: calls.append(1) or gate_forward(self, features))
    for bundle in (load_bundle(STUDENT_BUNDLE), load_bundle(tiny_moe[0])):  # a student, a moe
        session = InteractiveSession(bundle, device="cpu")
        session.set_image(volume)
        first = session.add_point(centre_ras(volume))
        assert session.mask.any()  # the second click corrects a mask
        assert session.add_point(centre_ras(volume, (2, 0, 0)), positive=False).member == first.member
    assert len(calls) == 1  # the moe session's first prompt; its correction stays with that member


def test_a_target_is_corrected_by_the_member_that_made_it(tiny_moe, volume, monkeypatch):
    """The gate routes a target's first prompt; corrective clicks stay with that member even when
    the gate would now choose another; a box routes again; undo restores the answering member."""
    monkeypatch.setattr(session_module, "changes", lambda *args: True)  # every answer is kept
    bundle = load_bundle(tiny_moe[0])
    calls = count_gate_calls(bundle.gate, monkeypatch)
    session = InteractiveSession(bundle, device="cpu")
    session.set_image(volume)
    always(bundle.gate, "brain")
    assert session.add_point(centre_ras(volume)).member == "brain" and session.mask.any()
    always(bundle.gate, "liver")
    corrections = [session.add_point(centre_ras(volume, offset), positive=positive)
                   for offset, positive in (((3, 0, 0), False), ((0, 2, 0), True))]
    assert [r.member for r in corrections] == ["brain", "brain"] and len(calls) == 1

    session.set_target("second")  # a new target is routed afresh
    assert session.add_point(centre_ras(volume)).member == "liver" and len(calls) == 2

    session.set_target("Segment_1")
    lo, hi = centre_ras(volume, (-4, -4, -2)), centre_ras(volume, (4, 4, 2))
    assert session.add_box(lo, hi).member == "liver" and len(calls) == 3  # a box routes again
    session.undo()
    always(bundle.gate, "general")
    assert session.add_point(centre_ras(volume, (1, 1, 0))).member == "brain"  # before the box
    assert len(calls) == 3
    for _ in range(4):
        session.undo()
    assert session.undo_depth == 0 and session.targets["Segment_1"].member is None


def answers(member, sign: float, monkeypatch) -> None:
    """Make ``member``'s decoder answer ``sign`` everywhere (+1: all inside, -1: all outside),
    whatever the prompts."""
    decode = member.model.decode

    def constant(*args, **kwargs):
        logits, iou = decode(*args, **kwargs)
        return torch.full_like(logits, sign), iou

    monkeypatch.setattr(member.model, "decode", constant)


def test_a_correction_the_member_ignores_goes_to_the_gate_then_the_general_model(
        tiny_moe, volume, monkeypatch):
    """A member whose answer to a click changes nothing near it does not lock its mask in: the
    gate's choice answers, and the general model when that one changes nothing either; the one
    that answered corrects the target from then on."""
    bundle = load_bundle(tiny_moe[0])
    session = InteractiveSession(bundle, device="cpu")
    session.set_image(volume)
    always(bundle.gate, "brain")
    answers(bundle.members["brain"], 1.0, monkeypatch)  # marks everything, whatever the clicks
    assert session.add_point(centre_ras(volume)).member == "brain" and session.mask.all()

    always(bundle.gate, "liver")
    answers(bundle.members["liver"], -1.0, monkeypatch)  # marks nothing, whatever the clicks
    click = centre_ras(volume, (2, 0, 0))
    k, j, i = np.round(np.linalg.solve(volume.ijk_to_ras, [*click, 1])[:3]).astype(int)[::-1]
    result = session.add_point(click, positive=False)
    assert result.member == "liver" and session.mask[k, j, i] == 0  # the brain changed nothing

    answers(bundle.members["general"], 1.0, monkeypatch)
    result = session.add_point(click)  # liver (the target's now, and the gate's) changes nothing
    assert result.member == "general" and session.mask[k, j, i] == 1


def test_finetune_writes_a_member_with_the_general_models_settings(phantoms, tmp_path):
    out = tmp_path / "CTPhantom"
    assert main(["finetune", "--bundle", str(STUDENT_BUNDLE), "--dataset", str(phantoms[0]),
                 "--out", str(out), "--steps", "1", "--batch-size", "1"]) == 0
    member, general = load_bundle(out), load_bundle(STUDENT_BUNDLE)
    assert member.meta["training"]["datasets"] == ["Dataset003_CTPhantom"]
    assert "fine-tuned from" in member.meta["training"]["method"]
    tuned, base = member.default, general.default
    assert (tuned.normalization, tuned.base_spacing, tuned.max_spacing) == (
        base.normalization, base.base_spacing, base.max_spacing)
    before = base.model.state_dict()
    assert any(not torch.equal(value, before[key]) for key, value in tuned.model.state_dict().items())


def test_train_gate_refuses_clashing_names_and_single_case_tasks(phantoms, tmp_path, capsys):
    assert main(["train-gate", "--general", str(STUDENT_BUNDLE), "--member", str(tmp_path / "general"),
                 "--dataset", str(phantoms[0]), "--out", str(tmp_path / "moe")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "member name 'general' is taken" in error[0]
    one_case = [LabelledImage(None, None, (0.0, 1.0, 1.0), "Dataset003_CTPhantom")]
    with pytest.raises(DatasetError, match="'Dataset003_CTPhantom' has one training case"):
        hold_out_last_case(one_case)


def test_the_gate_learns_from_first_prompts_unless_told_otherwise(phantoms, tmp_path):
    """The session routes a target at its first prompt, so by default the gate's scored crops carry
    a box (3D or one slice thick) or one positive click and nothing else; ``prompts="all"`` adds corrective rounds."""
    head = load_bundle().default
    items, targets = load_training_items(phantoms, head.normalization)
    rng = np.random.default_rng(0)
    seen = {}
    for name, settings in PROMPT_SETS.items():
        sampler = CropSampler(items, targets, head.normalization, head.crop_size, head.base_spacing,
                              head.max_spacing, 2, **settings)
        batches = [sampler(step, rng) for step in range(16)]
        seen[name] = ([b["extra_clicks"] for b in batches],
                      [b["start_masks"] is not None for b in batches])
        if name == "first":
            for batch in batches:
                for row in batch["labels"].tolist():
                    kinds = [k for k in row if k != PAD]
                    assert kinds in ([BOX_LOW, BOX_HIGH], [FLAT_BOX_LOW, FLAT_BOX_HIGH], [POSITIVE])
    assert seen["first"] == ([0] * 16, [False] * 16)
    assert max(seen["all"][0]) > 0 and any(seen["all"][1])
    with pytest.raises(ValueError, match="prompts must be one of"):
        train_gate(STUDENT_BUNDLE, [], phantoms, tmp_path / "moe", steps=1, prompts="some")
