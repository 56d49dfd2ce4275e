"""Fitting and calibrating the per-pixel interval of service/interval.py, and measuring what it promises.

- ``served_answers``: the served model's answers (in-process, the service's own pipeline) for a split.
- ``fit_weights``: the scale model's weights by maximum likelihood of |answer − truth| under a Laplace of scale
  σ = exp(w · f); the negative log-likelihood mean(|e| e^{−w·f} + w·f) is convex in w, so Newton's method finds
  its minimum in a few steps.
- ``calibrate_factors``: λ(coverage) by conformal risk control over images: the smallest λ with
  (n R̂(λ) + 1) / (n + 1) ≤ 1 − coverage, where R̂(λ) is the mean over the n calibration images of the fraction
  of their pixels outside answer ± λσ (a loss bounded by 1; Angelopoulos et al. 2022, Conformal Risk Control).
- ``interval_metrics``: empirical coverage, Spearman rank correlation of σ with |error| per image, and the
  sparsification error AUSE beside the random and oracle orderings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from xraysr.service.consistency import bicubic_upscale
from xraysr.service.interval import FEATURES, features, scale
from xraysr.service.pipeline import AnswerPlan, SRPipeline
from xraysr.training.splits import read_splits

COVERAGES = tuple(round(0.5 + 0.01 * step, 2) for step in range(50))  # 0.50 … 0.99
SPARSIFICATION_FRACTIONS = np.arange(0.0, 1.0, 0.01)


def save_answers(answers: Answers, path: Path) -> None:
    np.savez_compressed(
        path,
        names=np.array(answers.names),
        sources=np.array(answers.sources),
        lr=answers.lr,
        hr=answers.hr,
        answer=answers.answer,
        bicubic=answers.bicubic,
    )


def load_answers(path: Path) -> Answers:
    with np.load(path) as saved:
        return Answers(
            [str(name) for name in saved["names"]],
            [str(source) for source in saved["sources"]],
            saved["lr"],
            saved["hr"],
            saved["answer"],
            saved["bicubic"],
        )


@dataclass
class Answers:
    """A split's images through the served model: uint8 arrays (N, H, W) and their names and sources."""

    names: list[str]
    sources: list[str]
    lr: np.ndarray
    hr: np.ndarray
    answer: np.ndarray
    bicubic: np.ndarray

    def subset(self, keep: Sequence[bool]) -> Answers:
        mask = np.asarray(keep, dtype=bool)
        pick = [index for index, kept in enumerate(mask) if kept]
        return Answers(
            [self.names[i] for i in pick],
            [self.sources[i] for i in pick],
            self.lr[mask],
            self.hr[mask],
            self.answer[mask],
            self.bicubic[mask],
        )


def served_answers(
    pipeline: SRPipeline,
    data_root: Path,
    split: str,
    plan: AnswerPlan,
    seed: int = 0,
    limit: int | None = None,
    batch: int = 8,
    exclude_sources: Sequence[str] = (),
) -> Answers:
    """Every image of ``split`` (the first ``limit``, none of ``exclude_sources``) answered as ``plan`` says; loop
    seeds are ``seed`` + index × samples."""
    rows = [row for row in read_splits(data_root) if row.split == split and row.source not in exclude_sources][:limit]
    lr = np.stack([np.asarray(Image.open(data_root / "LR_64" / row.filename)) for row in rows])
    hr = np.stack([np.asarray(Image.open(data_root / "HR_256" / row.filename)) for row in rows])
    answers = []
    if plan.answer == "estimate":
        for start in range(0, len(lr), batch):
            answers += [result.image for result in pipeline.estimate_batch(list(lr[start : start + batch]))]
    else:
        for index, image in enumerate(lr):
            answers.append(pipeline.answer(image, plan, seed + index * plan.samples).image)
    bicubic = np.stack([bicubic_upscale(image, hr.shape[-1]) for image in lr])
    return Answers(
        [row.filename for row in rows],
        [row.source for row in rows],
        lr,
        hr,
        np.stack(answers),
        bicubic,
    )


