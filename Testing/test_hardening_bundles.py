"""Malformed bundles on the command line (issue 19, item 6): ``ka2er bundle inspect`` and every
loader (``demo``, ``evaluate``, ``serve --bundle``) answer one line naming the file and the field,
exit 2, no traceback, and leave the bundle as it was."""

import hashlib
import json
import shutil
import struct
import subprocess
import sys

import pytest
import torch

import ka2er_core.demo as demo_module
import ka2er_core.inference as inference_module
import ka2er_core.server.serve as serve_module
from command_line import one_error_line
from ka2er_core.bundle import Expert, Segmenter, save_bundle, save_moe_bundle
from ka2er_core.cli import main
from ka2er_core.modeling import ExpertPlan, ModelConfig, PromptableSegmenter, TaskExpert
from ka2er_core.modeling.gate import Gate
from ka2er_core.modeling.normalization import Normalization

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Small valid bundles to break: a student ("general"), a moe ("general", "liver", a gate) and an
    expert ("balls")."""
    root = tmp_path_factory.mktemp("bundles")
    torch.manual_seed(0)
    members = [Segmenter(name, PromptableSegmenter(ModelConfig.tiny()).eval(), Normalization("mr"),
                         1.5, 4.0) for name in ("general", "liver")]
    save_bundle(root / "student", members[0])
    save_moe_bundle(root / "moe", members, Gate.for_model(["general", "liver"], members[0].model))
    plan = ExpertPlan(task="Dataset009_Balls", labels={"ball": 1}, spacing=(1.0, 1.0, 3.0),
                      patch_size=(8, 32, 32), kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)),
                      strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)), filters=(4, 8, 8),
                      normalization={"kind": "ct", "low": -100.0, "high": 300.0, "clip": 5.0})
    save_bundle(root / "expert", Expert("balls", TaskExpert(plan).eval()), kind="expert")
    return root


def edit(path: str, value):
    """A change of a bundle folder: its ``bundle.json``'s field at dotted ``path`` set to ``value``
    (None: removed)."""
    def change(folder):
        meta = json.loads((folder / "bundle.json").read_text())
        *parents, key = path.split(".")
        entry = meta
        for parent in parents:
            entry = entry[parent]
        if value is None:
            del entry[key]
        else:
            entry[key] = value
        (folder / "bundle.json").write_text(json.dumps(meta))
    return change


def safetensors_file(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def weights_with_checksum(name: str, content: bytes):
    """Replace weight file ``name`` by ``content`` and record its sha256: a header a checksum
    cannot catch."""
    def change(folder):
        (folder / name).write_bytes(content)
        meta = json.loads((folder / "bundle.json").read_text())
        meta["sha256"][name] = hashlib.sha256(content).hexdigest()
        (folder / "bundle.json").write_text(json.dumps(meta))
    return change


def json_text(replace: str, by: str):
    def change(folder):
        manifest = folder / "bundle.json"
        manifest.write_text(manifest.read_text().replace(replace, by, 1))
    return change


ALL, LOADERS = ("inspect", "demo", "evaluate", "serve"), ("demo", "evaluate", "serve")
ABSURD_SHAPE = {"w": {"dtype": "F32", "shape": [2**40] * 3, "data_offsets": [0, 4]}}
ONE_VALUE = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
MALFORMED = {  # name: (bundle, change of its folder, what the error line names, commands)
    "string normalization": ("student", edit("members.general.normalization", "ct"),
                             "bundle.json: members.general.normalization: expected an object", ALL),
    "unknown normalization kind": ("student", edit("members.general.normalization.kind", "pet"),
                                   "bundle.json: members.general.normalization.kind: ", ALL),
    "list sha256": ("student", edit("sha256", ["x"]), "bundle.json: sha256: expected an object", ALL),
    "int weights": ("student", edit("members.general.weights", 5),
                    "bundle.json: members.general.weights: expected the name of a", ALL),
    "weights outside the folder": ("student", edit("members.general.weights", "../x.safetensors"),
                                   "bundle.json: members.general.weights: ", ALL),
    "negative spacing": ("student", edit("members.general.base_spacing", -1.5),
                         "bundle.json: members.general.base_spacing: expected a number > 0", ALL),
    "string spacing": ("student", edit("members.general.max_spacing", "4"),
                       "bundle.json: members.general.max_spacing: expected a number > 0", ALL),
    "NaN spacing": ("student", json_text('"max_spacing": 4.0', '"max_spacing": NaN'),
                    "bundle.json: members.general.max_spacing: expected a number > 0", ALL),
    "max spacing below base": ("student", edit("members.general.max_spacing", 1.0),
                               "bundle.json: members.general.max_spacing: 1 mm is finer", ALL),
    "crop 0": ("student", edit("members.general.architecture.crop_size", 0),
               "bundle.json: members.general.architecture.crop_size: expected an integer", ALL),
    "no decoder heads": ("student", edit("members.general.architecture.decoder_heads", 0),
                         "bundle.json: members.general.architecture.decoder_heads: ", ALL),
    "unknown kind": ("student", edit("kind", "banana"), "bundle.json: kind: unknown kind", ALL),
    "missing members": ("student", edit("members", None), "bundle.json: members: no members", ALL),
    "missing spacing": ("student", edit("members.general.base_spacing", None),
                        "bundle.json: members.general.base_spacing: required field is missing", ALL),
    "string labels": ("student", edit("labels", "liver"), "bundle.json: labels: expected a list", ALL),
    "list training": ("student", edit("training", [1]), "bundle.json: training: expected an object",
                      ALL),
    "nested too deep": ("student", json_text('"labels": []', '"labels": ' + "[" * 10**5 + "]" * 10**5),
                        "bundle.json: invalid JSON (nested too deep)", ALL),
    "a 2^62 header length": ("student", weights_with_checksum(
        "general.safetensors", struct.pack("<Q", 2**62) + b"{}"),
        "general.safetensors: header: a length of 4611686018427387904 bytes exceeds", ALL),
    "absurd tensor shape": ("student", weights_with_checksum(
        "general.safetensors", safetensors_file(ABSURD_SHAPE, bytes(4))),
        "general.safetensors: header.w.shape: ", ALL),
    "tensors of another model": ("student", weights_with_checksum(
        "general.safetensors", safetensors_file(ONE_VALUE, bytes(4))),
        "general.safetensors: header: no tensor ", LOADERS),
    "missing weights": ("student", lambda folder: (folder / "general.safetensors").unlink(),
                        "general.safetensors: weight file missing", ALL),
    "string gate threshold": ("moe", edit("gate.threshold", "x"),
                              "bundle.json: gate.threshold: expected a number in [0, 1]", ALL),
    "negative gate width": ("moe", edit("gate.hidden", -1), "bundle.json: gate.hidden: ", ALL),
    "gate without weights": ("moe", edit("gate.weights", None),
                             "bundle.json: gate.weights: required field is missing", ALL),
    "gate of other members": ("moe", edit("gate.members", ["liver", "general"]),
                              "bundle.json: gate.members: ", ALL),
    "gate header": ("moe", weights_with_checksum("gate.safetensors", b"\x01"),
                    "gate.safetensors: header: 1 bytes: too short", ALL),
    "member normalisation differs": ("moe", edit("members.liver.normalization.clip", 3.0),
                                     "bundle.json: members.liver.normalization: ", ALL),
    "string expert normalisation": ("expert", edit("members.balls.architecture.plan.normalization",
                                                   "ct"),
                                    "bundle.json: members.balls.architecture.plan.normalization: ",
                                    ("inspect", "evaluate", "serve")),
}


def broken(bundles, tmp_path, name):
    source, change, expected, commands = MALFORMED[name]
    folder = shutil.copytree(bundles / source, tmp_path / "bundle")
    change(folder)
    return folder, expected, commands


@pytest.fixture
def nothing_runs_past_loading(monkeypatch):
    """A loader that accepted a malformed bundle fails the test here instead of running on."""
    def accepted(*args, **kwargs):
        raise AssertionError("a malformed bundle was loaded")

    monkeypatch.setattr(demo_module, "InteractiveSession", accepted)
    monkeypatch.setattr(inference_module, "InteractiveSession", accepted)
    monkeypatch.setattr(serve_module, "create_app", accepted)


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_bundle_is_one_line_naming_file_and_field(name, bundles, tmp_path, capsys,
                                                              nothing_runs_past_loading):
    folder, expected, commands = broken(bundles, tmp_path, name)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    arguments = {"inspect": ["bundle", "inspect"], "demo": ["demo", "--out", tmp_path / "demo"],
                 "evaluate": ["evaluate", "--dataset", tmp_path / "no-dataset", "--out",
                              tmp_path / "evaluation"],
                 "serve": ["serve", "--insecure-local"]}
    for command in commands:
        flag = [] if command == "inspect" else ["--bundle"]
        assert main([*map(str, arguments[command] + flag), str(folder)]) == 2, command
        line = one_error_line(capsys)
        assert f"{folder}/{expected}" in line, (command, line)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert not (tmp_path / "demo").exists() and not (tmp_path / "evaluation").exists()


def test_the_real_command_exits_2_with_one_line(bundles, tmp_path):
    """Through the installed entry point, as a user runs it: the inspector on a weight file whose
    header claims 2^62 bytes (its checksum recorded, so only the header check can catch it)."""
    folder, _, _ = broken(bundles, tmp_path, "a 2^62 header length")
    result = subprocess.run([sys.executable, "-m", "ka2er_core.cli", "bundle", "inspect",
                             str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "parameters     unknown (unreadable header)" in result.stdout
    assert result.stderr.strip().splitlines() == [
        f"ka2er: error: {folder}/general.safetensors: header: a length of 4611686018427387904 "
        "bytes exceeds the file (10 bytes) or the format's limit (100000000 bytes)"]
