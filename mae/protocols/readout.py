"""Training-free readouts of a frozen encoder (or of raw pixels): kNN, k-shot and a converged linear probe.

The paper judges representations by linear probing and fine-tuning (Sec. 4). On small data the
harness's SGD probe saturates and is noisy; these readouts, computed from the same frozen features,
separate encoders more finely and need no training state:

- ``knn``: DINO's weighted kNN (k = 20, cosine, T = 0.07; :mod:`mae.knn`) of the val images against
  the whole train split;
- ``shot1`` / ``shot3`` / ``shot10``: a logistic regression fitted on k labelled train images per
  class, scored on the val split, averaged over ``shot_draws`` seeded draws (``*_se``: standard error
  of that mean over draws);
- ``lbfgs``: a logistic regression on every train image (scikit-learn, L-BFGS, standardised
  features, ``C = lbfgs_c``), run to convergence (``lbfgs_converged`` says whether it did): the
  converged probe that the SGD probe's number is checked against.

Each is measured on the cls token (``knn``, ...) and on the mean patch token (``knn_mean``, ...).
``source`` picks what is read out: ``encoder`` (``--finetune`` checkpoint; none = the classifier's
random init), or ``pixels`` (the normalised image itself, flattened: the raw-pixel control).
Results go to ``metrics.json`` (``final``) with ``n_val`` and ``num_classes``; per-image correctness
of ``knn`` and ``lbfgs`` (``correct``) lets a single-seed comparison bootstrap over images.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from mae.atomic import atomic_write_text
from mae.config import TrainConfig, opt
from mae.knn import K, TEMPERATURE, knn_predict

SOURCES = ("encoder", "pixels")


@dataclass
class Config(TrainConfig):
    """Readout recipe (defaults: the cpu scale's)."""

    model: str = opt("vit_micro_patch4_32", "classifier preset whose encoder is read out (mae.models.vit.PRESETS)")
    finetune: str | None = opt(None, "pre-trained checkpoint (any format); none = the encoder at random init")
    source: str = opt("encoder", "encoder | pixels (the raw-pixel control: no model)")
    k: int = opt(K, "kNN: neighbours that vote")
    temperature: float = opt(TEMPERATURE, "kNN: temperature of the exp(similarity / T) vote weights")
    shots: tuple[int, ...] = opt((1, 3, 10), "k-shot readouts: labelled train images per class")
    shot_draws: int = opt(40, "k-shot: seeded random draws averaged per k")
    lbfgs_c: float = opt(1.0, "logistic regressions: inverse L2 strength C on standardised features")
    lbfgs_max_iter: int = opt(2000, "logistic regressions: L-BFGS iteration cap")
    batch_size: int = opt(256, "feature-extraction batch size")
    epochs: int = opt(0, "unused: a readout trains nothing")

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.k < 1 or self.temperature <= 0 or self.shot_draws < 1 or any(s < 1 for s in self.shots):
            raise ValueError("readout needs k >= 1, temperature > 0, shot_draws >= 1 and shots >= 1")

    MIN_EPOCHS: ClassVar[int] = 0  # a readout trains nothing

    def validate(self) -> None:
        """The shared checks, then this readout's: the logistic regressions, the encoder and its checkpoint."""
        from mae.config import require, require_checkpoint
        super().validate()
        require(self.lbfgs_c > 0, "lbfgs_c", self.lbfgs_c, "the inverse L2 strength must be > 0")
        require(self.lbfgs_max_iter >= 1, "lbfgs_max_iter", self.lbfgs_max_iter, "must be >= 1")
        if self.source == "encoder":
            from mae.models.vit import vit_config
            try:
                vit_config(self.model, img_size=self.img_size)
            except ValueError as e:
                raise ValueError(f"--model {self.model}: {e}") from None
            require_checkpoint("finetune", self.finetune)


PRESETS: dict[str, Config] = {
    "demo": Config(model="vit_micro_patch4_32", img_size=16, data="digits", finetune="outputs/demo/checkpoint-last.pth",
                   num_workers=0, output_dir="outputs/readout_demo"),
    "smoke": Config(model="vit_smoke", img_size=32, data="synthetic:64", num_workers=0, shot_draws=4,
                    output_dir="outputs/readout_smoke", progress=False, tensorboard=False),
}
DEFAULT_PRESET = "demo"


def _log(msg: str) -> None:
    from mae.engine.distributed import is_main_process
    if is_main_process():  # rank 0 alone prints
        print(msg, flush=True)


def build_encoder(cfg: Config, nb_classes: int) -> Any:
    """The classifier whose encoder is read out (``cfg.finetune`` loaded, eval mode); None for pixels."""
    if cfg.source == "pixels":
        return None
    from mae.models.vit import create_vit
    from mae.protocols.finetune import start_from_pretrained
    model = create_vit(cfg.model, img_size=cfg.img_size, num_classes=nb_classes, global_pool=False, drop_path=0.0)
    start_from_pretrained(cfg, model, 0.01)
    return model.eval()


@torch.no_grad()
@torch.no_grad()
def token_features(model: Any, dataset: Any, batch_size: int, num_workers: int = 0,
                   device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({"cls": (N, D), "mean": (N, D)}, labels (N,)) of ``dataset`` on the CPU, computed on ``device``;
    ``model=None``: the flattened pixels. Several processes: each rank computes its round-robin shard and
    every rank receives the whole set (:func:`mae.engine.distributed.gather_shards`)."""
    from torch.utils.data import DataLoader

    from mae.engine.distributed import gather_shards, local_shard
    device = torch.device(device)
    if model is not None:
        model = model.to(device).eval()
    loader = DataLoader(local_shard(dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    cls, mean, ys = [], [], []
    for x, y in loader:
        x = x.to(device)
        if model is None:
            cls.append(x.flatten(1).float())
        else:
            z = model.forward_features(x)  # all tokens after the encoder's final norm
            cls.append(z[:, 0].float())
            mean.append(z[:, model.num_prefix_tokens:].float().mean(dim=1))
        ys.append(torch.as_tensor(y, dtype=torch.int64).to(device))
    n = len(dataset)
    feats = {"cls": gather_shards(torch.cat(cls), n).cpu()}
    if mean:
        feats["mean"] = gather_shards(torch.cat(mean), n).cpu()
    return feats, gather_shards(torch.cat(ys), n).cpu()


def _logreg(train_x: np.ndarray, train_y: np.ndarray, c: float, max_iter: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence is reported, not warned
        clf.fit(train_x, train_y)
    return clf


def shot_indices(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k random train indices per class (fewer where a class has fewer), sorted."""
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(out))


def readouts(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
             num_classes: int, cfg: Config) -> tuple[dict[str, float], dict[str, list[int]]]:
    """(metrics, per-image correctness) of kNN, k-shot and the converged probe on one feature set."""
    out: dict[str, float] = {}
    correct: dict[str, list[int]] = {}
    pred = knn_predict(train_x, train_y, val_x, num_classes, cfg.k, cfg.temperature)
    hit = (pred.cpu() == val_y).numpy()
    out["knn"], correct["knn"] = 100.0 * float(hit.mean()), hit.astype(int).tolist()
    from threadpoolctl import threadpool_limits
    # one BLAS thread: these fits are small (a few thousand images at most) and a multi-threaded BLAS mostly spins.
    # On 2 busy cores the smoke scale's raw-pixel readouts took 28 s with 2 threads, 1 s with one; the cpu scale's
    # (seed 0) 35 s and 3.4 s, with every number the same either way
    with threadpool_limits(limits=1, user_api="blas"):
        tx, ty, vx, vy = train_x.double().numpy(), train_y.numpy(), val_x.double().numpy(), val_y.numpy()
        clf = _logreg(tx, ty, cfg.lbfgs_c, cfg.lbfgs_max_iter)
        hit = clf.predict(vx) == vy
        out["lbfgs"], correct["lbfgs"] = 100.0 * float(hit.mean()), hit.astype(int).tolist()
        n_iter = int(np.max(clf[-1].n_iter_))
        out["lbfgs_iters"], out["lbfgs_converged"] = float(n_iter), float(n_iter < cfg.lbfgs_max_iter)
        for k in cfg.shots:
            rng = np.random.default_rng([cfg.seed, k])
            accs = []
            for _ in range(cfg.shot_draws):
                idx = shot_indices(ty, k, rng)
                clf = _logreg(tx[idx], ty[idx], cfg.lbfgs_c, cfg.lbfgs_max_iter)
                accs.append(100.0 * float((clf.predict(vx) == vy).mean()))
            out[f"shot{k}"] = float(np.mean(accs))
            out[f"shot{k}_se"] = float(np.std(accs, ddof=1) / np.sqrt(len(accs))) if len(accs) > 1 else float("nan")
    return out, correct


def run(cfg: Config) -> dict[str, Any]:
    """Read out ``cfg.finetune`` (or pixels) on ``cfg.data``'s train / val splits; writes metrics.json."""
    from mae.data import eval_transform
    from mae.engine.loop import seed_everything
    from mae.protocols.finetune import classification_data
    from mae.provenance import pin_code_commit

    pin_code_commit()  # the commit this readout's numbers will carry: the code loaded now
    t0 = time.time()
    seed_everything(cfg.seed)
    tf = eval_transform(cfg.img_size)
    train_set, val_set, nb = classification_data(cfg, tf, nb_classes=None)
    model = build_encoder(cfg, nb)
    from mae.engine.distributed import init_distributed, is_main_process
    from mae.engine.loop import resolve_device
    device = resolve_device(cfg.device)  # this process's GPU; several processes: each computes a shard
    init_distributed(device.type)
    train_f, train_y = token_features(model, train_set, cfg.batch_size, cfg.num_workers, device)
    val_f, val_y = token_features(model, val_set, cfg.batch_size, cfg.num_workers, device)
    if not is_main_process():  # the features were computed in shards; the fits are rank 0's (its result is written)
        return {"history": [], "final": {}, "best": {}, "finished": True}
    final: dict[str, float] = {}
    correct: dict[str, list[int]] = {}
    for token in train_f:  # cls and mean tokens; one feature for pixels
        m, c = readouts(train_f[token], train_y, val_f[token], val_y, nb, cfg)
        suffix = "" if token == "cls" else "_mean"
        final.update({f"{k}{suffix}" if not k.endswith("_se") else f"{k[:-3]}{suffix}_se": v for k, v in m.items()})
        correct.update({f"{k}{suffix}": v for k, v in c.items()})
    final.update(n_val=float(len(val_y)), n_train=float(len(train_y)), num_classes=float(nb))
    shown = ", ".join(f"{k} {final[k]:.1f}" for k in ("knn", "lbfgs", *(f"shot{s}" for s in cfg.shots)))
    _log(f"[readout] {cfg.source} {cfg.finetune or '(random init)' if cfg.source == 'encoder' else ''}: {shown} "
         f"({time.time() - t0:.1f}s)")
    result = {"history": [], "final": final, "best": {}, "finished": True, "correct": correct,
              "seconds": time.time() - t0}
    from mae.config import save_config  # (rank 0 here: the other ranks returned after the features)
    from mae.provenance import stage_provenance
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.run_dir / "config.yaml")
    result["provenance"] = stage_provenance(seed=cfg.seed, wall_s=time.time() - t0)
    atomic_write_text(cfg.run_dir / "metrics.json", json.dumps(result, indent=1))
    return result
