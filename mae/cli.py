"""Command line: ``mae <protocol> [--preset NAME] [--config FILE] [--field value ...]``.

Each protocol module (mae.protocols.*) defines ``Config``, ``PRESETS`` and ``run``; every config field
becomes a flag with its help text, so ``mae pretrain --help`` documents them all. Precedence:
preset < config file < flags.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mae.config import from_dict, load_config_file, to_dict
from mae.engine import rundir
from mae.protocols import PROTOCOLS

_NONE = {"none", "null", ""}


class UsageError(ValueError):
    """A command line that cannot run as given (unknown preset, invalid field value): one line, exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by input (data, checkpoints, configs, diverging runs): one clear line, no traceback."""
    from mae.data import DataError
    from mae.engine.checkpoint import CheckpointError
    from mae.engine.loop import DeviceUnavailableError, NonFiniteLossError
    return (DataError, CheckpointError, NonFiniteLossError, DeviceUnavailableError, FileNotFoundError,
            UsageError, rundir.RunDirError)


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
        hint = "" if isinstance(e, (UsageError, rundir.RunDirError)) else "\n(set MAE_DEBUG=1 for the traceback)"
        print(f"{prog}: error: {e}{hint}", file=sys.stderr)
        return 2, None


def protocol_module(name: str) -> types.ModuleType:
    return importlib.import_module(f"mae.protocols.{name}")


def _is_main_process() -> bool:
    from mae.engine.distributed import is_main_process
    return is_main_process()


@dataclasses.dataclass(frozen=True)
class FolderFlags:
    """What the command line was allowed to do in its ``--output_dir``: ``--overwrite`` (truthy, as the flag
    it extends) and ``--outside-grid`` (run in a folder the reproduction grid made)."""

    overwrite: bool = False
    outside_grid: bool = False

    def __bool__(self) -> bool:
        return self.overwrite


def parse_command(module: types.ModuleType, argv: list[str], prog: str) -> tuple[Any, FolderFlags]:
    """Parse ``argv`` for a protocol: (resolved Config, :class:`FolderFlags`: ``--overwrite``, ``--outside-grid``).

    A resume (``--resume auto`` or a checkpoint path) continues the recipe saved in the run's config.yaml
    (:func:`mae.engine.rundir.saved_config_path`) instead of the preset's; a config file and flags given on
    the command line override it, and one printed line names the fields they changed.
    """
    default_preset = getattr(module, "DEFAULT_PRESET", None)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    known, _ = pre.parse_known_args(argv)
    presets = module.PRESETS
    if known.preset is not None and known.preset not in presets:
        raise UsageError(f"unknown preset {known.preset!r}; available: {', '.join(presets)}")
    preset = known.preset if known.preset is not None else default_preset
    base = presets[preset] if preset is not None else module.Config()
    parser = argparse.ArgumentParser(prog=prog, description=(module.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--preset", default=default_preset, choices=list(presets),
                        help=f"named recipe to start from (default: {default_preset}); a resume takes the run's "
                             "config.yaml instead")
    parser.add_argument("--config", default=None, help="YAML/JSON file of field: value overriding the preset")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an --output_dir that holds a previous run: its checkpoints, logs, "
                             "metrics and figures are removed first (without it such a folder is refused); in a "
                             "folder of the reproduction grid the old run is moved aside, never deleted")
    parser.add_argument("--outside-grid", action="store_true",
                        help="allow this command in a stage folder of the reproduction grid (identity.json), which "
                             "is refused without it: the grid reuses such a stage only while its recorded recipe "
                             "is still the grid's")
    add_config_args(parser, module.Config, base)
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config")
    args.pop("preset")
    show = args.pop("print_config")
    overwrite = args.pop("overwrite")
    outside_grid = args.pop("outside_grid")
    import yaml
    try:
        file_data: dict[str, Any] = {}
        if config_path is not None:
            base = load_config_file(module.Config, config_path, base)
            file_data = yaml.safe_load(Path(config_path).read_text()) or {}
        cfg = from_dict(module.Config, {**to_dict(base), **args})
        if overwrite and cfg.resume:
            raise UsageError("--overwrite starts over and --resume continues: give one of them")
        saved = None if overwrite else rundir.saved_config_path(cfg.resume, cfg.output_dir)
        if saved is not None:
            cfg = _resume_recipe(module, saved, {**file_data, **args}, known.preset, prog)
    except (ValueError, TypeError, yaml.YAMLError) as e:
        if isinstance(e, (UsageError, rundir.RunDirError)):
            raise
        raise UsageError(" ".join(str(e).split())) from e
    if show:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        raise SystemExit(0)
    try:  # every flag, before anything is created or started (the run folder included): one line, exit status 2
        cfg.validate()
    except ValueError as e:
        raise UsageError(" ".join(str(e).split())) from None
    return cfg, FolderFlags(overwrite, outside_grid)


def _resume_recipe(module: types.ModuleType, saved: Any, explicit: dict[str, Any], preset: str | None,
                   prog: str) -> Any:
    """The Config of a resume: the run's saved recipe (``saved`` config.yaml) with ``explicit`` fields on top."""
    data = rundir.read_saved_config(saved)
    try:
        old = from_dict(module.Config, dict(data))
    except (ValueError, TypeError) as e:
        raise rundir.RunDirError(f"{saved} is not a {prog} run config ({e})") from e
    kept = {k: v for k, v in to_dict(old).items() if k not in rundir.RUN_CONTROL}
    cfg = from_dict(module.Config, {**kept, **explicit})
    if _is_main_process():
        changed = rundir.changed_fields(to_dict(old), to_dict(cfg))
        said = ", ".join(f"{k}={getattr(cfg, k)!r} (was {getattr(old, k)!r})" for k in changed)
        ignored = f" (--preset {preset} ignored)" if preset is not None else ""
        print(f"[resume] recipe from {saved}{ignored}; "
              + (f"overridden on the command line: {said}" if changed else "no field overridden"), flush=True)
    return cfg


