"""What every member's training shares: optimiser, one-cycle schedule, per-step accounting, atomic per-epoch
checkpoints with resume, and the member's training record."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from detection.files import atomic_torch_save

__all__ = ["MemberRun"]


class MemberRun:
    """One member's optimisation state.  ``module``'s trainable parameters are optimised (AdamW, one-cycle over
    ``epochs * steps_per_epoch`` steps); ``ckpt`` holds the state after each finished epoch; if it exists, the run
    resumes after it (``start_epoch``)."""

    def __init__(self, module: nn.Module, *, settings, steps_per_epoch: int, ckpt: Path, record: dict, log=print,
                 param_groups: list[dict] | None = None, identity: dict | None = None):
        self.module, self.settings, self.ckpt, self.log = module, settings, Path(ckpt), log
        if param_groups is None:  # one group: every trainable parameter at settings.lr
            param_groups = [{"params": [p for p in module.parameters() if p.requires_grad], "lr": settings.lr}]
        self.opt = torch.optim.AdamW(param_groups, lr=settings.lr, weight_decay=settings.weight_decay)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=[g["lr"] for g in param_groups],
                                                         total_steps=settings.epochs * steps_per_epoch,
                                                         pct_start=0.1)
        # identity: what the run starts from (data, warm start); a checkpoint of another run is refused, not resumed
        self.record = {**record, "settings": asdict(settings), "epochs": [], "identity": identity}
        self._name = record.get("name", f"member {record.get('member')}")
        self.start_epoch = 0
        if self.ckpt.exists():
            ck = torch.load(self.ckpt, weights_only=True)
            theirs = ck["record"].get("identity")
            if identity is not None and theirs is not None and theirs != identity:
                diff = sorted(k for k in set(identity) | set(theirs) if identity.get(k) != theirs.get(k))
                raise RuntimeError(f"{self.ckpt}: the checkpoint of another run (it differs in {', '.join(diff)}); "
                                   f"give another out_dir or delete it to start afresh")
            # the same recipe too: a resumed run with another fg_iou, learning rate or epoch count (the schedule's
            # length) would mix two runs in one set of weights
            mine_s, theirs_s = asdict(settings), ck["record"].get("settings", {})
            changed = sorted(k for k in set(mine_s) & set(theirs_s) if mine_s[k] != theirs_s[k])
            if changed:
                raise RuntimeError(f"{self.ckpt}: the checkpoint of a run with other training settings ("
                                   + ", ".join(f"{k} {theirs_s[k]!r} -> {mine_s[k]!r}" for k in changed)
                                   + "); give another out_dir, or delete it to start afresh")
            module.load_state_dict(ck["module"])
            self.opt.load_state_dict(ck["opt"])
            self.sched.load_state_dict(ck["sched"])
            self.record, self.start_epoch = ck["record"], ck["epoch"] + 1
            log(f"{self._name}: resumed from {self.ckpt} after epoch {self.start_epoch}")
        self._t0 = time.perf_counter()
        self._seconds0 = self.record.get("seconds", 0.0)  # training time of the epochs done before a resume
        self._tot = {"loss": 0.0, "correct": 0, "n": 0}

    def step(self, logits: Tensor, targets: Tensor) -> None:
        """Cross-entropy of one mini-batch (this rank's share), backward, optimiser and schedule step."""
        self.step_loss(F.cross_entropy(logits, targets), logits, targets)

    def step_loss(self, loss: Tensor, logits: Tensor, targets: Tensor) -> None:
        """Backward of ``loss``, optimiser and schedule step; ``logits``/``targets`` (every RoI the loss saw) feed
        the epoch's loss and RoI-accuracy record."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self._tot["loss"] += float(loss.detach()) * len(targets)
        self._tot["correct"] += int((logits.detach().argmax(1) == targets).sum())
        self._tot["n"] += len(targets)

    def end_epoch(self, epoch: int, *, save: bool = True) -> dict:
        """Record and log the epoch's loss and RoI accuracy; checkpoint (atomically) when ``save``."""
        tot = self._tot
        ep = {"epoch": epoch + 1, "loss": tot["loss"] / max(tot["n"], 1),
              "roi_accuracy": tot["correct"] / max(tot["n"], 1)}
        self._tot = {"loss": 0.0, "correct": 0, "n": 0}
        self.record["epochs"].append(ep)
        self.record["seconds"] = self._seconds0 + time.perf_counter() - self._t0  # kept by the checkpoint too
        if save:  # before the log line: an epoch that was reported is never lost
            atomic_torch_save({"module": self.module.state_dict(), "opt": self.opt.state_dict(),
                               "sched": self.sched.state_dict(), "record": self.record, "epoch": epoch}, self.ckpt)
        self.log(f"{self._name} epoch {epoch + 1}: loss {ep['loss']:.3f}, "
                 f"RoI accuracy {ep['roi_accuracy']:.3f}" + (f" (checkpoint {self.ckpt})" if save else ""))
        return ep

    def finish(self) -> dict:
        """The member's record; ``seconds`` counts training time over every run that contributed epochs (set at
        each epoch's end, so the checkpoint carries it)."""
        return self.record
