"""The grid runner (reproduce/grid/): run dirs, inputs, stage identities (skip / resume / refuse / rerun),
--only, --dry-run, --set, failures, the torchrun and SLURM launchers. Runner logic is tested on a stub protocol (instant);
one test resumes a real, interrupted smoke pre-training."""
from __future__ import annotations

import sys
from pathlib import Path

import json
import types
from dataclasses import dataclass, replace

import pytest
from _stubs import register_protocol

from reproduce import grid
from reproduce.grid import Cell, GridError, Ref, Stage, run_grid

# --------------------------------------------------------------------------- stub protocol
CALLS: list = []
STOP_EARLY: list = []  # non-empty: the stub leaves a checkpoint but no metrics.json, like a killed run


@dataclass
class StubConfig:
    output_dir: str = "unset"
    resume: str | None = None
    finetune: str | None = None
    value: float = 1.0
    crash: bool = False
    stop_early: bool = False  # leave a checkpoint but no metrics.json, like a killed run
    epochs: int = 1


def stub_run(cfg: StubConfig) -> dict:
    CALLS.append(cfg)
    d = Path(cfg.output_dir)
    d.mkdir(parents=True, exist_ok=True)
    if cfg.crash:
        raise RuntimeError("boom")
    (d / "checkpoint-last.pth").write_text("weights")
    if cfg.stop_early or STOP_EARLY:
        return {"finished": False}
    m = {"final": {"acc1": cfg.value, "train_loss": 0.5}, "best": {"acc1": cfg.value + 1},
         "history": [{"epoch_time_s": 0.25}, {"epoch_time_s": 0.5}], "finished": True}
    (d / "metrics.json").write_text(json.dumps(m))
    return m


@pytest.fixture(autouse=True)
def stub_protocol(monkeypatch):
    register_protocol(monkeypatch, "stub_protocol", StubConfig, stub_run)
    CALLS.clear()
    STOP_EARLY.clear()
    yield


def two_stage_cell(name: str, value: float = 1.0, **key) -> Cell:
    return Cell(name, key or {"x": value}, [
        Stage("pretrain", "stub_protocol", StubConfig(value=value)),
        Stage("finetune", "stub_protocol", StubConfig(value=value + 10), inputs={"finetune": Ref("pretrain")}),
    ])


def quiet(*_a) -> None:
    pass


# ---------------------------------------------------------------------------------- paths
def test_run_dirs_inputs_and_configs(tmp_path):
    g = run_grid([two_stage_cell("a", 1.0), two_stage_cell("b", 2.0)], table="t1", scale="smoke",
                 work_dir=tmp_path, echo=quiet)
    root = tmp_path / "t1_smoke"
    assert g.root == root.resolve()
    assert [Path(c.output_dir) for c in CALLS] == [root.resolve() / c / s for c in "ab" for s in ("pretrain", "finetune")]
    # the fine-tune reads the pre-training's checkpoint of the same cell; nothing else does
    assert CALLS[1].finetune == str(root.resolve() / "a" / "pretrain" / "checkpoint-last.pth")
    assert CALLS[0].finetune is None and CALLS[0].resume is None
    for c in "ab":
        for s in ("pretrain", "finetune"):
            assert (root / c / s / "config.yaml").is_file()
    assert g.get("b", "finetune").status == "ran"
    assert grid.acc(g.get("b", "finetune")) == 12.0
    assert grid.acc(g.get("b", "finetune"), "best") == 13.0
    assert grid.train_seconds(g.get("a", "pretrain")) == 0.75
    assert g.complete and not g.failed


