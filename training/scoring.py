"""Per-image scores of an SR output and their summary per source group: what every evaluation reports.

Each image is scored against its HR with the 8-bit metrics of training/metrics.py, beside the two plain
interpolations a user already has (bicubic, the baseline every README quotes, and bilinear, which beats it
on aliased LR), with a sharpness figure (PSNR alone rewards blur) and, when the output came with an
uncertainty map, how well that map ranks the real error (Spearman's ρ).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy.stats import spearmanr

from xraysr.training.metrics import bicubic_upscale, psnr, ssim

# Adults are the product's users: their test images are the primary number; children are reported beside.
PEDIATRIC_SOURCES = ("pediatric",)
BASELINES = ("bicubic", "bilinear")


def bilinear_upscale(lr_image: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(lr_image, (size, size), interpolation=cv2.INTER_LINEAR)


def gradient_magnitude(image: np.ndarray) -> float:
    """Mean Sobel gradient magnitude: how much edge and texture an image has."""
    pixels = image.astype(np.float32)
    dx, dy = cv2.Sobel(pixels, cv2.CV_32F, 1, 0), cv2.Sobel(pixels, cv2.CV_32F, 0, 1)
    return float(np.sqrt(dx * dx + dy * dy).mean())


def score_image(sr: np.ndarray, hr: np.ndarray, lr: np.ndarray, uncertainty: np.ndarray | None = None) -> dict:
    """Scores of one 8-bit SR image and of the baselines made from its 8-bit LR, against the 8-bit HR.

    ``sharpness_*`` is the mean gradient magnitude relative to HR's (1 = as sharp as the truth, below 1
    blurrier). ``spearman_uncertainty`` ranks the per-pixel uncertainty against |SR − HR| (None without one).
    """
    outputs = {
        "model": sr,
        "bicubic": bicubic_upscale(lr, hr.shape[0]),
        "bilinear": bilinear_upscale(lr, hr.shape[0]),
    }
    hr_gradient = gradient_magnitude(hr)
    scores: dict[str, float | None] = {}
    for method, image in outputs.items():
        scores[f"psnr_{method}"] = psnr(image, hr)
        scores[f"ssim_{method}"] = ssim(image, hr)
        scores[f"sharpness_{method}"] = gradient_magnitude(image) / hr_gradient if hr_gradient else None
    scores["spearman_uncertainty"] = None
    if uncertainty is not None:
        error = np.abs(sr.astype(np.float32) - hr.astype(np.float32))
        rho = spearmanr(uncertainty.ravel(), error.ravel()).statistic
        scores["spearman_uncertainty"] = float(rho) if np.isfinite(rho) else None
    return scores


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std())}


def summarize(per_image: list[dict]) -> dict:
    """Mean ± std of each score, the gain over each baseline and the share of images where the model wins."""
    summary: dict = {"images": len(per_image)}
    for method in ("model", *BASELINES):
        summary[method] = {
            metric: _mean_std([record[f"{metric}_{method}"] for record in per_image]) for metric in ("psnr", "ssim")
        }
        sharpness = [r[f"sharpness_{method}"] for r in per_image if r[f"sharpness_{method}"] is not None]
        summary[method]["sharpness"] = _mean_std(sharpness) if sharpness else None
    for baseline in BASELINES:
        summary[f"vs_{baseline}"] = {
            "delta_psnr": summary["model"]["psnr"]["mean"] - summary[baseline]["psnr"]["mean"],
            "delta_ssim": summary["model"]["ssim"]["mean"] - summary[baseline]["ssim"]["mean"],
            "wins_psnr": float(np.mean([r["psnr_model"] > r[f"psnr_{baseline}"] for r in per_image])),
            "wins_ssim": float(np.mean([r["ssim_model"] > r[f"ssim_{baseline}"] for r in per_image])),
        }
    rhos = [record["spearman_uncertainty"] for record in per_image if record["spearman_uncertainty"] is not None]
    summary["spearman_uncertainty"] = _mean_std(rhos) if rhos else None
    return summary


def summarize_by_group(per_image: list[dict]) -> dict[str, dict]:
    """``summarize`` for "adult" (every source but the pediatric ones), "pediatric", each source, and "all".

    Records carry a ``source``; groups with no image are left out.
    """
    groups: dict[str, list[dict]] = {
        "adult": [r for r in per_image if r["source"] not in PEDIATRIC_SOURCES],
        "pediatric": [r for r in per_image if r["source"] in PEDIATRIC_SOURCES],
    }
    for source in sorted({record["source"] for record in per_image}):
        groups[f"source:{source}"] = [r for r in per_image if r["source"] == source]
    groups["all"] = per_image
    return {name: summarize(records) for name, records in groups.items() if records}


def markdown_summary(summaries: dict[str, dict], title: str) -> str:
    """One row per group: the model, bicubic and bilinear, the gains and the win rates."""
    lines = [
        title,
        "",
        "| images | n | model PSNR | bicubic | bilinear | ΔPSNR vs bicubic | ΔSSIM vs bicubic | "
        "wins vs bicubic | wins vs bilinear | model SSIM | sharpness (model / bicubic) | ρ(σ, error) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group, summary in summaries.items():
        model, versus, bilinear = summary["model"], summary["vs_bicubic"], summary["vs_bilinear"]
        sharp = [summary[method]["sharpness"] for method in ("model", "bicubic")]
        rho = summary["spearman_uncertainty"]
        lines.append(
            f"| {group} | {summary['images']} | {model['psnr']['mean']:.2f} | "
            f"{summary['bicubic']['psnr']['mean']:.2f} | {summary['bilinear']['psnr']['mean']:.2f} | "
            f"{versus['delta_psnr']:+.2f} dB | {versus['delta_ssim']:+.4f} | {100 * versus['wins_psnr']:.0f}% | "
            f"{100 * bilinear['wins_psnr']:.0f}% | {model['ssim']['mean']:.4f} | "
            f"{' / '.join('—' if value is None else format(value['mean'], '.3f') for value in sharp)} | "
            f"{'—' if rho is None else format(rho['mean'], '.3f')} |"
        )
    return "\n".join(lines) + "\n"
