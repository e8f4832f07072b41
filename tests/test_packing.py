import json
import shutil

import numpy as np
import pytest
import torch

from piggyback.data.datasets import load_task_data, make_loader
from piggyback.data.transforms import TaskTransform
from piggyback.methods.checkpoints import load_task_checkpoint
from piggyback.methods.piggyback.method import discrete_masks, task_masks
from piggyback.methods.registry import METHODS, Hyperparameters
from piggyback.methods.run import TaskRun
from piggyback.model.backbones import ArchSpec, build_task_model
from piggyback.model.checkpoints import CheckpointError, atomic_save, load_checkpoint
from piggyback.packs.packed_file import PackError, pack_bits, read_manifest, read_pack, unpack_bits
from piggyback.stages.evaluation import TaskData, evaluate_pack
from piggyback.stages.packing import pack
from piggyback.training.loop import train_task

INDEPENDENT = [name for name, entry in METHODS.items() if not entry.sequential]
MASK_METHODS = [name for name, entry in METHODS.items() if entry.stores_masks]


@pytest.fixture(scope="module")
def trained(digits_target, tmp_path_factory):
    """One short training per method on the digits task, saved as checkpoints."""
    root = tmp_path_factory.mktemp("trained")
    train, test = load_task_data(digits_target, TaskTransform("cropped", 32))
    paths = {}
    for method in INDEPENDENT:
        model = build_task_model(ArchSpec("resnet18"), 5, weights="random")
        masked = {"mask_init": "uniform"} if METHODS[method].stores_masks else {}
        hp = Hyperparameters.for_method(method, epochs=1, lr=1e-3, **masked)
        run = TaskRun("resnet18", method, "digits", train.classes, 0, hp)
        result = train_task(
            model,
            run,
            lambda e: make_loader(train, 32, True, e),
            make_loader(test, 64, False, 0),
            root / f"{method}.state",
            torch.device("cpu"),
            progress=False,
            log=lambda _: None,
        )
        paths[method] = root / f"{method}.pt"
        shutil.copyfile(result["best_path"], paths[method])
    return paths


def evaluate(pack, data, arch="resnet18", task="digits", weights="random"):
    tasks = {task: TaskData(data, TaskTransform("cropped", 32))}
    return evaluate_pack(pack, tasks, arch, ArchSpec(arch), 64, weights=weights)


def test_bits_round_trip_and_use_numpy_order():
    keep = torch.rand(3, 5, 7) > 0.5
    packed = pack_bits(keep)
    assert packed.dtype == torch.uint8 and packed.numel() == (105 + 7) // 8
    assert np.array_equal(packed.numpy(), np.packbits(keep.numpy().ravel()))
    assert torch.equal(unpack_bits(packed, keep.shape), keep)


