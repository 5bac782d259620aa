"""ka2er bundle inspect (what a bundle holds, no model built, damaged files named) and ka2er bundle
export --monai (a MONAI Bundle that MONAI's ConfigParser turns back into the same model), for every
member kind: our promptable models, task experts, and imported SAM-Med3D models and nnU-Net experts."""

import json
import shutil

import pytest
import torch
from monai.bundle import ConfigParser
from safetensors.torch import load_file

import ka2er_core.export.monai_bundle as monai_bundle
from importer_fixtures import (ARCH, PATCH, TINY, ReferenceUNet, randomised, to_network, to_ours,
                               write_model_folder, write_sam_med3d_checkpoint)
from ka2er_core.bundle import (STUDENT_BUNDLE, BundleError, Expert, Segmenter, load_bundle,
                               save_bundle, save_moe_bundle)
from ka2er_core.bundle.inspect import inspect_bundle
from ka2er_core.cli import main
from ka2er_core.importers import import_nnunet, import_sam_med3d
from ka2er_core.modeling import ExpertPlan, ModelConfig, PromptableSegmenter, TaskExpert
from ka2er_core.modeling.expert import NnUNetExpert
from ka2er_core.modeling.gate import Gate
from ka2er_core.modeling.normalization import Normalization
from ka2er_core.modeling.prompt_encoder import BOX_HIGH, BOX_LOW, NEGATIVE, POSITIVE
from ka2er_core.modeling.sam_med3d import SamMed3D, SamMed3DConfig

pytestmark = pytest.mark.usefixtures("one_thread")

METADATA_KEYS = ("version", "monai_version", "pytorch_version", "numpy_version",
                 "optional_packages_version", "task", "description", "authors", "copyright",
                 "network_data_format")


@pytest.fixture(scope="module")
def student():
    return load_bundle(STUDENT_BUNDLE)


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """A moe bundle of two random tiny members ("general", "liver") and a gate at threshold 0.7."""
    torch.manual_seed(0)
    members = [Segmenter(name, PromptableSegmenter(ModelConfig.tiny()).eval(), Normalization("mr"),
                         1.5, 4.0) for name in ("general", "liver")]
    gate = Gate.for_model(["general", "liver"], members[0].model)
    gate.threshold = 0.7
    return save_moe_bundle(tmp_path_factory.mktemp("moe") / "bundle", members, gate.eval(),
                           labels=["liver"], metrics={"liver": {"dice": 0.9}})


@pytest.fixture(scope="module")
def expert(tmp_path_factory):
    torch.manual_seed(1)
    plan = ExpertPlan(task="Dataset009_Balls", labels={"ball": 1, "core": 3}, spacing=(1.0, 1.0, 3.0),
                      patch_size=(8, 32, 32),
                      kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
                      strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)), filters=(4, 8, 16, 16),
                      normalization={"kind": "ct", "low": -100.0, "high": 300.0, "clip": 5.0})
    return save_bundle(tmp_path_factory.mktemp("expert") / "bundle",
                       Expert("balls", TaskExpert(plan).eval()), kind="expert", labels=["ball", "core"])


@pytest.fixture(scope="module")
def sam_med3d(tmp_path_factory):
    """A student bundle imported from a small SAM-Med3D checkpoint (TINY: 32^3 crops), every weight
    random so that a mis-loaded tensor shows in the output."""
    torch.manual_seed(4)
    model = SamMed3D(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    folder = tmp_path_factory.mktemp("sam_med3d")
    checkpoint = write_sam_med3d_checkpoint(folder / "sam_med3d_tiny.pth", model.eval())
    return import_sam_med3d(checkpoint, folder / "bundle", progress=lambda line: None, config=TINY)


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory):
    """An expert bundle imported from a small nnU-Net v2 model folder (PlainConvUNet, CT scheme)."""
    folder = tmp_path_factory.mktemp("nnunet")
    write_model_folder(folder / "model", randomised(ReferenceUNet(ARCH, 3)), "CTNormalization")
    return import_nnunet(folder / "model", folder / "bundle", progress=lambda line: None)


def no_model(monkeypatch):
    """Make building any torch module fail: inspect must read files only."""
    def refuse(*args, **kwargs):
        raise AssertionError("inspect built a model")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ka2er: error: "), lines
    return lines[0]


