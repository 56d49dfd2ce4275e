"""`xraysr upscale` and `xraysr shrink`: files in, files out, in-process (no server)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from xraysr.service.settings import Settings, load_settings

if TYPE_CHECKING:
    from xraysr.service.answer import Finished
    from xraysr.service.consistency import ConsistencyMode
    from xraysr.service.pipeline import AnswerPlan, SRPipeline

INPUT_TYPES = {".png": "image/png", ".dcm": "application/dicom"}
ARRAY_SUFFIXES = (".npz", ".npy")  # image arrays: service/batch/
# Flags of array runs only (flag → argparse name).
ARRAY_FLAGS = {
    "--workers": "workers",
    "--shard-size": "shard_size",
    "--resume": "resume",
    "--ray": "ray",
}


# The flags every model-loading command takes (commands.py's _add_model_flags), as Settings fields.
MODEL_FLAGS = ("engines_dir", "model", "backend", "precision", "threads")


def settings_from(args: argparse.Namespace, names: tuple[str, ...] = MODEL_FLAGS) -> Settings:
    """XRAYSR_* environment variables, overridden by whichever of these flags were given."""
    return load_settings(**{name: getattr(args, name) for name in names})


def seed_argument(text: str) -> int:
    """--seed: an integer in the API's range (0..SEED_MAX), refused like the API refuses it, never wrapped."""
    from xraysr.service.sampler import SEED_MAX

    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= seed <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{seed} is out of range: a seed is 0..{SEED_MAX}, as the API takes")
    return seed


def plan_files(source: Path, output: Path, command: str, suffixes: tuple[str, ...]) -> list[tuple[Path, Path]]:
    """(input, output) pairs for a file or a folder of *.png/*.dcm, refused before anything runs when an output
    would write over an input, two inputs would write one output, or an output's name is not of ``suffixes``."""
    if source.is_dir():
        inputs = sorted(path for path in source.iterdir() if path.is_file() and path.suffix.lower() in INPUT_TYPES)
        if not inputs:
            raise ValueError(f"{source} holds no {' or '.join(f'*{suffix}' for suffix in INPUT_TYPES)} files")
        pairs = [(path, output / f"{path.stem}.png") for path in inputs]
        names = [target.name for _, target in pairs]
        clashes = sorted({name for name in names if names.count(name) > 1})
        if clashes:
            raise ValueError(f"{source} has inputs that would all be written to {', '.join(clashes)}; rename one")
    elif source.is_file():
        inputs = [source]
        target = output / f"{source.stem}.png" if output.is_dir() else output
        if target.suffix.lower() not in suffixes:
            raise ValueError(
                f"{target}: `xraysr {command}` writes {' or '.join(suffixes)} files, and the output's name says which"
            )
        pairs = [(source, target)]
    else:
        raise FileNotFoundError(f"input {source} does not exist")
    originals = {path.resolve() for path in inputs}
    overwritten = [str(target) for _, target in pairs if target.resolve() in originals]
    if overwritten:
        raise ValueError(
            f"-o {output} would write over the input(s) {', '.join(overwritten[:3])}: choose an output that is not "
            "an input (another folder)"
        )
    return pairs


def read_input(path: Path) -> bytes:
    """A file's bytes; an empty file is refused here, in a file's words (the decoders speak of request bodies)."""
    data = path.read_bytes()
    if not data:
        raise ValueError("the file is empty (0 bytes)")
    return data


