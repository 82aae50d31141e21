"""Command line: ``mae <protocol> [--preset NAME] [--config FILE] [--field value ...]``.

Each protocol module (mae.protocols.*) defines ``Config``, ``PRESETS`` and ``run``; every config field
becomes a flag with its help text, so ``mae pretrain --help`` documents them all. Precedence:
preset < config file < flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from mae.config import from_dict, load_config_file, to_dict
from mae.protocols import PROTOCOLS

_NONE = {"none", "null", ""}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by input (data, checkpoints, configs, diverging runs): one clear line, no traceback."""
    from mae.data import DataError
    from mae.engine.checkpoint import CheckpointError
    from mae.engine.loop import DeviceUnavailableError, NonFiniteLossError
    return (DataError, CheckpointError, NonFiniteLossError, DeviceUnavailableError, FileNotFoundError)


USER_ERRORS = _user_errors()


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parser_for(tp: Any, optional: bool):
    def parse(text: str) -> Any:
        if optional and text.lower() in _NONE:
            return None
        return tp(text)
    parse.__name__ = getattr(tp, "__name__", "value")
    return parse


def add_config_args(parser: argparse.ArgumentParser, cls: type, defaults: Any) -> None:
    """One flag per dataclass field, default shown from ``defaults``; unset flags stay absent."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap_optional(hints[f.name])
        help_text = f.metadata.get("help", "")
        default = getattr(defaults, f.name)
        kw: dict[str, Any] = dict(default=argparse.SUPPRESS, help=f"{help_text} (default: {default})")
        flag = "--" + f.name
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(tp) is tuple:
            elem = typing.get_args(tp)[0]
            parser.add_argument(flag, nargs=len(typing.get_args(tp)), type=elem, metavar=f.name.upper(), **kw)
        else:
            parser.add_argument(flag, type=_parser_for(tp, optional), metavar=getattr(tp, "__name__", "X").upper(), **kw)


def guarded(prog: str, fn: Callable[..., Any], *args: Any, extra_errors: tuple[type[BaseException], ...] = ()
            ) -> tuple[int, Any]:
    """Run ``fn(*args)``; an input error becomes one line on stderr and exit status 2 (MAE_DEBUG=1: traceback).

    Returns (exit status, fn's result or None). Every command-line entry point of the project uses it.
    """
    try:
        return 0, fn(*args)
    except (*USER_ERRORS, *extra_errors) as e:
        if os.environ.get("MAE_DEBUG"):
            raise
        print(f"{prog}: error: {e}\n(set MAE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2, None


def protocol_module(name: str) -> types.ModuleType:
    return importlib.import_module(f"mae.protocols.{name}")


def build_config(module: types.ModuleType, argv: list[str], prog: str) -> Any:
    """Parse ``argv`` for a protocol into its resolved Config."""
    default_preset = getattr(module, "DEFAULT_PRESET", None)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=default_preset)
    known, _ = pre.parse_known_args(argv)
    presets = module.PRESETS
    if known.preset is not None and known.preset not in presets:
        raise SystemExit(f"{prog}: unknown preset {known.preset!r}; available: {', '.join(presets)}")
    base = presets[known.preset] if known.preset is not None else module.Config()
    parser = argparse.ArgumentParser(prog=prog, description=(module.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--preset", default=default_preset, choices=list(presets),
                        help=f"named recipe to start from (default: {default_preset})")
    parser.add_argument("--config", default=None, help="YAML/JSON file of field: value overriding the preset")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_config_args(parser, module.Config, base)
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config")
    if config_path is not None:
        base = load_config_file(module.Config, config_path, base)
    args.pop("preset")
    show = args.pop("print_config")
    cfg = from_dict(module.Config, {**to_dict(base), **args})
    if show:
        import yaml
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        raise SystemExit(0)
    return cfg


def run_protocol(name: str, argv: list[str]) -> dict[str, Any]:
    module = protocol_module(name)
    cfg = build_config(module, argv, prog=f"mae {name}")
    return module.run(cfg)


def convert_main(argv: list[str]) -> int:
    """``mae convert SRC DST --to FORMAT``: rewrite a checkpoint in another public layout (mae.models.formats)."""
    from mae.models import formats
    parser = argparse.ArgumentParser(
        prog="mae convert", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert an MAE / ViT checkpoint between the official release's layout and timm, Hugging Face "
                    "transformers (ViTMAE) and mmpretrain / mmselfsup. SRC's format is detected from its keys.",
        epilog="what is written:\n"
               "  official    {'model': state_dict} with the release's names (our config / epoch kept)\n"
               "  timm        bare VisionTransformer state_dict, encoder only (.safetensors if DST ends so)\n"
               "  hf          DST.pth/.bin/.safetensors: bare state_dict with ViTMAE names; any other DST: a\n"
               "              folder with config.json + model.safetensors for ViTMAEForPreTraining.from_pretrained\n"
               "  mmpretrain  {'meta', 'state_dict'} with backbone.* (MAEViT) and neck.* (MAEPretrainDecoder)")
    parser.add_argument("src", help="checkpoint file or Hugging Face model folder, in any of the formats")
    parser.add_argument("dst", help="output file (or folder, for --to hf); written atomically")
    parser.add_argument("--to", required=True, choices=formats.FORMATS, help="output format")
    parser.add_argument("--preset", default=None, help="MAE preset giving the head counts a Hugging Face config needs "
                                                       "(default: from the file, else the preset of the same shape)")
    parser.add_argument("--num_heads", type=int, default=None, help="encoder attention heads (Hugging Face config)")
    parser.add_argument("--decoder_num_heads", type=int, default=None, help="decoder attention heads (Hugging Face config)")
    parser.add_argument("--norm_pix_loss", action=argparse.BooleanOptionalAction, default=None,
                        help="norm_pix_loss of the Hugging Face config (default: what SRC says, else off)")
    args = parser.parse_args(argv)
    code, report = guarded("mae convert", lambda: formats.convert(
        args.src, args.dst, args.to, preset=args.preset, num_heads=args.num_heads,
        decoder_num_heads=args.decoder_num_heads, norm_pix_loss=args.norm_pix_loss))
    if not code:
        print(report.summary())
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    available = [p for p in PROTOCOLS if importlib.util.find_spec(f"mae.protocols.{p}") is not None]
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mae {" + ",".join([*available, "convert"]) + "} [--preset NAME] [--config FILE] [--FIELD VALUE ...]\n\n"
              "MAE reproduction harness. Run `mae <command> --help` for every flag of a command.\n"
              "  pretrain   MAE pre-training (default preset 'demo': a tiny model on scikit-learn's digits, CPU, minutes)\n"
              "  finetune   end-to-end fine-tuning of a pre-trained encoder\n"
              "  linprobe   linear probing of the frozen encoder\n"
              "  partial    partial fine-tuning of the last k blocks (Fig. 9)\n"
              "  convert    rewrite a checkpoint as official / timm / hf / mmpretrain (`mae convert SRC DST --to hf`)")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "convert":
        return convert_main(rest)
    if cmd not in available:
        print(f"mae: unknown command {cmd!r}; choose one of {', '.join(available)}", file=sys.stderr)
        return 2
    code, result = guarded(f"mae {cmd}", run_protocol, cmd, rest)
    if code:
        return code
    final = result.get("final", {}) if isinstance(result, dict) else {}
    if final:
        print("final: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in final.items()))
    return 0


def pretrain_main() -> int:
    return main(["pretrain", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