def test_finished_cells_are_skipped_on_rerun(tmp_path):
    cells = [two_stage_cell("a"), two_stage_cell("b")]
    run_grid(cells, table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    assert len(CALLS) == 4
    lines: list[str] = []
    g = run_grid(cells, table="t", scale="smoke", work_dir=tmp_path, echo=lines.append)
    assert len(CALLS) == 4  # nothing ran again
    assert {r.status for r in g.stages.values()} == {"done"}
    assert sum("finished before, skipped" in line for line in lines) == 2
    assert grid.acc(g.get("a", "pretrain")) == 1.0


def test_a_changed_recipe_is_refused_then_rerun_beside_the_old_run(tmp_path):
    """The stale-reuse sequence: a finished cell, then the same grid with another value of a config field."""
    run_grid([two_stage_cell("a")], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    assert len(CALLS) == 2
    changed = two_stage_cell("a")
    changed.stages[0].config = replace(changed.stages[0].config, epochs=2)
    with pytest.raises(GridError, match=r"a/pretrain: changed: epochs: 1 -> 2.*--rerun-changed"):
        run_grid([changed], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    assert len(CALLS) == 2  # nothing ran, nothing was reused
    g = run_grid([changed], table="t", scale="smoke", work_dir=tmp_path, echo=quiet, rerun_changed=True)
    assert len(CALLS) == 4 and CALLS[2].epochs == 2  # the pre-training and the fine-tune that reads it
    assert {r.status for r in g.stages.values()} == {"ran"}
    kept = sorted(p.name for p in (tmp_path / "t_smoke" / "a").iterdir())
    assert [k.split(".")[0] for k in kept] == ["finetune", "finetune", "pretrain", "pretrain"]
    assert all((tmp_path / "t_smoke" / "a" / k / "metrics.json").is_file() for k in kept)  # the old runs stay


def test_a_stage_reading_an_outdated_stage_is_not_read_as_current(tmp_path):
    """The pre-training's recipe changes: its record still names the old hash, and so does every stage that
    read it (in its cell and in another). None of them is collected as current, also after an --only run
    that replaced another cell (a run ends by collecting every cell)."""
    def reader(name: str) -> Cell:
        return Cell(name, {"x": 9}, [Stage("finetune", "stub_protocol", StubConfig(value=5),
                                           inputs={"finetune": Ref("pretrain", cell="a")})])
    run_grid([two_stage_cell("a"), reader("r"), two_stage_cell("b", 2.0)], table="t", scale="smoke",
             work_dir=tmp_path, echo=quiet)
    changed = two_stage_cell("a")
    changed.stages[0].config = replace(changed.stages[0].config, epochs=2)
    g = run_grid([changed, reader("r"), two_stage_cell("b", 2.0)], table="t", scale="smoke", work_dir=tmp_path,
                 echo=quiet, collect_only=True)
    assert {k: r.status for k, r in g.stages.items()} == {
        ("a", "pretrain"): "stale", ("a", "finetune"): "stale", ("r", "finetune"): "stale",
        ("b", "pretrain"): "done", ("b", "finetune"): "done"}
    assert g.get("a", "finetune").metrics is None and g.get("r", "finetune").metrics is None
    status, diff = grid.check_identity(g.root, changed, changed.stages[1])
    assert status == "changed" and diff[0].startswith("input finetune: a/pretrain is changed (epochs: 1 -> 2")
    # --only another cell, with --rerun-changed: that cell reruns; a and r stay out of the results
    b2 = two_stage_cell("b", 3.0)
    run_grid([changed, reader("r"), b2], table="t", scale="smoke", work_dir=tmp_path, echo=quiet,
             only={"x": 3.0}, rerun_changed=True)
    g = run_grid([changed, reader("r"), b2], table="t", scale="smoke", work_dir=tmp_path, echo=quiet,
                 collect_only=True)
    assert g.get("r", "finetune").status == "stale" and g.get("b", "finetune").status == "done"
    # rerunning a (and so r) makes them current again
    run_grid([changed, reader("r"), b2], table="t", scale="smoke", work_dir=tmp_path, echo=quiet,
             rerun_changed=True)
    g = run_grid([changed, reader("r"), b2], table="t", scale="smoke", work_dir=tmp_path, echo=quiet,
                 collect_only=True)
    assert {r.status for r in g.stages.values()} == {"done"}


def test_a_changed_stage_still_running_elsewhere_is_not_moved_aside(tmp_path):
    """--rerun-changed moves a changed run aside only under its lock: a process still writing there would
    otherwise write its old recipe's checkpoints into the new run's folder."""
    from mae.engine import rundir
    run_grid([two_stage_cell("a")], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    changed = two_stage_cell("a")
    changed.stages[0].config = replace(changed.stages[0].config, epochs=2)
    d = tmp_path / "t_smoke" / "a" / "pretrain"
    with rundir.run_lock(d):  # another process is running the old recipe (the lock `mae` and the grid share)
        with pytest.raises(GridError, match=r"in use by another process .*a/pretrain; nothing was moved aside"):
            run_grid([changed], table="t", scale="smoke", work_dir=tmp_path, echo=quiet, rerun_changed=True)
    assert (d / grid.IDENTITY_FILE).is_file() and not list(d.parent.glob("*.replaced-*"))
    run_grid([changed], table="t", scale="smoke", work_dir=tmp_path, echo=quiet, rerun_changed=True)
    assert len(list(d.parent.glob("pretrain.replaced-*"))) == 1


def test_a_changed_upstream_stage_invalidates_its_downstream_stages(tmp_path):
    run_grid([two_stage_cell("a")], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    ident = tmp_path / "t_smoke" / "a" / "pretrain" / grid.IDENTITY_FILE
    data = json.loads(ident.read_text())
    ident.write_text(json.dumps({**data, "hash": "0123456789abcdef"}))  # the pre-training was redone elsewhere
    with pytest.raises(GridError, match=r"a/finetune: changed: input finetune"):
        run_grid([two_stage_cell("a")], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    lines: list[str] = []
    g = run_grid([two_stage_cell("a")], table="t", scale="smoke", work_dir=tmp_path, echo=lines.append,
                 collect_only=True)
    assert g.get("a", "finetune").status == "stale" and g.get("a", "finetune").metrics is None
    assert g.get("a", "pretrain").status == "done"


def test_runs_without_identity_are_unknown_until_adopted(tmp_path):
    run_grid([two_stage_cell("a")], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    for stage in ("pretrain", "finetune"):  # as a run directory made before stage identities
        (tmp_path / "t_smoke" / "a" / stage / grid.IDENTITY_FILE).unlink()
    with pytest.raises(GridError, match="unknown: no identity.json"):
        run_grid([two_stage_cell("a")], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    other = two_stage_cell("a", 7.0)  # adopt checks config.yaml field by field
    with pytest.raises(GridError, match=r"value: 1.0 -> 7.0"):
        run_grid([other], table="t", scale="smoke", work_dir=tmp_path, echo=quiet, adopt=True)
    g = run_grid([two_stage_cell("a")], table="t", scale="smoke", work_dir=tmp_path, echo=quiet, adopt=True)
    assert {r.status for r in g.stages.values()} == {"done"} and len(CALLS) == 2
    assert json.loads((tmp_path / "t_smoke" / "a" / "finetune" / grid.IDENTITY_FILE).read_text())["adopted"]


def test_operational_fields_do_not_change_identity(tmp_path):
    from mae.protocols import pretrain
    cfg = replace(pretrain.PRESETS["smoke"], data="synthetic:64")
    a = grid.planned_identity(tmp_path, Cell("c", {}, []), Stage("pretrain", "pretrain", cfg))
    b = grid.planned_identity(tmp_path, Cell("c", {}, []), Stage("pretrain", "pretrain", replace(
        cfg, output_dir="elsewhere", num_workers=7, progress=False, log_every=3, max_iters=5, save_init=True)))
    c = grid.planned_identity(tmp_path, Cell("c", {}, []), Stage("pretrain", "pretrain", replace(cfg, mask_ratio=0.5)))
    assert a["hash"] == b["hash"] != c["hash"]


def test_interrupted_stage_resumes_and_fresh_stage_does_not(tmp_path):
    cell = two_stage_cell("a")
    STOP_EARLY.append(True)
    g = run_grid([cell], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    assert g.get("a", "pretrain").status == "failed"
    assert "stopped before finishing" in g.get("a", "pretrain").error
    assert g.get("a", "finetune") is None  # the cell stops at its first failure
    assert CALLS[0].resume is None  # a fresh run: nothing to resume (the PCA target is fitted then)
    STOP_EARLY.clear()
    g = run_grid([cell], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    assert CALLS[1].resume == "auto"
    assert g.get("a", "pretrain").status == "resumed"
    assert g.get("a", "finetune").status == "ran" and CALLS[2].resume is None


def test_a_failing_cell_does_not_stop_the_others_unless_fail_fast(tmp_path):
    bad = two_stage_cell("bad", 5.0)
    bad.stages[0].config = replace(bad.stages[0].config, crash=True)
    dependent = Cell("dep", {"x": 9}, [Stage("ft", "stub_protocol", StubConfig(),
                                             inputs={"finetune": Ref("pretrain", cell="bad")})])
    lines: list[str] = []
    g = run_grid([bad, two_stage_cell("good"), dependent], table="t", scale="smoke", work_dir=tmp_path,
                 echo=lines.append)
    assert g.get("bad", "pretrain").status == "failed" and "RuntimeError: boom" in g.get("bad", "pretrain").error
    assert g.get("good", "finetune").status == "ran"
    assert g.get("dep", "ft").status == "failed" and "depends on failed cell bad" in g.get("dep", "ft").error
    from reproduce.driver import exit_code
    assert exit_code(g) == 1
    assert any("FAILED" in line for line in lines)
    with pytest.raises(RuntimeError, match="boom"):
        run_grid([bad], table="t2", scale="smoke", work_dir=tmp_path, keep_going=False, echo=quiet)


def test_missing_input_is_a_clear_error(tmp_path):
    cell = two_stage_cell("a")
    root = tmp_path / "t_smoke"
    with pytest.raises(GridError, match=r"input finetune = .*a/pretrain/checkpoint-last.pth does not exist"):
        grid.execute_stage(root, cell, cell.stages[1])


# ---------------------------------------------------------------------------------- --only
def test_only_selects_cells_and_their_helper_cells(tmp_path):
    helper = Cell("shared", {}, [Stage("pretrain", "stub_protocol", StubConfig())], report=False)
    rows = [Cell(f"k{k}", {"k": k, "mode": m}, [Stage("ft", "stub_protocol", StubConfig(value=k),
                                                      inputs={"finetune": Ref("pretrain", cell="shared")})])
            for k, m in ((0.5, "a"), (1, "b"), (4, "a"))]
    cells = [helper, *rows]
    assert [c.name for c in grid.select_cells(cells, ["k=1"])] == ["shared", "k1"]
    assert [c.name for c in grid.select_cells(cells, ["k=.5"])] == ["shared", "k0.5"]  # numeric match
    assert [c.name for c in grid.select_cells(cells, ["mode=a"])] == ["shared", "k0.5", "k4"]
    assert [c.name for c in grid.select_cells(cells, {"mode": "a", "k": "4"})] == ["shared", "k4"]
    # one key given twice: either value (a setting and its baseline); keys still all have to match
    assert [c.name for c in grid.select_cells(cells, ["k=1", "k=4"])] == ["shared", "k1", "k4"]
    assert [c.name for c in grid.select_cells(cells, ["k=1", "k=4", "mode=a"])] == ["shared", "k4"]
    assert grid.parse_only(["k=1", "k=4", "k=1"]) == {"k": ("1", "4")}
    assert grid.select_cells(cells, None) == cells
    with pytest.raises(GridError, match=r"unknown key 'depth'; keys of this table: k, mode"):
        grid.select_cells(cells, ["depth=8"])
    with pytest.raises(GridError, match=r"no cell has k=3; values: 0.5, 1, 4"):
        grid.select_cells(cells, ["k=3"])
    with pytest.raises(GridError, match="KEY=VALUE"):
        grid.select_cells(cells, ["k"])
    with pytest.raises(GridError, match="no cell matches all"):
        grid.select_cells(cells, ["k=1", "mode=a"])
    g = run_grid(cells, table="t", scale="smoke", work_dir=tmp_path, only=["k=4"], echo=quiet)
    assert [Path(c.output_dir).parent.name for c in CALLS] == ["shared", "k4"]
    assert set(g.stages) == {("shared", "pretrain"), ("k4", "ft")}


def test_a_reading_cell_reports_another_cells_stage_without_running_it(tmp_path):
    helper = Cell("shared", {}, [Stage("pretrain", "stub_protocol", StubConfig()),
                                 Stage("ft", "stub_protocol", StubConfig(value=7),
                                       inputs={"finetune": Ref("pretrain")})], report=False)
    alias = Cell("k0", {"k": 0}, [], reads=Ref("ft", cell="shared"))
    own = Cell("k1", {"k": 1}, [Stage("ft", "stub_protocol", StubConfig(value=1),
                                      inputs={"finetune": Ref("pretrain", cell="shared")})])
    cells = [helper, alias, own]
    assert [c.name for c in grid.select_cells(cells, ["k=0"])] == ["shared", "k0"]
    g = run_grid(cells, table="t", scale="smoke", work_dir=tmp_path, only=["k=0"], echo=quiet)
    assert [Path(c.output_dir).name for c in CALLS] == ["pretrain", "ft"]  # the helper's stages only
    assert not (tmp_path / "t_smoke" / "k0").exists()
    assert g.reported(alias) is g.get("shared", "ft") and g.reported(alias).finished
    with pytest.raises(ValueError, match="no stages itself"):
        Cell("bad", {}, [Stage("ft", "stub_protocol", StubConfig())], reads=Ref("ft", cell="shared"))
    with pytest.raises(GridError, match="unknown or comes later"):
        grid.check_grid([alias, helper])
    with pytest.raises(GridError, match="has no stage 'nope'"):
        grid.check_grid([helper, Cell("k2", {"k": 2}, [], reads=Ref("nope", cell="shared"))])


def test_check_grid_rejects_bad_references():
    a = two_stage_cell("a")
    with pytest.raises(GridError, match="duplicate cell names"):
        grid.check_grid([a, two_stage_cell("a")])
    later = Cell("x", {"x": 1}, [Stage("ft", "stub_protocol", StubConfig(), inputs={"finetune": Ref("pre")}),
                                 Stage("pre", "stub_protocol", StubConfig())])
    with pytest.raises(GridError, match="later stage"):
        grid.check_grid([later])
    ghost = Cell("y", {"x": 2}, [Stage("ft", "stub_protocol", StubConfig(), inputs={"finetune": Ref("p", cell="nope")})])
    with pytest.raises(GridError, match="unknown cell 'nope'"):
        grid.check_grid([ghost])
    with pytest.raises(GridError, match="has no stage 'nostage'"):
        grid.check_grid([a, Cell("z", {"x": 3}, [Stage("ft", "stub_protocol", StubConfig(),
                                                       inputs={"finetune": Ref("nostage", cell="a")})])])
    with pytest.raises(ValueError, match="not fields of StubConfig"):
        Stage("s", "stub_protocol", StubConfig(), inputs={"weights": Ref("p")})
    with pytest.raises(ValueError, match="bad cell name"):
        Cell("a/b", {}, [])


# ---------------------------------------------------------------------------- dry run etc.
def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    from mae.protocols import pretrain
    cells = [Cell("c", {"x": 1}, [Stage("pretrain", "pretrain", pretrain.PRESETS["smoke"]),
                                  Stage("tok", "stub_protocol", StubConfig(), local_only=True)])]
    lines: list[str] = []
    g = run_grid(cells, table="t", scale="smoke", work_dir=tmp_path, dry_run=True, launcher="torchrun",
                 nproc_per_node=4, echo=lines.append)
    text = "\n".join(lines)
    assert not CALLS and not (tmp_path / "t_smoke").exists()
    run_dir = tmp_path.resolve() / "t_smoke" / "c" / "pretrain"
    assert str(run_dir) in text and "run" in text
    assert f"torch.distributed.run --standalone --nproc_per_node=4 -m mae pretrain --config {run_dir}/config.yaml" in text
    assert "(runs in this process: stub_protocol.run)" in text
    assert {r.status for r in g.stages.values()} == {"planned"}


def test_collect_reads_finished_stages_only(tmp_path):
    cells = [two_stage_cell("a", 1.0), two_stage_cell("b", 2.0)]
    run_grid(cells, table="t", scale="smoke", work_dir=tmp_path, only=["x=1.0"], echo=quiet)
    CALLS.clear()
    g = run_grid(cells, table="t", scale="smoke", work_dir=tmp_path, collect=True, echo=quiet)
    assert not CALLS
    assert g.get("a", "finetune").status == "done" and g.get("b", "finetune").status == "missing"
    assert grid.acc(g.get("b", "finetune")) != grid.acc(g.get("b", "finetune"))  # NaN


def test_bad_launcher_and_scale():
    with pytest.raises(GridError, match="unknown launcher"):
        run_grid([], table="t", scale="smoke", launcher="mpi")
    with pytest.raises(GridError, match="unknown scale"):
        run_grid([], table="t", scale="huge")


def test_set_overrides_fields_by_stage():
    cells = [two_stage_cell("a"), two_stage_cell("b")]
    grid.apply_overrides(cells, grid.parse_set(["pretrain.epochs=3", "value=7.5"]))
    assert [s.config.epochs for c in cells for s in c.stages] == [3, 1, 3, 1]
    assert {s.config.value for c in cells for s in c.stages} == {7.5}
    with pytest.raises(GridError, match="no stage 'decoder'"):
        grid.apply_overrides(cells, grid.parse_set(["decoder.epochs=1"]))
    with pytest.raises(GridError, match="has no field 'blr'"):
        grid.apply_overrides(cells, grid.parse_set(["pretrain.blr=1"]))
    with pytest.raises(GridError, match="no stage of this table has a field 'nope'"):
        grid.apply_overrides(cells, grid.parse_set(["nope=1"]))
    with pytest.raises(GridError, match="set by the grid runner"):
        grid.apply_overrides(cells, grid.parse_set(["finetune.finetune=x.pth"]))
    with pytest.raises(GridError, match="FIELD=VALUE"):
        grid.parse_set(["epochs"])


def test_set_validates_through_the_protocol_config():
    from mae.protocols import finetune
    cells = [Cell("c", {"x": 1}, [Stage("finetune", "finetune", finetune.PRESETS["smoke"])])]
    grid.apply_overrides(cells, grid.parse_set(["finetune.betas=[0.9, 0.95]", "finetune.epochs=2"]))
    assert cells[0].stages[0].config.betas == (0.9, 0.95) and cells[0].stages[0].config.epochs == 2
    with pytest.raises(GridError, match="--set layer_decay=2 for stage 'finetune': layer_decay must be in"):
        grid.apply_overrides(cells, grid.parse_set(["finetune.layer_decay=2"]))
    grid.apply_overrides(cells, grid.parse_set(["finetune.rand_aug=none"]))  # 'none' is None, as in the mae CLI
    assert cells[0].stages[0].config.rand_aug is None


def test_resolve_data_and_results_path(tmp_path):
    assert grid.resolve_data("smoke", None) is None
    assert grid.resolve_data("mini", "synthetic:500") == "synthetic:500"
    with pytest.raises(GridError, match="needs --data /path/to/imagenet"):
        grid.resolve_data("paper", None)
    with pytest.raises(GridError, match="no such directory"):
        grid.resolve_data("paper", str(tmp_path / "missing"))
    assert grid.resolve_data("paper", str(tmp_path / "missing"), check=False)
    assert grid.resolve_data("paper", str(tmp_path)) == str(tmp_path)
    with pytest.raises(GridError, match="neither a known name nor an existing directory"):
        grid.resolve_data("mini", str(tmp_path / "nothing"))
    from reproduce.driver import results_path
    assert results_path("results", "table1a_decoder_depth", "mini") == Path("results/table1a_decoder_depth_mini.csv")
    assert results_path("out/x.csv", "t", "mini") == Path("out/x.csv")


# ------------------------------------------------------------------------------- launchers
def test_stage_command_forms(tmp_path):
    from mae.protocols import linprobe
    s = Stage("linprobe", "linprobe", linprobe.PRESETS["smoke"])
    cfg = tmp_path / "config.yaml"
    assert grid.stage_command(s, cfg, "local") == [sys.executable, "-m", "mae", "linprobe", "--config", str(cfg)]
    assert grid.stage_command(s, cfg, "torchrun", 8)[1:6] == ["-m", "torch.distributed.run", "--standalone",
                                                               "--nproc_per_node=8", "-m"]
    with pytest.raises(GridError, match="runs in this process"):
        grid.stage_command(Stage("t", "stub_protocol", StubConfig()), cfg, "torchrun")


def test_slurm_without_submitit_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # makes `import submitit` fail
    with pytest.raises(GridError, match="pip install submitit"):
        run_grid([two_stage_cell("a")], table="t", scale="smoke", work_dir=tmp_path, launcher="slurm", echo=quiet)


class FakeJob:
    def __init__(self, job_id: str, fn=None):
        self.job_id, self._fn, self._out = job_id, fn, None

    def result(self):
        return self._fn() if self._fn else None


def fake_submitit(states: dict[str, str]) -> types.ModuleType:
    mod = types.ModuleType("submitit")
    mod.submitted = []  # (params, job)

    class AutoExecutor:
        def __init__(self, folder):
            self.folder, self.params = Path(folder), {}

        def update_parameters(self, **kw):
            self.params.update(kw)

        def submit(self, fn):
            job = FakeJob(str(100 + len(mod.submitted)), fn)
            mod.submitted.append((dict(self.params), job))
            return job

    class SlurmJob(FakeJob):
        def __init__(self, folder, job_id):
            super().__init__(job_id)

        @property
        def state(self):
            return states.get(self.job_id, "COMPLETED")

    class TorchDistributedEnvironment:
        def export(self, **kw):
            raise RuntimeError("not in a SLURM job")

    mod.AutoExecutor, mod.SlurmJob = AutoExecutor, SlurmJob
    mod.helpers = types.SimpleNamespace(TorchDistributedEnvironment=TorchDistributedEnvironment,
                                        DelayedSubmission=lambda fn: ("requeue", fn))
    return mod


def test_slurm_submits_one_job_per_cell_with_dependencies(tmp_path, monkeypatch):
    fake = fake_submitit({})
    monkeypatch.setitem(sys.modules, "submitit", fake)
    helper = Cell("shared", {}, [Stage("pretrain", "stub_protocol", StubConfig())], report=False)
    dep = Cell("row", {"k": 1}, [Stage("ft", "stub_protocol", StubConfig(value=3),
                                       inputs={"finetune": Ref("pretrain", cell="shared")})])
    opts = grid.SlurmOptions(partition="gpu", gpus_per_node=4, timeout_min=60)
    g = run_grid([helper, dep], table="t", scale="mini", work_dir=tmp_path, launcher="slurm", slurm=opts, echo=quiet)
    (p0, j0), (p1, j1) = fake.submitted
    assert p0["slurm_partition"] == "gpu" and p0["tasks_per_node"] == 4 and p0["gpus_per_node"] == 4
    assert "slurm_additional_parameters" not in p0
    assert p1["slurm_additional_parameters"] == {"dependency": f"afterok:{j0.job_id}"}
    assert p1["name"] == "t_mini_row"
    assert g.get("row", "ft").status == "done" and grid.acc(g.get("row", "ft")) == 3.0
    assert json.loads((tmp_path / "t_mini" / "row" / "slurm_job.json").read_text())["job_id"] == j1.job_id
    # the job object requeues itself on preemption (stages then resume from checkpoint-last.pth)
    assert j1._fn.checkpoint()[0] == "requeue"


def test_slurm_does_not_resubmit_running_jobs_or_finished_cells(tmp_path, monkeypatch):
    fake = fake_submitit({"7": "RUNNING"})
    monkeypatch.setitem(sys.modules, "submitit", fake)
    done, running = two_stage_cell("done"), two_stage_cell("running", 2.0)
    run_grid([done], table="t", scale="mini", work_dir=tmp_path, echo=quiet)  # finished before
    (tmp_path / "t_mini" / "running").mkdir(parents=True)
    (tmp_path / "t_mini" / "running" / "slurm_job.json").write_text(json.dumps({"job_id": "7"}))
    lines: list[str] = []
    g = run_grid([done, running], table="t", scale="mini", work_dir=tmp_path, launcher="slurm",
                 slurm=grid.SlurmOptions(wait=False), echo=lines.append)
    assert fake.submitted == []
    assert any("job 7 is RUNNING, not resubmitted" in line for line in lines)
    assert g.get("running", "finetune").status == "submitted" and g.get("done", "finetune").status == "done"


def test_torchrun_launcher_runs_the_mae_cli(tmp_path):
    """One real stage through `python -m torch.distributed.run -m mae pretrain --config ...` (1 process)."""
    from mae.protocols import pretrain
    cfg = replace(pretrain.PRESETS["smoke"], data="synthetic:32", progress=False)
    g = run_grid([Cell("c", {"x": 1}, [Stage("pretrain", "pretrain", cfg)])], table="t", scale="smoke",
                 work_dir=tmp_path, launcher="torchrun", nproc_per_node=1, echo=quiet)
    r = g.get("c", "pretrain")
    assert r.status == "ran", r.error
    assert (r.run_dir / "checkpoint-last.pth").is_file()
    assert r.metrics["finished"] and r.metrics["final"]["train_loss"] > 0


# --------------------------------------------------------------------- a real interrupted run
def test_real_interrupted_pretraining_resumes_to_the_end(tmp_path):
    from mae.protocols import pretrain
    cfg = replace(pretrain.PRESETS["smoke"], data="synthetic:64", epochs=2, progress=False)
    cell = Cell("c", {"x": 1}, [Stage("pretrain", "pretrain", cfg)])
    run_dir = tmp_path / "t_smoke" / "c" / "pretrain"
    # a run killed after 3 of its 8 iterations (max_iters stops it after writing checkpoint-last.pth;
    # an operational field: the stage keeps its identity)
    killed = Cell("c", {"x": 1}, [Stage("pretrain", "pretrain", replace(cfg, max_iters=3))])
    run_grid([killed], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    assert grid.stage_status(run_dir) == "resume"
    lines: list[str] = []
    g = run_grid([cell], table="t", scale="smoke", work_dir=tmp_path, echo=lines.append)
    r = g.get("c", "pretrain")
    assert r.status == "resumed" and any("resuming pretrain" in line for line in lines)
    assert r.metrics["finished"] and len(r.metrics["history"]) == 2
    import csv
    with (run_dir / "train_log.csv").open() as f:
        iters = [int(row["iteration"]) for row in csv.DictReader(f)]
    assert iters == list(range(8))  # no iteration lost or repeated


def test_a_cell_job_runs_in_every_process_of_a_two_process_job(tmp_path):
    """What a SLURM job does (CellJob in each task), here under torchrun with 2 CPU processes (gloo):
    every rank walks the same stages, and none reads metrics.json before rank 0 wrote it."""
    import os
    import subprocess
    script = f"""
import os
from pathlib import Path
from reproduce.grid import CellJob
from reproduce.scales import get_scale, pretrain_eval_cell
scale = get_scale("smoke")
cell = pretrain_eval_cell(scale, "c", {{"x": 1}})
cell.stages = cell.stages[:2]  # pretrain -> finetune
out = CellJob(Path({str(tmp_path)!r}), cell)()
import torch.distributed as dist
Path({str(tmp_path)!r}, "rank" + os.environ["RANK"] + ".txt").write_text(repr((out, dist.is_initialized())))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "--no-python", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):  # every process ran both stages, found their results and left the process group
        # (a gloo group alive at exit sometimes aborted a finished process: "terminate called without ...")
        assert (tmp_path / f"rank{rank}.txt").read_text() == "({'pretrain': 'ran', 'finetune': 'ran'}, False)"
    assert json.loads((tmp_path / "c" / "finetune" / "metrics.json").read_text())["finished"]


def test_a_cell_busy_in_another_process_is_deferred_not_waited_for(tmp_path):
    """Two grid processes sharing a tree: a cell locked by the other process is done last, the rest first."""
    import threading

    from mae.engine import rundir
    cells = [two_stage_cell("a"), two_stage_cell("b")]
    lock_dir = tmp_path / "t_smoke" / "a" / "pretrain"
    order: list[str] = []
    held = rundir.run_lock(lock_dir)  # "another process" holds a/pretrain
    held.__enter__()
    t = threading.Timer(1.0, lambda: held.__exit__(None, None, None))
    t.start()
    g = run_grid(cells, table="t", scale="smoke", work_dir=tmp_path, echo=lambda line: order.append(line))
    t.join()
    ran = [Path(c.output_dir).parent.name for c in CALLS]
    assert ran == ["b", "b", "a", "a"]  # b first, then a once the lock was free
    assert any("running in another process; back to it" in line for line in order)
    assert {r.status for r in g.stages.values()} == {"ran"}


def test_stage_provenance_survives_a_collect_from_another_commit_and_device(tmp_path, monkeypatch):
    """Rows carry the provenance each stage wrote when it ran; collecting elsewhere never restamps them."""
    import argparse

    import pandas as pd

    from reproduce import driver, report
    cells = [two_stage_cell(f"d{d}", float(d), decoder_depth=d) for d in (2, 8)]
    run_grid(cells, table="t", scale="cpu", work_dir=tmp_path, echo=quiet)
    ran = {"commit": "aaa1111", "dirty": False, "device": "NVIDIA H100 80GB HBM3", "date": "2026-01-01T00:00:00+00:00",
           "command": "python reproduce/table1.py --scale cpu", "seed": 0}
    for c in cells:
        for s in ("pretrain", "finetune"):
            m = tmp_path / "t_cpu" / c.name / s / "metrics.json"
            m.write_text(json.dumps({**json.loads(m.read_text()), "provenance": ran}))
    # the collecting process: another commit, a CPU login node
    monkeypatch.setattr(report, "pin_code_commit", lambda: "bbb2222")  # the code the collector loaded
    monkeypatch.setattr(report, "detect_device", lambda words=False: "cpu")
    full = run_grid(cells, table="t", scale="cpu", work_dir=tmp_path, collect_only=True, echo=quiet)
    args = argparse.Namespace(out=str(tmp_path / "res"), scale="cpu", dry_run=False)
    driver.write_table("table1a_decoder_depth", grid.cell_rows(full, grid.standard_columns), args, echo=quiet)
    df = pd.read_csv(tmp_path / "res" / "table1a_decoder_depth_cpu.csv")
    measured = df[df["ft_ours"].notna()]
    assert len(measured) == 2 and set(measured["commit"]) == {"aaa1111"}
    assert set(measured["device"]) == {"NVIDIA H100 80GB HBM3"} and set(measured["date"]) == {ran["date"]}
    meta = json.loads((tmp_path / "res" / "table1a_decoder_depth_cpu.meta.json").read_text())
    assert meta["provenance"]["collected_by"]["commit"] == "bbb2222"


def test_a_rows_provenance_includes_the_stages_its_stages_read(tmp_path):
    """Fig. 9's partial fine-tune reads the baseline's pre-training: the row names both commits, as mixed."""
    from reproduce.grid.model import GridResult, StageResult
    from reproduce.grid.plan import check_grid
    shared = Cell("shared", {}, [Stage("pretrain", "stub_protocol", StubConfig())], report=False)
    k = Cell("k", {"k": 1}, [Stage("ft", "stub_protocol", StubConfig(), inputs={"finetune": Ref("pretrain", cell="shared")})])
    check_grid([shared, k])
    g = GridResult("t", "smoke", tmp_path, [shared, k])

    def res(cell: str, stage: str, commit: str) -> StageResult:
        prov = {"commit": commit, "dirty": False, "device": "cpu", "date": f"2026-01-0{len(commit)}", "command": "c"}
        return StageResult(cell, stage, tmp_path, "done", {"finished": True, "provenance": prov})
    g.stages[("shared", "pretrain")] = res("shared", "pretrain", "aaaaaaa")
    g.stages[("k", "ft")] = res("k", "ft", "bbbbbbb")
    rows = grid.cell_rows(g, lambda c, gr: {})
    assert [r["commit"] for r in rows] == ["mixed: bbbbbbb, aaaaaaa"]
