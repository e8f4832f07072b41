"""Reliability: bad input gets a clear error, faults lose nothing, loaded files run no code.

Each test pins one case of docs/reliability.md; the section headers follow its numbering.
"""

from __future__ import annotations

import ast
import ctypes
import errno
import os
import pickle
import re
import resource
import runpy
import shutil
import signal
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml
from script_args import digits_evaluate_args, digits_task_args

from piggyback.data.datasets import load_task_data, make_loader
from piggyback.data.digits import write_digits_task
from piggyback.data.images import DataError, error_message
from piggyback.data.transforms import TaskTransform
from piggyback.files.atomic import WriteError, atomic_write, atomic_write_text
from piggyback.interface.config import ConfigError, check_config
from piggyback.methods.piggyback.method import task_masks
from piggyback.methods.registry import METHODS, Hyperparameters, position_settings
from piggyback.methods.run import TaskRun
from piggyback.model.backbones import ArchSpec, BackboneError, build_backbone, build_task_model
from piggyback.model.checkpoints import CheckpointError, atomic_save, load_checkpoint
from piggyback.packs.packed_file import PackError, read_manifest, read_pack
from piggyback.stages.packing import pack
from piggyback.training.loop import train_task

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


# --- shared pieces ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    """Digits 5-7: three classes, 12 images each (8 train, 4 test)."""
    root = tmp_path_factory.mktemp("tiny_task")
    write_digits_task(root, [5, 6, 7], per_class=12)
    return root


@pytest.fixture
def task(tiny_task, tmp_path):
    """A copy of the tiny task that a test may damage."""
    return Path(shutil.copytree(tiny_task, tmp_path / "task"))


@pytest.fixture(scope="module")
def packed(tiny_task, tmp_path_factory):
    """One epoch of piggyback on the tiny task, packed: (checkpoint, packed file)."""
    root = tmp_path_factory.mktemp("packed")
    train, test = load_task_data(tiny_task, TaskTransform("cropped", 32))
    model = build_task_model(ArchSpec("resnet18"), 3, weights="random")
    hp = Hyperparameters.for_method("piggyback", epochs=1, batch_size=32, mask_init="uniform")
    run = TaskRun("resnet18", "piggyback", "digits", train.classes, 0, hp)
    result = train_task(
        model,
        run,
        lambda epoch: make_loader(train, 32, True, epoch),
        make_loader(test, 64, False, 0),
        root / "state",
        torch.device("cpu"),
        progress=False,
        log=lambda _: None,
    )
    checkpoint = root / "digits.pt"
    shutil.copyfile(result["best_path"], checkpoint)
    pack([checkpoint], root / "pack.safetensors")
    return checkpoint, root / "pack.safetensors"


