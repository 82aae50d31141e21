"""Per-scale recipes of the reproduction scripts: ``smoke``, ``cpu``, ``mini`` and ``paper``.

- ``smoke``: ``mae_vit_smoke`` (2 blocks x 32 wide, 8 px patches on 32 px images) on 64 generated
  images, one epoch per stage: every stage takes about a second on a CPU. It checks the plumbing
  (tests, CI); its accuracies are near chance and say nothing about the paper.
- ``cpu``: the measured scale, 2 CPU cores, about 3 minutes per cell (see :func:`_cpu` for the
  recipe and the measurements that chose it); the baseline runs with 3 seeds.
- ``mini``: ``mae_vit_tiny_patch4_32`` (ViT-Tiny width, 12 blocks, 4 px patches on 32 px images, 64
  patches) on ``synthetic:20000`` (mae.data.SyntheticShapes: 10 labelled procedural classes,
  5 shapes x {solid, striped} with random colour, size, position, rotation and background, rendered
  on the fly; 20,000 train / 4,000 val images) or on a folder given with ``--data``. One GPU: about 3 minutes per cell on an H100 by our estimate (pre-train 50 epochs,
  fine-tune 15, linear probe 50 on cached features), so a Table 1 part of 4-5 cells takes
  15-20 minutes and Fig. 5's ten ratios about half an hour.
- ``paper``: the recipes of REFERENCE.md (the protocols' ``paper_*`` presets: ViT-L/16, 800
  pre-training epochs, 50 fine-tuning, 90 linear-probe epochs, ...). Fine-tuning: the paper's Table 9
  values (``finetune.paper_vit_*``) for Tables 1/2 and Figs. 7/9; Table 3 takes the release's
  FINETUNE.md values (``finetune.release_vit_*``) for its 1600-epoch norm-pix models. ImageNet-1K is required
  (``--data``); effective batches assume 64 / 32 GPUs, raise ``--set pretrain.accum_iter=...`` on fewer.

Settings that are sizes or lengths in the paper (decoder width, schedule length, tuned blocks) are
mapped to this scale's model by the tables below; every results row records the value used
(``*_used_ours`` columns), while the key column keeps the paper's value so that rows line up.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from mae.config import SCALES
from mae.protocols import finetune, linprobe, partial, pretrain, readout, tokenizer
from reproduce.grid import Cell, GridError, Ref, Stage, resolve_data

PAPER_DECODER_DEPTHS = (1, 2, 4, 8, 12)
PAPER_DECODER_WIDTHS = (128, 256, 512, 768, 1024)
PAPER_SCHEDULE = (100, 200, 400, 800, 1600)
PAPER_PARTIAL_BLOCKS = (0, 0.5, 1, 4, 6, 24)
IMAGENET_TRAIN_IMAGES = 1_281_167


@dataclass(frozen=True)
class Table2Recipe:
    """Wall-clock measurement of Table 2 at one scale: per-iteration time, extrapolated to 800 epochs."""

    models: dict[str, str]  # encoder of the paper's rows (vit_large, vit_huge) -> MAE preset measured here
    decoder_width: int  # the paper's 512 at this scale
    # per device, one number or per encoder (the paper: 4096 on 128 TPU-v3 cores = 32 per core; one GPU is
    # many times a TPU-v3 core, so it gets a larger batch or its launch overhead would flatten the speedups)
    batch_size: int | dict[str, int]
    warmup_iters: int
    timed_iters: int
    device: str = "auto"
    amp: str = "auto"
    epochs: int = 800
    dataset_size: int = IMAGENET_TRAIN_IMAGES

    def batch_for(self, encoder: str) -> int:
        """The batch of the rows of ``encoder`` (every row of one encoder uses the same batch)."""
        return self.batch_size if isinstance(self.batch_size, int) else self.batch_size[encoder]


@dataclass(frozen=True)
class Scale:
    """Everything a reproduction script needs to know about one scale."""

    name: str
    description: str
    pretrain: pretrain.Config  # the Table 1 baseline at this scale (decoder 512 x 8 mapped)
    finetune: finetune.Config
    linprobe: linprobe.Config
    partial: partial.Config
    tokenizer: tokenizer.Config
    decoder_depth: dict[int, int]  # Table 1a: paper -> ours
    decoder_width: dict[int, int]  # Table 1b: paper -> ours
    schedule: dict[int, int]  # Fig. 7: paper pre-training epochs -> ours
    partial_blocks: dict[float, float]  # Fig. 9: paper tuned blocks -> ours (0 = linear probe, last = full ft)
    long_epochs: int  # Table 3: the paper's 1600 epochs
    table3_models: dict[str, str]  # Table 3 column (vit_base, ...) -> MAE preset at this scale
    table2: Table2Recipe
    readout: readout.Config | None = None  # kNN / k-shot / converged-probe readouts of every pre-trained cell
    notes: tuple[str, ...] = field(default_factory=tuple)
    seeds: tuple[int, ...] = (0,)  # the baseline cell runs once per seed (its spread is the verdicts' noise)

    @property
    def encoder_depth(self) -> int:
        from mae.models import mae_config
        return mae_config(self.pretrain.model).depth

    def warmup_for(self, epochs: int) -> float:
        """The baseline warm-up, capped at 40% of a shorter schedule (the paper: 40 of 100 epochs)."""
        return min(self.pretrain.warmup_epochs, 0.4 * epochs)

    def classifier_configs(self, mae_model: str, recipe: str = "paper") -> tuple[finetune.Config, linprobe.Config]:
        """Fine-tune and linear-probe recipes for another MAE preset (Table 3's ViT-B/L/H).

        ``recipe`` names the paper scale's fine-tuning values (``mae.protocols.finetune.RECIPES``): "paper"
        (Table 9, the 800-epoch pixel models of Tables 1/2) or "release" (FINETUNE.md, the 1600-epoch
        norm-pix models of Table 3). Smaller scales have one recipe and ignore it.
        """
        if recipe not in finetune.RECIPES:
            raise GridError(f"unknown fine-tuning recipe {recipe!r}; choose one of {', '.join(finetune.RECIPES)}")
        if self.name == "paper":
            size = {"mae_vit_base_patch16": "vit_base", "mae_vit_large_patch16": "vit_large",
                    "mae_vit_huge_patch14": "vit_huge"}.get(mae_model)
            if size is None:
                raise GridError(f"no paper recipe for {mae_model}")
            data = self.finetune.data
            return (replace(finetune.PRESETS[f"{recipe}_{size}"], data=data),
                    replace(linprobe.PRESETS[f"paper_{size}"], data=data))
        from mae.models.vit import vit_for_mae
        vit = vit_for_mae(mae_model)
        return replace(self.finetune, model=vit), replace(self.linprobe, model=vit)

    def pretrain_for(self, mae_model: str, **over: Any) -> pretrain.Config:
        """The pre-training recipe of another MAE preset (paper: its own ``paper_*`` preset)."""
        if mae_model == self.pretrain.model:
            base = self.pretrain
        elif self.name == "paper":
            size = mae_model.split("_")[2]
            base = replace(pretrain.PRESETS[f"paper_vit_{size}"], data=self.pretrain.data)
        else:  # another small model: its own preset decoder
            base = replace(self.pretrain, model=mae_model, decoder_depth=None, decoder_embed_dim=None)
        return replace(base, **over)


def _no_init(cfg: Any) -> Any:
    """Recipes start without a checkpoint: the grid fills ``finetune`` from the pre-training stage."""
    return replace(cfg, finetune=None)


def _smoke() -> Scale:
    quiet = dict(progress=False, tensorboard=False, num_workers=0)
    return Scale(
        name="smoke",
        description="mae_vit_smoke on synthetic:64, one epoch per stage, CPU (plumbing only)",
        pretrain=replace(pretrain.PRESETS["smoke"], decoder_depth=8, decoder_embed_dim=32, **quiet),
        finetune=_no_init(replace(finetune.PRESETS["smoke"], **quiet)),
        linprobe=_no_init(replace(linprobe.PRESETS["smoke"], cache_features=True, augment=False, **quiet)),
        partial=_no_init(replace(partial.PRESETS["smoke"], **quiet)),
        tokenizer=replace(tokenizer.PRESETS["smoke"], **quiet),
        decoder_depth={d: d for d in PAPER_DECODER_DEPTHS},
        decoder_width={w: w // 16 for w in PAPER_DECODER_WIDTHS},  # 8..64 (encoder 32 wide)
        schedule={100: 1, 200: 2, 400: 3, 800: 4, 1600: 5},  # monotone stand-ins, not proportional
        partial_blocks={0: 0, 0.5: 0.5, 1: 1, 4: 1.5, 6: 2, 24: 2},  # 2 blocks in all
        long_epochs=2,
        table3_models={"vit_base": "mae_vit_smoke"},
        table2=Table2Recipe(models={"vit_large": "mae_vit_smoke", "vit_huge": "mae_vit_micro_patch4_32"},
                            decoder_width=32, batch_size=8, warmup_iters=1, timed_iters=3, device="cpu"),
        readout=replace(readout.PRESETS["smoke"], finetune=None, **quiet),
        notes=("smoke numbers are near chance: they test the pipeline, not the paper",),
    )


GPU_TABLE2_BATCH = {"vit_large": 128, "vit_huge": 64}  # w/ [M] ViT-H (257 tokens x 32 blocks) fits 80 GB at 64
MINI_DATA = "synthetic:20000"


def _mini() -> Scale:
    data = dict(data=MINI_DATA, num_workers=8)
    return Scale(
        name="mini",
        description=f"mae_vit_tiny_patch4_32 on {MINI_DATA} (or --data), one GPU",
        pretrain=replace(pretrain.PRESETS["mini"], epochs=50, warmup_epochs=5, batch_size=256, blr=1e-3,
                         decoder_depth=8, decoder_embed_dim=128, vis_every=50, **data),
        finetune=_no_init(replace(finetune.PRESETS["mini"], epochs=15, warmup_epochs=2, batch_size=256, blr=1e-3,
                                  **data)),
        linprobe=_no_init(replace(linprobe.PRESETS["mini"], cache_features=True, augment=False, epochs=50,
                                  warmup_epochs=5, batch_size=1024, **data)),
        partial=_no_init(replace(partial.PRESETS["mini"], epochs=15, warmup_epochs=2, **data)),
        tokenizer=replace(tokenizer.PRESETS["mini"], **data),
        decoder_depth={d: d for d in PAPER_DECODER_DEPTHS},
        decoder_width={w: w // 4 for w in PAPER_DECODER_WIDTHS},  # 32..256 (encoder 192 wide)
        schedule={e: max(1, round(e / 16)) for e in PAPER_SCHEDULE},  # 6, 12, 25, 50, 100
        partial_blocks={0: 0, 0.5: 0.5, 1: 1, 4: 2, 6: 3, 24: 12},  # the same fraction of 12 blocks
        long_epochs=100,
        table3_models={"vit_base": "mae_vit_tiny_patch4_32"},
        table2=Table2Recipe(models={"vit_large": "mae_vit_large_patch16", "vit_huge": "mae_vit_huge_patch14"},
                            decoder_width=512, batch_size=GPU_TABLE2_BATCH, warmup_iters=3, timed_iters=10),
        readout=readout.Config(model="vit_tiny_patch4_32", img_size=32, batch_size=512, **data),
        notes=("linear probe on cached features (no augmentation) for speed",
               "a tiny ViT on 32 px synthetic shapes: compare rankings and best settings, not values"),
    )


CPU_DATA = "digits"


def _cpu() -> Scale:
    """The measured scale: 2 CPU cores, about 3 minutes per Table 1 cell.

    Recipe (chosen on the baseline only, then frozen; every ablation cell changes one switch; written once, as
    the protocols' ``CPU_BASELINE`` configs in mae/protocols/, from which their ``demo`` presets derive):
    ``mae_vit_micro_patch4_32`` (4 blocks x 128 wide, 4 heads) at 16 px, so 4 px patches give a 4x4
    grid of 16 patches (4 visible at 75%); decoder 8 blocks x 64 (the paper's 8 x 512 = half the
    encoder's width); pre-training on the train split of scikit-learn's digits (1,437 real 8x8
    handwritten digits, upsampled; labels unused), 40 epochs, batch 128, blr 1.5e-3, 4 warm-up epochs,
    pixel target without norm; linear probe on the cls token (cached features, LARS, 90 epochs);
    fine-tuning 15 epochs without RandAugment / mixup / cutmix / erasing; evaluation on the 360
    held-out digits (one image = 0.28 points).

    Measurements that led to it (2-core Xeon, OMP_NUM_THREADS=2, 2026-12-02, seed 0):

    - ``synthetic:5000`` at 32 px (64 patches), same model: 25 s per pre-training epoch; after 5
      epochs (2 min) the cls-token probe (logistic regression) was 22.8% vs 16.1% for the random
      encoder: a 6.7-point margin, too little and too slow. The same encoder probed on digits: 95.0%
      vs 84.4%, so digits carry a clear signal.
    - digits at 16 px: 2.2 s per pre-training epoch (~700 img/s); after 36 of 40 epochs the
      logistic-regression probe gave 92.8% (cls) / 94.7% (mean-pooled) vs 80.3% / 80.6% random.
    - the harness's probe (LARS, BatchNorm, 90 epochs on cached features, 30 s): 91.9% pre-trained vs
      69.7% for the same encoder at its initialisation: +22 points, so the cls token suffices.
    - fine-tuning 15 epochs (65 s): 76.1% pre-trained vs 51.7% from scratch with RandAugment
      (m9 on 16 px digits), 86.1% pre-trained without it: RandAugment is off at this scale.
    - one cell (pre-train 90 s + probe 30 s + fine-tune 65 s) is about 3 minutes; two grid
      processes at one thread each run 1.4x more cells per hour than one at two threads.
    - the 3-seed rerun (2026-12-06, two grid processes at one thread each, stage wall times from their
      metrics.json): late in the run, with nothing else on the machine, a cell took about 2.5 minutes per
      process (pre-train 80-115 s, fine-tune 36 s, probe 12 s, readouts 3-4 s); the baseline's controls
      add about 7 minutes per seed (the 55-epoch scratch fine-tune: 380 s while shared). Early on, beside
      test runs, a cell took about 6 minutes.
    - profile of a pre-training step (bench/profile_cell.py, one thread, machine shared): data 8%,
      encoder 10%, decoder 23%, backward 55%, optimiser 4%; 291 ms per batch of 128.
    """
    # the recipes are the protocols' CPU_BASELINE literals (the demo presets derive from them), copied as they are
    quiet = dict(progress=False, tensorboard=False, num_workers=0, data=CPU_DATA, img_size=16, log_every=1000)
    return Scale(
        name="cpu",
        description=f"mae_vit_micro_patch4_32 at 16 px on {CPU_DATA}, 2 CPU cores, ~3 min per cell",
        pretrain=replace(pretrain.CPU_BASELINE),  # with the kNN monitor every 10 epochs: RNG-neutral, ~5% of the time
        finetune=replace(finetune.CPU_BASELINE),
        linprobe=replace(linprobe.CPU_BASELINE),
        partial=replace(partial.CPU_BASELINE),
        tokenizer=replace(tokenizer.PRESETS["cpu"]),
        decoder_depth={d: d for d in PAPER_DECODER_DEPTHS},
        decoder_width={w: w // 8 for w in PAPER_DECODER_WIDTHS},  # 16..128 (encoder 128 wide)
        schedule={e: e // 20 for e in PAPER_SCHEDULE},  # 5, 10, 20, 40, 80
        partial_blocks={0: 0, 0.5: 0.5, 1: 1, 4: 2, 6: 3, 24: 4},  # 4 blocks in all
        long_epochs=80,
        table3_models={"vit_base": "mae_vit_micro_patch4_32"},
        table2=Table2Recipe(models={"vit_large": "mae_vit_micro_patch4_32", "vit_huge": "mae_vit_tiny_patch4_32"},
                            decoder_width=64, batch_size=32, warmup_iters=2, timed_iters=5, device="cpu"),
        readout=readout.Config(model="vit_micro_patch4_32", batch_size=256, **quiet),
        notes=("cpu scale: a 4-block ViT on 16 px digits; compare rankings and best settings, not values",
               "360 validation images: one image is 0.28 points; verdicts are paired-seed intervals (reproduce/stats.py)"),
        seeds=(0, 1, 2),
    )


def _paper(data: str | None) -> Scale:
    d = dict(data=data) if data else {}
    return Scale(
        name="paper",
        description="the paper's recipes (REFERENCE.md) on ImageNet-1K",
        pretrain=replace(pretrain.PRESETS["paper_vit_large"], **d),
        finetune=_no_init(replace(finetune.PRESETS["paper_vit_large"], **d)),
        linprobe=_no_init(replace(linprobe.PRESETS["paper_vit_large"], **d)),
        partial=_no_init(replace(partial.PRESETS["paper_vit_large"], **d)),
        tokenizer=replace(tokenizer.PRESETS["paper"], **d),
        decoder_depth={x: x for x in PAPER_DECODER_DEPTHS},
        decoder_width={x: x for x in PAPER_DECODER_WIDTHS},
        schedule={x: x for x in PAPER_SCHEDULE},
        partial_blocks={x: x for x in PAPER_PARTIAL_BLOCKS},
        long_epochs=1600,
        table3_models={"vit_base": "mae_vit_base_patch16", "vit_large": "mae_vit_large_patch16",
                       "vit_huge": "mae_vit_huge_patch14"},
        table2=Table2Recipe(models={"vit_large": "mae_vit_large_patch16", "vit_huge": "mae_vit_huge_patch14"},
                            decoder_width=512, batch_size=GPU_TABLE2_BATCH, warmup_iters=10, timed_iters=50),
        notes=("partial fine-tuning uses 50 epochs for every k (the paper picks 50, 100 or 200 per k)",
               "the dVAE-token row uses our own VQ tokenizer trained on IN1K, not BEiT's DALL-E dVAE"),
    )


def get_scale(name: str, data: str | None = None, check_data: bool = True) -> Scale:
    """The recipes of scale ``name`` with ``--data`` applied to every stage (required at ``paper``)."""
    if name not in SCALES:
        raise GridError(f"unknown scale {name!r}; choose one of {', '.join(SCALES)}")
    data = resolve_data(name, data, check=check_data)
    if name == "paper":
        return _paper(data)
    scale = {"smoke": _smoke, "cpu": _cpu, "mini": _mini}[name]()
    if not data:
        return scale
    return replace(scale, pretrain=replace(scale.pretrain, data=data), finetune=replace(scale.finetune, data=data),
                   linprobe=replace(scale.linprobe, data=data), partial=replace(scale.partial, data=data),
                   tokenizer=replace(scale.tokenizer, data=data),
                   readout=replace(scale.readout, data=data) if scale.readout is not None else None)


# ------------------------------------------------------------------------------ cell builders
TOKENIZER_CELL = "tokenizer"


def pretrain_eval_cell(scale: Scale, name: str, key: dict[str, Any], pretrain_cfg: pretrain.Config | None = None,
                       info: dict[str, Any] | None = None, pretrain_inputs: dict[str, Ref] | None = None,
                       finetune_cfg: finetune.Config | None = None,
                       linprobe_cfg: linprobe.Config | None = None) -> Cell:
    """The Table 1 cell: pre-train, then fine-tune and linear-probe its ``checkpoint-last.pth``."""
    pre = pretrain_cfg or scale.pretrain
    ft, lin = finetune_cfg or scale.finetune, linprobe_cfg or scale.linprobe
    from mae.models.vit import vit_for_mae
    for cfg in (ft, lin):
        if cfg.model not in (pre.model, vit_for_mae(pre.model)):
            raise GridError(f"cell {name}: classifier {cfg.model} does not match the pre-trained {pre.model}")
    from_pretrain = {"finetune": Ref("pretrain")}
    stages = [Stage("pretrain", "pretrain", pre, inputs=dict(pretrain_inputs or {})),
              Stage("finetune", "finetune", ft, inputs=from_pretrain),
              Stage("linprobe", "linprobe", lin, inputs=from_pretrain)]
    if scale.readout is not None:  # kNN / k-shot / converged probe of the same encoder (cheap, no training)
        stages.append(Stage("readout", "readout", replace(scale.readout, model=vit_for_mae(pre.model),
                                                          img_size=pre.img_size), inputs=from_pretrain))
    return Cell(name, key, stages, info=dict(info or {}))


def tokenizer_cell(scale: Scale) -> Cell:
    """The tokenizer stage of Table 1d's token row (a helper cell; trained once, then reused)."""
    from mae.models import mae_config
    m = mae_config(scale.pretrain.model)
    tok = scale.tokenizer
    img = scale.pretrain.img_size or m.img_size
    if (tok.patch_size, tok.img_size) != (m.patch_size, img):
        raise GridError(f"{scale.name}: tokenizer patches {tok.patch_size} px of {tok.img_size} px images do not "
                        f"match {scale.pretrain.model} ({m.patch_size} px of {img} px)")
    return Cell(TOKENIZER_CELL, {}, [Stage("tokenizer", "tokenizer", tok, local_only=True)], report=False)


def tokenizer_ref() -> Ref:
    """The token target's input: the tokenizer cell's ``tokenizer.pth``."""
    return Ref("tokenizer", cell=TOKENIZER_CELL, file=tokenizer.TOKENIZER_FILE)


# ------------------------------------------------------------------------ the shared baseline
#: run-directory tree shared by Table 1's parts, Fig. 7 and Fig. 9: their baseline is one cell
ABLATIONS_ROOT = "ablations"
BASELINE_CELL = "baseline"


def is_baseline(scale: Scale, cell: Cell) -> bool:
    """A reported pretrain -> finetune / linprobe (/ readout) cell whose recipes are exactly the scale's baseline."""
    names = [s.name for s in cell.stages]
    if not cell.report or names[:3] != ["pretrain", "finetune", "linprobe"] or names[3:] not in ([], ["readout"]):
        return False
    pre, ft, lin = cell.stages[:3]
    return (pre.config == scale.pretrain and not pre.inputs and ft.config == scale.finetune
            and lin.config == scale.linprobe)


def baseline_controls(scale: Scale) -> list[Stage]:
    """The baseline's controls, run once per seed (Sec. 4's "scratch" and the initialisation / pixel controls):

    - ``linprobe_init`` / ``readout_init``: the same probe and readouts on the very weights pre-training
      starts from (``checkpoint-init.pth``, saved before the first step);
    - ``readout_pixels``: the readouts on the raw pixels (no encoder at all);
    - ``linprobe_randinit``: the probe on a ViT drawn with the classifier's own init (secondary);
    - ``finetune_scratch``: the fine-tuning recipe from random weights for pre-training + fine-tuning
      epochs, so the scratch model trains at least as long as the pre-trained one in all.

    Each derives its recipe from the cell's own stages (``Stage.derive``), also after ``--set``: the probe
    controls are the cell's probe, the readout controls its readout, the scratch run its fine-tune for
    the cell's pre-training + fine-tuning epochs.
    """
    from mae.protocols.pretrain import INIT_CHECKPOINT
    init = {"finetune": Ref("pretrain", file=INIT_CHECKPOINT)}
    same = lambda name: lambda cell: cell.stage(name).config  # noqa: E731
    out = [Stage("linprobe_init", "linprobe", scale.linprobe, inputs=init, derive=same("linprobe")),
           Stage("linprobe_randinit", "linprobe", scale.linprobe, derive=same("linprobe")),
           scratch_control(scale.finetune, scale.pretrain.epochs)]
    if scale.readout is not None:
        from mae.models.vit import vit_for_mae
        ro = replace(scale.readout, model=vit_for_mae(scale.pretrain.model), img_size=scale.pretrain.img_size)
        pixels = lambda cell: replace(cell.stage("readout").config, source="pixels")  # noqa: E731
        out[1:1] = [Stage("readout_init", "readout", ro, inputs=init, derive=same("readout")),
                    Stage("readout_pixels", "readout", replace(ro, source="pixels"), derive=pixels)]
    return out


def scratch_epochs(cell: Cell) -> int:
    """The scratch control's epochs in ``cell``: its pre-training's plus its fine-tune's."""
    return cell.stage("pretrain").config.epochs + cell.stage("finetune").config.epochs


def scratch_control(finetune_cfg: finetune.Config, pretrain_epochs: int) -> Stage:
    """``finetune_scratch``: the cell's fine-tuning recipe from random weights, as long as pre-training +
    fine-tuning (derived again from the cell's stages after ``--set``)."""
    return Stage("finetune_scratch", "finetune", replace(finetune_cfg, epochs=pretrain_epochs + finetune_cfg.epochs),
                 derive=lambda cell: replace(cell.stage("finetune").config, epochs=scratch_epochs(cell)))


def with_shared_baseline(scale: Scale, cells: list[Cell]) -> list[Cell]:
    """Rename the baseline cell of a table to ``baseline`` (one run for every table of the shared tree),
    add its controls, give it all of the scale's seeds (run as ``baseline``, ``baseline_seed<N>``), and
    put it first. Its pre-training writes ``checkpoint-init.pth`` for the initialisation controls."""
    base, rest = [], []
    for c in cells:
        if not is_baseline(scale, c):
            rest.append(c)
            continue
        stages = [replace(c.stages[0], config=replace(c.stages[0].config, save_init=True)), *c.stages[1:],
                  *baseline_controls(scale)]
        base.append(Cell(BASELINE_CELL, dict(c.key), stages, info=dict(c.info), report=True,
                         seeds=tuple(scale.seeds)))
    return base + rest
