"""`xraysr calibrate-interval`: fit the interval's scale model on the training split's answers, calibrate λ per
kind of answer on the validation split by conformal risk control, and write both into the model's manifest
(training/interval.py has the method; service/interval.py applies it).

Adults are the product's users, so both steps use the adult images (every source but ``pediatric``); children
are reported beside, as a shift (docs/RESULTS.md). Answers are those the service itself serves at the manifest's
precision: the one-pass estimate, and the loop at the manifest's default steps and samples. They are cached in
``work`` (an .npz of the adult images per precision, answer and split), so a second run only refits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from xraysr.service.interval import FEATURES, factor
from xraysr.service.manifest import IntervalSpec, Precision, read_manifest, write_manifest
from xraysr.training.interval import (
    COVERAGES,
    Answers,
    calibrate_factors,
    fit_weights,
    load_answers,
    save_answers,
    scores,
    served_answers,
)

logger = logging.getLogger(__name__)
CHILDREN = "pediatric"


def cached(path: Path, make: Callable[[], Answers]) -> Answers:
    if path.is_file():
        return load_answers(path)
    answers = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_answers(answers, path)
    return answers


def adults(answers: Answers) -> Answers:
    return answers.subset([source != CHILDREN for source in answers.sources])


def calibrate_interval(model_dir: Path, data_root: Path, precision: Precision, work: Path) -> IntervalSpec:
    from xraysr.service.engine import load_pipeline
    from xraysr.service.pipeline import choose_answer
    from xraysr.service.settings import load_settings

    settings = load_settings(engines_dir=model_dir.parent, model=model_dir.name, precision=precision)
    pipeline = load_pipeline(settings, warm_up=False)
    sampler = pipeline.manifest.sampler
    plans = {
        "estimate": choose_answer(sampler, None, None),
        "samples": choose_answer(sampler, sampler.default_steps, sampler.default_samples),
    }

    def answers(kind: str, split: str) -> Answers:
        path = work / f"{precision}_{kind}_{split}.npz"
        return cached(path, lambda: served_answers(pipeline, data_root, split, plans[kind], exclude_sources=[CHILDREN]))

    train = adults(answers("estimate", "train"))
    weights = fit_weights(train)
    logger.info("scale model fitted on %d adult training answers", len(train.names))
    factors, calibrated_on = {}, {}
    for kind in plans:
        validation = adults(answers(kind, "val"))
        calibrated_on[kind] = len(validation.names)
        factors[kind] = calibrate_factors(scores(validation, weights), COVERAGES)
    spec = IntervalSpec(
        features=FEATURES,
        weights=weights,
        coverages=COVERAGES,
        factors=factors,
        calibration={
            "method": "log-linear Laplace scale (train) + conformal risk control over images (val)",
            "fitted_on": f"{len(train.names)} adult training images, the estimate",
            "calibrated_on": f"{calibrated_on['estimate']} adult validation images",
            "samples_answer": f"{plans['samples'].steps} steps x {plans['samples'].samples} samples, seeds from 0",
            "precision": precision,
            "data": data_root.name,
        },
    )
    for kind, count in calibrated_on.items():
        logger.info("%s: λ(0.9) = %.3f on %d adult validation answers", kind, factor(spec, kind, 0.9), count)
    return spec


def write_interval(model_dir: Path, precision: Precision, spec: IntervalSpec) -> Path:
    manifest = read_manifest(model_dir, precision)
    return write_manifest(manifest.model_copy(update={"interval": spec}), model_dir, precision)