def run_script(script: str, args: list, monkeypatch, capsys) -> tuple[int, str, str]:
    """Run ``src/<script>`` in this process (no second torch import): exit code, out, err."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    code = 0
    try:
        runpy.run_path(str(SRC / script), run_name="__main__")
    except SystemExit as exited:
        code = exited.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def train_args(data: Path, out: Path, *extra) -> list:
    return [
        *digits_task_args(data),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        out / "task.pt",
        "--metrics",
        out / "metrics.tsv",
        *extra,
    ]


def evaluate_args(
    pack: Path, data: Path, out: Path, *extra, arch="resnet18", task="digits"
) -> list:
    return [
        pack,
        *digits_evaluate_args(data, arch, task),
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        out,
        *extra,
    ]


def temporary_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- 1. kill at any moment, lose nothing ---------------------------------------------------

KILL_EPOCHS = 3
KILL_TASK = "digits_5to9"


def kill_test_config(workdir: Path) -> Path:
    """config/digits.yaml cut to resnet18 (pretrained by the pretrain stage), piggyback,
    one task of 20 images a class at 32 px, 3 epochs, one thread a job."""
    config = yaml.safe_load((ROOT / "config" / "digits.yaml").read_text())
    pretrain = config["pretrain"]
    pretrain.pop("arch_hyperparameters", None)
    pretrain["hyperparameters"]["epochs"] = 1
    keep = {pretrain["dataset"]: 10, KILL_TASK: 16}
    config["datasets"] = {name: config["datasets"][name] for name in keep}
    for name, per_class in keep.items():
        config["datasets"][name]["source"]["per_class"] = per_class
    config |= {
        "name": "killed",
        "experiment": {
            "archs": ["resnet18"],
            "methods": ["piggyback"],
            "orderings": ["forward"],
            "runs": 1,
        },
        "methods": {
            "piggyback": {**config["methods"]["piggyback"], "epochs": KILL_EPOCHS, "batch_size": 32}
        },
        "orderings": {"forward": [KILL_TASK]},
        "image_size": 32,
        "paths": {key: f"results/killed/{key}" for key in ("data", "downloads", "resources")},
        "compute": {
            "workers": 0,
            "train": {"threads": 1, "gpus": 0},
            "evaluate": {"threads": 1, "gpus": 0},
        },
    }
    config["archs"]["resnet18"] = {"builder": "resnet18", "weights": "pretrain"}
    path = workdir / "killed.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake_command(workdir: Path, config: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")),
        *("--workflow-profile", "none"),  # no local profile: this test names every flag
        *("--directory", str(workdir), "--configfile", str(config), "--cores", "2"),
    ]


def run_snakemake(command: list[str], check: bool = True) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command[3:])} failed:\n{output}")
    return output


def workflow_results(results: Path) -> dict:
    """What a run produces: packed masks and heads, the table, the per-epoch metrics."""
    packed = read_pack(results / "packed/resnet18/piggyback/run0.safetensors")
    metrics = (results / f"train/resnet18/piggyback/run0/{KILL_TASK}.metrics.tsv").read_text()
    header, *rows = [line.split("\t") for line in metrics.splitlines()]
    timing = header.index("seconds")  # the only column that may differ between runs
    return {
        "masks": task_masks(packed, KILL_TASK),
        "head": packed.head(KILL_TASK),
        "table": (results / "table.tsv").read_text(),
        "metrics": [row[:timing] + row[timing + 1 :] for row in rows],
        "content_sha256": packed.manifest["content_sha256"],
    }


def processes_in_group(group: int) -> list[int]:
    alive = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # fields: state, ppid, pgrp
            alive.append(int(stat_file.parent.name))
    return alive


@pytest.mark.slow
def test_workflow_sigkilled_mid_training_ends_as_an_uninterrupted_run(tmp_path):
    """Two copies of one workflow, its data prepared and its backbone pretrained: one runs
    uninterrupted; the other, run beside it, is SIGKILLed as a whole (Snakemake and its
    jobs, one process group) once its train job has finished an epoch, then restarted."""
    shared, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    shutil.copytree(ROOT / "config", shared / "config")
    config = kill_test_config(tmp_path)
    before_training = [
        "results/killed/pretrain/resnet18.pth",
        f"results/killed/data/{KILL_TASK}/prepared.json",
    ]
    run_snakemake([*snakemake_command(shared, config), *before_training])
    shutil.copytree(shared, killed, symlinks=True)

    table = "results/killed/table.tsv"  # what is compared needs no figure: no plot jobs
    with open(tmp_path / "uninterrupted.log", "w") as log:
        uninterrupted_run = subprocess.Popen(
            [*snakemake_command(shared, config), table], stdout=log, stderr=subprocess.STDOUT
        )
    command = [*snakemake_command(killed, config), table]
    results = killed / "results" / "killed"
    state = results / f"state/train/resnet18/piggyback/run0/{KILL_TASK}"
    checkpoint = results / f"train/resnet18/piggyback/run0/{KILL_TASK}.pt"
    with open(tmp_path / "killed.log", "w") as log:
        workflow = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 300
    while not (state / "resume.pt").exists() and workflow.poll() is None:
        assert time.monotonic() < deadline, "the train job never finished an epoch"
        time.sleep(0.01)
    os.killpg(workflow.pid, signal.SIGKILL)
    workflow.wait()
    deadline = time.monotonic() + 10
    while processes_in_group(workflow.pid):
        assert time.monotonic() < deadline, "a job outlived the kill"
        time.sleep(0.05)
    assert not checkpoint.exists(), "the train job finished before it was killed"
    finished = load_checkpoint(state / "resume.pt")["epochs_done"]
    assert 1 <= finished < KILL_EPOCHS

    # Restarting as docs/reliability.md says: Snakemake's lock outlives a SIGKILL, and it
    # refuses to start until --unlock removes it; then the usual command, plus
    # --rerun-incomplete (which it asks for when a killed job had written some output).
    assert any((killed / ".snakemake" / "locks").iterdir()), "no stale lock to remove?"
    run_snakemake([*command, "--unlock"])
    run_snakemake([*command, "--rerun-incomplete"])
    assert uninterrupted_run.wait(timeout=600) == 0, (tmp_path / "uninterrupted.log").read_text()

    uninterrupted = workflow_results(shared / "results" / "killed")
    resumed = workflow_results(results)
    assert resumed["masks"].keys() == uninterrupted["masks"].keys()
    for name, mask in uninterrupted["masks"].items():
        assert torch.equal(mask, resumed["masks"][name]), name
    for name, value in uninterrupted["head"].items():
        assert torch.equal(value, resumed["head"][name]), name
    assert resumed["content_sha256"] == uninterrupted["content_sha256"]
    assert resumed["table"] == uninterrupted["table"]
    assert resumed["metrics"] == uninterrupted["metrics"]
    # Only the epoch that was running when the kill came is trained again.
    train_log = (results / f"logs/train/resnet18/piggyback/run0/{KILL_TASK}.log").read_text()
    assert f"resuming after epoch {finished} " in train_log
    trained_again = [
        int(line.split()[1]) for line in train_log.splitlines() if line.startswith("epoch ")
    ]
    assert trained_again == list(range(finished + 1, KILL_EPOCHS + 1))
    assert not state.exists(), "resume state is removed once the job succeeds"


# --- 2. wrong config ------------------------------------------------------------------------
# The schema cases (unknown method, negative learning rate, mistyped key) and a few of the
# cross-reference cases run through Snakemake in tests/test_workflow.py; here every
# cross-reference check, in-process, and the class count against the data on disk.


def paper_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            lambda c: c["experiment"].update(archs=["resnet50", "resnet5O"]),
            "experiment.archs[1] is 'resnet5O', which is not in `archs:`",
            id="unknown_arch",
        ),
        pytest.param(
            lambda c: c["experiment"].update(orderings=["sideways"]),
            "experiment.orderings[0] is 'sideways', which is not in `orderings:`",
            id="unknown_ordering",
        ),
        pytest.param(
            lambda c: c["orderings"].update(forward=["flowers", "imagenet"]),
            "orderings.forward[1] is 'imagenet', which is not in `datasets:`",
            id="ordering_with_unknown_dataset",
        ),
        pytest.param(
            lambda c: c["orderings"].update(forward=["flowers", "flowers"]),
            "orderings.forward lists 'flowers' twice",
            id="ordering_repeats_a_dataset",
        ),
        pytest.param(
            lambda c: c.update(pretrain={"dataset": "imagenet"}),
            "pretrain.dataset[0] is 'imagenet', which is not in `datasets:`",
            id="unknown_pretrain_dataset",
        ),
        pytest.param(
            lambda c: c["archs"]["vgg16"].update(weights="pretrain"),
            "archs.vgg16.weights is 'pretrain', but the config has no `pretrain:` section",
            id="pretrain_weights_without_pretrain",
        ),
        pytest.param(
            lambda c: c["methods"]["packnet"].update(prune_fraction=[0.75, 0.75, -1]),
            "methods.packnet.prune_fraction has 3 values, but ordering forward has 5 tasks "
            "(cubs_cropped, stanford_cars_cropped, flowers, wikiart, sketches)",
            id="prune_fractions_not_one_per_position",
        ),
        pytest.param(
            lambda c: c["methods"]["packnet"].update(prune_fraction=[0.75, 1.5, 0.5, 0.5, -1]),
            "methods.packnet.prune_fraction: [0.75, 1.5, 0.5, 0.5, -1] is not valid",
            id="prune_fraction_out_of_range",
        ),
    ],
)
def test_config_cross_reference_errors_name_the_key(change, message):
    config = paper_config()
    config.pop("pretrain", None)
    change(config)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(config)


def test_prune_fractions_per_position_are_passed_one_per_task():
    """One value for every task, or one per position of the ordering (the last task is
    never pruned, whatever its value); the start takes none of them."""
    config = paper_config()
    config["methods"]["packnet"]["prune_fraction"] = [0.75, 0.6, 0.5, 0.4, -1]
    check_config(config)
    settings = config["methods"]["packnet"]
    chosen = [position_settings("packnet", settings, k)["prune_fraction"] for k in range(5)]
    assert chosen == [0.75, 0.6, 0.5, 0.4, -1]
    assert "prune_fraction" not in position_settings("packnet", settings, None)
    assert position_settings("packnet", {"prune_fraction": 0.5}, 3) == {"prune_fraction": 0.5}


def test_train_stops_before_training_when_the_class_count_differs_from_disk(
    task, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    code, _, err = run_script(
        "train.py", train_args(task, out, "--classes", "4"), monkeypatch, capsys
    )
    assert_one_line_error(code, err, str(task), "found 3 classes", "says 4", "`classes:`")
    assert not out.exists(), "nothing was trained or written"


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--lr", "-1"], ["piggyback.lr is -1.0", "it takes >= 0"]),
        (["--threshold", "-5"], ["piggyback.threshold is -5.0", "it takes >= 0"]),
        (["--lr-head", "0"], ["piggyback.lr_head is 0.0", "it takes > 0"]),
        (["--mask-scale", "nan"], ["piggyback.mask_scale is nan", "it takes > 0"]),
    ],
    ids=["negative_lr", "negative_threshold", "zero_head_lr", "nan_mask_scale"],
)
def test_train_refuses_a_knob_out_of_its_bounds_naming_it(
    task, tmp_path, monkeypatch, capsys, flags, fragments
):
    """A script run by hand is checked as the workflow's config is: the registry's bounds,
    with the knob's name, before anything is trained or written."""
    out = tmp_path / "out"
    args = train_args(task, out, "--method", "piggyback", *flags)
    code, _, err = run_script("train.py", args, monkeypatch, capsys)
    assert_one_line_error(code, err, *fragments)
    assert not out.exists(), "nothing was trained or written"


