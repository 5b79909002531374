"""Command line for pmc_min: load a model and report its size."""

from __future__ import annotations

import argparse
import sys

import torch

import pmc_min


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="phi-1_5, a hub repo id, or a local HF-layout folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        model, tok = pmc_min.load(args.model, device=args.device)
    except pmc_min.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.model}: {model.num_parameters():,} parameters, vocab {tok.vocab_size}, eos {tok.eos_token!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
