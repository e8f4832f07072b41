"""Export trained tasks as plain torchvision models, for anyone without this project:

    export.py PACK --weights W --task T --out DIR

writes DIR/model.safetensors, the network evaluation evaluates (the mask multiplied into
the weights, the task's head in the builder's own head slot), which
`torchvision.models.<builder>(**kwargs).load_state_dict(..., strict=True)` loads, and
DIR/config.json: the builder and its keyword arguments, the class names, the
preprocessing, the source pack and its digests. With several tasks (`--task all`: every
task of the pack), each goes to DIR/<task>/. `--program` adds DIR/model.pt2, a
`torch.export` program of the same model.

Backbone weights other than the tasks', an unknown task or a pack of another arch stop
the run with a one-line `error: ...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors import SafetensorError

from piggyback.data.images import DataError, error_message
from piggyback.data.transforms import PreprocessingError
from piggyback.interface import cli
from piggyback.model.backbones import ArchSpec, BackboneError
from piggyback.packs.packed_file import PackError, read_pack
from piggyback.stages.evaluation import open_pack
from piggyback.tasks.export import export_task, pack_digest
from piggyback.tasks.model import task_info


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_trained_task_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument(
        "--program", action="store_true", help="also write a torch.export program (model.pt2)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        packed = read_pack(args.pack)
        manifest = packed.manifest
        tasks = manifest["ordering"] if "all" in args.task else list(dict.fromkeys(args.task))
        given, names = cli.given_transform(args), cli.folder_class_names(args.classes_from)
        infos = [task_info(packed, task, given, names) for task in tasks]
        for info in infos:
            info.required_preprocessing()  # config.json says it: known before any work
        arch = args.arch or manifest["arch"]
        spec = ArchSpec(args.builder or arch, args.weights, args.head)
        opened = open_pack(packed, arch, spec, args.weights, args.weights_dir)
        digest = pack_digest(args.pack)
        for info in infos:
            out = args.out if len(infos) == 1 else args.out / info.name
            export_task(opened, info, spec.builder, out, digest, program=args.program)
            print(f"{info.name}: wrote {out}")
    except SafetensorError as error:
        cli.fail(f"weights file {args.weights} is not a readable safetensors file: {error}")
    except (BackboneError, DataError, PackError, PreprocessingError, OSError) as error:
        cli.fail(error_message(error))


if __name__ == "__main__":
    main()