def test_the_config_schema_and_the_registry_take_the_same_values_for_every_knob():
    """One source for both checks: the schema the workflow validates the config with and
    the registry's refusal (scripts run by hand) are read off the same bounds."""
    checked = 0
    for method, entry in METHODS.items():
        for name, knob in entry.all_knobs().items():
            schema = jsonschema.Draft202012Validator(knob.json_schema())
            if knob.choices is not None:
                values = [*knob.choices, "none of them"]
            else:
                edges = [v for v in (knob.minimum, knob.maximum) if v is not None]
                values = [knob.kind(v + d) for v in edges for d in (-1, 0, 1)] or [knob.default]
            for value in values:
                assert schema.is_valid(value) == knob.admits(value), (method, name, value)
                checked += 1
    assert checked > 100


# --- 3. wrong data ------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_class_folder_stops_naming_it(task, split):
    for image in (task / split / "digit_6").iterdir():
        image.unlink()
    with pytest.raises(
        DataError, match=f"{re.escape(str(task / split / 'digit_6'))} has no images"
    ):
        load_task_data(task, TaskTransform("cropped", 32), 3)


def test_class_folder_holding_only_non_images_counts_as_empty(task):
    folder = task / "train" / "digit_6"
    for image in folder.iterdir():
        image.rename(image.with_suffix(".txt"))
    with pytest.raises(DataError, match="digit_6 has no images"):
        load_task_data(task, TaskTransform("cropped", 32), 3)


