"""The training half of the `xraysr` command: prepare, train-vae, train, evaluate.

Nothing heavy is imported here at module level: `xraysr --help` must work on a serving-only install.
Each handler imports its module when it runs; service/extras.py checks first that the extra is installed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import get_args

from xraysr.service.renamed_flags import add_renamed
from xraysr.service.settings import PACKAGED_ENGINES_DIR
from xraysr.training.config import Degradation

# How the LR is made from HR for scoring (training/degradation.py); "cubic" is the stored LR_64.
DEGRADATION_CHOICES = get_args(Degradation)
DEGRADATION_HELP = "how the 64x64 input is made from HR: cubic (cv2.INTER_CUBIC, default), area, cubic_aa"


def _prepare(args: argparse.Namespace) -> int:
    from xraysr.training.prepare import Source, prepare_sources

    if args.metadata and args.manifest:
        raise ValueError("give --metadata (NIH layout) or --manifest (folder layout), not both")
    if bool(args.images) == bool(args.source):
        raise ValueError("give --images DIR (one input) or one or more --source NAME=DIR, not both")
    if args.source and (args.metadata or args.manifest):
        raise ValueError("--source reads DIR/manifest.csv; --metadata and --manifest go with --images")
    sources = [Source(args.images.name, args.images, args.metadata, args.manifest)] if args.images else []
    for text in args.source or []:
        name, _, folder = text.partition("=")
        if not name or not folder:
            raise ValueError(f"--source takes NAME=DIR, got {text!r}")
        sources.append(Source(name, Path(folder)))
    views = tuple(view.strip() for view in args.views.split(",") if view.strip())
    report = prepare_sources(
        sources,
        args.out,
        views=None if views == ("all",) else views,
        seed=args.seed,
        workers=args.workers,
        hr_interpolation=args.hr_interpolation,
        keep_splits=args.keep_splits,
    )
    print(json.dumps(report.to_dict() if hasattr(report, "to_dict") else report, indent=2, default=str))
    return 0


def _train_vae(args: argparse.Namespace) -> int:
    from xraysr.training.config import VAETrainConfig, load_config
    from xraysr.training.train_vae import train_vae

    print(train_vae(load_config(args.config, VAETrainConfig), resume=_resume(args)))
    return 0


def _train(args: argparse.Namespace) -> int:
    from xraysr.training.config import SRTrainConfig, load_config
    from xraysr.training.train import train_sr

    print(train_sr(load_config(args.config, SRTrainConfig), resume=_resume(args)))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from xraysr.training.evaluate import evaluate

    report = evaluate(
        args.checkpoint,
        split=args.split,
        out_dir=args.out,
        steps=args.steps,
        sampler=args.sampler,
        seed=args.seed,
        data_root=args.data,
        batch_size=args.batch_size,
        limit=args.limit,
        grid_files=args.grid_files.split(",") if args.grid_files else None,
        degradation=args.degradation,
    )
    print(json.dumps(report["summary"], indent=2))
    return 0


def _evaluate_served(args: argparse.Namespace) -> int:
    from xraysr.training.evaluate_served import evaluate_served, markdown_table

    report = evaluate_served(
        args.engines_dir,
        args.model,
        args.data,
        args.split,
        args.out,
        steps=args.steps,
        seed=args.seed,
        threads=args.threads,
        precision=args.precision,
        samples=args.samples,
        degradation=args.degradation,
        sources=args.sources.split(",") if args.sources else None,
        limit=args.limit,
        shift=args.shift,
    )
    print(markdown_table(report))
    return 0


def _export(args: argparse.Namespace) -> int:
    from xraysr.training.export import export_model

    manifest = export_model(
        args.checkpoint,
        args.out,
        args.model or args.out.name,
        version=args.version,
        steps=(args.min_steps, args.default_steps, args.max_steps),
        step_graph=args.step_graph,
        default_samples=args.default_samples,
        final_timestep=args.final_timestep,
        default_answer=args.default_answer,
    )
    print(f"exported {manifest.model} {manifest.version} to {args.out}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from xraysr.training.quantize import quantize_engines
    from xraysr.training.quantize_report import report_markdown

    report = quantize_engines(
        args.model_dir,
        args.calib,
        args.out or Path("runs") / "quantize" / args.model_dir.name,
        calib_images=args.calib_images,
        split=args.split,
        eval_split=args.eval_split,
        seed=args.seed,
        max_component_drop_db=args.max_component_drop_db,
        max_component_ssim_drop=args.max_component_ssim_drop,
    )
    print(report_markdown(report))
    return 0


def _import_engines(args: argparse.Namespace) -> int:
    from xraysr.training.from_engines import import_engines

    vae_path, sr_path = import_engines(args.model_dir, args.out)
    print(json.dumps({"vae": str(vae_path), "sr_init": str(sr_path)}))
    return 0


def _calibrate_interval(args: argparse.Namespace) -> int:
    from xraysr.service.interval import factor
    from xraysr.training.calibrate_interval import calibrate_interval, write_interval

    for precision in args.precision:
        spec = calibrate_interval(args.model_dir, args.data, precision, args.work)
        path = write_interval(args.model_dir, precision, spec)
        print(
            json.dumps(
                {
                    "manifest": str(path),
                    "factor_at_0.9": {kind: factor(spec, kind, 0.9) for kind in spec.factors},
                }
            )
        )
    return 0


def _resume(args: argparse.Namespace) -> str | Path | None:
    return None if args.restart else (args.resume or "auto")


def add_commands(commands: argparse._SubParsersAction) -> None:
    prepare = commands.add_parser("prepare", help="raw X-rays → HR_256/, LR_64/, splits.csv (split by patient)")
    prepare.add_argument("--images", type=Path, help="folder of X-ray images (one input)")
    prepare.add_argument(
        "--source",
        action="append",
        metavar="NAME=DIR",
        help="an input folder with its manifest.csv, named; repeat to combine sources into one set split by patient",
    )
    source = prepare.add_mutually_exclusive_group()
    source.add_argument("--metadata", type=Path, help="NIH Data_Entry_2017.csv")
    source.add_argument("--manifest", type=Path, help="manifest.csv with filename, patient_id, view")
    prepare.add_argument("--out", type=Path, required=True)
    prepare.add_argument(
        "--views", default="PA", help="comma-separated views to keep (default PA); 'all' keeps every view"
    )
    prepare.add_argument("--seed", type=int, default=0)
    prepare.add_argument("--workers", type=int, default=os.cpu_count())
    prepare.add_argument("--hr-interpolation", default="area", choices=["area", "cubic", "lanczos"])
    prepare.add_argument(
        "--keep-splits",
        type=Path,
        help="an earlier set's splits.csv: its patients keep their split (add a source without moving any)",
    )
    prepare.set_defaults(handler=_prepare)

    for name, handler, help_text in (
        ("train-vae", _train_vae, "train the chest-X-ray VAE from a YAML config"),
        ("train", _train, "train the latent-diffusion SR model from a YAML config"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--config", type=Path, required=True)
        command.add_argument("--resume", type=Path, help="checkpoint to resume (default: the run's latest)")
        command.add_argument("--restart", action="store_true", help="start afresh; refuses a run with checkpoints")
        command.set_defaults(handler=handler)

    evaluate = commands.add_parser("evaluate", help="PSNR/SSIM of the model, the VAE ceiling and bicubic")
    evaluate.add_argument("--checkpoint", type=Path, required=True, help="an SR checkpoint from `xraysr train`")
    evaluate.add_argument("--data", type=Path, help="prepared data root (default: the one in the checkpoint)")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--steps", type=int, default=25)
    evaluate.add_argument("--sampler", default="ddim", choices=["ddim", "dpmsolver++"])
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--limit", type=int, help="evaluate only the first N images")
    evaluate.add_argument("--grid-files", help="comma-separated filenames for grid.png (default: the first 4)")
    evaluate.add_argument("--degradation", default="cubic", choices=DEGRADATION_CHOICES, help=DEGRADATION_HELP)
    evaluate.add_argument("--out", type=Path, required=True, help="folder for report.json, report.md, grid.png")
    evaluate.set_defaults(handler=_evaluate)

    served = commands.add_parser("evaluate-served", help="score the engines through a real `xraysr serve`")
    served.add_argument("--engines-dir", type=Path, default=PACKAGED_ENGINES_DIR)
    served.add_argument("--model", default="cxr-default")
    served.add_argument("--data", type=Path, required=True, help="prepared data root (HR_256/, LR_64/, splits.csv)")
    served.add_argument("--split", default="test", choices=["train", "val", "test"])
    served.add_argument("--steps", type=int, help="run the loop with these steps (default: the model's default answer)")
    served.add_argument("--seed", type=int, default=0)
    served.add_argument("--threads", type=int)
    served.add_argument(
        "--precision", choices=["auto", "fp32", "fp16", "int8"], help="passed to `xraysr serve --precision`"
    )
    served.add_argument("--samples", type=int, help="diffusion samples averaged per image (default: the model's)")
    served.add_argument("--degradation", default="cubic", choices=DEGRADATION_CHOICES, help=DEGRADATION_HELP)
    served.add_argument("--sources", help="comma-separated sources to score (default: every source of the split)")
    served.add_argument("--limit", type=int, help="score only N images, evenly spaced through the split")
    served.add_argument(
        "--shift",
        action="store_true",
        help="score on films shifted beyond the trained acquisition ranges (evaluate_served.SHIFT): a new hospital",
    )
    served.add_argument("--out", type=Path, required=True, help="folder for served_report.json and .md")
    served.set_defaults(handler=_evaluate_served)

    export = commands.add_parser("export", help="SR checkpoint → engines/<model>/ (ONNX files + manifest.json)")
    export.add_argument("--checkpoint", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True, help="engines/<model> folder")
    export.add_argument("--model", help="model name (default: the folder name)")
    export.add_argument("--version", help="model version (default: <model>-step<N>-<date>)")
    export.add_argument("--min-steps", type=int, default=10)
    export.add_argument("--default-steps", type=int, default=25)
    export.add_argument("--max-steps", type=int, default=50)
    export.add_argument(
        "--final-timestep", type=int, help="stop the DDIM loop at this timestep (default: the run config's)"
    )
    export.add_argument(
        "--default-samples", type=int, default=1, help="samples a request averages when it names none (1-8)"
    )
    export.add_argument(
        "--default-answer",
        choices=["estimate", "samples"],
        default="estimate",
        help="what a request naming neither steps nor samples gets: the one-pass estimate (default) or the loop",
    )
    export.add_argument(
        "--step-graph",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also export unet_step.onnx (UNet + DDIM update: TensorRT's on-GPU loop); default on",
    )
    export.set_defaults(handler=_export)

    quantize = commands.add_parser(
        "quantize", help="engines/<model> → INT8 QDQ ONNX + manifest.int8.json, calibrated on real images"
    )
    add_renamed(quantize, "--model-dir", "--engines", required=True, type=Path, help="engines/<model>")
    quantize.add_argument("--calib", type=Path, required=True, help="prepared data root (LR_64/, HR_256/, splits.csv)")
    quantize.add_argument("--calib-images", type=int, default=64, help="calibration images (default 64)")
    quantize.add_argument("--split", default="train", choices=["train", "val", "test"], help="calibration split")
    quantize.add_argument("--eval-split", default="test", choices=["train", "val", "test"], help="scored split")
    quantize.add_argument("--seed", type=int, default=0)
    quantize.add_argument(
        "--max-component-drop-db",
        type=float,
        default=0.05,
        help="an encoder/decoder whose INT8 costs more PSNR than this stays FP32 (default 0.05)",
    )
    quantize.add_argument(
        "--max-component-ssim-drop",
        type=float,
        default=0.0005,
        help="an encoder/decoder whose INT8 costs more SSIM than this stays FP32 (default 0.0005)",
    )
    quantize.add_argument("--out", type=Path, help="report folder (default runs/quantize/<model>)")
    quantize.set_defaults(handler=_quantize)

    interval = commands.add_parser(
        "calibrate-interval",
        help="fit the per-pixel interval on train, calibrate it on val (conformal), write it into the manifest",
    )
    add_renamed(interval, "--model-dir", "--engines", required=True, type=Path, help="the engines/<model> folder")
    interval.add_argument("--data", type=Path, required=True, help="a prepared data folder (splits.csv with sources)")
    interval.add_argument(
        "--precision", nargs="+", choices=["fp32", "int8"], default=["fp32", "int8"], help="manifests to calibrate"
    )
    interval.add_argument("--work", type=Path, default=Path("runs/interval"), help="cache of served answers")
    interval.set_defaults(handler=_calibrate_interval)

    imported = commands.add_parser(
        "import-engines", help="a shipped model's ONNX files → torch weights to train on from (checked against them)"
    )
    add_renamed(imported, "--model-dir", "--engines", required=True, type=Path, help="engines/<model>")
    imported.add_argument("--out", type=Path, required=True, help="folder for vae.pt and sr_init.pt")
    imported.set_defaults(handler=_import_engines)
