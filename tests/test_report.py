"""The report: each figure's numbers against the table and the files they were read
from, and Snakemake's HTML report opened in headless Chromium."""

from __future__ import annotations

import json
import math
import os
import struct
from importlib import import_module
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from browser import Browser, chromium
from test_workflow import ROOT, job_counts, snakemake

from piggyback.model.checkpoints import load_checkpoint
from piggyback.packs.packed_file import read_manifest
from piggyback.report import plots
from piggyback.report.plots.curves import best_epoch
from piggyback.report.plots.layers import ownership
from piggyback.report.plots.reference import reference_comparison
from piggyback.report.storage import BACKBONE, storage_totals
from piggyback.stages.per_image import read_per_image

KEYS = ["method", "ordering", "arch", "dataset"]
JOB = ["arch", "method", "ordering", "run", "dataset"]
FIGURES = [
    "reference",
    "paired_differences",
    "error_curves",
    "mask_density",
    "ownership",
    "storage",
    "runtimes",
]
needs_chromium = pytest.mark.skipif(
    chromium() is None,
    reason="no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs "
    "it when run as root)",
)


@pytest.fixture(scope="module")
def demo(digits_run):
    """The digits run (Piggyback and PackNet on DenseNet-121), the run the end-to-end
    test reads too, and its report."""
    report = digits_run.results / "report.html"
    snakemake(
        "--report",
        str(report),
        "--configfile",
        str(digits_run.config),
        workdir=digits_run.workdir,
    )
    print(f"report: {report} ({report.stat().st_size} bytes)")
    return SimpleNamespace(**vars(digits_run), report=report)