def test_split_without_class_folders_stops_naming_it(task):
    shutil.rmtree(task / "test")
    (task / "test").mkdir()
    with pytest.raises(DataError, match=f"{re.escape(str(task / 'test'))} holds no class folders"):
        load_task_data(task, TaskTransform("cropped", 32))


@pytest.mark.parametrize(
    ("split", "side"),
    [("train", "only in train/"), ("test", "only in test/")],
    ids=["only_in_train", "only_in_test"],
)
def test_class_in_one_split_only_stops_naming_it(task, split, side):
    extra = task / split / "digit_9"
    shutil.copytree(task / split / "digit_5", extra)
    with pytest.raises(DataError, match=re.escape(f"{side}: ['digit_9']")):
        load_task_data(task, TaskTransform("cropped", 32))


def test_files_that_are_not_images_are_skipped_and_counted(task):
    clean, _ = load_task_data(task, TaskTransform("cropped", 32))
    folder = task / "train" / "digit_5"
    (folder / "README.txt").write_text("scanned in 2019")
    (folder / "Thumbs.db").write_bytes(b"\0" * 64)
    (folder / ".DS_Store").write_bytes(b"\0" * 64)
    (folder / "._0001.png").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS resource fork
    logged = []
    train, _ = load_task_data(task, TaskTransform("cropped", 32), 3, log=logged.append)
    assert train.samples == clean.samples and train.classes == clean.classes
    assert len(logged) == 1 and "skipped 4 file(s)" in logged[0]
    assert logged[0].startswith(f"{task / 'train'}: ")