def test_a_task_checkpoint_is_a_plain_dict_on_disk_with_the_keys_of_version_2(trained, tmp_path):
    """Training writes the record as the dict it always wrote: the same keys in the same
    order, the method's own ones only where it has them; a dict with other keys is
    refused by name."""
    identity = ["format", "version", "arch", "method", "role", "dataset", "classes", "seed"]
    identity += ["hyperparameters", "backbone_sha256", "head_name", "speed"]
    best = ["epoch", "phase", "test_top1_error", "test_top5_error", "test_images", "head"]
    own = {
        "mask": (["mask", "coverage"], ["masks"]),
        "weights": ([], ["weights"]),
        "head": ([], []),
    }
    for method, path in trained.items():
        on_disk = load_checkpoint(path)
        meta, learned = own[METHODS[method].stores]
        assert list(on_disk) == identity + meta + best + learned, method
        record = load_task_checkpoint(path)
        assert list(record.to_dict()) == list(on_disk)
    atomic_save({**on_disk, "epochs_done": 3}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt is not a task checkpoint.*epochs_done"):
        load_task_checkpoint(tmp_path / "other.pt")


def test_a_packed_task_stores_what_its_registry_entry_says(trained, tmp_path):
    """The entry's ``stores`` is what the file holds besides the head: nothing, mask
    planes (a sign plane too for ternary masks) or a whole network."""
    parts = {"head": set(), "weights": {"weights"}}
    for method, path in trained.items():
        entry = METHODS[method]
        out = tmp_path / f"{method}.safetensors"
        manifest = pack([path], out).manifest
        assert manifest["tasks"]["digits"]["storage"] == entry.stores
        stored = {key.split("/")[1] for key in read_pack(out).tensors} - {"head"}
        ternary = entry.options.get("mask_kind") == "ternary"
        expected = parts.get(entry.stores, {"mask", "sign"} if ternary else {"mask"})
        assert stored == expected, method


@pytest.mark.parametrize("method", MASK_METHODS)
def test_pack_then_unpack_is_bit_exact(trained, tmp_path, method):
    checkpoint = load_task_checkpoint(trained[method])
    out = tmp_path / "pack.safetensors"
    pack([trained[method]], out, tmp_path / "stats.tsv")
    packed = read_pack(out)
    masks = task_masks(packed, "digits")
    expected = discrete_masks(checkpoint)
    if METHODS[method].options["mask_kind"] == "ternary":
        assert any((m < 0).any() for m in expected.values()), "test needs some -1 entries"
    assert expected.keys() == masks.keys()
    for name, mask in expected.items():
        assert torch.equal(mask, masks[name]), name
    assert torch.equal(packed.head("digits")["weight"], checkpoint.head["weight"])


def test_packed_masks_cost_one_bit_per_weight(trained, tmp_path):
    out = tmp_path / "pack.safetensors"
    manifest = pack([trained["piggyback"]], out, tmp_path / "stats.tsv").manifest
    weights = sum(int(np.prod(s)) for s in manifest["tasks"]["digits"]["layers"].values())
    head_bytes = 4 * (512 * 5 + 5)
    header = 20_000
    assert out.stat().st_size <= weights / 8 + head_bytes + header
    stats = (tmp_path / "stats.tsv").read_text().splitlines()
    assert stats[0].split("\t") == [
        "task",
        "layer",
        "weights",
        "zero_pct",
        "minus_one_pct",
        "bits_per_weight",
    ]
    assert stats[-1].startswith("digits\tTOTAL\t" + str(weights))


@pytest.mark.parametrize("method", INDEPENDENT)
def test_packed_evaluation_equals_end_of_training_evaluation(
    trained, digits_target, tmp_path, method
):
    checkpoint = load_task_checkpoint(trained[method])
    out = tmp_path / "pack.safetensors"
    pack([trained[method]], out)
    result = evaluate(out, digits_target)["tasks"][0]
    assert result["top1_error"] == checkpoint.test_top1_error
    assert result["top5_error"] == checkpoint.test_top5_error
    assert result["images"] == checkpoint.test_images


def test_evaluation_refuses_other_backbone_weights(trained, digits_target, tmp_path):
    out = tmp_path / "pack.safetensors"
    pack([trained["piggyback"]], out)
    other = build_task_model(ArchSpec("resnet18"), 5, weights="random")
    torch.nn.init.zeros_(other.backbone.conv1.weight)
    torch.save(other.backbone.state_dict(), tmp_path / "other.pth")
    with pytest.raises(PackError, match="sha256"):
        evaluate(out, digits_target, weights=tmp_path / "other.pth")


def test_evaluation_refuses_another_arch_or_a_missing_task(trained, digits_target, tmp_path):
    out = tmp_path / "pack.safetensors"
    pack([trained["piggyback"]], out)
    with pytest.raises(PackError, match="packed for arch 'resnet18', not 'resnet34'"):
        evaluate(out, digits_target, arch="resnet34")
    with pytest.raises(PackError, match="holds digits, but no test data was given"):
        evaluate(out, digits_target, task="flowers")
    with pytest.raises(PackError, match="holds no task 'flowers'"):
        read_pack(out).head("flowers")


def test_packing_refuses_mixed_methods(trained, tmp_path):
    with pytest.raises(PackError, match="one packed file holds one arch, method"):
        pack([trained["piggyback"], trained["finetune"]], tmp_path / "p.safetensors")


def test_edited_packed_file_is_detected(trained, tmp_path):
    out = tmp_path / "pack.safetensors"
    pack([trained["piggyback"]], out)
    data = bytearray(out.read_bytes())
    data[-10] ^= 0xFF
    out.write_bytes(bytes(data))
    with pytest.raises(PackError, match="checksum"):
        read_pack(out)


def test_manifest_is_plain_json_in_the_safetensors_header(trained, tmp_path):
    out = tmp_path / "pack.safetensors"
    pack([trained["piggyback"]], out)
    raw = out.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    manifest = json.loads(header["__metadata__"]["piggyback"])
    assert manifest == read_manifest(out)
    assert manifest["mask"] == {"kind": "binary", "threshold": 5e-3}
    entry = header["digits/mask/conv1.weight"]
    assert entry["dtype"] == "U8" and entry["shape"] == [(64 * 3 * 7 * 7 + 7) // 8]
