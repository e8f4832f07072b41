"""The paper-layout table from constructed evaluations and their per-image files: methods
as columns in the registry's order, one PackNet column per ordering, the ImageNet row,
the storage row, paired marks, refused pairings and the verdict (no torch, no training)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from piggyback.report.comparisons import PairingError
from piggyback.report.markdown import to_markdown, verdict
from piggyback.report.statistics import holm
from piggyback.report.tables import load_results, summarize
from piggyback.stages.per_image import TaskImages, per_image_path, write_evaluation

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 40
LABELS = [index % 4 for index in range(IMAGES)]
PATHS = [f"class_{label}/{index:03d}.png" for index, label in enumerate(LABELS)]
ORDERINGS = {"forward": ["digits", "rotated"], "reverse": ["rotated", "digits"]}
CLASSES = {"digits": 4, "rotated": 4, "source": 4}


def predictions(wrong: set[int], paths=PATHS, labels=LABELS) -> TaskImages:
    """Each image predicted right, except those in ``wrong`` (the next class)."""
    top5 = [[(label + 1) % 4 if i in wrong else label, 9] for i, label in enumerate(labels)]
    return TaskImages("", paths, labels, top5)


def write(folder: Path, name: str, result: dict, outcomes: dict[str, TaskImages]) -> Path:
    """An evaluation JSON and its per-image file, as evaluate.py writes them."""
    tasks = []
    for position, (task, images) in enumerate(outcomes.items(), start=result.pop("first", 1)):
        wrong = sum(top[0] != label for top, label in zip(images.top5, images.labels, strict=True))
        tasks.append(
            {
                "dataset": task,
                "position": position,
                "seed": 0,
                "top1_error": 100.0 * (1 - (len(images.labels) - wrong) / len(images.labels)),
                "top5_error": 0.0,
                "images": len(images.labels),
            }
        )
    per_image = [TaskImages(t, i.paths, i.labels, i.top5) for t, i in outcomes.items()]
    out = folder / f"{name}.json"
    write_evaluation({**result, "tasks": tasks, "per_image": per_image}, out, per_image_path(out))
    return out


def evaluations(folder: Path) -> list[Path]:
    """Piggyback wrong on 4 of 40 images, Classifier Only on 16 (4 of them Piggyback's
    too), Individual Networks on 6, PackNet on 8 (forward) and 10 (reverse); on the
    source task the backbone wrong on 2, PackNet's start on 14."""
    series = {
        "classifier_only": ("", set(range(16))),
        "finetune": ("", set(range(2, 8))),
        "packnet/forward": ("forward", set(range(30, 38))),
        "packnet/reverse": ("reverse", set(range(30, 40))),
        "piggyback": ("", set(range(4))),
    }
    paths = []
    for name, (ordering, wrong) in series.items():
        method = name.split("/")[0]
        tasks = ORDERINGS[ordering] if ordering else ["digits", "rotated"]
        result = {"arch": "resnet50", "method": method, "ordering": ordering or None}
        paths.append(
            write(folder, name.replace("/", "-"), result, {t: predictions(wrong) for t in tasks})
        )
    backbone = {"arch": "resnet50", "method": None, "ordering": None, "network": "backbone"}
    backbone |= {"source_task": "source", "first": 0}
    paths.append(write(folder, "backbone", backbone, {"source": predictions({0, 1})}))
    start = {"arch": "resnet50", "method": "packnet", "ordering": None, "network": "start"}
    start |= {"source_task": "source", "first": 0, "start": {"source": None}}
    paths.append(write(folder, "start", start, {"source": predictions(set(range(14)))}))
    return paths


STORAGE = pd.DataFrame(
    {
        "arch": "resnet50",
        "method": ["classifier_only", "finetune", "packnet", "packnet", "piggyback"],
        "ordering": ["", "", "forward", "reverse", ""],
        "networks": [1.0, 3.0, 1.0, 1.0, 1.0],
        "megabytes": [102.5, 307.3, 104.0, 104.1, 108.2],
    }
)
METHODS = ["piggyback", "packnet", "finetune", "classifier_only"]  # not the registry's order


def table_of(paths: list[Path], reference=None, tolerance=0.1) -> pd.DataFrame:
    results = load_results(paths, METHODS, list(ORDERINGS))
    return summarize(results, reference, tolerance, CLASSES, STORAGE)


