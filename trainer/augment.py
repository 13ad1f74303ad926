"""Per-image random views, batched on the images' device: BYOL's asymmetric view 1 / view 2.

One `View` class configured by a `ViewSpec`; `VIEW1` and `VIEW2` are the paper's two settings
(blur p 1.0 / 0.1, solarize p 0 / 0.2, everything else shared). Every random parameter is drawn
per image, all from one `torch.rand` call on the images' device (from `generator` when given, so
seeded runs reproduce their views), and the batch goes through a few batched ops, with no Python
loop over images:

1. random resized crop (scale 0.08-1, ratio 3/4-4/3, first of 10 tries that fits, else the
   centre crop, as torchvision) and horizontal flip: one `grid_sample` with per-image boxes;
2. colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, p 0.8, in a random
   order per image) and grayscale (p 0.2): brightness, contrast, saturation and grayscale are
   affine maps of RGB, so the ops on each side of the (exact, HSV) hue rotation compose into one
   3x4 matrix per image, applied to the whole batch by one batched matmul;
3. Gaussian blur (sigma in [0.1, 2] per image, kernel ~10 % of the side, reflect padding):
   two depthwise convs with per-image kernels; the ImageNet normalisation rides along as the
   second conv's scale and bias, so it costs nothing;
4. solarize (threshold 0.5), applied in normalised space.

Any channel count C (set by the length of `mean` / `std`): the colour stage (2) exists only for
RGB, so for C != 3 (a mono camera, depth, RGB-D) it is skipped whatever the spec says; crop, flip,
blur and solarize act on each channel alike. The output may be non-square: `image_size` is one
side or a (height, width) pair; the blur kernel follows the shorter side.

One deliberate approximation: the jitter clamps to [0, 1] after each of its two matmuls rather
than after every op, which differs only for pixels that one op pushes out of range and a later op
of the same matmul would bring back. Crops are
resampled bilinearly without antialiasing, fine for crops no smaller than the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.image_checks import ImageSize, LearnerError, check_images, check_range, image_hw
from trainer.normalise import IMAGENET_MEAN, IMAGENET_STD

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_TRIES = 10


@dataclass(frozen=True)
class ViewSpec:
    """Distribution of one view; probabilities are per image."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5


VIEW1 = ViewSpec(blur_p=1.0, solarize_p=0.0)
VIEW2 = ViewSpec(blur_p=0.1, solarize_p=0.2)

# Columns of the per-image uniform draws, one block per random decision.
_SCALE = slice(0, _TRIES)
_RATIO = slice(_TRIES, 2 * _TRIES)
_POS = slice(2 * _TRIES, 2 * _TRIES + 2)
_FLIP, _JITTER, _GRAY, _BLUR, _SIGMA, _SOLARIZE = range(2 * _TRIES + 2, 2 * _TRIES + 8)
_FACTORS = slice(2 * _TRIES + 8, 2 * _TRIES + 12)  # brightness, contrast, saturation, hue
_ORDER = slice(2 * _TRIES + 12, 2 * _TRIES + 16)
_COLUMNS = 2 * _TRIES + 16


def blur_kernel_size(image_size: int, fraction: float = 0.1) -> int:
    """Odd kernel size closest to `fraction` of the side (23 at 224 px, as BYOL), at least 3."""
    size = int(fraction * image_size)
    return max(3, size + 1 - size % 2)


def crop_boxes(u_scale: Tensor, u_ratio: Tensor, u_pos: Tensor, height: int, width: int, spec: ViewSpec) -> Tensor:
    """Per-image crop boxes (N, 4) = (x0, y0, w, h) in pixels, as torchvision's RandomResizedCrop.

    Each row of u_scale / u_ratio (N, tries) holds one image's tries; the first box that fits is
    kept, else the centre crop of the allowed aspect ratio. u_pos (N, 2) places the box.
    """
    area = height * width
    scale = spec.crop_scale[0] + (spec.crop_scale[1] - spec.crop_scale[0]) * u_scale
    log_lo, log_hi = math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w = torch.sqrt(area * scale * ratio)
    h = torch.sqrt(area * scale / ratio)
    fits = (w <= width) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    in_ratio = width / height
    fallback_w: float
    fallback_h: float
    if in_ratio < spec.crop_ratio[0]:
        fallback_w, fallback_h = width, width / spec.crop_ratio[0]
    elif in_ratio > spec.crop_ratio[1]:
        fallback_w, fallback_h = height * spec.crop_ratio[1], height
    else:
        fallback_w, fallback_h = width, height
    w = torch.where(found, w.gather(1, first).squeeze(1), fallback_w)
    h = torch.where(found, h.gather(1, first).squeeze(1), fallback_h)
    position = torch.where(found[:, None], u_pos, 0.5)
    return torch.stack((position[:, 0] * (width - w), position[:, 1] * (height - h), w, h), dim=1)


