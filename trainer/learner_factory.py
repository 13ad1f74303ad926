"""Learner and optimizer from the typed config: the one place config sections turn into objects."""

from __future__ import annotations

from typing import Union

import torch

from agent.core.config import AugmentConfig, ModelConfig, TrainConfig
from trainer.augment import ViewSpec
from trainer.byol import BYOL
from trainer.encoders import build_encoder
from trainer.lars import LARS


def view_specs(augment_cfg: AugmentConfig) -> tuple[ViewSpec, ViewSpec]:
    """The config's (view 1, view 2) distributions."""
    shared = augment_cfg.model_dump(exclude={"blur_p", "solarize_p"})
    return tuple(  # type: ignore[return-value]
        ViewSpec(**shared, blur_p=blur, solarize_p=solarize)
        for blur, solarize in zip(augment_cfg.blur_p, augment_cfg.solarize_p)
    )


def build_learner(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    device: Union[str, torch.device],
    augment_cfg: AugmentConfig = AugmentConfig(),
    channels: int = 3,
    rank: int = 0,
) -> BYOL:
    """The encoder named by `model_cfg` wrapped in BYOL on `device`, initialised from `train_cfg.seed`,
    for `channels`-channel images (`capture.channels`; 1: mono, colour views off).

    The encoder is channels_last when `train_cfg.channels_last` (faster on CPU and GPU; the views
    follow). The views draw from their own generator seeded with `train_cfg.seed` + `rank`, so a run
    reproduces its views without touching the global RNG, and the ranks of a multi-rank run (which
    all start from the same weights) draw different views.
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # encoder and heads from the seed; the global RNG is left alone
        torch.manual_seed(train_cfg.seed)
        net = build_encoder(model_cfg, channels).to(device)
        if train_cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return BYOL(
            net,
            image_size=model_cfg.image_size,
            hidden_layer=model_cfg.hidden_layer,
            projection_size=model_cfg.projection_size,
            projection_hidden_size=model_cfg.projection_hidden_size,
            moving_average_decay=train_cfg.tau_base,
            tau_schedule=train_cfg.tau_schedule,
            tau_final=train_cfg.tau_final,
            tau_warmup_steps=train_cfg.tau_warmup_steps,
            total_steps=train_cfg.total_steps,
            generator=torch.Generator(device=device).manual_seed(train_cfg.seed + rank),
            views=view_specs(augment_cfg),
            channels=channels,
        )


def build_optimizer(learner: BYOL, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """`train_cfg.optimizer` over the learner's trainable parameters (never the target).

    Weight decay (and LARS adaptation) applies to weight matrices and kernels only; biases and
    normalisation parameters (every tensor with ndim <= 1) are excluded, as in the BYOL paper.
    Adam/AdamW use the fused kernels where the parameters allow them.
    """
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in learner.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    wd = train_cfg.weight_decay
    if train_cfg.optimizer == "lars":
        groups = [
            {"params": decay, "weight_decay": wd},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
        ]
        return LARS(groups, lr=train_cfg.lr)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train_cfg.lr, momentum=0.9)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in decay + no_decay)
    optimizer = torch.optim.AdamW if train_cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer(groups, lr=train_cfg.lr, fused=fused or None)