def test_hidden_folder_is_not_a_class_and_shifts_no_label(task):
    clean, _ = load_task_data(task, TaskTransform("cropped", 32))
    for split in ("train", "test"):  # sorts first: as a class it would shift every label
        shutil.copytree(task / split / "digit_7", task / split / ".ipynb_checkpoints")
    train, test = load_task_data(task, TaskTransform("cropped", 32), 3, log=lambda _: None)
    assert train.classes == ["digit_5", "digit_6", "digit_7"]
    assert train.samples == clean.samples


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "not_an_image":
        path.write_text("<html>404 Not Found</html>")


@pytest.mark.parametrize("how", ["truncated", "empty", "not_an_image"])
def test_unreadable_image_stops_naming_the_file(task, how):
    image = sorted((task / "train" / "digit_6").iterdir())[0]
    damage(image, how)
    train, _ = load_task_data(
        task, TaskTransform("cropped", 32)
    )  # no pass over the images up front
    with pytest.raises(DataError, match=f"cannot read image {re.escape(str(image))}"):
        for _ in make_loader(train, 8, False, 0):
            pass


def test_unreadable_image_in_a_loader_worker_is_reported_without_its_traceback(task):
    image = sorted((task / "test" / "digit_7").iterdir())[-1]
    damage(image, "truncated")
    _, test = load_task_data(task, TaskTransform("cropped", 32))
    with pytest.raises(DataError) as caught:
        for _ in make_loader(test, 8, False, 0, workers=1):
            pass
    assert "Traceback" in str(caught.value)  # as torch re-raises it from the worker...
    message = error_message(caught.value)  # ...and as the scripts print it
    assert message.startswith(f"cannot read image {image} (") and "\n" not in message


def test_train_script_reports_an_unreadable_image_in_one_line(task, tmp_path, monkeypatch, capsys):
    image = sorted((task / "train" / "digit_5").iterdir())[0]
    damage(image, "truncated")
    args = train_args(task, tmp_path / "out", "--classes", "3")
    args[args.index("--workers") + 1] = "1"
    code, _, err = run_script("train.py", args, monkeypatch, capsys)
    assert_one_line_error(code, err, f"cannot read image {image}", "prepare the dataset again")
    assert not (tmp_path / "out" / "task.pt").exists()


def test_train_script_reports_an_empty_class_folder_in_one_line(
    task, tmp_path, monkeypatch, capsys
):
    shutil.rmtree(task / "train" / "digit_7")
    (task / "train" / "digit_7").mkdir()
    code, _, err = run_script("train.py", train_args(task, tmp_path), monkeypatch, capsys)
    assert_one_line_error(code, err, f"{task / 'train' / 'digit_7'} has no images")


def test_evaluate_script_refuses_a_data_folder_with_other_classes(
    packed, task, tmp_path, monkeypatch, capsys
):
    (task / "test" / "digit_7").rename(task / "test" / "digit_8")
    out = tmp_path / "result.json"
    code, _, err = run_script(
        "evaluate.py", evaluate_args(packed[1], task, out), monkeypatch, capsys
    )
    assert_one_line_error(code, err, f"{task}/test has classes", "wrong dataset folder?")
    assert not out.exists()


# --- 4. numerical faults ------------------------------------------------------------------------
# In-process: tests/test_training.py::test_non_finite_loss_stops_with_epoch_and_batch.