def _pixel_sample(answers: Answers, pixels_per_image: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, F), |error| (n,)) of random pixels of every image."""
    rng = np.random.default_rng(seed)
    rows, errors = [], []
    for answer, bicubic, hr in zip(answers.answer, answers.bicubic, answers.hr, strict=True):
        chosen = rng.choice(answer.size, size=min(pixels_per_image, answer.size), replace=False)
        rows.append(features(answer, bicubic).reshape(len(FEATURES), -1)[:, chosen].T)
        errors.append(np.abs(answer.astype(np.float64) - hr).ravel()[chosen])
    return np.concatenate(rows).astype(np.float64), np.concatenate(errors)


def fit_weights(
    answers: Answers, pixels_per_image: int = 4096, seed: int = 0, iterations: int = 30
) -> tuple[float, ...]:
    """Newton's method on the Laplace negative log-likelihood of |error| given σ = exp(w · f)."""
    design, error = _pixel_sample(answers, pixels_per_image, seed)
    weights = np.zeros(design.shape[1])
    weights[0] = np.log(max(error.mean(), 1e-3))
    for _ in range(iterations):
        ratio = error * np.exp(-np.clip(design @ weights, -30, 30))
        gradient = design.T @ (1.0 - ratio) / len(error)
        hessian = (design * ratio[:, None]).T @ design / len(error) + 1e-6 * np.eye(len(weights))
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-7:
            break
    return tuple(float(weight) for weight in weights)


def scores(answers: Answers, weights: tuple[float, ...]) -> list[np.ndarray]:
    """|error| / σ per pixel of each image: the pixel is inside answer ± λσ exactly when its score ≤ λ."""
    return [
        (np.abs(answer.astype(np.float32) - hr) / scale(answer, bicubic, weights)).ravel()
        for answer, bicubic, hr in zip(answers.answer, answers.bicubic, answers.hr, strict=True)
    ]


def calibrate_factors(image_scores: list[np.ndarray], coverages: Sequence[float] = COVERAGES) -> tuple[float, ...]:
    """λ for each coverage by conformal risk control over the images (see the module's docstring)."""
    sorted_scores = [np.sort(values) for values in image_scores]
    count = len(sorted_scores)

    def corrected_risk(factor: float) -> float:
        outside = [1.0 - np.searchsorted(values, factor, side="right") / len(values) for values in sorted_scores]
        return (count * float(np.mean(outside)) + 1.0) / (count + 1)

    factors = []
    for coverage in coverages:
        if corrected_risk(np.inf) > 1.0 - coverage:
            raise ValueError(f"{count} calibration images cannot certify coverage {coverage}")
        low, high = 0.0, float(max(values[-1] for values in sorted_scores))
        for _ in range(60):
            middle = (low + high) / 2
            low, high = (middle, high) if corrected_risk(middle) > 1.0 - coverage else (low, middle)
        factors.append(high)
    return tuple(factors)


def interval_metrics(answers: Answers, weights: tuple[float, ...], factor: float) -> dict[str, float]:
    """Coverage of answer ± factor·σ over all pixels, and per image (then averaged): Spearman of σ with |error|,
    mean half-width, mean |error|, AUSE of σ, of a random order and of the oracle (|error| itself)."""
    from scipy.stats import spearmanr

    inside, spearman, ause, ause_random, width, error_mean = [], [], [], [], [], []
    for answer, bicubic, hr in zip(answers.answer, answers.bicubic, answers.hr, strict=True):
        sigma = scale(answer, bicubic, weights).ravel().astype(np.float64)
        error = np.abs(answer.astype(np.float64) - hr).ravel()
        inside.append(float(np.mean(error <= factor * sigma)))
        spearman.append(float(spearmanr(sigma, error).statistic))
        model_curve, oracle_curve = sparsification(sigma, error), sparsification(error, error)
        ause.append(float(np.mean(model_curve - oracle_curve)))
        ause_random.append(float(np.mean(1.0 - oracle_curve)))
        width.append(float(factor * sigma.mean()))
        error_mean.append(float(error.mean()))
    return {
        "images": len(inside),
        "coverage": float(np.mean(inside)),
        "spearman": float(np.mean(spearman)),
        "ause": float(np.mean(ause)),
        "ause_random": float(np.mean(ause_random)),
        "ause_oracle": 0.0,
        "half_width": float(np.mean(width)),
        "mean_abs_error": float(np.mean(error_mean)),
    }


def sparsification(uncertainty: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Mean |error| of the pixels left after removing the most uncertain fraction f, over the mean of all,
    for f in SPARSIFICATION_FRACTIONS."""
    order = np.argsort(uncertainty, kind="stable")  # ascending: the most uncertain last
    cumulative = np.cumsum(error[order])
    kept = np.maximum(np.round((1.0 - SPARSIFICATION_FRACTIONS) * len(error)).astype(int), 1)
    total = max(cumulative[-1] / len(error), 1e-12)
    return (cumulative[kept - 1] / kept) / total
