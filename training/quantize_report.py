"""`xraysr quantize`'s report (runs/quantize/<model> by default): quantize_report.json and its Markdown tables."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quantize_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "quantize_report.md").write_text(report_markdown(report))


def report_markdown(report: dict) -> str:
    lines = [
        "## INT8 quantization",
        "",
        "Precision per component: " + ", ".join(f"{name} {kind}" for name, kind in report["precision"].items()),
        "",
        "| variant (alone, others FP32) | output max abs | output mean abs | output PSNR vs FP32 (dB) "
        "| pipeline PSNR (dB) | drop (dB) | pipeline SSIM | SSIM drop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, difference in report["components"].items():
        sensitivity = report["sensitivity"][variant]
        lines.append(
            f"| {variant} | {difference['max_abs']:.4g} | {difference['mean_abs']:.4g} | {difference['psnr_db']:.2f} "
            f"| {sensitivity['psnr']:.3f} | {sensitivity['drop_db']:+.3f} | {sensitivity['ssim']:.4f} "
            f"| {sensitivity['ssim_drop']:+.4f} |"
        )
    step_graph = report["step_graph"]
    if step_graph is not None:
        difference = step_graph["output_vs_fp32"]
        lines += [
            "",
            f"Step graph (unet_step, the UNet's plan: {len(step_graph['float_nodes'])} float nodes): output vs FP32 "
            f"max abs {difference['max_abs']:.4g}, mean abs {difference['mean_abs']:.4g}, "
            f"PSNR {difference['psnr_db']:.2f} dB; vs the INT8 UNet + host update, max abs "
            f"{step_graph['max_abs_vs_int8_unet_host_update']:.3g}",
        ]
    test = report["test"]
    lines += [
        "",
        f"Pipeline PSNR on the calibration images, all FP32: {report['sensitivity']['fp32']['psnr']:.3f} dB",
        "",
        f"{test['split']} split, {test['images']} images, the default answer "
        f"({report['settings'].get('answer', 'samples')}; the loop: {report['settings']['steps']} steps), "
        f"seed {report['settings']['seed']}:",
        "",
        "| method | PSNR (dB) | SSIM |",
        "|---|---|---|",
    ]
    for method in ("fp32", "int8", "bicubic"):
        lines.append(f"| {method} | {test[method]['psnr']:.3f} | {test[method]['ssim']:.4f} |")
    lines += ["", f"INT8 output vs FP32 output: {test['fp32_vs_int8_psnr_db']:.2f} dB PSNR", ""]
    return "\n".join(lines)
