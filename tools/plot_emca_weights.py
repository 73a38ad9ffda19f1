"""Bar chart of EMCA fusion weights per encoder layer (AugDETR's Fig. 4).

    python tools/plot_emca_weights.py RUN_A/emca_weights.json [RUN_B/emca_weights.json ...] --out emca.png

Each JSON is written by `main.py --eval --use_emca --save_emca_weights`; several files are
drawn as grouped bars (mean, with the standard deviation as error bars), labelled by
--labels or by their folder names.
"""
import argparse
import json
import os
import sys
from typing import List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

if __package__ in (None, ""):  # run as `python tools/x.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from util.cli import ArgumentParser, fail  # noqa: E402

PROG = "plot_emca_weights.py"


def load(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        fail(PROG, f"cannot read EMCA weights from {path}: {e}")
    missing = {"enc_layers", "mean", "std"} - set(data)
    if missing:
        fail(PROG, f"{path} lacks {sorted(missing)}: write it with main.py --eval --save_emca_weights")
    return data


def plot(paths: List[str], out: str, labels: Optional[List[str]] = None, normalize: bool = False) -> None:
    runs = [load(p) for p in paths]
    labels = labels or [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths]
    if len(labels) != len(runs):
        fail(PROG, f"{len(labels)} --labels for {len(runs)} files; give one per file")
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (run, label) in enumerate(zip(runs, labels)):
        mean, std = run["mean"], run["std"]
        if normalize:  # the paper's bars may be normalised to sum to 1; offer both views
            total = sum(mean) or 1.0
            mean, std = [m / total for m in mean], [s / total for s in std]
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(mean))]
        ax.bar(xs, mean, width, yerr=std, capsize=3, label=label)
    ax.set_xticks(range(len(runs[0]["enc_layers"])))
    ax.set_xticklabels([f"E{layer}" for layer in runs[0]["enc_layers"]])
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("normalised fusion weight" if normalize else "mean fusion weight (sigmoid)")
    ax.set_title("EMCA fusion weights, last decoder layer")
    if len(runs) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="emca_weights.json files")
    p.add_argument("--out", default="emca_weights.png", help="output PNG (default: %(default)s)")
    p.add_argument("--labels", nargs="+", help="one legend label per file (default: folder names)")
    p.add_argument("--normalize", action="store_true", help="divide each run's means by their sum")
    args = p.parse_args(argv)
    plot(args.files, args.out, args.labels, args.normalize)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