def build_config(module: types.ModuleType, argv: list[str], prog: str) -> Any:
    """Parse ``argv`` for a protocol into its resolved Config (see :func:`parse_command`)."""
    return parse_command(module, argv, prog)[0]


def prepare_run_dir(cfg: Any, overwrite: bool | FolderFlags) -> None:
    """Refuse a new run in a folder that holds a previous one, and any run in a grid stage's folder unless
    told (:func:`mae.engine.rundir.refuse_grid_stage`); with ``overwrite``, clear that run first (a grid
    stage's is moved aside whole, never deleted)."""
    flags = overwrite if isinstance(overwrite, FolderFlags) else FolderFlags(bool(overwrite))
    if _is_main_process():
        rundir.refuse_grid_stage(cfg.run_dir, flags.outside_grid)
    if flags.overwrite:
        if _is_main_process():
            if rundir.grid_stage(cfg.run_dir) and not rundir.told_grid(cfg.run_dir):
                aside = rundir.move_run_aside(cfg.run_dir)
                print(f"[run] --overwrite: the grid's run in {cfg.run_dir} moved aside to {aside}", flush=True)
                return
            removed = rundir.clear_run(cfg.run_dir)
            if removed:
                print(f"[run] --overwrite: removed {len(removed)} file(s) of the previous run in {cfg.run_dir}",
                      flush=True)
    elif not cfg.resume:
        rundir.refuse_previous_run(cfg.run_dir)
    else:
        rundir.refuse_resume_without_checkpoint(cfg.resume, cfg.run_dir)


def run_protocol(name: str, argv: list[str]) -> dict[str, Any]:
    module = protocol_module(name)
    cfg, overwrite = parse_command(module, argv, prog=f"mae {name}")
    # one process runs in a folder (rank 0 holds it for a multi-process run); checked and cleared under it
    with rundir.run_lock(cfg.run_dir) if _is_main_process() else contextlib.nullcontext():
        prepare_run_dir(cfg, overwrite)
        from mae.engine.threads import apply_thread_policy  # threads before any work (linprobe's feature cache)
        apply_thread_policy(getattr(cfg, "threads", None))
        return module.run(cfg)


def _check_submitted(protocol: str, argv: list[str]) -> tuple[int, Any]:
    """``mae submit``'s check of the run it submits: (exit status, resolved Config), parsed as ``mae PROTOCOL``."""
    def check() -> Any:
        cfg, flags = parse_command(protocol_module(protocol), argv, prog=f"mae {protocol}")
        if flags.overwrite:
            raise UsageError("--overwrite is not for a job that may requeue (each start would clear the run): clear "
                             "the folder first, or give another --output_dir")
        return cfg
    return guarded("mae submit", check)


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
        print("usage: mae {" + ",".join([*available, "convert", "submit"]) + "} [--preset NAME] [--config FILE] [--FIELD VALUE ...]\n\n"
              "MAE reproduction harness. Run `mae <command> --help` for every flag of a command.\n"
              "  pretrain   MAE pre-training (default preset 'demo': a tiny model on scikit-learn's digits, CPU, minutes)\n"
              "  finetune   end-to-end fine-tuning of a pre-trained encoder\n"
              "  linprobe   linear probing of the frozen encoder\n"
              "  partial    partial fine-tuning of the last k blocks (Fig. 9)\n"
              "  readout    kNN / k-shot / converged linear probe of a frozen encoder (or --source pixels)\n"
              "  tokenizer  the VQ tokenizer of Table 1d's token target (the token row's stage 0)\n"
              "  convert    rewrite a checkpoint as official / timm / hf / mmpretrain (`mae convert SRC DST --to hf`)\n"
              "  submit     one run on a SLURM cluster (submitit): `mae submit pretrain --nodes 8 --gpus-per-node 8 ...`")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "convert":
        return convert_main(rest)
    if cmd == "submit":
        from mae.submit import submit_main
        return submit_main(rest, check_run=_check_submitted, entry=main)
    if cmd not in available:
        print(f"mae: unknown command {cmd!r}; choose one of {', '.join(available)}", file=sys.stderr)
        return 2
    from mae.engine import distributed
    from mae.provenance import pin_code_commit
    try:  # where this process sits (torchrun, srun, or alone): resolved once, before anything reads it
        distributed.placement()
    except (RuntimeError, ValueError) as e:
        print(f"mae {cmd}: error: {e}", file=sys.stderr)
        return 2
    pin_code_commit()  # the commit of the code this process runs (stamped into the run's metrics.json)
    try:
        code, result = guarded(f"mae {cmd}", run_protocol, cmd, rest)
    except KeyboardInterrupt:  # Ctrl-C outside training steps (setup, evaluation, a second Ctrl-C): no traceback
        print(f"\nmae {cmd}: interrupted; the last checkpoint written (if any) is kept: rerun with --resume auto",
              file=sys.stderr)
        return 130
    finally:  # under torchrun: leave the process group before exit (a live gloo group can abort the process)
        distributed.cleanup()
    if code:
        return code
    final = result.get("final", {}) if isinstance(result, dict) else {}
    if final and distributed.is_main_process():
        print("final: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in final.items()))
    return 0


def pretrain_main() -> int:
    return main(["pretrain", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