def test_inspect_prints_kind_labels_parameters_and_training(student, capsys, monkeypatch):
    parameters = sum(value.numel() for value in student.default.model.state_dict().values())
    no_model(monkeypatch)
    assert main(["bundle", "inspect", str(STUDENT_BUNDLE)]) == 0
    out = capsys.readouterr().out
    assert "kind   student" in out
    assert "labels " + ", ".join(student.meta["labels"]) in out
    assert f"parameters     {parameters:,}" in out
    assert "general.safetensors, 6.4 MB, sha256 ok" in out
    assert "1.5 mm base, 4 mm max" in out and "64^3 voxels" in out
    assert "auto: CT window [-160, 240] HU" in out
    assert f"steps: {student.meta['training']['steps']}" in out
    assert "held_out_mean_dice_at_1_3_5_prompts" in out and "metrics\n  (none)" not in out

    assert main(["bundle", "inspect", "--json", str(STUDENT_BUNDLE)]) == 0
    report = json.loads(capsys.readouterr().out)
    general = report["members"]["general"]
    assert report["kind"] == "student" and report["labels"] == student.meta["labels"]
    assert general["parameters"] == parameters and general["weights"]["sha256"] == "ok"
    assert general["crop_size"] == 64 and general["normalization"]["kind"] == "auto"
    assert report["training"] == student.meta["training"]


def test_inspect_shows_the_gate_threshold_and_the_expert_plan(moe, expert, capsys):
    report = inspect_bundle(moe)
    assert report["gate"]["threshold"] == 0.7 and report["gate"]["members"] == ["general", "liver"]
    gate_values = sum(t.numel() for t in load_file(moe / "gate.safetensors").values())
    assert report["gate"]["parameters"] == gate_values
    assert main(["bundle", "inspect", str(moe)]) == 0
    out = capsys.readouterr().out
    assert "kind   moe" in out and "member liver" in out
    assert "gate\n  threshold      0.7\n  members        general, liver" in out
    assert "metrics\n  liver:\n    dice: 0.9" in out

    assert main(["bundle", "inspect", str(expert)]) == 0
    out = capsys.readouterr().out
    assert "architecture   expert (MONAI DynUNet, 4 stages, filters 4-8-16-16)" in out
    assert "task           Dataset009_Balls" in out and "labels         ball = 1, core = 3" in out
    assert "spacing        1 x 1 x 3 mm (i j k)" in out and "patch          8 x 32 x 32" in out
    assert inspect_bundle(expert)["members"]["balls"]["plan"]["patch_size"] == [8, 32, 32]


def test_inspect_names_a_changed_weight_file_and_bad_paths(tmp_path, capsys):
    copy = shutil.copytree(STUDENT_BUNDLE, tmp_path / "demo")
    weights = copy / "general.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    assert main(["bundle", "inspect", str(copy)]) == 2
    assert f"{weights}: sha256: " in error_line(capsys)
    assert main(["bundle", "inspect", "--json", str(copy)]) == 2
    assert json.loads(capsys.readouterr().out)["members"]["general"]["weights"]["sha256"] == "changed"

    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for path in (tmp_path / "missing", tmp_path / "empty", tmp_path / "file.txt"):
        assert main(["bundle", "inspect", str(path)]) == 2
        assert str(path) in error_line(capsys)


def test_a_file_is_not_a_bundle(tmp_path, capsys):
    """A bundle's own bundle.json or a weight file given instead of its folder: one clear error."""
    for path in (STUDENT_BUNDLE / "bundle.json", STUDENT_BUNDLE / "general.safetensors"):
        for read in (load_bundle, inspect_bundle):
            with pytest.raises(BundleError) as caught:
                read(path)
            assert str(caught.value) == f"{path}: expected a bundle folder with bundle.json, got a file"
        for action in (["inspect"], ["export", "--monai", str(tmp_path / "out")]):
            assert main(["bundle", *action, str(path)]) == 2
            assert error_line(capsys).endswith(f"{path}: expected a bundle folder with bundle.json, "
                                               "got a file")
    assert not (tmp_path / "out").exists()


def test_an_unknown_member_type_or_expert_variant_is_named(expert, tmp_path):
    copy = shutil.copytree(expert, tmp_path / "bundle")
    meta = json.loads((copy / "bundle.json").read_text())
    for field, value in (("variant", "nnunet2"), ("type", "unet")):
        meta["members"]["balls"]["architecture"][field] = value
        (copy / "bundle.json").write_text(json.dumps(meta))
        where = f"{copy / 'bundle.json'}: members.balls.architecture.{field}: unknown"
        for read in (load_bundle, inspect_bundle):
            with pytest.raises(BundleError) as caught:
                read(copy)
            assert str(caught.value).startswith(where)