def markdown_rows(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after ``heading``."""
    lines = markdown.split(f"\n{heading}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return [rows[0], *rows[2:]]


def test_the_paper_layout_puts_the_methods_side_by_side_in_the_registrys_order(tmp_path):
    table = table_of(evaluations(tmp_path))
    markdown = to_markdown(table, ["resnet50"], ["digits", "rotated"], METHODS, ORDERINGS, 0.1)
    header, source, digits, rotated, storage = markdown_rows(markdown, "## resnet50")
    assert header == [
        "dataset",
        "test images",
        "chance",
        "Classifier Only",
        "Individual Networks",
        "PackNet (forward)",
        "PackNet (reverse)",
        "Piggyback",
    ]
    assert [source[0], digits[0], rotated[0]] == ["source (source task)", "digits", "rotated"]
    assert digits[1:3] == ["40", "75.0"]
    assert digits[7].startswith("10.00 [") and digits[3].startswith("40.00 [")
    assert storage[3:] == [
        "1, 102.5 MB",
        "3, 307.3 MB",
        "1, 104.0 MB",
        "1, 104.1 MB",
        "1, 108.2 MB",
    ], "the storage totals given, per column"


def test_a_table_without_a_source_task_says_it_has_no_imagenet_row(tmp_path):
    table = table_of(evaluations(tmp_path))
    with_row = to_markdown(table, ["resnet50"], ["digits", "rotated"], METHODS, ORDERINGS, 0.1)
    assert "No source-task row" not in with_row
    table = table[~table["source_task"]]
    markdown = to_markdown(table, ["resnet50"], ["digits", "rotated"], METHODS, ORDERINGS, 0.1)
    assert "No source-task row (the paper's ImageNet row)" in markdown
    assert [row[0] for row in markdown_rows(markdown, "## resnet50")[1:3]] == ["digits", "rotated"]


def test_the_imagenet_row_is_the_backbone_for_methods_that_keep_it_and_packnets_start(tmp_path):
    table = table_of(evaluations(tmp_path)).set_index(["method", "ordering", "dataset"])
    source = table.xs("source", level="dataset")["error"]
    assert source.to_dict() == pytest.approx(
        {
            ("classifier_only", ""): 5.0,
            ("finetune", ""): 5.0,
            ("packnet", "forward"): 35.0,
            ("packnet", "reverse"): 35.0,
            ("piggyback", ""): 5.0,
        }
    )
    compared = table.xs("source", level="dataset")["paired_p"]
    assert compared.notna().to_dict() == {
        ("classifier_only", ""): False,  # the very network Piggyback has: no comparison
        ("finetune", ""): False,
        ("packnet", "forward"): True,
        ("packnet", "reverse"): True,
        ("piggyback", ""): False,
    }


def test_paired_marks_follow_holm_over_the_whole_table(tmp_path):
    table = table_of(evaluations(tmp_path))
    compared = table[table["paired_p"].notna()]
    assert len(compared) == 2 * 4 + 2, "4 methods x 2 tasks, and PackNet's two on the source"
    # PackNet's orderings share their start: one comparison on the source task, not two
    shared = compared["source_task"] & (compared["ordering"] == "reverse")
    family = compared[~shared]
    assert family["paired_p_holm"].tolist() == pytest.approx(holm(family["paired_p"]).tolist())
    on_source = compared[compared["source_task"]]["paired_p_holm"]
    assert on_source.nunique() == 1 and len(on_source) == 2
    cell = table[(table["method"] == "classifier_only") & (table["dataset"] == "digits")].iloc[0]
    # 12 images Classifier Only got wrong and Piggyback right, none the other way round
    assert (cell["paired_worse"], cell["paired_better"]) == (12, 0)
    assert cell["paired_difference"] == pytest.approx(30.0)
    assert cell["paired_p"] == pytest.approx(2 / 2**12)
    assert cell["paired_significant"]
    markdown = to_markdown(table, ["resnet50"], ["digits", "rotated"], METHODS, ORDERINGS, 0.1)
    digits = markdown_rows(markdown, "## resnet50")[2]
    assert digits[3].endswith("▲"), "Classifier Only significantly worse than Piggyback"
    assert not digits[4].endswith(("▲", "▼")), "Individual Networks: 6 against 4, not significant"


def test_evaluations_on_different_test_images_are_refused_naming_both_files(tmp_path):
    paths = evaluations(tmp_path)
    other = [p.replace("000.png", "999.png") for p in PATHS]
    result = {"arch": "resnet50", "method": "piggyback", "ordering": None}
    images = predictions(set(range(4)), paths=other)
    piggyback = write(tmp_path, "piggyback", result, {"digits": images, "rotated": images})
    with pytest.raises(PairingError) as refused:
        table_of(paths)
    assert str(per_image_path(piggyback)) in str(refused.value)
    assert str(per_image_path(tmp_path / "classifier_only.json")) in str(refused.value)
    assert "class_0/000.png" in str(refused.value) or "class_0/999.png" in str(refused.value)
    relabelled = [(label + 1) % 4 for label in LABELS]
    images = predictions(set(range(4)), labels=relabelled)
    write(tmp_path, "piggyback", result, {"digits": images, "rotated": images})
    with pytest.raises(PairingError, match="has another label in each"):
        table_of(paths)


def aggregate(folder: Path, paths: list[Path], *flags: str) -> subprocess.CompletedProcess:
    """src/aggregate.py on the evaluations, writing the table into ``folder``."""
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "src" / "aggregate.py"),
            *map(str, paths),
            *("--classes", json.dumps(CLASSES), "--archs", "resnet50"),
            *("--datasets", "digits", "rotated", "--methods", *METHODS),
            *("--orderings", json.dumps(ORDERINGS)),
            *("--markdown", str(folder / "table.md"), "--tsv", str(folder / "table.tsv")),
            *flags,
        ],
        capture_output=True,
        text=True,
    )


def test_the_aggregate_script_refuses_a_pairing_in_one_line(tmp_path):
    paths = evaluations(tmp_path)
    per_image_path(tmp_path / "piggyback.json").unlink()
    done = aggregate(tmp_path, paths)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "piggyback.images.tsv.gz, which is missing" in done.stderr
    assert not (tmp_path / "table.md").exists()


@pytest.mark.parametrize("alone", ["--reference", "--tolerance"])
def test_the_aggregate_script_takes_the_reference_and_its_tolerance_together(tmp_path, alone):
    """The tolerance is the config's reference.tolerance, which the workflow passes with
    the reference file: the script has no default for a command typed by hand to get."""
    reference = tmp_path / "reference.tsv"
    reference.write_text(
        "method\tarch\tdataset\terror\tsource\npiggyback\tresnet50\tdigits\t9\tx\n"
    )
    flags = {"--reference": str(reference), "--tolerance": "0.1"}
    paths = evaluations(tmp_path)
    done = aggregate(tmp_path, paths, alone, flags[alone])
    assert done.returncode == 2
    assert "--reference and --tolerance go together" in done.stderr
    assert not (tmp_path / "table.md").exists()
    both = aggregate(tmp_path, paths, "--reference", str(reference), "--tolerance", "0.1")
    assert both.returncode == 0, both.stderr
    assert "widened by 0.1 points" in (tmp_path / "table.md").read_text()


def test_the_verdict_names_the_cells_that_do_not_agree(tmp_path):
    """Piggyback's digits cell is 10% of 40 images, [2.8, 23.7]: 20 agrees, 25 does not."""
    reference = pd.DataFrame(
        {
            "method": "piggyback",
            "arch": "resnet50",
            "dataset": ["digits", "rotated"],
            "ordering": "",
            "error": [20.0, 25.0],
            "source": "a paper",
            "setting": "",
        }
    )
    table = table_of(evaluations(tmp_path), reference, tolerance=0.1)
    cells = table[table["reference"].notna()].set_index("dataset")
    assert cells.loc["digits", "agrees"] is True and cells.loc["rotated", "agrees"] is False
    assert cells.loc["rotated", "verdict"].startswith("lower by 15.00 points, ")
    (line,) = [line for line in verdict(table, 0.1) if line.startswith("- piggyback:")]
    assert "1 of 2 cells agree with their reference" in line
    assert "; rotated (resnet50) lower by 15.00 points" in line


def test_the_verdict_averages_the_new_tasks_and_gives_the_source_task_apart(tmp_path):
    """PackNet (forward) is wrong on 8 of 40 images of each new task (20%) and its start on
    14 of 40 source images (35%): an average over all three cells would say 25%."""
    (line,) = [
        line for line in verdict(table_of(evaluations(tmp_path)), 0.1) if "(forward)" in line
    ]
    assert "mean error 20.00% (chance 75.00%) over 2 new-task cells" in line
    assert "source task 35.00% over 1 cell;" in line
