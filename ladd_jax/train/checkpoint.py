"""Train checkpoints: orbax CheckpointManager under `workdir/checkpoints`, one step per folder, three items:
"state" (TrainState: student, EMA, heads, both optimisers, step), "data" (the loader's iterator state, so a
resumed run sees the batches an uninterrupted one would) and "meta" (the config and the architectures).

Saves are asynchronous (orbax writes in the background and renames a step folder into place only when it is
complete, so a crash mid-save leaves no half checkpoint); the frozen teacher is never saved.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from ladd_jax.errors import LaddError

ITEMS = ("state", "data", "meta")


class Checkpointer:
    def __init__(self, workdir: str | Path, keep: int | None = None, async_save: bool = True, read_only: bool = False):
        self.directory = Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, read_only=read_only
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, meta: dict, force: bool = False) -> bool:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)
        )
        return self.manager.save(step, args=args, force=force)

    def meta(self, step: int) -> dict:
        """The meta item of `step` alone (the config and the architectures, JSON): what a resume checks before it
        reads the state."""
        return self._restore(step, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """(state placed with the shardings of `abstract_state`, data-iterator state) of `step`."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
        out = self._restore(step, args)
        return out["state"], out["data"]

    def _restore(self, step: int, args: ocp.args.Composite) -> Any:
        """`args`' items of `step`, or one clear error naming the step to resume from instead."""
        steps = self.steps()
        if step not in steps:
            raise LaddError(f"no checkpoint of step {step} in {self.directory}; present: {steps or 'none'}")
        try:
            return self.manager.restore(step, args=args)
        except Exception as e:  # orbax raises many types for a damaged folder; all mean the same to the user
            earlier = [s for s in steps if s < step]
            hint = (
                f"resume from the previous one with --config.restore_step={earlier[-1]}, "
                f"or delete {self.directory / str(step)}"
                if earlier
                else f"delete {self.directory / str(step)} to start afresh"
            )
            # The first sentence: tensorstore goes on with its whole spec over many lines.
            cause = re.split(r"(?<=\.)\s", (str(e).strip().splitlines() or [""])[0])[0][:200]
            raise LaddError(
                f"the checkpoint of step {step} in {self.directory} cannot be restored ({type(e).__name__}: "
                f"{cause}); it is damaged or incomplete: {hint}"
            ) from e

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings a restore should place the arrays with."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def read_meta(workdir: str | Path, step: int | None = None) -> tuple[int, dict]:
    """(step, meta item) of `step` (default: the latest) of a training workdir, without touching the state."""
    if not (Path(workdir) / "checkpoints").is_dir():  # before orbax, which only warns of a missing folder
        raise LaddError(f"{workdir} has no checkpoints/ folder; point --workdir at a `ladd-jax train` workdir")
    checkpoints = Checkpointer(workdir, read_only=True)
    steps = checkpoints.steps()
    if not steps:
        raise LaddError(
            f"{checkpoints.directory} holds no checkpoint yet: a run saves one every config.checkpoint_every steps"
        )
    step = steps[-1] if step is None else step
    return step, checkpoints.meta(step)


def restore_params(workdir: str | Path, step: int, name: str, abstract: Any) -> Any:
    """One param tree of the saved state ("student" or "ema") as host numpy arrays; the rest is not read."""
    import numpy as np

    item = {name: abstract}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    args = ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
    return Checkpointer(workdir, read_only=True)._restore(step, ocp.args.Composite(state=args))["state"][name]
