"""Stage 0 of Table 1d's "dVAE token" row from the command line: train the VQ tokenizer once per scale.

The protocol is :mod:`mae.protocols.tokenizer` (``mae tokenizer``); this script picks a scale's recipe and
run directory and skips a finished stage (table1.py's token cell runs the same protocol through the
grid runner and reuses it too).

    python reproduce/tokenizer.py --scale smoke                        # seconds, CPU
    python reproduce/tokenizer.py --scale mini --data synthetic:20000  # minutes, one GPU
    python reproduce/tokenizer.py --scale paper --data /path/to/imagenet
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from mae.protocols.tokenizer import PRESETS, Config, run, tokenizer_path
from reproduce.grid import GridError, resolve_data

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(PRESETS), default="smoke", help="recipe (default: smoke)")
    parser.add_argument("--data", default=None, help="training images (default: the scale's; required at paper)")
    parser.add_argument("--out", default=None, help="run directory (default: outputs/reproduce/tokenizer_<scale>)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--config", default=None,
                        help="run exactly this YAML config (as the grid runner writes it); other flags are ignored")
    args = parser.parse_args(argv)
    if args.config:
        from mae.config import load_config_file
        run(load_config_file(Config, args.config))
        return 0
    try:
        data = resolve_data(args.scale, args.data, check=not args.dry_run)
    except GridError as e:
        parser.error(str(e))
    out = Path(args.out or f"outputs/reproduce/tokenizer_{args.scale}")
    cfg = replace(PRESETS[args.scale], data=data or PRESETS[args.scale].data, output_dir=str(out))
    path = tokenizer_path(out)
    if args.dry_run:
        import yaml

        from mae.config import to_dict
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        print(f"[tokenizer] would write {path}" + (" (exists: cached)" if path.is_file() else ""))
        return 0
    if path.is_file() and (out / "metrics.json").is_file():
        print(f"[tokenizer] cached: {path} (delete the folder to retrain)")
        return 0
    if (out / "checkpoint-last.pth").is_file():
        cfg = replace(cfg, resume="auto")
    run(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
