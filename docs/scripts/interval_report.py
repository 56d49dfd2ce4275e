"""What the calibrated interval promises, measured (docs/RESULTS.md "Uncertainty that means what it says").

On the test split, through the service's own pipeline at one precision, for the estimate and for the loop's
mean (the manifest's default steps and samples): coverage of answer ± half-width at 0.8, 0.9 and 0.95; Spearman
of σ with |error| per image; AUSE beside the random and oracle orderings; per source, on children, on the shift
test (each film made as a hospital beyond the trained ranges would, training/evaluate_served.SHIFT) and for a
source left out of fitting and calibration (the scale model refitted and λ recalibrated without ``cxr``).

    .venv/bin/python docs/scripts/interval_report.py --precision fp32 > runs/interval/report_fp32.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from xraysr.service.consistency import bicubic_upscale
from xraysr.service.engine import load_pipeline
from xraysr.service.manifest import read_manifest
from xraysr.service.pipeline import choose_answer
from xraysr.service.resize import resize_cubic
from xraysr.service.settings import load_settings
from xraysr.training.calibrate_interval import CHILDREN, adults, cached
from xraysr.training.evaluate_served import shifted_film
from xraysr.training.interval import (
    Answers,
    calibrate_factors,
    fit_weights,
    interval_metrics,
    load_answers,
    scores,
    served_answers,
)

MODEL = Path("engines/cxr-default")
DATA = Path("runs/data/all5")
WORK = Path("runs/interval")
COVERAGES = (0.8, 0.9, 0.95)


def row(label: str, answers: Answers, weights: tuple[float, ...], factors: dict[float, float]) -> str:
    cells = []
    for coverage in COVERAGES:
        cells.append(f"{100 * interval_metrics(answers, weights, factors[coverage])['coverage']:.1f}")
    at_90 = interval_metrics(answers, weights, factors[0.9])
    return (
        f"| {label} | {len(answers.names)} | {' / '.join(cells)} | {at_90['spearman']:.3f} | {at_90['ause']:.3f} "
        f"({at_90['ause_random']:.3f}) | {at_90['half_width']:.2f} | {at_90['mean_abs_error']:.2f} |"
    )


def shifted(answers: Answers, pipeline, plan, seed: int = 0) -> Answers:  # noqa: ANN001 - the service's types
    """The same images as another hospital's films: shifted HR, its LR made by the recipe, answered anew."""
    films = np.stack([shifted_film(hr, seed, index)[0] for index, hr in enumerate(answers.hr)])
    lr = np.stack([resize_cubic(film, 64, 64) for film in films])
    if plan.answer == "estimate":
        answer = np.concatenate(
            [[r.image for r in pipeline.estimate_batch(list(lr[i : i + 8]))] for i in range(0, len(lr), 8)]
        )
    else:
        answer = np.stack([pipeline.answer(image, plan, index * plan.samples).image for index, image in enumerate(lr)])
    bicubic = np.stack([bicubic_upscale(image, 256) for image in lr])
    return Answers(answers.names, answers.sources, lr, films, answer, bicubic)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    parser.add_argument("--kinds", nargs="+", default=["estimate", "samples"])
    args = parser.parse_args()
    spec = read_manifest(MODEL, args.precision).interval
    assert spec is not None, "calibrate the model first: xraysr calibrate-interval"
    pipeline = load_pipeline(load_settings(precision=args.precision), warm_up=False)
    sampler = pipeline.manifest.sampler
    plans = {
        "estimate": choose_answer(sampler, None, None),
        "samples": choose_answer(sampler, sampler.default_steps, sampler.default_samples),
    }
    header = (
        "| images | n | coverage at 80 / 90 / 95 % | Spearman | AUSE (random) | half-width at 90 % | mean abs error |\n"
        "|---|---|---|---|---|---|---|"
    )
    for kind in args.kinds:
        factors = {c: float(np.interp(c, spec.coverages, spec.factors[kind])) for c in COVERAGES}
        test = cached(
            WORK / f"{args.precision}_{kind}_testall.npz",
            lambda kind=kind: served_answers(pipeline, DATA, "test", plans[kind]),
        )
        print(f"\n#### {kind} ({plans[kind].steps} steps x {plans[kind].samples} samples), {args.precision}\n")
        print(header)
        adult = adults(test)
        print(row("adult test", adult, spec.weights, factors))
        for source in sorted(set(adult.sources)):
            print(row(f"  {source}", adult.subset([s == source for s in adult.sources]), spec.weights, factors))
        print(
            row("children (pediatric test)", test.subset([s == CHILDREN for s in test.sources]), spec.weights, factors)
        )
        shift = cached(
            WORK / f"{args.precision}_{kind}_shift.npz",
            lambda adult=adult, kind=kind: shifted(adult, pipeline, plans[kind]),
        )
        print(row("adult test, shifted films", shift, spec.weights, factors))
        # Left out: cxr neither fits the scale model nor calibrates λ; it is then what a new hospital is.
        train = load_answers(WORK / f"{args.precision}_estimate_train.npz")
        val = load_answers(WORK / f"{args.precision}_{kind}_val.npz")
        keep = [s not in ("cxr", CHILDREN) for s in train.sources]
        weights = fit_weights(train.subset(keep))
        others = adults(val).subset([s != "cxr" for s in adults(val).sources])
        table = calibrate_factors(scores(others, weights), COVERAGES)
        print(
            row(
                "cxr test, cxr left out of fit and calibration",
                adult.subset([s == "cxr" for s in adult.sources]),
                weights,
                dict(zip(COVERAGES, table, strict=True)),
            )
        )


if __name__ == "__main__":
    main()