def test_train_script_stops_on_a_non_finite_loss_without_a_checkpoint(
    task, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    args = train_args(task, out, "--method", "finetune", "--lr", "1e12", "--lr-head", "1e12")
    args[args.index("--batch-size") + 1] = "4"
    code, _, err = run_script("train.py", args, monkeypatch, capsys)
    assert_one_line_error(code, err, "non-finite loss", "at epoch 1, batch ")
    assert not (out / "task.pt").exists() and not (out / "task.pt.state" / "best.pt").exists()


# --- 5. wrong files -----------------------------------------------------------------------------
# Library level: tests/test_packing.py::test_evaluation_refuses_another_arch_or_a_missing_task,
# ::test_evaluation_refuses_other_backbone_weights, ::test_edited_packed_file_is_detected.


def other_backbone_weights(path: Path) -> Path:
    backbone, _ = build_backbone(ArchSpec("resnet18", "random"))
    state = backbone.state_dict()
    state["conv1.weight"] = torch.zeros_like(state["conv1.weight"])
    torch.save(state, path)
    return path


@pytest.mark.parametrize("wrong", ["arch", "backbone", "task", "truncated", "edited", "missing"])
def test_evaluate_script_refuses_a_wrong_packed_file_in_one_line(
    packed, tiny_task, tmp_path, monkeypatch, capsys, wrong
):
    pack = tmp_path / "pack.safetensors"
    shutil.copyfile(packed[1], pack)
    out = tmp_path / "result.json"
    args = evaluate_args(pack, tiny_task, out)
    expected = {
        "arch": "packed for arch 'resnet18', not 'resnet34'",
        "backbone": "the masks would be applied to different numbers",
        "task": "holds digits, but no test data was given",
        "truncated": "is not a readable packed file",
        "edited": "fails its content checksum",
        "missing": "does not exist",
    }[wrong]
    if wrong == "arch":
        args = evaluate_args(pack, tiny_task, out, "--builder", "resnet34", arch="resnet34")
    elif wrong == "backbone":
        args[args.index("--weights") + 1] = other_backbone_weights(tmp_path / "other.pth")
    elif wrong == "task":
        args = evaluate_args(pack, tiny_task, out, task="flowers")
    elif wrong == "truncated":
        pack.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])
    elif wrong == "edited":
        data = bytearray(pack.read_bytes())
        data[-100] ^= 0x01  # one bit of one mask
        pack.write_bytes(bytes(data))
    elif wrong == "missing":
        pack.unlink()
    code, _, err = run_script("evaluate.py", args, monkeypatch, capsys)
    assert_one_line_error(code, err, expected)
    assert not out.exists()


def test_truncated_packed_file_is_refused_by_the_reader(packed, tmp_path):
    pack = tmp_path / "pack.safetensors"
    pack.write_bytes(packed[1].read_bytes()[:-1])
    with pytest.raises(PackError, match="not a readable packed file"):
        read_pack(pack)


def test_truncated_checkpoint_is_refused_naming_it(packed, tmp_path):
    checkpoint = tmp_path / "digits.pt"
    checkpoint.write_bytes(packed[0].read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=f"{re.escape(str(checkpoint))} is not a readable"):
        load_checkpoint(checkpoint)


def test_edited_manifest_of_a_packed_file_is_detected(packed, tmp_path):
    pack = tmp_path / "pack.safetensors"
    data = packed[1].read_bytes()
    assert b'\\"seed\\": 0' in data
    pack.write_bytes(data.replace(b'\\"seed\\": 0', b'\\"seed\\": 7', 1))
    with pytest.raises(PackError, match="manifest checksum"):
        read_manifest(pack)


# --- 6. loading runs no code ---------------------------------------------------------------------


