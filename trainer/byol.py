"""BYOL learner (arXiv 2006.07733), a drop-in for byol-pytorch's `BYOL`, assembled from small parts.

    learner = BYOL(net, image_size=64, hidden_layer="avgpool")
    opt = torch.optim.Adam(learner.parameters(), lr=3e-4)
    loss = learner(images)            # float NCHW in [0, 1] (LearnerError naming the range otherwise)
    opt.zero_grad(); loss.backward(); opt.step()
    learner.update_moving_average()

Parts: `Backbone` (hidden-layer capture), `MLP` heads, `View` augmentations, `byol_loss`,
`ema_update`/`tau_at`. What differs from byol-pytorch, on purpose:

- Views are drawn per image (the paper's asymmetric view 1 / view 2) on the images' device.
- Each view runs through the encoders separately (per-view BatchNorm statistics, as the
  reference); the heads take both views as one batch but keep per-view BN statistics.
- Any input channel count C (`channels=`, else the net's first Conv2d, else 3): colour ops only
  for C == 3; `normalize=True` has ImageNet statistics for C = 3 and their channel average for
  C = 1. Any (height, width): `image_size` is one side or a pair. byol-pytorch's mock forward
  feeds 3-channel squares, so it cannot wrap a mono camera's net at all.
- No mock forward: the embedding width is read from one eval-mode forward that leaves every
  BatchNorm statistic and training flag as it was.
- The target is state, not a parameter: it is in `state_dict()` (with the heads, the step and the
  view generator's state) and moves with `.to()`, but `parameters()` / `named_parameters()` list
  only what an optimizer should train, and it has `requires_grad=False`. It starts as a copy of
  the online branch, parameters and buffers (BatchNorm running statistics), at the first training
  forward or update (after DDP has broadcast rank 0's weights); until then `embed`/`encoder_module`
  read the online branch as the target. So weights loaded into `learner.net` after construction
  (pretrained ones) are what the target starts from, statistics included. Weights loaded mid-run:
  call `learner.reset_moving_average()` (byol-pytorch's name), and the target starts again from
  them. Otherwise it changes only through `update_moving_average()` (parameters; its running
  statistics follow its own training-mode forwards, as in the reference).

DDP: build the optimizer from `learner.parameters()`, wrap with `DDP(learner)` (no
`find_unused_parameters` needed: the parameters after the hidden layer, e.g. a ResNet's `fc`, are
registered as ignored) and call `ddp.module.update_moving_average()` after each step; the EMA is
then identical on every rank. The heads' BatchNorm is synced across ranks when the learner is
built inside a process group of more than one rank (`sync_batchnorm=None`), on CPU (gloo) as on GPU.

Mixed precision is the caller's choice: the learner runs under `torch.autocast` (views and loss
stay fp32) and with a channels_last encoder (views are produced in the encoder's memory format).
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from trainer.augment import VIEW1, VIEW2, View, ViewSpec
from trainer.backbone import Backbone, HiddenLayer, eval_mode, first_conv_channels, probe
from trainer.byol_pytorch_state import ByolPytorchLoad, is_byol_pytorch_state, load_mapped
from trainer.heads import MLP, byol_head, distributed_world, simsiam_projector
from trainer.image_checks import ImageSize, LearnerError, check_images, check_range, image_hw
from trainer.loss import byol_loss
from trainer.momentum import check_schedule
from trainer.normalise import IMAGENET_MEAN, IMAGENET_STD, MONO_MEAN, MONO_STD
from trainer.target_network import TargetNetworkModule

Augment = Callable[[Tensor], Tensor]
log = logging.getLogger(__name__)


class Branch(nn.Module):
    """Encoder cut at the hidden layer, then projector: the part the target copies and averages."""

    def __init__(self, backbone: Backbone, projector: MLP) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(projections, embeddings) of the views stacked on dim 0; one encoder pass per view."""
        embeddings = torch.cat([self.backbone(view) for view in views])
        return self.projector(embeddings, len(views)), embeddings