def box_grid(boxes: Tensor, flip: Tensor, height: int, width: int, size: ImageSize) -> Tensor:
    """grid_sample grid (N, out_h, out_w, 2) resampling each box to `size` (one side or (out_h, out_w)),
    mirrored where `flip`."""
    n = boxes.shape[0]
    out_h, out_w = image_hw(size)
    x0, y0, w, h = boxes.unbind(dim=1)
    # Normalised coordinates (align_corners=False): box [x0, x0 + w] -> centre and half-extent.
    centre_x = (2 * x0 + w) / width - 1
    centre_y = (2 * y0 + h) / height - 1
    half_x = torch.where(flip, -w / width, w / width)
    half_y = h / height
    steps_x = (torch.arange(out_w, device=boxes.device, dtype=boxes.dtype) + 0.5) * (2 / out_w) - 1
    steps_y = (torch.arange(out_h, device=boxes.device, dtype=boxes.dtype) + 0.5) * (2 / out_h) - 1
    grid_x = (centre_x[:, None] + half_x[:, None] * steps_x)[:, None, :].expand(n, out_h, out_w)
    grid_y = (centre_y[:, None] + half_y[:, None] * steps_y)[:, :, None].expand(n, out_h, out_w)
    return torch.stack((grid_x, grid_y), dim=-1)


def jitter_affine(
    factors: Tensor, order: Tensor, mean_rgb: Tensor, stages: Tensor, luma: Optional[Tensor] = None
) -> tuple[Tensor, Tensor]:
    """Per-image affine map (A (N,3,3), a (N,3)) composing the brightness, contrast and saturation ops
    that `order` (N, 4) puts at the `stages` (N, 4) marked True, as torchvision's adjust_* do.

    Each of these ops is affine in RGB (contrast blends towards the image's mean gray, which is
    tracked through the composition from `mean_rgb` (N, 3)). Hue (op 3) is not affine and is skipped.
    """
    n, device, dtype = factors.shape[0], factors.device, factors.dtype
    eye = torch.eye(3, device=device, dtype=dtype).expand(n, 3, 3)
    gray_row = _luma(luma, device, dtype)
    brightness, contrast, saturation, _ = factors.unbind(dim=1)
    ops = torch.stack(
        (
            brightness[:, None, None] * eye,
            contrast[:, None, None] * eye,
            saturation[:, None, None] * eye + (1 - saturation)[:, None, None] * gray_row.expand(3, 3),
            eye,
        ),
        dim=1,
    )
    rows = torch.arange(n, device=device)
    matrix, offset = eye, torch.zeros(n, 3, device=device, dtype=dtype)
    for stage in range(order.shape[1]):
        op = torch.where(stages[:, stage], order[:, stage], 3)
        current_gray = ((matrix @ mean_rgb[:, :, None]).squeeze(2) + offset) @ gray_row
        shift = torch.where(op == 1, (1 - contrast) * current_gray, 0.0)[:, None]
        step = ops[rows, op]
        matrix = step @ matrix
        offset = (step @ offset[:, :, None]).squeeze(2) + shift
    return matrix, offset


def shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate each image's HSV hue by `shift` (N,) turns, exactly as torchvision's adjust_hue, batched.

    Value and chroma (max and max - min) stay; each channel is re-read off the hue hexagon at the
    shifted hue. Written for a CPU's eager kernels: no `max` with indices and no `remainder` (each
    slower than the rest together), and no broadcasting over channels (one plane at a time).
    """
    r, g, b = x.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    inverse = torch.where(chroma > 0, chroma, 1.0).reciprocal_()
    red_max = r == maxc
    green_max = (g == maxc) & ~red_max  # ties resolved as torchvision: red, then green, then blue
    hue = torch.where(red_max, g - b, torch.where(green_max, (b - r).add_(2 * chroma), (r - g).add_(4 * chroma)))
    hue.mul_(inverse).add_((6 * shift + 12)[:, None, None])  # sixths of a turn, kept positive so frac() wraps
    out = torch.empty_like(x)
    for channel, sector in enumerate((5.0, 3.0, 1.0)):
        k = torch.frac((hue + sector) * (1 / 6)).mul_(6)
        f = torch.minimum(k, 4 - k).clamp_(0, 1)
        torch.addcmul(maxc, chroma, f, value=-1, out=out[:, channel])
    return out


def colour(
    x: Tensor, factors: Tensor, order: Tensor, jitter: Tensor, gray: Tensor, luma: Optional[Tensor] = None
) -> Tensor:
    """Colour jitter in each image's own op order (where `jitter`), then grayscale (where `gray`).

    factors (N, 4): brightness, contrast, saturation factors and hue shift in turns. The affine ops
    before the hue op are applied as one batched matmul, then the hue rotation, then the affine ops
    after it with the grayscale folded in: two matmuls and one hue pass per batch. Values are
    clamped to [0, 1] after each of the two matmuls.
    """
    n, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    hue_stage = (order == 3).to(torch.uint8).argmax(dim=1, keepdim=True)
    stage = torch.arange(order.shape[1], device=x.device)[None, :]
    before = (stage < hue_stage) & jitter[:, None]
    after = (stage > hue_stage) & jitter[:, None]
    luma = _luma(luma, x.device, x.dtype)
    matrix, offset = jitter_affine(factors, order, x.mean(dim=(2, 3)), before, luma)
    x = torch.baddbmm(offset[:, :, None], matrix, x.reshape(n, 3, -1)).clamp_(0, 1).reshape(n, 3, height, width)
    x = shift_hue(x, torch.where(jitter, factors[:, 3], 0.0))
    matrix, offset = jitter_affine(factors, order, x.mean(dim=(2, 3)), after, luma)
    to_gray = luma.expand(3, 3)
    matrix = torch.where(gray[:, None, None], to_gray @ matrix, matrix)
    offset = torch.where(gray[:, None], offset @ to_gray.T, offset)
    return torch.baddbmm(offset[:, :, None], matrix, x.reshape(n, 3, -1)).clamp_(0, 1).reshape(n, 3, height, width)


def _luma(luma: Optional[Tensor], device: torch.device, dtype: torch.dtype) -> Tensor:
    """The grayscale weights on `device`; Views pass a cached copy (a host-to-device copy per call would sync CUDA)."""
    return luma if luma is not None else torch.tensor(GRAY, device=device, dtype=dtype)


def gaussian_kernels(sigma: Tensor, blur: Tensor, kernel_size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels (N, k) of per-image `sigma`; a delta where `blur` is False."""
    offsets = torch.arange(kernel_size, device=sigma.device, dtype=sigma.dtype) - kernel_size // 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    delta = (offsets == 0).to(sigma.dtype)
    return torch.where(blur[:, None], kernel, delta)


def _spread(u: Tensor, spread: float) -> Tensor:
    """torchvision's jitter factor: uniform in [max(0, 1 - spread), 1 + spread]."""
    low = max(0.0, 1 - spread)
    return low + (1 + spread - low) * u


