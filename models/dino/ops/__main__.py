"""`python -m models.dino.ops`: print which msda backend runs on cpu / cuda and why (builds it if needed).

`python -m models.dino.ops --check`: run the compiled kernels' self-check (models/dino/ops/selfcheck.py)
on cpu and, when a GPU is visible, cuda; one line per device; exit status 1 when a check fails or a
kernel is missing. The results refresh the per-machine cache that first use reads.

`python -m models.dino.ops --sass [--src DIR] [--arch 80,90] [--check]`: compile the CUDA kernels with
nvcc (no GPU needed) and print their registers, spills, stack frames and SASS instructions per
(sampling point, channel) (models/dino/ops/sass_report.py); --check fails above sass_ceilings.json.
"""
import argparse
import json
import logging
import sys

import torch

from . import _build, _library, sass_report, selfcheck
from .backend import backend_info


def check() -> int:
    failed = 0
    for device_type in ("cpu", "cuda"):
        if device_type == "cuda" and not torch.cuda.is_available():
            print("msda self-check on cuda: skipped, CUDA is unavailable (no CUDA device visible)")
            continue
        problem = _build.missing_kernel_reason(device_type)
        if problem is not None:
            print(f"msda self-check on {device_type}: no compiled kernel to check ({problem})")
            failed += 1
            continue
        _library.register()
        result = selfcheck.run_check(device_type)
        selfcheck.save(device_type, result)
        print(result.line())
        failed += not result.ok
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.dino.ops", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare the compiled kernels with the reference")
    parser.add_argument("--sass", action="store_true",
                        help="static SASS report of the CUDA kernels (nvcc, no GPU); options of sass_report.py follow")
    args, rest = parser.parse_known_args(argv)
    if args.sass:
        return sass_report.main(rest + (["--check"] if args.check else []))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        return check()
    print(json.dumps(backend_info(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