def upscale_files(args: argparse.Namespace) -> int:
    """`xraysr upscale`: a PNG/DICOM file, or every *.png/*.dcm of a folder, through the pipeline in-process;
    a .npz/.npy of image arrays through service/batch/."""
    from xraysr.service.pipeline import check_samples, choose_answer

    if args.input.suffix.lower() in ARRAY_SUFFIXES:
        return upscale_arrays(args)
    given = [flag for flag, name in ARRAY_FLAGS.items() if getattr(args, name, None) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)}: for .npz/.npy arrays only (a file or a folder runs in this process)")
    if args.uncertainty is True:
        raise ValueError("--uncertainty PATH.png: name the file the map is written to")
    settings = settings_from(args)
    if args.samples is not None:
        check_samples(args.samples, "--samples")
    source: Path = args.input
    if args.uncertainty is not None and not source.is_file():
        raise ValueError("--uncertainty writes one map: give one input file, not a folder")
    pairs = plan_files(source, args.output, "upscale", (".png", ".dcm"))
    if source.is_dir():
        args.output.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    from xraysr.service.engine import load_pipeline

    pipeline = load_pipeline(settings, warm_up=False)
    try:
        plan = choose_answer(pipeline.manifest.sampler, args.steps, args.samples)
    except ValueError as error:
        raise ValueError(f"--{error}") from error
    if args.uncertainty is not None and pipeline.manifest.interval is None and plan.samples < 2:
        raise ValueError(
            f"--uncertainty: {pipeline.manifest.version} has no calibrated interval, and one sample has no spread: "
            "give --samples 2 or more"
        )
    with_map, failed = args.uncertainty is not None, 0
    for source_path, output_path in tqdm(pairs, desc="upscale", unit="image", disable=len(pairs) == 1):
        try:
            finished, milliseconds = _upscale_file(
                pipeline, source_path, output_path, plan, args.seed, args.consistency, with_map, settings
            )
            if with_map:
                _write_uncertainty(finished, args.uncertainty)
        except (ValueError, OSError) as error:
            # One bad file must not cost the rest of a folder: report it, carry on, and fail at the end.
            failed += 1
            tqdm.write(f"xraysr upscale: error: {source_path}: {error}", file=sys.stderr)
            continue
        if len(pairs) == 1:
            print(f"{output_path} ({_describe(finished)}, {milliseconds:.0f} ms)")
    if len(pairs) > 1:
        print(f"upscaled {len(pairs) - failed} of {len(pairs)} files into {args.output}")
    return 1 if failed else 0


def upscale_arrays(args: argparse.Namespace) -> int:
    """`xraysr upscale IN.npz -o OUT.npz` (or .npy): every image array, in shards (service/batch/run.py)."""
    from xraysr.service.batch.run import DEFAULT_SHARD_SIZE, ArrayJob, run_arrays
    from xraysr.service.batch.shards import BatchOptions

    npz = args.input.suffix.lower() == ".npz"
    if npz and isinstance(args.uncertainty, Path):
        raise ValueError("--uncertainty: a .npz's maps go into the output as <key>_uncertainty; give no path")
    job = ArrayJob(
        source=args.input,
        output=args.output,
        options=BatchOptions(
            steps=args.steps,
            samples=args.samples,
            seed=args.seed,
            consistency=args.consistency,
            uncertainty=args.uncertainty is not None,
        ),
        settings=settings_from(args),
        shard_size=args.shard_size or DEFAULT_SHARD_SIZE,
        workers=args.workers or 1,
        resume=args.resume,
        ray_address=args.ray,
        uncertainty_output=args.uncertainty if isinstance(args.uncertainty, Path) else None,
    )
    report = run_arrays(job)
    upscaled = report.images - len(report.failures)
    rate = f", {report.ran / report.seconds:.1f} images/s" if report.ran else ""
    print(f"upscaled {upscaled} of {report.images} images into {args.output} ({report.ran} this run{rate})")
    if report.failures:
        print(
            f"{len(report.failures)} failed (their rows are 0; listed in <key>_failed): `--resume` retries their "
            f"shards from {args.output}.parts",
            file=sys.stderr,
        )
    return 1 if report.failures else 0