class BYOL(TargetNetworkModule):
    """Bootstrap Your Own Latent around any image network; see the module docstring for the contract.

    The target network (EMA, τ, `update_moving_average`, `reset_moving_average`, `parameters()` without
    the target) is its base, `trainer.target_network.TargetNetworkModule`."""

    def __init__(
        self,
        net: nn.Module,
        image_size: ImageSize,
        hidden_layer: HiddenLayer = -2,
        projection_size: int = 256,
        projection_hidden_size: int = 4096,
        augment_fn: Optional[Augment] = None,
        augment_fn2: Optional[Augment] = None,
        moving_average_decay: float = 0.99,
        use_momentum: bool = True,
        sync_batchnorm: Optional[bool] = None,
        use_simplicial_embeddings: bool = False,
        sem_num_simplices: int = 32,
        sem_simplex_dim: int = 8,
        sem_temperature: float = 0.1,
        *,
        tau_schedule: str = "constant",
        tau_final: float = 1.0,
        tau_warmup_steps: int = 0,
        total_steps: Optional[int] = None,
        normalize: bool = True,
        generator: Optional[torch.Generator] = None,
        views: tuple[ViewSpec, ViewSpec] = (VIEW1, VIEW2),
        channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        check_schedule(tau_schedule, moving_average_decay, tau_final, tau_warmup_steps, total_steps)
        height, width = image_hw(image_size)
        self.image_size: ImageSize = image_size if isinstance(image_size, int) else (height, width)
        if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int) or channels < 1):
            raise LearnerError(f"channels must be a positive int; got {channels!r}")
        self.channels: int = channels if channels is not None else first_conv_channels(net) or 3
        self.use_momentum = use_momentum
        self.tau_schedule = tau_schedule
        self.tau_base = moving_average_decay
        self.tau_final = tau_final
        self.tau_warmup_steps = tau_warmup_steps
        self.total_steps = total_steps
        self.step = 0
        self.mean, self.std = view_statistics(self.channels, normalize)
        self.generator = generator

        backbone = Backbone(net, hidden_layer)
        dim, unused = _probe_width(backbone, (height, width), self.channels, given=channels is not None)
        sync = distributed_world() if sync_batchnorm is None else sync_batchnorm
        projector_spec = byol_head if use_momentum else simsiam_projector
        simplicial = (sem_num_simplices, sem_simplex_dim, sem_temperature) if use_simplicial_embeddings else None
        self.simplicial = simplicial is not None
        projector = MLP(dim, projector_spec(projection_hidden_size, projection_size, simplicial), sync)
        self.online = Branch(backbone, projector)
        self.predictor = MLP(projection_size, byol_head(projection_hidden_size, projection_size), sync)
        self.target: Optional[Branch] = copy.deepcopy(self.online).requires_grad_(False) if use_momentum else None
        self._target_fresh = True
        self._stats: dict[str, Tensor] = {}
        reference = next(net.parameters(), None)
        if reference is not None:
            self.to(reference.device)

        fmt = self._memory_format()
        if augment_fn is None:
            augment_fn = View(self.image_size, views[0], self.mean, self.std, generator, fmt)
            if augment_fn2 is None:
                augment_fn2 = View(self.image_size, views[1], self.mean, self.std, generator, fmt)
        self.augment1: Augment = augment_fn
        self.augment2: Augment = augment_fn2 if augment_fn2 is not None else augment_fn
        if unused:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                self, [f"online.backbone.net.{name}" for name in unused]
            )

    @property
    def net(self) -> nn.Module:
        """The wrapped network (trained in place: save `net.state_dict()` as in byol-pytorch)."""
        return self.online.backbone.net

    @property
    def last_stats(self) -> dict[str, float]:
        """Health of the last training forward: `embedding_std` (~1/sqrt(d) healthy, -> 0 on collapse)."""
        return {name: float(value) for name, value in self._stats.items()}

    def forward(
        self,
        images: Tensor,
        images2: Optional[Tensor] = None,
        return_embedding: bool = False,
        return_projection: bool = True,
        unit_range: bool = False,
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """BYOL loss of a batch (view 2 from `images2` when given), or its online embedding.

        With `return_embedding=True` the images (already normalised, not augmented) go through the
        online encoder in eval mode, any batch size: (projection, embedding), or the embedding
        alone with `return_projection=False`. `unit_range=True`: the caller guarantees values in
        [0, 1] (uint8 frames / 255, as the continual trainer feeds them), so the range check, which
        reads two numbers back from the device (one sync per step on CUDA), is skipped.
        """
        if return_embedding:
            return self._embed_online(images, return_projection)
        _check_batches(images, images2, self.training)
        if self.training and self._target_fresh and self.target is not None:
            self._copy_online_to_target()
        # Our views assume [0, 1]: one range check per input tensor they see (a user augment_fn takes what it takes).
        if not unit_range and (
            isinstance(self.augment1, View) or (images2 is None and isinstance(self.augment2, View))
        ):
            check_range(images)
        if not unit_range and images2 is not None and isinstance(self.augment2, View):
            check_range(images2, "images2")
        fmt = self._memory_format()
        views = [
            _augment(self.augment1, images).contiguous(memory_format=fmt),
            _augment(self.augment2, images if images2 is None else images2).contiguous(memory_format=fmt),
        ]
        projections, _ = self.online(views)
        predictions = self.predictor(projections, len(views))
        with torch.no_grad():
            targets, _ = (self.target if self.target is not None else self.online)(views)
        p1, p2 = predictions.chunk(2)
        z1, z2 = targets.chunk(2)
        if self.training:
            self._stats = {"embedding_std": _embedding_std(projections.detach(), len(views))}
        return byol_loss(p1, p2, z1, z2)

    @torch.no_grad()
    def embed(self, images: Tensor, which: str = "target") -> Tensor:
        """Hidden-layer embedding (N, D) of already-normalised images, in eval mode, without gradients."""
        check_images(images)
        with eval_mode(self._branch(which)) as branch:
            return branch.backbone(images.contiguous(memory_format=self._memory_format()))

    def encoder_module(self, which: str = "target") -> nn.Module:
        """A CPU deep copy in eval mode mapping normalised float NCHW images to (N, D); for ONNX export."""
        encoder = copy.deepcopy(self._branch(which).backbone).cpu().eval()
        return encoder.requires_grad_(False)

    def get_extra_state(self) -> dict[str, Any]:
        """EMA step count and the view generator's state: with the weights, enough to continue identically."""
        generator = self.generator
        return {
            "step": self.step,
            "generator": generator.get_state() if generator is not None else None,
            "generator_device": generator.device.type if generator is not None else None,
            "target_fresh": self._target_fresh,  # not yet copied from online: the saved target is stale
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        generator = self.generator
        if generator is not None and state.get("generator_device") == generator.device.type:
            generator.set_state(state["generator"])  # a CUDA generator's state cannot seed a CPU one
        self._target_fresh = bool(state.get("target_fresh", False)) and self.target is not None

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """As torch's; a byol-pytorch state dict is refused with a pointer to `load_byol_pytorch`."""
        if is_byol_pytorch_state(state_dict):
            raise LearnerError(
                "this state dict is byol-pytorch's (online_encoder.*, online_predictor.* keys): "
                "load it with learner.load_byol_pytorch(state_dict)"
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @torch.no_grad()
    def load_byol_pytorch(self, state_dict: Mapping[str, Tensor], strict: bool = False) -> ByolPytorchLoad:
        """Continue a byol-pytorch 0.9.1 run: load its `BYOL.state_dict()` (net, projectors, target, predictor).

        Build this learner as theirs was built (same net, hidden_layer, projection sizes and, for
        their default projector, `use_simplicial_embeddings=True` with their sem_* sizes); the key
        mapping is in trainer/byol_pytorch_state.py. Their target is loaded when present, else
        copied from their online branch. Returns what was loaded and what was not (their keys
        unused, our tensors left as they were), and logs a warning when anything was not; with
        `strict=True` that is a LearnerError instead, and nothing is loaded. Raises LearnerError
        for a state dict that is not byol-pytorch's or whose tensor shapes differ from ours.
        """
        report, target_loaded = load_mapped(state_dict, self.state_dict(), self.simplicial, strict)
        if self.target is not None and target_loaded:
            self._target_fresh = False
        return report

    def _embed_online(self, images: Tensor, return_projection: bool) -> Union[Tensor, tuple[Tensor, Tensor]]:
        check_images(images)
        with eval_mode(self.online) as online:
            embedding = online.backbone(images.contiguous(memory_format=self._memory_format()))
            return (online.projector(embedding), embedding) if return_projection else embedding

    def _memory_format(self) -> torch.memory_format:
        """channels_last when the encoder's first 4-D weight is, so views need no conversion copy."""
        for param in self.net.parameters():
            if param.ndim == 4:
                channels_last = param.is_contiguous(memory_format=torch.channels_last) and not param.is_contiguous()
                return torch.channels_last if channels_last else torch.contiguous_format
        return torch.contiguous_format


def view_statistics(channels: int, normalize: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel that the views normalise with and an export folds into its graph.

    normalize=False: zeros and ones (views stay in [0, 1]). normalize=True: ImageNet's RGB statistics
    for 3 channels, their channel average (MONO_MEAN / MONO_STD) for 1; other counts have no
    standard statistics, so LearnerError asks for normalize=False.
    """
    if not normalize:
        return (0.0,) * channels, (1.0,) * channels
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        return MONO_MEAN, MONO_STD
    raise LearnerError(
        f"normalize=True has statistics for 1 or 3 channels only, and the net takes {channels}: "
        "pass normalize=False (views stay in [0, 1]) or an augment_fn that normalises"
    )


def _probe_width(backbone: Backbone, hw: tuple[int, int], channels: int, given: bool) -> tuple[int, list[str]]:
    """`trainer.backbone.probe` (the hidden layer's width, the parameters after it); a net that cannot take
    the `channels` the caller `given` is a LearnerError naming what it takes."""
    try:
        return probe(backbone, hw, channels)
    except RuntimeError as exc:
        if not given:
            raise
        first = first_conv_channels(backbone.net)
        reason = (
            f"its first convolution takes {first} input channels; pass channels={first}"
            if first is not None and first != channels
            else (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        )
        raise LearnerError(f"channels={channels} does not fit the net: {reason}") from None


def _check_batches(images: Tensor, images2: Optional[Tensor], training: bool) -> None:
    """LearnerError unless `images` (and `images2`, paired image for image) are NCHW float batches, of at
    least 2 images when `training` (BatchNorm in the heads)."""
    check_images(images)
    if images2 is not None:
        check_images(images2, "images2")
        if images2.shape[0] != images.shape[0]:
            raise LearnerError(
                "images2 must pair image for image with images; "
                f"got batches of {images2.shape[0]} and {images.shape[0]}"
            )
    if training and images.shape[0] < 2:
        raise LearnerError(
            "training needs at least 2 images per batch (BatchNorm in the heads); "
            "use learner.eval() or return_embedding=True for single images"
        )


def _augment(augment: Augment, images: Tensor) -> Tensor:
    """A view of `images`; our View skips its own range check, which `BYOL.forward` made once per tensor."""
    return augment.apply(images) if isinstance(augment, View) else augment(images)


def _embedding_std(projections: Tensor, views: int) -> Tensor:
    """Mean over dims of the batch std of the l2-normalised projections, per view, averaged."""
    normalised = F.normalize(projections.float(), dim=-1)
    return torch.stack([group.std(dim=0).mean() for group in normalised.chunk(views)]).mean()