def _read(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t")
    if "ordering" in frame:
        frame["ordering"] = frame["ordering"].fillna("")
    return frame


def _table(demo) -> pd.DataFrame:
    return _read(demo.results / "table.tsv")


def _trained_cells(demo) -> pd.DataFrame:
    """The table without its ImageNet row (the source task, which nothing trains)."""
    table = _table(demo)
    return table[~table["source_task"]]


def _drawn(demo, figure: str) -> pd.DataFrame:
    """The numbers a figure shows, as its rule wrote them beside the picture."""
    return _read(demo.results / "plots" / f"{figure}.tsv")


def _series(method: str, ordering: str) -> str:
    return f"{method}/{ordering}" if ordering else method


def _weighted(frame: pd.DataFrame, keys: list[str], column: str) -> pd.Series:
    """Per group, ``column`` averaged over layers weighted by their weights, as a share."""
    total = (frame[column] * frame["weights"]).groupby([frame[k] for k in keys]).sum()
    return total / frame.groupby(keys)["weights"].sum() / 100


def test_the_kept_epoch_is_the_best_of_the_last_phase():
    """PackNet keeps the best of its retraining after pruning, even when an epoch of
    fine-tuning before it had a lower error; on a tie, the first."""
    metrics = pd.DataFrame(
        {
            "epoch": [1, 2, 2, 3],
            "phase": ["finetune", "finetune", "prune", "prune"],
            "test_top1_error": [10.0, 20.0, 30.0, 30.0],
        }
    )
    assert best_epoch(metrics) == 2


def test_the_reference_figure_tells_cells_that_agree_from_those_outside_and_without():
    table = pd.DataFrame(
        {
            "method": "piggyback",
            "ordering": "",
            "arch": "vgg16",
            "dataset": ["flowers", "cubs_cropped", "sketches"],
            "error": [7.5, 25.0, 30.0],
            "std": float("nan"),
            "n": 1,
            "low": [6.9, 23.9, 28.6],
            "high": [8.2, 26.1, 31.5],
            "chance_error": 99.0,
            "reference": [6.93, 20.75, float("nan")],
            "agrees": [True, False, None],
            "verdict": ["agrees", "higher by 4.25 points, 7.6 SE", "no reference"],
        }
    )
    _, data = reference_comparison(table, tolerance=0.1)
    assert data["shown"].tolist() == ["agrees", "outside", "no reference"]
    assert data[["low", "high"]].equals(table[["low", "high"]]), "each cell's interval drawn"


def test_each_figure_is_declared_once_with_a_function_and_a_caption():
    """The workflow makes a rule of each entry of FIGURES: its function must exist before
    a job imports it, and its caption must be where the rule says."""
    assert list(plots.FIGURES) == FIGURES
    for name, plot in plots.FIGURES.items():
        module, function = plot.function.rsplit(".", 1)
        assert callable(getattr(import_module(f"piggyback.report.plots.{module}"), function))
        assert (ROOT / "workflow" / "report" / f"{name}.rst").is_file(), name


def test_a_figure_without_data_says_so():
    figure, data = ownership([])
    assert data.empty
    assert "No data: no PackNet in this config" in [t.get_text() for t in figure.axes[0].texts]


@pytest.mark.slow
def test_the_reference_figure_draws_every_cell_of_the_table(demo):
    columns = [*KEYS, "error", "std", "n", "low", "high", "chance_error", "reference", "agrees"]
    pd.testing.assert_frame_equal(_drawn(demo, "reference")[columns], _table(demo)[columns])


@pytest.mark.slow
def test_the_paired_figure_draws_every_comparison_of_the_table(demo):
    """The digits run's PackNet orderings against Piggyback, on both tasks and on the
    source task (the ImageNet row), with the table's numbers."""
    columns = [*KEYS, "paired_difference", "paired_low", "paired_high", "paired_p_holm"]
    table = _table(demo)
    compared = table[table["paired_p"].notna()].reset_index(drop=True)
    assert len(compared) == 2 * 3
    drawn = _drawn(demo, "paired_differences")
    pd.testing.assert_frame_equal(drawn[columns], compared[columns])
    assert drawn["paired_significant"].tolist() == (compared["paired_p_holm"] < 0.05).tolist()


@pytest.mark.slow
def test_the_imagenet_row_is_the_backbone_for_piggyback_and_the_start_for_packnet(demo):
    table = _table(demo)
    source = table[table["source_task"]].set_index(["method", "ordering"])
    assert set(source["dataset"]) == {"digits_0to4"}
    assert sorted(source.index) == [
        ("packnet", "forward"),
        ("packnet", "reverse"),
        ("piggyback", ""),
    ]
    evaluations = demo.results / "eval" / "densenet121" / "source"
    for path, cells in (
        ("backbone", [("piggyback", "")]),
        ("packnet/run0", [("packnet", "forward"), ("packnet", "reverse")]),
    ):
        (task,) = json.loads((evaluations / f"{path}.json").read_text())["tasks"]
        assert [source.loc[cell, "error"] for cell in cells] == pytest.approx(
            [task["top1_error"]] * len(cells), abs=1e-4
        )
        rows = read_per_image(evaluations / f"{path}.images.tsv.gz")
        assert len(rows) == task["images"] == source.loc[cells[0], "images"] == 100
        assert rows["path"].is_unique


@pytest.mark.slow
def test_every_evaluation_has_one_row_per_test_image_agreeing_with_its_json(demo):
    for result in (demo.results / "eval").rglob("*.json"):
        evaluation = json.loads(result.read_text())
        rows = read_per_image(result.parent / evaluation["per_image"])
        for task in evaluation["tasks"]:
            mine = rows[rows["task"] == task["dataset"]]
            assert len(mine) == task["images"] and mine["path"].is_unique
            folder = demo.results / "data" / task["dataset"] / "test"
            assert sorted(mine["path"]) == sorted(
                p.relative_to(folder).as_posix() for p in folder.rglob("*.png")
            )
            assert 100.0 * (1 - (~mine["wrong"]).sum() / len(mine)) == task["top1_error"]


@pytest.mark.slow
def test_the_error_curves_are_the_metrics_and_mark_the_checkpoint_the_table_evaluated(demo):
    drawn = _drawn(demo, "error_curves")
    for (arch, method, ordering, run, dataset), job in drawn.groupby(JOB):
        path = demo.results / "train" / arch / _series(method, ordering) / f"run{run}" / dataset
        metrics = pd.read_csv(f"{path}.metrics.tsv", sep="\t")
        assert job["test_top1_error"].tolist() == metrics["test_top1_error"].tolist()
        best = job[job["best"]]
        assert len(best) == 1, f"one kept epoch per job, not {len(best)}"
        checkpoint = load_checkpoint(Path(f"{path}.pt"))
        assert (checkpoint["epoch"], checkpoint["phase"]) == (
            best["epoch"].item(),
            best["phase"].item(),
        )
        assert checkpoint["test_top1_error"] == pytest.approx(best["test_top1_error"].item())
    kept = drawn[drawn["best"]].groupby(KEYS)["test_top1_error"].mean()
    table = _trained_cells(demo).set_index(KEYS)["error"]
    assert sorted(kept.index) == sorted(table.index), "a curve per cell, and no other"
    assert kept[table.index].tolist() == pytest.approx(table.tolist(), abs=1e-4)


@pytest.mark.slow
def test_mask_density_and_ownership_per_layer_add_up_to_the_table(demo):
    table = _table(demo).set_index(KEYS)
    masks = _drawn(demo, "mask_density").assign(ordering="")
    density = _weighted(masks, KEYS, "kept_pct")
    expected = table["mask_density"].dropna()
    assert sorted(density.index) == sorted(expected.index)
    assert density[expected.index].tolist() == pytest.approx(expected.tolist(), abs=1e-4)
    owners = _drawn(demo, "ownership").rename(columns={"owner": "dataset"})
    owned = _weighted(owners[~owners["dataset"].isin(["source", "free"])], KEYS, "owned_pct")
    expected = table["owned_share"].dropna()
    assert sorted(owned.index) == sorted(expected.index)
    assert owned[expected.index].tolist() == pytest.approx(expected.tolist(), abs=1e-4)


@pytest.mark.slow
def test_storage_accounts_for_every_byte_of_the_packed_files(demo):
    everything = _drawn(demo, "storage")
    drawn = everything[everything["part"] != BACKBONE]  # the weights file, not the packed one
    assert sorted(set(zip(*(drawn[k] for k in KEYS), strict=True))) == sorted(
        _trained_cells(demo).set_index(KEYS).index
    )
    for (arch, method, ordering, run), part in drawn.groupby(["arch", "method", "ordering", "run"]):
        path = demo.results / "packed" / arch / _series(method, ordering) / f"run{run}.safetensors"
        with open(path, "rb") as handle:
            (header,) = struct.unpack("<Q", handle.read(8))
        payload = path.stat().st_size - 8 - header
        assert part["megabytes"].sum() * 1e6 == pytest.approx(payload, abs=1)
        bits = part["bits_per_weight"].unique()
        assert len(bits) == 1
        if method == "piggyback":
            assert bits[0] == pytest.approx(1, abs=0.01), "a binary mask: 1 bit per weight"
        else:  # one 32-bit network and a b-bit owner map (free, source, T tasks), for T tasks
            tasks = len(read_manifest(path)["ordering"])
            owner_bits = math.ceil(math.log2(tasks + 2))
            assert bits[0] == pytest.approx((32 + owner_bits) / tasks, rel=0.03)


@pytest.mark.slow
def test_the_storage_row_is_the_storage_figures_numbers(demo):
    """All tasks of a series: its packed file and, for Piggyback, the backbone it keeps
    (one network); PackNet's one network holds the source task's weights."""
    drawn = storage_totals(_drawn(demo, "storage")).set_index(["arch", "method", "ordering"])
    table = _table(demo).groupby(["arch", "method", "ordering"])
    for column in ("networks", "megabytes"):
        shown = table[f"storage_{column}"].unique()
        assert (shown.str.len() == 1).all(), "one storage figure per series"
        assert shown.str[0].to_dict() == pytest.approx(drawn[column].to_dict(), abs=1e-4)
    weights = demo.results / "pretrain" / "densenet121.pth"
    backbone = drawn.loc[("densenet121", "piggyback", ""), "megabytes"]
    packed = demo.results / "packed" / "densenet121" / "piggyback" / "run0.safetensors"
    assert backbone == pytest.approx(
        (weights.stat().st_size + packed.stat().st_size) / 1e6, rel=0.01
    )
    assert drawn["networks"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.slow
def test_the_time_figure_is_every_benchmark(demo):
    drawn = _drawn(demo, "runtimes")
    files = (demo.results / "benchmarks").rglob("*.tsv")
    assert sorted(drawn["job"]) == sorted(str(p.relative_to(demo.workdir)) for p in files)
    for row in drawn.itertuples():
        benchmark = pd.read_csv(demo.workdir / row.job, sep="\t")
        assert row.seconds == benchmark["s"].iloc[-1]
    trained = _trained_cells(demo)["n"].sum()
    assert (drawn["rule"] == "train").sum() == trained, "a job per cell and run"


@pytest.mark.slow
def test_a_figure_is_redrawn_when_a_file_it_reads_changes(demo):
    """Snakemake reruns a job whose input's content changed (not its mtime alone)."""
    metrics = next((demo.results / "train").rglob("*.metrics.tsv"))
    content, before = metrics.read_bytes(), metrics.stat()
    metrics.write_bytes(content + b"\n")
    try:
        result = snakemake("-n", "--configfile", str(demo.config), workdir=demo.workdir)
    finally:
        metrics.write_bytes(content)
        os.utime(metrics, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert job_counts(result.stdout) == {"plot_error_curves": 1, "all": 1, "total": 2}


@needs_chromium
def test_the_browser_check_sees_a_javascript_error(tmp_path):
    """The report test below would pass vacuously if errors went unseen."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    with Browser(chromium(), tmp_path / "profile") as browser:
        browser.open(page.as_uri())
        browser.wait_for("document.readyState === 'complete'")
    assert any("undefinedFunction" in error for error in browser.errors), browser.errors


CLICK = """(text => {
    const hits = [...document.querySelectorAll("#app *")]
        .filter(element => element.textContent.trim() === text);
    hits[hits.length - 1].click();
})(%r)"""
IMAGE_SIZES = """Promise.all(Object.entries(results)
    .filter(([path, result]) => result.mime_type.startsWith("image/"))
    .map(([path, result]) => new Promise(done => {
        const image = new Image();
        image.onload = () => done([path, image.naturalWidth]);
        image.onerror = () => done([path, 0]);
        image.src = result.data_uri;
    })))"""


@pytest.mark.slow
@needs_chromium
def test_the_report_opens_in_chromium_with_the_table_and_every_figure(demo, tmp_path):
    with Browser(chromium(), tmp_path / "profile") as browser:
        browser.open(demo.report.as_uri())
        browser.wait_for("document.querySelector('#app').innerText.includes('Results')")
        labels = browser.evaluate(
            "Object.fromEntries(Object.entries(results).map(([p, r]) => [p, r.labels.result]))"
        )
        names = {Path(path).name for path in labels}
        assert names == {"table.md", *(f"{figure}.png" for figure in FIGURES)}
        for category, subcategories in browser.evaluate("categories").items():
            browser.evaluate("app.setView({navbarMode: 'menu'})")  # the home button
            browser.wait_for(f"document.body.innerText.includes({category!r})")
            browser.evaluate(CLICK % category)  # as a reader does
            listed = [labels[path] for paths in subcategories.values() for path in paths]
            condition = " && ".join(f"document.body.innerText.includes({t!r})" for t in listed)
            browser.wait_for(condition)
        sizes = dict(browser.evaluate(IMAGE_SIZES))
        assert len(sizes) == len(FIGURES) and all(sizes.values()), f"undecodable: {sizes}"
        figure = next(path for path in labels if path.endswith("reference.png"))
        browser.evaluate("app.setView({navbarMode: 'menu'})")
        browser.wait_for("document.body.innerText.includes('1. Results')")
        browser.evaluate(CLICK % "1. Results")
        browser.evaluate(
            f"app.setView({{content: 'img', contentPath: results[{figure!r}].data_uri, "
            f"resultPath: {figure!r}}})"
        )
        browser.wait_for("[...document.images].some(i => i.complete && i.naturalWidth > 0)")
        screenshot = tmp_path / "report.png"
        browser.screenshot(screenshot)
        print(f"screenshot of the report: {screenshot}")
    assert browser.errors == []
