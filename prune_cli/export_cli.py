"""The ``prune-export`` command: a run's pruned model as ONNX or a ``torch.export`` program.

prune-export outputs/runs/digits-lenet5-magnitude-s0-<hash> --level 3 --format onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prune_cli.errors import UserError
from prune_cli.export import FORMATS, export_level


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="prune-export",
        # the docstring's RST markup (``torch.export``) is for the API docs, not the terminal
        description=__doc__.splitlines()[0].replace("``", ""),
        epilog="The exported network takes images normalised as the run's dataset normalises "
        "them, (B, C, H, W) float32, and returns (B, classes) logits. Masked weights are zero; "
        "a structured run's last level is its thinner network. ONNX needs "
        "pip install 'prune-cli[export]'.",
    )
    parser.add_argument("run", type=Path, help="a run directory (holds summary.json)")
    parser.add_argument(
        "--level", type=int, default=None, help="the level to export (default: the last)"
    )
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="default: onnx")
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="let a custom model's code that the run's files name be imported (from installed "
        "packages and PYTHONPATH only); only for a run you trust",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="file to write (default: levels/level_<k>/model.onnx or model.pt2 in the run)",
    )
    args = parser.parse_args(argv)
    try:
        done = export_level(args.run, args.level, args.format, args.output, args.trust_code)
    except UserError as exc:
        print(f"prune-export: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    check = (
        "not run: install onnxruntime to check it"
        if done.max_difference is None
        else f"max |difference| {done.max_difference:.2g} from PyTorch"
    )
    print(
        f"level {done.level} ({done.network} network, {done.params_nonzero:,} of "
        f"{done.params:,} parameters non-zero) -> {done.path} [{done.format}; {check}]"
    )


if __name__ == "__main__":
    main()