class View:
    """One augmentation pipeline: a callable mapping float images in [0, 1] (N, C, H, W) to views (N, C, h, w).

    C is `len(mean)` (3: RGB with colour ops; any other count skips them), (h, w) is `image_size`
    (one side, or a (height, width) pair). Views are normalised with `mean`/`std` (pass zeros and
    ones for raw [0, 1] views) and returned in `memory_format` (channels_last for a channels_last
    encoder: no extra copy). Always computed in fp32, outside any autocast region. Raises
    LearnerError for images of another shape, dtype or channel count, or with values outside [0, 1].
    """

    def __init__(
        self,
        image_size: ImageSize,
        spec: ViewSpec = VIEW1,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        generator: Optional[torch.Generator] = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        self.height, self.width = image_hw(image_size)
        self.image_size = image_size
        self.spec = spec
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if not self.mean or len(self.mean) != len(self.std):
            raise LearnerError(f"mean and std need one value per channel; got {len(self.mean)} and {len(self.std)}")
        self.channels = len(self.mean)
        self.generator = generator
        self.memory_format = memory_format
        side = min(self.height, self.width)
        self.kernel_size = blur_kernel_size(side, spec.blur_kernel_fraction) if spec.blur_p > 0 else 1
        self._constants: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    def __call__(self, images: Tensor) -> Tensor:
        check_images(images, channels=self.channels)
        check_range(images)
        return self._run(images)

    def apply(self, images: Tensor) -> Tensor:
        """As calling the view, but without the value-range check: for a caller that made it already
        (BYOL checks each batch once, however many views it draws from it)."""
        check_images(images, channels=self.channels)
        return self._run(images)

    def _run(self, images: Tensor) -> Tensor:
        device = images.device
        # Device types only, as torch's own check: torch.Generator(device="cuda") reports "cuda"
        # (no index) while the images it serves are on "cuda:0".
        if self.generator is not None and self.generator.device.type != device.type:
            raise LearnerError(
                f"the view generator is on {self.generator.device} but the images are on {device}; "
                "create it with torch.Generator(device=images.device)"
            )
        with torch.autocast(device_type=device.type, enabled=False):
            return self._view(images.float())

    def _view(self, images: Tensor) -> Tensor:
        n, channels, height, width = images.shape
        spec = self.spec
        u = torch.rand(n, _COLUMNS, device=images.device, generator=self.generator)
        boxes = crop_boxes(u[:, _SCALE], u[:, _RATIO], u[:, _POS], height, width, spec)
        grid = box_grid(boxes, u[:, _FLIP] < spec.flip_p, height, width, (self.height, self.width))
        x = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if channels == 3 and (spec.jitter_p > 0 or spec.grayscale_p > 0):
            factors = torch.stack(
                (
                    _spread(u[:, _FACTORS][:, 0], spec.brightness),
                    _spread(u[:, _FACTORS][:, 1], spec.contrast),
                    _spread(u[:, _FACTORS][:, 2], spec.saturation),
                    spec.hue * (2 * u[:, _FACTORS][:, 3] - 1),
                ),
                dim=1,
            )
            order = torch.argsort(u[:, _ORDER], dim=1)
            jitter, gray = u[:, _JITTER] < spec.jitter_p, u[:, _GRAY] < spec.grayscale_p
            x = colour(x, factors, order, jitter, gray, self._device_constants(x.device)[0])
        x = self._blur_and_normalise(x.reshape(n, channels, self.height, self.width), u)
        if spec.solarize_p > 0:
            x = self._solarize(x, u)
        return x.contiguous(memory_format=self.memory_format)

    def _device_constants(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(luma weights (3,), mean (C,), std (C,)) on `device`, made once: a host-to-device copy per call would sync
        CUDA."""
        if device not in self._constants:
            values = torch.tensor((*GRAY, *self.mean, *self.std), dtype=torch.float32).to(device)
            c = self.channels
            self._constants[device] = (values[:3], values[3 : 3 + c], values[3 + c :])
        return self._constants[device]

    def _blur_and_normalise(self, x: Tensor, u: Tensor) -> Tensor:
        """Separable per-image blur as two depthwise convs; (x - mean) / std folded into the second."""
        n, c, k = x.shape[0], self.channels, self.kernel_size
        height, width = self.height, self.width
        _, mean, std = self._device_constants(x.device)
        mean, std = mean.repeat(n), std.repeat(n)
        sigma = self.spec.blur_sigma[0] + (self.spec.blur_sigma[1] - self.spec.blur_sigma[0]) * u[:, _SIGMA]
        kernel = gaussian_kernels(sigma, u[:, _BLUR] < self.spec.blur_p, k).repeat_interleave(c, dim=0)  # (N*C, k)
        planes = x.reshape(1, n * c, height, width)
        if k > 1:
            planes = F.pad(planes, (k // 2,) * 4, mode="reflect")
            planes = F.conv2d(planes, kernel[:, None, None, :], groups=n * c)
        vertical = (kernel / std[:, None])[:, None, :, None]
        planes = F.conv2d(planes, vertical, bias=-mean / std, groups=n * c)
        # a kernel that sums to 1 keeps [0, 1] only up to float rounding (seen: 1 + 2.4e-7): clamp to the
        # normalised image of [0, 1] so every view stays in the documented range
        lo, hi = (-mean / std)[None, :, None, None], ((1 - mean) / std)[None, :, None, None]
        return torch.clamp(planes, lo, hi).reshape(n, c, height, width)

    def _solarize(self, x: Tensor, u: Tensor) -> Tensor:
        """Invert pixels at or above the threshold, for the drawn images; x is already normalised."""
        _, mean, std = self._device_constants(x.device)
        mean, std = mean[:, None, None], std[:, None, None]
        threshold = (self.spec.solarize_threshold - mean) / std
        inverted = (1 - 2 * mean) / std - x
        chosen = (u[:, _SOLARIZE] < self.spec.solarize_p)[:, None, None, None]
        return torch.where(chosen & (x >= threshold), inverted, x)
