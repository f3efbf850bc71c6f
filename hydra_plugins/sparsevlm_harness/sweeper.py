"""`hydra/sweeper: cells`: Hydra's basic grid sweeper, accounted cell by cell (logic in eval.sweep).

Hydra's BasicSweeper launches every combination and returns nothing the command line can see, so a sweep with failed
cells exits 0 and a resubmitted sweep pays a job for each finished cell. This one validates every cell before launching
anything, launches only the cells without a complete record, and ends with a summary and exit status 1 if any cell
failed, was rejected or was lost (2 if a swept value does not compose). Kept import-light: Hydra imports every plugin
module at start-up.
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module before registering it in
# sys.modules, and dataclasses then cannot resolve string annotations.
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035 (OmegaConf structured configs need typing's Optional/Dict)

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf


@dataclass
class CellSweeperConf:
    _target_: str = "hydra_plugins.sparsevlm_harness.sweeper.CellSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045


ConfigStore.instance().store(group="hydra/sweeper", name="cells", node=CellSweeperConf, provider="sparsevlm_harness")


class CellSweeper(BasicSweeper):
    """Grid sweep with up-front validation, skip-before-launch and a final per-cell account."""

    def sweep(self, arguments: list[str]) -> Any:
        """Expand the grid, then eval.sweep.run_sweep; exits non-zero unless every cell ends ok or complete."""
        from eval.sweep import Cell, SweepConfigError, finish, run_sweep

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        combos = self.split_arguments(overrides, None)[0]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        launcher_target = str(self.config.hydra.launcher.get("_target_", ""))
        launched = {"count": 0}

        def compose(cell_overrides: list[str]) -> Any:
            return self.hydra_context.config_loader.load_sweep_config(self.config, list(cell_overrides))

        def launch(batch: list[list[str]]) -> Any:
            returns = self.launcher.launch(batch, initial_job_idx=launched["count"])
            launched["count"] += len(batch)
            return returns

        try:
            report = run_sweep(
                [Cell(list(c)) for c in combos],
                compose,
                launch,
                # Slurm jobs run elsewhere: their device is checked where each cell runs, not on the submitting node
                check_device="slurm" not in launcher_target.lower(),
                out_dir=sweep_dir,
            )
        except SweepConfigError as err:
            print(f"config error: {err}", file=sys.stderr)
            sys.exit(2)
        finish(report)
        return report
