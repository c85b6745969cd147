"""Self-distillation of a DINOv3 ViT on a lab's own images: student, EMA teacher, multi-crop, checkpoints.

The recipe is DINO's (Caron et al., ICCV 2021) with iBOT's masked-patch loss (Zhou et al., ICLR 2022), the KoLeo
regulariser of DINOv2 (Oquab et al., TMLR 2024) and, as an option, DINOv3's Gram anchoring (Siméoni et al.,
arXiv:2508.10104, 2025), scaled down to what a lab machine runs (see :mod:`.losses` for each term):

* the **student** is the backbone (all of it, its last ``k`` blocks, or LoRA adapters — Hu et al., "LoRA:
  Low-Rank Adaptation of Large Language Models", ICLR 2022, through ``peft``) plus a DINO head on the class
  token and an iBOT head on patch tokens;
* the **teacher** is an exponential moving average of the student (momentum from ``momentum`` to 1 on a cosine
  schedule) and sees the two global crops unmasked; its outputs are centred and sharpened;
* the student sees both global crops with a random fraction of their patches replaced by the mask token, and
  the local crops.

:class:`Adapter` owns the state; :meth:`Adapter.run` trains with checkpoints every ``checkpoint_every`` steps
and :meth:`Adapter.resume` continues from the newest one **exactly**: a checkpoint holds the student, teacher,
Gram teacher, optimizer, centres, loss history and the torch/NumPy/Python RNG states, and every random draw of a
step (crops, augmentations, masks) comes from generators seeded by ``(seed, step)``, so an interrupted and
resumed run ends with the same weights, bit for bit, as an uninterrupted one on the same machine.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .crops import MultiCropSampler, Views
from .losses import (
    DINOHead,
    centered_targets,
    dino_loss,
    gram_loss,
    ibot_loss,
    koleo_loss,
    sinkhorn_targets,
    update_center,
)

__all__ = ["CENTERINGS", "TRAIN_MODES", "AdaptConfig", "Adapter", "latest_checkpoint"]

TRAIN_MODES = ("full", "last-k", "lora")
#: How the teacher's outputs become targets: Sinkhorn-Knopp (DINOv2/v3's choice) or DINO's running centre.
CENTERINGS = ("center", "sinkhorn")
CHECKPOINT_PREFIX = "step-"
_KEEP_CHECKPOINTS = 2


@dataclass(frozen=True)
class AdaptConfig:
    """Everything that determines an adaptation run (recorded in the provenance file).

    ``train`` is ``"full"`` (every backbone weight), ``"last-k"`` (the last ``last_k`` blocks and the final
    norm) or ``"lora"`` (rank-``lora_rank`` adapters on the attention projections; the base stays frozen).
    Schedules: learning rate linear warm-up over ``warmup`` of the steps then cosine to ``min_lr``; teacher
    momentum cosine from ``momentum`` to 1; teacher temperature linear from ``teacher_temp[0]`` to
    ``teacher_temp[1]`` over ``teacher_temp_warmup`` of the steps. ``centering`` is ``"sinkhorn"``
    (:func:`~.losses.sinkhorn_targets`, DINOv2/v3; the default since session 8: over the same 761 CPU steps on
    ssTEM the running centre collapsed and left the features worse than random init, Sinkhorn-Knopp did not)
    or ``"center"`` (DINO's running centre, ``center_momentum``).
    """

    steps: int = 1000
    batch_size: int = 8
    global_size: int = 224
    local_size: int = 96
    n_local: int = 6
    region: int | None = None
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    train: str = "full"
    last_k: int = 2
    lora_rank: int = 8
    lora_alpha: int = 16
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup: float = 0.1
    weight_decay: float = 0.04
    clip_grad: float = 3.0
    momentum: float = 0.996
    out_dim: int = 4096
    head_hidden: int = 1024
    head_bottleneck: int = 128
    student_temp: float = 0.1
    teacher_temp: tuple[float, float] = (0.04, 0.04)
    teacher_temp_warmup: float = 0.3
    center_momentum: float = 0.9
    centering: str = "sinkhorn"
    ibot_weight: float = 1.0
    mask_prob: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    koleo_weight: float = 0.1
    gram_weight: float = 0.0
    gram_refresh: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.train not in TRAIN_MODES:
            raise ValueError(f"train must be one of {', '.join(TRAIN_MODES)}, got {self.train!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be ≥ 1 (got {self.steps}, {self.batch_size})")
        if self.train == "last-k" and self.last_k < 1:
            raise ValueError(f"last_k must be ≥ 1, got {self.last_k}")
        if self.centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {', '.join(CENTERINGS)}, got {self.centering!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.gram_weight < 0 or self.koleo_weight < 0 or self.ibot_weight < 0:
            raise ValueError("loss weights must be ≥ 0")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdaptConfig:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"adapt config: unknown key(s) {', '.join(sorted(unknown))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class _Student(nn.Module):
    def __init__(self, backbone: nn.Module, width: int, cfg: AdaptConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = DINOHead(width, cfg.out_dim, cfg.head_hidden, cfg.head_bottleneck)
        self.ibot_head = DINOHead(width, cfg.out_dim, cfg.head_hidden, cfg.head_bottleneck)


def _base_model(backbone: nn.Module) -> nn.Module:
    """The transformers model inside a (possibly peft-wrapped) backbone."""
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


def _plain_copy(backbone: nn.Module) -> nn.Module:
    """A copy of the backbone as a plain transformers model (LoRA adapters merged into the copy)."""
    c = copy.deepcopy(backbone)
    return c.merge_and_unload() if hasattr(c, "merge_and_unload") else c


def _prepare_trainable(model: nn.Module, cfg: AdaptConfig) -> nn.Module:
    """Freeze what ``cfg.train`` keeps fixed; wrap with LoRA adapters for ``"lora"``."""
    if cfg.train == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        model = get_peft_model(model, lora)
    elif cfg.train == "last-k":
        blocks = list(model.model.layer)  # DINOv3ViTModel.model is the encoder
        n = len(blocks)
        if cfg.last_k > n:
            raise ValueError(f"last_k={cfg.last_k} but the backbone has only {n} blocks")
        for p in model.parameters():
            p.requires_grad_(False)
        for blk in blocks[n - cfg.last_k:]:
            for p in blk.parameters():
                p.requires_grad_(True)
        for p in model.norm.parameters():
            p.requires_grad_(True)
    _base_model(model).embeddings.mask_token.requires_grad_(True)  # iBOT's mask token (unused at inference)
    return model


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The newest ``step-NNNNNNNN.pt`` in ``folder`` (None when there is none)."""
    p = Path(folder)
    if not p.is_dir():
        return None
    found = sorted(f for f in p.glob(f"{CHECKPOINT_PREFIX}*.pt") if f.stem[len(CHECKPOINT_PREFIX):].isdigit())
    return found[-1] if found else None


class Adapter:
    """Student, EMA teacher, optimizer and schedules of one adaptation run.

    Parameters
    ----------
    model : transformers.DINOv3ViTModel
        The backbone network to adapt (its weights are the start; it is modified in place).
    sampler : MultiCropSampler
        Makes each step's crops.
    config : AdaptConfig
    mean, std : sequence of 3 floats
        The backbone's input normalisation (ImageNet statistics for LVD models).
    device : str
        ``"cpu"`` or ``"cuda"``; on CUDA the forward passes run under bfloat16 autocast.
    """

    def __init__(self, model: nn.Module, sampler: MultiCropSampler, config: AdaptConfig,
                 mean: Any = (0.485, 0.456, 0.406), std: Any = (0.229, 0.224, 0.225), device: str = "cpu") -> None:
        self.cfg, self.sampler, self.device = config, sampler, torch.device(device)
        mc = model.config
        if getattr(mc, "model_type", "") != "dinov3_vit":
            raise ValueError(f"adapt trains DINOv3 ViTs; got a {getattr(mc, 'model_type', type(model).__name__)} "
                             "(ConvNeXt backbones have no patch tokens to mask)")
        self.patch = int(mc.patch_size)
        for size in (sampler.global_size, sampler.local_size):
            if size % self.patch:
                raise ValueError(f"crop size {size} is not a multiple of the patch size {self.patch}")
        self.n_prefix = 1 + int(mc.num_register_tokens)
        width = int(mc.hidden_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # heads and LoRA init: fixed by the seed
            model = _prepare_trainable(model.float().train(), config)
            self.student = _Student(model, width, config).to(self.device)
        # The teacher and the Gram teacher run in eval mode: no drop-path and no RoPE coordinate augmentation
        # (DINOv3's pos_embed_shift/jitter/rescale, which the student keeps in training mode).
        self.teacher = copy.deepcopy(self.student).requires_grad_(False).eval()
        self.gram_teacher = (_plain_copy(self.teacher.backbone).requires_grad_(False).eval()
                             if config.gram_weight > 0 else None)
        self._pairs = [(s, t) for s, t in zip(self.student.parameters(), self.teacher.parameters(), strict=True)
                       if s.requires_grad]
        decay = [p for n, p in self.student.named_parameters() if p.requires_grad and p.ndim > 1
                 and "mask_token" not in n and "cls_token" not in n and "register" not in n]
        no_decay = [p for n, p in self.student.named_parameters() if p.requires_grad and not any(p is q for q in decay)]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
        self.center = torch.zeros(1, config.out_dim, device=self.device)
        self.center_patch = torch.zeros(1, config.out_dim, device=self.device)
        self._mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(list(std), dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0

    # ------------------------------------------------------------------------------------ schedules
    def lr_at(self, step: int) -> float:
        c = self.cfg
        warm = max(1, round(c.warmup * c.steps))
        if step < warm:
            return c.lr * (step + 1) / warm
        t = (step - warm) / max(1, c.steps - warm)
        return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))

    def momentum_at(self, step: int) -> float:
        """Teacher EMA momentum: cosine from ``momentum`` at step 0 to 1 at the last step (DINO)."""
        m0 = self.cfg.momentum
        return 1.0 - (1.0 - m0) * (math.cos(math.pi * step / max(1, self.cfg.steps)) + 1) / 2

    def teacher_temp_at(self, step: int) -> float:
        t0, t1 = self.cfg.teacher_temp
        warm = self.cfg.teacher_temp_warmup * self.cfg.steps
        return t1 if warm <= 0 or step >= warm else t0 + (t1 - t0) * step / warm

    # -------------------------------------------------------------------------------------- forward
    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).expand(-1, 3, -1, -1)
        return (x - self._mean) / self._std

    def _tokens(self, backbone: nn.Module, x: torch.Tensor, masks: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        out = backbone(pixel_values=x, bool_masked_pos=masks).last_hidden_state
        return out[:, 0], out[:, self.n_prefix:]

    def masks(self, step: int, n: int, n_patches: int) -> torch.Tensor:
        """iBOT masks of the student's global crops (n, n_patches): each crop is masked with probability
        ``mask_prob``, then a random fraction U(``mask_ratio``) of its patches (iBOT's random masking)."""
        g = torch.Generator().manual_seed(int(np.random.default_rng([self.cfg.seed, step, 1]).integers(2**62)))
        lo, hi = self.cfg.mask_ratio
        ratio = lo + (hi - lo) * torch.rand(n, generator=g)
        ratio = torch.where(torch.rand(n, generator=g) < self.cfg.mask_prob, ratio, torch.zeros(n))
        rank = torch.rand(n, n_patches, generator=g).argsort(dim=1).argsort(dim=1)
        return (rank < (ratio * n_patches).round().long()[:, None]).to(self.device)

    def losses(self, views: Views, step: int) -> dict[str, torch.Tensor]:
        """The loss terms of one step's views (teacher outputs under ``no_grad``); also returns the teacher
        logits the centres are updated with (``_t_cls``, ``_t_patch``)."""
        c = self.cfg
        g, loc = self._input(views.globals_), self._input(views.locals_)
        b = g.shape[0] // 2
        n_patches = (g.shape[-2] // self.patch) * (g.shape[-1] // self.patch)
        masks = self.masks(step, g.shape[0], n_patches)
        temp = self.teacher_temp_at(step)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            with torch.no_grad():
                t_cls, t_patch = self._tokens(self.teacher.backbone, g)
                t_logits = self.teacher.dino_head(t_cls)
                t_plogits = self.teacher.ibot_head(t_patch[masks])
                g_patch = None
                if self.gram_teacher is not None:
                    g_patch = self._tokens(self.gram_teacher, g)[1]
            s_cls, s_patch = self._tokens(self.student.backbone, g, masks)
            cls_all = s_cls
            if loc.shape[0]:
                cls_all = torch.cat([s_cls, self._tokens(self.student.backbone, loc)[0]])
            s_logits = self.student.dino_head(cls_all)
            s_plogits = self.student.ibot_head(s_patch[masks])
        if c.centering == "sinkhorn":
            t_probs, t_pprobs = sinkhorn_targets(t_logits, temp), sinkhorn_targets(t_plogits, temp)
        else:
            t_probs = centered_targets(t_logits, self.center, temp)
            t_pprobs = centered_targets(t_plogits, self.center_patch, temp)
        out = {"dino": dino_loss(list(s_logits.split(b)), list(t_probs.split(b)), c.student_temp)}
        out["ibot"] = ibot_loss(s_plogits, t_pprobs, masks, c.student_temp)
        out["koleo"] = sum(koleo_loss(x) for x in s_cls.split(b)) / 2
        out["gram"] = gram_loss(s_patch, g_patch) if g_patch is not None else s_cls.new_zeros((), dtype=torch.float32)
        out["loss"] = (out["dino"] + c.ibot_weight * out["ibot"] + c.koleo_weight * out["koleo"]
                       + c.gram_weight * out["gram"])
        out["_t_cls"], out["_t_patch"] = t_logits.detach(), t_plogits.detach()
        return out

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``θ_t ← m θ_t + (1 − m) θ_s`` for every trained parameter (DINO, Sec. 3.1)."""
        t = [p for _, p in self._pairs]
        s = [p.detach() for p, _ in self._pairs]
        torch._foreach_mul_(t, momentum)
        torch._foreach_add_(t, s, alpha=1.0 - momentum)

    def train_step(self, views: Views | None = None) -> dict[str, float]:
        """One optimisation step on ``views`` (default: the sampler's views of the current step)."""
        step = self.step
        views = views if views is not None else self.sampler.sample(step)
        # Whatever draws from the global torch RNG inside the model (RoPE augmentation, drop-path) is seeded by
        # (seed, step) too, so a resumed step is the same step.
        torch.manual_seed(int(np.random.default_rng([self.cfg.seed, step, 2]).integers(2**62)))
        t0 = time.perf_counter()
        for grp in self.optimizer.param_groups:
            grp["lr"] = self.lr_at(step)
        out = self.losses(views, step)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        params = [p for grp in self.optimizer.param_groups for p in grp["params"]]
        if self.cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad)
        self.optimizer.step()
        m = self.momentum_at(step)
        self.update_teacher(m)
        update_center(self.center, out["_t_cls"], self.cfg.center_momentum)
        if out["_t_patch"].shape[0]:
            update_center(self.center_patch, out["_t_patch"], self.cfg.center_momentum)
        if self.gram_teacher is not None and self.cfg.gram_refresh > 0 and (step + 1) % self.cfg.gram_refresh == 0:
            self.gram_teacher.load_state_dict(_plain_copy(self.teacher.backbone).state_dict())
        dt = time.perf_counter() - t0
        self.seconds += dt
        rec = {"step": step + 1, **{k: float(v.detach()) for k, v in out.items() if not k.startswith("_")},
               "lr": self.lr_at(step), "momentum": m, "teacher_temp": self.teacher_temp_at(step),
               "images_per_s": views.globals_.shape[0] / 2 / dt if dt > 0 else 0.0}
        self.history.append(rec)
        self.step += 1
        return rec

    # --------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "config": self.cfg.to_dict(), "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "gram_teacher": None if self.gram_teacher is None else self.gram_teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(), "center": self.center, "center_patch": self.center_patch,
            "history": self.history, "seconds": self.seconds,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "numpy": np.random.get_state(),  # noqa: NPY002 (the legacy global RNG that libraries use)
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        mine, theirs = self.cfg.to_dict(), dict(state["config"])
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            k = diff[0]
            raise ValueError(f"the checkpoint was made with {k}={theirs.get(k)!r} but this run has {k}={mine.get(k)!r};"
                             " resume with the same settings or start a new checkpoint folder")
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        if self.gram_teacher is not None and state.get("gram_teacher") is not None:
            self.gram_teacher.load_state_dict(state["gram_teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.center.copy_(state["center"])
        self.center_patch.copy_(state["center_patch"])
        self.step, self.history, self.seconds = int(state["step"]), list(state["history"]), float(state["seconds"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])  # noqa: NPY002
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def save_checkpoint(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``step-NNNNNNNN.pt`` into ``folder`` (atomically: a temporary file renamed into place) and
        keep the newest two."""
        d = Path(folder)
        d.mkdir(parents=True, exist_ok=True)
        target = d / f"{CHECKPOINT_PREFIX}{self.step:08d}.pt"
        tmp = d / f".{target.name}.tmp-{os.getpid()}"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, target)
        old = sorted(f for f in d.glob(f"{CHECKPOINT_PREFIX}*.pt") if f.stem[len(CHECKPOINT_PREFIX):].isdigit())
        for f in old[:-_KEEP_CHECKPOINTS]:
            f.unlink(missing_ok=True)
        return target

    def resume(self, folder_or_file: str | os.PathLike[str]) -> Path | None:
        """Continue from the newest checkpoint in a folder (or from a checkpoint file); None when none."""
        p = Path(folder_or_file)
        f = p if p.is_file() else latest_checkpoint(p)
        if f is None:
            return None
        try:
            state = torch.load(f, map_location=self.device, weights_only=False)
        except Exception as e:
            raise ValueError(f"cannot read checkpoint {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                             "; delete it to start over") from None
        self.load_state_dict(state)
        return f

    # ----------------------------------------------------------------------------------------- run
    def run(self, checkpoint_dir: str | os.PathLike[str] | None = None, checkpoint_every: int = 100,
            progress: Callable[[dict[str, float]], None] | None = None, max_seconds: float | None = None,
            stop_after: int | None = None) -> list[dict[str, float]]:
        """Train from the current step to ``config.steps``.

        Parameters
        ----------
        checkpoint_dir : path, optional
            Where to write a checkpoint every ``checkpoint_every`` steps and at the end.
        progress : callable, optional
            Called with each step's record (losses, lr, images/s).
        max_seconds : float, optional
            Stop (after a checkpoint) once this much training time has passed: a time budget. The schedules
            still run to ``config.steps``; the provenance records how many steps were done.
        stop_after : int, optional
            Stop after this step (an interruption, for tests and for splitting long runs).
        """
        t_start = time.perf_counter()
        while self.step < self.cfg.steps:
            rec = self.train_step()
            if not math.isfinite(rec["loss"]):
                raise FloatingPointError(f"the loss became {rec['loss']} at step {rec['step']}; lower --lr "
                                         "or raise --teacher-temp warm-up")
            if progress is not None:
                progress(rec)
            done = self.step >= self.cfg.steps
            timed_out = max_seconds is not None and time.perf_counter() - t_start >= max_seconds
            stop = stop_after is not None and self.step >= stop_after
            if checkpoint_dir is not None and (done or timed_out or stop or
                                               (checkpoint_every > 0 and self.step % checkpoint_every == 0)):
                self.save_checkpoint(checkpoint_dir)
            if timed_out or stop:
                break
        return self.history

    def teacher_model(self) -> nn.Module:
        """The teacher's backbone (a transformers model, or a peft model for LoRA), the one exported."""
        return self.teacher.backbone