def test_monai_export_gives_the_same_model(student, tmp_path, capsys):
    out = tmp_path / "monai"
    assert main(["bundle", "export", "--monai", str(out), str(STUDENT_BUNDLE)]) == 0
    metadata = json.loads((out / "configs" / "metadata.json").read_text())
    assert all(key in metadata for key in METADATA_KEYS)
    assert set(metadata["network_data_format"]["inputs"]) == {"image", "coords", "labels", "mask"}
    assert metadata["ka2er"] == {"member": "general", "bundle": student.meta}
    assert (out / "docs" / "README.md").read_text() == (STUDENT_BUNDLE / "README.md").read_text()

    parser = ConfigParser()
    parser.read_config(str(out / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, PromptableSegmenter)
    network.load_state_dict(torch.load(out / "models" / "model.pt", weights_only=True))
    network.eval()
    torch.manual_seed(2)
    image = torch.randn(1, 1, 64, 64, 64)
    coords = torch.tensor([[[20.0, 22.0, 18.0], [44.0, 40.0, 46.0], [32.0, 31.0, 33.0]]])
    labels = torch.tensor([[BOX_LOW, BOX_HIGH, POSITIVE]])
    with torch.inference_mode():
        logits, iou = network(image, coords, labels)
        expected_logits, expected_iou = student.default.model(image, coords, labels)
    assert torch.allclose(logits, expected_logits) and torch.allclose(iou, expected_iou)
    safetensors_state = load_file(out / "models" / "model.safetensors")
    state = student.default.model.state_dict()
    assert all(torch.equal(safetensors_state[k], v) for k, v in state.items())

    parser["bundle_root"] = str(out)
    parser.get_parsed_content("initialize")  # the config's own recipe loads the same weights
    loaded = parser.get_parsed_content("network").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in student.default.model.state_dict().items())