def _describe(finished: Finished) -> str:
    """What made the file; the mean of the map --uncertainty wrote (the interval's half-width and its coverage),
    else for several samples their mean spread; and its LR consistency."""
    result, found = finished.result, finished.uncertainty
    described = result.describe()
    if found is not None and found.coverage is not None:
        described += f", interval ± {float(found.grey_levels.mean()):.2f} grey levels at {found.coverage:.0%}"
    elif result.uncertainty is not None:
        described += f", spread of the samples {float(result.uncertainty.mean()):.2f} grey levels"
    return f"{described}, LR consistency {finished.fidelity.psnr_db:.2f} dB ({finished.fidelity.mode})"


def _write_uncertainty(finished: Finished, path: Path) -> None:
    """The map the API's JSON answer carries: the calibrated interval's half-width at ``coverage`` (or, for a
    model without one, the samples' spread), as levels of ``uncertainty_scale`` grey levels."""
    from xraysr.service.uncertainty import uncertainty_png

    if finished.uncertainty is None:
        raise ValueError("one sample has no uncertainty map")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(uncertainty_png(finished.uncertainty.grey_levels))


def _upscale_file(
    pipeline: SRPipeline,
    source: Path,
    output: Path,
    plan: AnswerPlan,
    seed: int,
    consistency: ConsistencyMode,
    with_map: bool,
    settings: Settings,
) -> tuple[Finished, float]:
    """Writes a PNG, or for a .dcm ``output`` a DICOM Secondary Capture (service/dicom_out.py) of a DICOM input,
    finished as /upscale finishes its answers (service/answer.py: the fidelity guard, and with ``with_map`` the
    uncertainty map); returns the finished answer and the milliseconds it took."""
    from xraysr.service.answer import answer_dicom, answer_png, finish
    from xraysr.service.dicom_out import read_source
    from xraysr.service.imaging import ImageError, decode_image

    started = time.perf_counter()
    data = read_input(source)
    as_dicom = output.suffix.lower() == ".dcm"
    try:
        decoded = decode_image(
            data, INPUT_TYPES.get(source.suffix.lower()), expected_size=pipeline.manifest.image.lr_size
        )
        if as_dicom and decoded.source_format != "dicom":
            raise ValueError(
                f"{output.name}: a DICOM output needs a DICOM input (its patient and study tags are what the answer "
                "is filed under); write a .png instead"
            )
        dicom_source = read_source(data) if as_dicom else None  # checked before the model runs
    except ImageError as error:
        raise ValueError(error.message) from error
    finished = finish(
        decoded.pixels,
        pipeline.answer(decoded.pixels, plan, seed),
        pipeline.manifest,
        consistency=consistency,
        low_db=settings.lr_consistency_low_db,
        coverage=settings.uncertainty_coverage if with_map else None,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    if dicom_source is not None:
        output.write_bytes(answer_dicom(finished, dicom_source, pipeline.manifest, settings.dicom_uid_root))
    else:
        output.write_bytes(answer_png(finished, pipeline.manifest))
    return finished, 1000 * (time.perf_counter() - started)


def shrink_files(args: argparse.Namespace) -> int:
    """Full-size X-rays → 64×64 inputs by the training recipe (service/shrink.py); a folder does every file."""
    from xraysr.service.imaging import ImageError
    from xraysr.service.shrink import RECIPE, shrink_file

    source: Path = args.input
    pairs = plan_files(source, args.output, "shrink", (".png",))
    if source.is_dir():
        args.output.mkdir(parents=True, exist_ok=True)
    failed = 0
    for source_path, output_path in pairs:
        try:
            shrunk = shrink_file(read_input(source_path), INPUT_TYPES.get(source_path.suffix.lower()))
        except (ImageError, ValueError, OSError) as error:
            failed += 1  # one bad (or unreadable) file must not cost the rest of a folder
            print(f"xraysr shrink: error: {source_path}: {getattr(error, 'message', error)}", file=sys.stderr)
            continue
        output_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.write_bytes(shrunk.png)
        size = shrunk.pixels.shape[0]
        print(f"{output_path} ({shrunk.original_width}x{shrunk.original_height} -> {size}x{size}: {RECIPE})")
    return 1 if failed else 0