class RunsCode:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def plant(path: Path, marker: Path, raw: bool = False) -> Path:
    """A file that looks like a state dict and runs code when unpickled: as torch.save
    writes it (a zip holding a pickle) or, ``raw``, a bare pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"conv1.weight": torch.zeros(1), "extra": RunsCode(marker)}
    if raw:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    return path


@pytest.mark.parametrize("raw", [False, True], ids=["torch_save", "raw_pickle"])
def test_the_planted_pickle_does_run_code_when_unpickled(tmp_path, raw):
    """The control: proves that the files the next tests refuse are really dangerous."""
    marker = tmp_path / "code-ran"
    path = plant(tmp_path / "evil.pt", marker, raw)
    if raw:
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)  # what this project never does
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("raw", [False, True], ids=["torch_save", "raw_pickle"])
def test_checkpoint_loader_refuses_a_planted_pickle(tmp_path, raw):
    marker = tmp_path / "code-ran"
    path = plant(tmp_path / "task.pt", marker, raw)
    with pytest.raises(CheckpointError, match="refused, since unpickling them could run code"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["weights.pth", "weights.pt", "weights.bin", "weights"])
def test_weights_file_loader_refuses_a_planted_pickle(tmp_path, name):
    marker = tmp_path / "code-ran"
    path = plant(tmp_path / name, marker)
    with pytest.raises(BackboneError, match="cannot read weights file"):
        build_backbone(ArchSpec("resnet18"), path)
    assert not marker.exists()


def test_safetensors_weights_cannot_carry_code(tmp_path, monkeypatch, capsys, task):
    marker = tmp_path / "code-ran"
    path = tmp_path / "weights.safetensors"
    path.write_bytes(plant(tmp_path / "evil.pt", marker).read_bytes())  # a pickle, renamed
    args = train_args(task, tmp_path / "out")
    args[args.index("--weights") + 1] = path
    code, _, err = run_script("train.py", args, monkeypatch, capsys)
    assert_one_line_error(code, err, f"weights file {path} is not a readable safetensors file")
    assert not marker.exists()


def test_downloaded_weights_in_the_torch_hub_cache_refuse_a_planted_pickle(tmp_path, monkeypatch):
    """An enum name without --weights-dir goes through torch.hub's cache (weights_only)."""
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    plant(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth", marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        build_backbone(ArchSpec("resnet18", "IMAGENET1K_V1"))
    assert not marker.exists()


def test_packed_file_reader_refuses_a_planted_pickle(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "pack.safetensors"
    path.write_bytes(plant(tmp_path / "evil.pt", marker).read_bytes())
    with pytest.raises(PackError, match="not a readable packed file"):
        read_pack(path)
    assert not marker.exists()


def test_dataset_cache_reader_refuses_a_planted_pickle(tmp_path):
    from piggyback.data.cache.format import CacheError, load_cache

    marker = tmp_path / "code-ran"
    path = tmp_path / "digits.cache.safetensors"
    path.write_bytes(plant(tmp_path / "evil.pt", marker).read_bytes())
    with pytest.raises(CacheError, match="not a readable dataset cache"):
        load_cache(path)
    assert not marker.exists()


def test_train_script_refuses_planted_resume_state(task, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "code-ran"
    state = tmp_path / "state"
    plant(state / "resume.pt", marker)
    args = train_args(task, tmp_path / "out", "--state-dir", state)
    code, _, err = run_script("train.py", args, monkeypatch, capsys)
    assert_one_line_error(code, err, str(state / "resume.pt"), "could run code")
    assert not marker.exists()


UNSAFE_LOADERS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("dill", "load"),
    ("dill", "loads"),
    ("joblib", "load"),
    ("marshal", "loads"),
    ("shelve", "open"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
    ("jit", "load"),  # TorchScript: a program
}


def test_no_code_in_the_project_loads_files_by_unpickling():
    """Every torch.load and hub download says weights_only=True; nothing else unpickles."""
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            call = (owner_name, node.func.attr)
            keywords = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if call in UNSAFE_LOADERS:
                problems.append(f"{where}: {'.'.join(call)}")
            elif call in {("torch", "load"), ("hub", "load_state_dict_from_url")}:
                safe = keywords.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    problems.append(f"{where}: {'.'.join(call)} without weights_only=True")
            elif call in {("np", "load"), ("numpy", "load")}:
                allow = keywords.get("allow_pickle")
                if allow is not None and not (isinstance(allow, ast.Constant) and not allow.value):
                    problems.append(f"{where}: numpy.load with allow_pickle")
    assert problems == []


# --- 7. disk full, no permission: the previous output stays ---------------------------------


@contextmanager
def file_size_limit(nbytes: int):
    """Writes past ``nbytes`` fail with EFBIG: a real error from the kernel, mid-write,
    as a full disk gives (ENOSPC) without filling one."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)


def disk_full_midway(nbytes: int):
    """A writer stand-in: writes ``nbytes`` of its output, then the disk is full."""

    def write(data: bytes, path) -> None:
        with open(path, "wb") as handle:
            handle.write(data[:nbytes])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    return write


def assert_previous_file_kept(path: Path, previous: bytes) -> None:
    assert path.read_bytes() == previous
    assert temporary_files(path.parent) == []


def test_atomic_write_disk_full_midway_keeps_the_previous_file(tmp_path):
    out = tmp_path / "table.tsv"
    out.write_text("the previous good table\n")
    with pytest.raises(WriteError, match="No space left on device") as caught:
        atomic_write(out, lambda tmp: disk_full_midway(10)(b"a new table, half written", tmp))
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert str(out) in str(caught.value)
    assert_previous_file_kept(out, b"the previous good table\n")


@pytest.mark.parametrize("failure", ["disk_full_midway", "file_size_limit"])
def test_checkpoint_write_failing_midway_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, failure
):
    out = tmp_path / "resume.pt"
    atomic_save({"epoch": 1, "masks": {"w": torch.ones(10)}}, out)
    previous = out.read_bytes()
    new = {"epoch": 2, "masks": {"w": torch.zeros(1_000_000)}}
    if failure == "disk_full_midway":
        real_save = torch.save

        def save(obj, path):
            real_save(obj, path)
            disk_full_midway(1000)(Path(path).read_bytes(), path)

        monkeypatch.setattr(torch, "save", save)
        with pytest.raises(WriteError, match="No space left on device"):
            atomic_save(new, out)
    else:
        with file_size_limit(100_000), pytest.raises(WriteError, match=str(out)):
            atomic_save(new, out)
    assert_previous_file_kept(out, previous)
    assert load_checkpoint(out)["epoch"] == 1


@pytest.mark.parametrize("failure", ["disk_full_midway", "file_size_limit"])
def test_pack_write_failing_midway_keeps_the_previous_packed_file(
    packed, tmp_path, monkeypatch, failure
):
    out = tmp_path / "run0.safetensors"
    shutil.copyfile(packed[1], out)
    previous = out.read_bytes()
    if failure == "disk_full_midway":
        import piggyback.packs.packed_file

        real_save_file = piggyback.packs.packed_file.save_file

        def save_file(tensors, path, metadata=None):
            real_save_file(tensors, path, metadata=metadata)
            disk_full_midway(5000)(Path(path).read_bytes(), path)

        monkeypatch.setattr(piggyback.packs.packed_file, "save_file", save_file)
        with pytest.raises(WriteError, match="No space left on device"):
            pack([packed[0]], out)
    else:
        with file_size_limit(len(previous) // 3), pytest.raises(WriteError, match=str(out)):
            pack([packed[0]], out)
    assert_previous_file_kept(out, previous)
    read_pack(out)  # still whole: its checksum verifies


@pytest.mark.parametrize("failure", ["disk_full_midway", "file_size_limit"])
def test_evaluate_script_write_failing_midway_keeps_the_previous_result(
    packed, tiny_task, tmp_path, monkeypatch, capsys, failure
):
    out = tmp_path / "digits.json"
    out.write_text('{"top1_error": 12.5}\n')
    args = evaluate_args(packed[1], tiny_task, out)
    if failure == "disk_full_midway":

        def write_text(self, text, *_, **__):
            disk_full_midway(20)(text.encode(), self)

        monkeypatch.setattr(Path, "write_text", write_text)
        code, _, err = run_script("evaluate.py", args, monkeypatch, capsys)
        reason = "No space left on device"
    else:
        with file_size_limit(50):
            code, _, err = run_script("evaluate.py", args, monkeypatch, capsys)
        reason = "File too large"
    assert_one_line_error(code, err, f"cannot write {out} ({reason})", "previous file")
    assert_previous_file_kept(out, b'{"top1_error": 12.5}\n')


@contextmanager
def permissions_enforced():
    """Root ignores file permissions (CAP_DAC_OVERRIDE): drop that capability from this
    thread's effective set meanwhile, so that a read-only folder is read-only to it too."""
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    caps = (ctypes.c_uint32 * 6)()  # (effective, permitted, inheritable) x 2 words
    if libc.capget(header, caps) != 0:
        pytest.skip("cannot read this process's capabilities")
    saved = list(caps)
    caps[0] &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    if libc.capset(header, caps) != 0:
        pytest.skip("cannot give up root's permission override here")
    try:
        yield
    finally:
        caps[:] = saved
        assert libc.capset(header, caps) == 0


@pytest.mark.parametrize("writer", ["atomic_save", "pack", "evaluate.py"])
def test_write_into_a_read_only_folder_keeps_the_previous_file(
    packed, tiny_task, tmp_path, monkeypatch, capsys, writer
):
    folder = tmp_path / "outputs"
    folder.mkdir()
    out = folder / {"atomic_save": "resume.pt", "pack": "run0.safetensors"}.get(
        writer, "digits.json"
    )
    out.write_bytes(b"the previous good output")
    folder.chmod(0o555)
    try:
        with permissions_enforced():
            if writer == "evaluate.py":
                args = evaluate_args(packed[1], tiny_task, out)
                code, _, err = run_script("evaluate.py", args, monkeypatch, capsys)
                assert_one_line_error(code, err, f"cannot write {out} (Permission denied)")
            else:
                with pytest.raises(WriteError, match="Permission denied") as caught:
                    if writer == "atomic_save":
                        atomic_save({"epoch": 2}, out)
                    else:
                        pack([packed[0]], out)
                assert caught.value.errno == errno.EACCES
    finally:
        folder.chmod(0o755)
    assert_previous_file_kept(out, b"the previous good output")


def test_new_outputs_are_readable_as_the_umask_says_and_replacements_keep_their_mode(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    out = tmp_path / "table.md"
    atomic_write_text("first\n", out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # not 0600, as mkstemp makes
    out.chmod(0o640)
    atomic_write_text("second\n", out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640 and out.read_text() == "second\n"