def test_export_refuses_an_existing_folder_and_never_leaves_half_a_bundle(tmp_path, capsys,
                                                                          monkeypatch):
    out = tmp_path / "monai"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["bundle", "export", "--monai", str(out), str(STUDENT_BUNDLE)]) == 2
    assert str(out) in error_line(capsys) and (out / "mine.txt").exists()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(monai_bundle.torch, "save", broken_save)
    assert main(["bundle", "export", "--force", "--monai", str(out), str(STUDENT_BUNDLE)]) == 2
    assert error_line(capsys).endswith(f"{out}: cannot write (disk full)")
    assert main(["bundle", "export", "--monai", str(tmp_path / "new"), str(STUDENT_BUNDLE)]) == 2
    assert error_line(capsys).endswith(f"{tmp_path / 'new'}: cannot write (disk full)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["monai"]
    assert [p.name for p in out.iterdir()] == ["mine.txt"]

    monkeypatch.undo()
    assert main(["bundle", "export", "--force", "--monai", str(out), str(STUDENT_BUNDLE)]) == 0
    assert not (out / "mine.txt").exists() and (out / "models" / "model.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["monai"]


def test_export_a_moe_member_and_an_expert(moe, expert, tmp_path, capsys):
    out = tmp_path / "liver"
    assert main(["bundle", "export", "--member", "liver", "--monai", str(out), str(moe)]) == 0
    assert json.loads((out / "configs" / "metadata.json").read_text())["ka2er"]["member"] == "liver"
    expected = load_file(moe / "liver.safetensors")
    exported = torch.load(out / "models" / "model.pt", weights_only=True)
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[k], v) for k, v in expected.items())
    unknown = ["--member", "spleen", "--monai", str(tmp_path / "x"), str(moe)]
    assert main(["bundle", "export", *unknown]) == 2
    assert "no member 'spleen'; the members are general, liver" in error_line(capsys)

    out = tmp_path / "expert"
    assert main(["bundle", "export", "--monai", str(out), str(expert)]) == 0
    parser = ConfigParser()
    parser.read_config(str(out / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(out / "models" / "model.pt", weights_only=True))
    original = load_bundle(expert).default.model
    image = torch.randn(1, 1, 8, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(network.eval()(image), original(image))
    assert list(parser.get_parsed_content("inferer").roi_size) == [8, 32, 32]
    metadata = json.loads((out / "configs" / "metadata.json").read_text())
    classes = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert classes == {"0": "background", "1": "ball (label value 1)", "2": "core (label value 3)"}


def test_inspect_describes_imported_sam_med3d_and_nnunet_members(sam_med3d, nnunet, capsys,
                                                                    monkeypatch):
    sam_parameters = sum(t.numel() for t in load_file(sam_med3d / "general.safetensors").values())
    nnunet_parameters = sum(t.numel() for t in load_file(nnunet / "Dataset042_Toy.safetensors").values())
    no_model(monkeypatch)
    assert main(["bundle", "inspect", str(sam_med3d)]) == 0
    out = capsys.readouterr().out
    assert ("architecture   SAM-Med3D (ViT encoder 24 wide, 2 blocks, 2 heads, 8^3-voxel patches, 4^3 "
            "tokens; prompt and decoder width 24, 2 decoder layers; points only, no boxes)") in out
    assert "spacing        1.5 mm base, 1.5 mm max" in out and "crop           32^3 voxels" in out
    assert "normalisation  MR z-score on foreground, clipped at +-100 sd" in out
    assert f"parameters     {sam_parameters:,}" in out and "general.safetensors" in out
    assert "imported_from: SAM-Med3D (uni-medical/SAM-Med3D)" in out
    general = inspect_bundle(sam_med3d)["members"]["general"]
    assert general["type"] == "sam_med3d" and general["crop_size"] == 32
    assert SamMed3DConfig.from_dict(general["architecture"]) == TINY
    assert general["parameters"] == sam_parameters and general["weights"]["sha256"] == "ok"

    assert main(["bundle", "inspect", str(nnunet)]) == 0
    out = capsys.readouterr().out
    assert ("architecture   expert imported from nnU-Net v2 (its PlainConvUNet as a MONAI DynUNet "
            "with nnU-Net's decoder, 4 stages, filters 4-8-16-16)") in out
    assert "task           Dataset042_Toy" in out and "labels         liver = 1, tumour = 2" in out
    assert "spacing        3 x 0.9 x 0.8 mm (i j k)" in out and "patch          32 x 24 x 16" in out
    assert "normalisation  CT window [-200, 400] HU" in out
    assert f"parameters     {nnunet_parameters:,}" in out and "trainer: nnUNetTrainer" in out
    toy = inspect_bundle(nnunet)["members"]["Dataset042_Toy"]
    assert toy["type"] == "expert" and toy["variant"] == "nnunet"
    assert toy["plan"]["patch_size"] == [32, 24, 16] and toy["parameters"] == nnunet_parameters


def exported_network(out):
    """network_def of an exported MONAI Bundle, instantiated by MONAI's ConfigParser, with the
    weights of models/model.pt loaded strictly (every key, every shape), in eval mode."""
    parser = ConfigParser()
    parser.read_config(str(out / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(out / "models" / "model.pt", weights_only=True), strict=True)
    return parser, network.eval()


def test_monai_export_of_an_imported_sam_med3d_gives_the_same_model(sam_med3d, tmp_path):
    out = monai_bundle.export_monai_bundle(sam_med3d, tmp_path / "monai")
    metadata = json.loads((out / "configs" / "metadata.json").read_text())
    assert all(key in metadata for key in METADATA_KEYS) and "SAM-Med3D" in metadata["description"]
    labels = metadata["network_data_format"]["inputs"]["labels"]
    assert labels["value_range"] == [-1, 1] and set(labels["channel_def"]) == {"-1", "0", "1"}
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32, 32]
    assert metadata["ka2er"]["bundle"]["members"]["general"]["architecture"]["type"] == "sam_med3d"

    parser, network = exported_network(out)
    assert isinstance(network, SamMed3D) and network.config == TINY
    original = load_bundle(sam_med3d).default.model
    torch.manual_seed(5)
    image = torch.randn(1, 1, 32, 32, 32)
    coords = torch.tensor([[[10.0, 12.0, 14.0], [20.0, 22.0, 9.0]]])
    labels = torch.tensor([[POSITIVE, NEGATIVE]])
    mask = (torch.rand(1, 1, 32, 32, 32) > 0.5).float()
    with torch.inference_mode():
        for previous in (None, mask):
            logits, iou = network(image, coords, labels, previous)
            expected_logits, expected_iou = original(image, coords, labels, previous)
            assert torch.equal(logits, expected_logits) and torch.equal(iou, expected_iou)
    assert parser.get_parsed_content("crop_size") == 32
    assert parser.get_parsed_content("normalization")["clip"] == 100.0
    parser["bundle_root"] = str(out)
    parser.get_parsed_content("initialize")
    loaded = parser.get_parsed_content("network").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in original.state_dict().items())


def test_monai_export_of_an_imported_nnunet_expert_gives_the_same_model(nnunet, tmp_path):
    out = monai_bundle.export_monai_bundle(nnunet, tmp_path / "monai")
    inference = json.loads((out / "configs" / "inference.json").read_text())
    assert inference["network_def"]["variant"] == "nnunet"
    metadata = json.loads((out / "configs" / "metadata.json").read_text())
    assert "nnU-Net v2 model imported" in metadata["description"]

    parser, network = exported_network(out)
    assert isinstance(network, NnUNetExpert)
    original = load_bundle(nnunet).default.model
    torch.manual_seed(6)
    x = to_ours(torch.randn(1, 1, *PATCH))
    with torch.inference_mode():
        assert torch.equal(network(x), original(x))
        assert to_network(network(x)).shape == (1, 3, *PATCH)
    assert list(parser.get_parsed_content("inferer").roi_size) == [32, 24, 16]
    parser["bundle_root"] = str(out)
    parser.get_parsed_content("initialize")
    loaded = parser.get_parsed_content("network").state_dict()
    assert loaded.keys() == original.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in original.state_dict().items())


@pytest.mark.parametrize("action", ["inspect", "export", "import-sam-med3d", "import-nnunet"])
def test_help(action, capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["bundle", action, "--help"])
    assert exit_code.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: ka2er bundle {action}")
