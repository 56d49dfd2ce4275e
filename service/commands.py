"""The serving half of the `xraysr` command: its flags, `serve` (the HTTP appliance), `bench`, `loadtest` and
`build-engines`; `upscale` and `shrink` (files in, files out) are in service/file_commands.py."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from xraysr.service.file_commands import INPUT_TYPES, seed_argument, settings_from, shrink_files, upscale_files
from xraysr.service.manifest import MAX_SAMPLES
from xraysr.service.renamed_flags import add_renamed


def _serve(args: argparse.Namespace) -> int:
    settings = settings_from(
        args,
        (
            "host",
            "port",
            "engines_dir",
            "model",
            "backend",
            "precision",
            "threads",
            "max_concurrent_requests",
            "max_queued_requests",
            "max_batch",
            "max_batch_delay_ms",
            "max_body_bytes",
            "request_timeout_s",
            "shutdown_grace_s",
            "max_connections",
            "trt_cache_dir",
            "log_level",
        ),
    )
    logging.getLogger().setLevel(settings.log_level)
    from xraysr.service.engine import check_manifest
    from xraysr.service.server import serve

    # The model loads in the background once the port is open; checking the contract here first turns a wrong
    # folder, checksum or precision into one line and a non-zero exit instead of a failed readiness probe.
    check_manifest(settings)
    return serve(settings)


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve", help="serve POST /upscale over HTTP (flags override XRAYSR_* environment variables)"
    )
    serve.add_argument("--host", help="bind address (default 127.0.0.1; 0.0.0.0 to accept other machines)")
    serve.add_argument("--port", type=int, help="default 8000")
    _add_model_flags(serve)
    serve.add_argument("--max-concurrent-requests", type=int, help="batches running at once (default 1)")
    serve.add_argument("--max-queued-requests", type=int, help="upscales waiting; beyond, 503 (default 8)")
    serve.add_argument(
        "--max-batch",
        type=int,
        help=f"samples per engine batch, across requests; 1 turns batching off (default {MAX_SAMPLES})",
    )
    serve.add_argument("--max-batch-delay-ms", type=float, help="how long a batch waits to fill (default 5)")
    serve.add_argument("--max-body-bytes", type=int, help="larger bodies get 413 (default 1048576)")
    serve.add_argument("--request-timeout-s", type=float, help="deadline per upscale, 504 past it (default 60)")
    serve.add_argument("--shutdown-grace-s", type=float, help="time to finish admitted work on SIGTERM (default 8)")
    serve.add_argument(
        "--max-connections",
        type=int,
        help="open connections; at the cap the longest-idle is closed, 4 probe-only slots past it (default 64)",
    )
    serve.add_argument(
        "--trt-cache-dir",
        type=Path,
        help="TensorRT engine cache (default engines_dir/model/tensorrt, or ~/.cache/xraysr when read-only)",
    )
    serve.set_defaults(handler=_serve)

    upscale = commands.add_parser(
        "upscale",
        help="upscale a PNG/DICOM file, every *.png/*.dcm of a folder, or every image array of a .npz/.npy",
    )
    upscale.add_argument(
        "input",
        type=Path,
        help="a 64x64 .png or .dcm file, or a folder of them; or a .npz/.npy of (N, 64, 64) uint8/uint16 arrays",
    )
    upscale.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output .png (or folder) for a file, or .dcm for a DICOM input: a DICOM Secondary Capture in the "
        "input's study (one new series per invocation and study); a folder for a folder (never an input's path); "
        "a .npz for a .npz (each image array (N, 256, 256) uint8 under its key, other arrays copied), .npy for .npy",
    )
    upscale.add_argument(
        "--steps",
        type=int,
        help="run the reverse-diffusion loop with this many steps (with neither --steps nor --samples: the model's "
        "default answer, the one-pass estimate)",
    )
    upscale.add_argument(
        "--seed",
        type=seed_argument,
        default=0,
        help="the loop's noise seed, 0..2147483647 (default 0: reruns give identical files); for arrays, image i "
        "of array KEY runs from image_seed(SEED, KEY, i) (service/batch/shards.py)",
    )
    upscale.add_argument(
        "--samples",
        type=int,
        help=f"run the loop and average this many diffusion samples, seeds SEED, SEED+1, … (1-{MAX_SAMPLES}; with "
        "--steps alone: the manifest's default_samples)",
    )
    upscale.add_argument(
        "--consistency",
        choices=("report", "enforce"),  # consistency.CONSISTENCY_MODES, not imported: the CLI starts without numpy
        default="report",
        help="report (default): write the answer as the model made it and print its LR consistency PSNR; enforce: "
        "project it onto the input first, as the API's consistency=enforce does",
    )
    upscale.add_argument(
        "--uncertainty",
        type=Path,
        nargs="?",
        const=True,
        metavar="PATH",
        help="also write the map the API's JSON answer carries: the calibrated interval's half-width at "
        "XRAYSR_UNCERTAINTY_COVERAGE (0.9), an 8-bit PNG of uncertainty_scale grey levels (one input file); for "
        "a .npz, no PATH: <key>_uncertainty arrays of those levels in the output; for a .npy, PATH.npy",
    )
    arrays = upscale.add_argument_group("arrays (.npz/.npy input)")
    arrays.add_argument(
        "--workers", type=int, help="processes (or Ray actors), the cores split between them (default 1)"
    )
    arrays.add_argument(
        "--shard-size",
        type=int,
        help="images per shard: the unit of progress, of resuming and of memory (default 256)",
    )
    arrays.add_argument(
        "--resume",
        action="store_true",
        help="continue the run that OUT.parts/ records, skipping its finished shards (same input and options)",
    )
    arrays.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the shards as a Ray Data pipeline on the cluster at ADDRESS (ray://… or host:port), or on a "
        "local Ray instance when none is given; IN must be at the same path on every node "
        "(pip install 'xraysr[ray]')",
    )
    _add_model_flags(upscale)
    upscale.set_defaults(handler=upscale_files)

    shrink = commands.add_parser(
        "shrink",
        help="make the 64x64 input of `upscale` from a full-size X-ray by the training recipe "
        "(centre square, INTER_AREA to 256, INTER_CUBIC to 64)",
    )
    shrink.add_argument("input", type=Path, help="a .png or .dcm X-ray (short side at least 256), or a folder of them")
    shrink.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output .png (or folder) for a file; a folder for a folder (never an input's path)",
    )
    shrink.set_defaults(handler=shrink_files)

    bench = commands.add_parser("bench", help="per-stage latency p50/p95 and images/s: in-process, HTTP, PyTorch")
    bench.add_argument("--image", type=Path, help="a 64x64 PNG/DICOM to upscale (default: a synthetic ramp)")
    bench.add_argument("--steps", type=int, help="time the loop at these steps (default: the model's default answer)")
    bench.add_argument("--runs", type=int, default=20)
    bench.add_argument(
        "--samples", type=int, help=f"time the loop, this many samples averaged per request (1-{MAX_SAMPLES})"
    )
    bench.add_argument("--no-http", action="store_true", help="skip the over-HTTP measurement")
    bench.add_argument(
        "--flops", action="store_true", help="add FLOPs/bytes per stage and Jetson estimates (needs onnx)"
    )
    bench.add_argument("--checkpoint", type=Path, help="an `xraysr train` checkpoint: also time the PyTorch reference")
    bench.add_argument("--write", type=Path, help="append the Markdown report to this file (docs/BENCHMARKS.md)")
    _add_model_flags(bench)
    bench.set_defaults(handler=_bench)

    load = commands.add_parser(
        "loadtest", help="N clients send /upscale to a running server: throughput, latency, statuses, batch sizes"
    )
    load.add_argument("--url", default="http://127.0.0.1:8000", help="the server (loopback unless --allow-remote)")
    load.add_argument("--image", type=Path, required=True, help="the 64x64 PNG or DICOM every request sends")
    load.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    amount = load.add_mutually_exclusive_group()
    amount.add_argument("--requests", type=int, help="requests in all (default 100)")
    amount.add_argument("--duration", type=float, help="seconds to keep sending")
    load.add_argument("--steps", type=int, help="steps query parameter (default: the server's)")
    load.add_argument("--samples", type=int, help="samples query parameter (default: the server's)")
    load.add_argument("--timeout", type=float, default=120.0, help="client timeout per request, s (default 120)")
    load.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    load.set_defaults(handler=_loadtest)

    build = commands.add_parser(
        "build-engines", help="build (or load from the cache) a TensorRT engine per component, on this GPU"
    )
    build.add_argument("--engines-dir", type=Path, help="folder of engines/<model> folders (default engines)")
    build.add_argument("--model", help="model folder name (default cxr-default)")
    build.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8"],
        required=True,
        help="int8 needs a quantized model; lowered to fp16 on GPUs without INT8 (Jetson Nano)",
    )
    add_renamed(
        build,
        "--trt-cache-dir",
        "--cache-dir",
        required=True,
        type=Path,
        help="TensorRT engine cache: the .plan files and their sidecars (serve's --trt-cache-dir)",
    )
    build.add_argument("--workspace-mib", type=int, default=1024, help="TensorRT builder workspace (default 1024)")
    build.add_argument(
        "--max-batch",
        type=int,
        help=f"largest batch the engines accept (default: what serve builds for, max(XRAYSR_MAX_BATCH, {MAX_SAMPLES}))",
    )
    build.set_defaults(handler=_build_engines)


def _build_engines(args: argparse.Namespace) -> int:
    from xraysr.service.engine import engine_max_batch
    from xraysr.service.runtimes.trt_build import EngineBuildError, Precision, build_all, current_device

    settings = settings_from(args, ("engines_dir", "model"))
    max_batch = args.max_batch if args.max_batch is not None else engine_max_batch(settings)
    try:
        device = current_device()
    except (ImportError, RuntimeError) as error:
        raise ValueError(
            f"building engines needs TensorRT and pycuda on an NVIDIA GPU (JetPack ships TensorRT): {error}"
        ) from error
    precision: Precision = args.precision
    failed: EngineBuildError | None = None
    try:
        sizes = (args.workspace_mib, max_batch)
        _, reports = build_all(settings.model_dir, args.trt_cache_dir, precision, device, *sizes)
    except EngineBuildError as error:  # every component was tried: report each, then fail
        failed, reports = error, error.reports
    print(f"{device.name} (compute capability {device.compute_capability}), TensorRT {device.tensorrt_version}")
    for report in reports:
        print(f"{report.action} {report.component} ({report.precision}): {report.error or report.plan}")
    if failed is not None:
        raise ValueError(str(failed))
    return 0


def _loadtest(args: argparse.Namespace) -> int:
    import os

    from xraysr.service.tools.loadtest import run_load

    content_type = INPUT_TYPES.get(args.image.suffix.lower(), "application/octet-stream")
    params = {name: value for name in ("steps", "samples") if (value := getattr(args, name)) is not None}
    report = run_load(
        args.url,
        args.image.read_bytes(),
        content_type,
        clients=args.clients,
        requests=None if args.duration is not None else (args.requests or 100),
        duration_s=args.duration,
        params=params,
        timeout_s=args.timeout,
        api_key=os.environ.get("XRAYSR_API_KEY"),
        allow_remote=args.allow_remote,
    )
    print(report.summary())
    return 0 if report.statuses and not any(status >= 500 and status != 503 for status in report.statuses) else 1


def _bench(args: argparse.Namespace) -> int:
    import numpy as np

    from xraysr.service.imaging import decode_image
    from xraysr.service.manifest import read_manifest
    from xraysr.service.pipeline import choose_answer
    from xraysr.service.tools.bench import markdown, run_bench

    settings = settings_from(args)
    try:
        plan = choose_answer(read_manifest(settings.model_dir).sampler, args.steps, args.samples)
    except ValueError as error:
        raise ValueError(f"--{error}") from error
    if args.image is not None:
        image = decode_image(args.image.read_bytes(), None).pixels
    else:
        # Latency does not depend on the pixels; a smooth ramp stands in when no image is given.
        image = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    series = run_bench(
        settings.engines_dir,
        settings.model,
        image,
        plan,
        runs=args.runs,
        backend=settings.backend,
        threads=settings.threads,
        http=not args.no_http,
        checkpoint=args.checkpoint,
        precision=settings.served_precision,
    )
    command = "xraysr bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "xraysr bench"
    report = markdown(series, command, plan, args.runs)
    if args.flops:
        from xraysr.service.manifest import load_manifest
        from xraysr.service.tools.flops import estimate_table

        report += "\n" + estimate_table(load_manifest(settings.model_dir), settings.model_dir, plan.steps)
    print(report)
    if args.write is not None:
        with args.write.open("a") as handle:
            handle.write("\n" + report)
    return 0


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engines-dir", type=Path, help="folder of engines/<model> folders (default engines)")
    parser.add_argument("--model", help="model folder name (default cxr-default)")
    parser.add_argument("--backend", help="onnxruntime (default) or tensorrt")
    parser.add_argument(
        "--precision",
        help="auto (default: int8 on a CPU with VNNI or AMX when the model has it, else fp32), fp32, fp16 or int8",
    )
    parser.add_argument("--threads", type=int, help="intra-op threads per inference (default: the runtime's)")
