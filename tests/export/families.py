"""Each torchvision encoder family at test size, as `package.module:factory` import strings.

The named variants (resnet18, mobilenet_v3_small, efficientnet_b0, convnext_tiny, regnet_y_400mf,
vit_b_16) are the same torchvision classes with more and wider blocks; one export-verify-serve case
of those took 11-32 s on a loaded 2-core machine (the dynamo exporter's cost grows with the number of
ops, not their size), so the always-on family test builds each class with one or two blocks per stage
and the named variants run on request (tests/export/test_encoder_families.py). Every block type the
named variant has is kept: SE and hard-swish (MobileNetV3), MBConv with stochastic depth
(EfficientNet), LayerNorm + layer scale (ConvNeXt), grouped SE bottlenecks (RegNetY),
class token + multi-head attention (ViT).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchvision.models import convnext, densenet, efficientnet, mobilenetv3, regnet, resnet, vision_transformer


def tiny_resnet(**kwargs: Any) -> nn.Module:
    """ResNet with one BasicBlock per stage (resnet18 has two); torchvision's ResNet fixes the widths."""
    return resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], **kwargs)


def tiny_mobilenet_v3(**kwargs: Any) -> nn.Module:
    """The first four blocks of mobilenet_v3_small (the fourth has SE and hard-swish) at a quarter of its width."""
    setting, last_channel = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    return mobilenetv3.MobileNetV3(setting[:4], last_channel // 4, **kwargs)


def tiny_efficientnet(**kwargs: Any) -> nn.Module:
    """Two MBConv stages (squeeze-excitation in every block; the second: stride 2, two blocks), a narrow head."""
    setting = [
        efficientnet.MBConvConfig(1, 3, 1, 16, 8, 1),
        efficientnet.MBConvConfig(6, 5, 2, 8, 16, 2),
    ]
    return efficientnet.EfficientNet(setting, dropout=0.2, last_channel=64, **kwargs)


def tiny_convnext(**kwargs: Any) -> nn.Module:
    """Two ConvNeXt stages, one block each, widths 16 and 32."""
    setting = [convnext.CNBlockConfig(16, 32, 1), convnext.CNBlockConfig(32, None, 1)]
    return convnext.ConvNeXt(setting, stochastic_depth_prob=0.1, **kwargs)


def tiny_regnet_y(**kwargs: Any) -> nn.Module:
    """RegNetY (SE ratio 0.25, grouped bottlenecks) of depth 2."""
    params = regnet.BlockParams.from_init_params(depth=2, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
    return regnet.RegNet(params, stem_width=16, **kwargs)


def tiny_vit(image_size: int = 32, **kwargs: Any) -> nn.Module:
    """VisionTransformer with patch 8, one encoder layer, 2 heads, width 32."""
    return vision_transformer.VisionTransformer(
        image_size=image_size, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64, **kwargs
    )


class CustomNet(nn.Module):
    """A net that is no torchvision class: stem, a nested body, pooling and a head, as a user might write.

    Children in order: stem, body, pool, head. Hidden layers: "pool" (or child -2) gives the
    `2 * width`-d embedding, "body.1" a nested module's output, -1 the head's `out_dim` outputs.
    """

    def __init__(self, width: int = 8, out_dim: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.body = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.GELU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.body(self.stem(x))).flatten(1))


def custom_net(**kwargs: Any) -> nn.Module:
    """The `package.module:factory` form of `CustomNet`."""
    return CustomNet(**kwargs)


def tiny_densenet(**kwargs: Any) -> nn.Module:
    """DenseNet with two one-layer dense blocks; its forward ends in `F.relu(features, inplace=True)` after
    `features`."""
    return densenet.DenseNet(growth_rate=8, block_config=(1, 1), num_init_features=8, bn_size=2, **kwargs)
