"""Heads: the paper's layouts, and stacked views normalised exactly as if each ran alone."""

from __future__ import annotations

import copy

import torch
from torch import nn

from trainer.heads import MLP, ViewBatchNorm1d, byol_head, simsiam_projector


def test_byol_head_is_linear_bn_relu_linear() -> None:
    head = MLP(8, byol_head(32, 4))
    kinds = [type(layer) for layer in head.layers]
    assert kinds == [nn.Linear, ViewBatchNorm1d, nn.ReLU, nn.Linear]
    assert (head.layers[0].in_features, head.layers[0].out_features, head.layers[3].out_features) == (8, 32, 4)


def test_simsiam_projector_layout() -> None:
    head = MLP(8, simsiam_projector(16, 4))
    linears = [m for m in head.layers if isinstance(m, nn.Linear)]
    assert len(linears) == 3 and all(m.bias is None for m in linears)
    assert isinstance(head.layers[-1], ViewBatchNorm1d) and not head.layers[-1].affine


def test_stacked_views_equal_separate_passes_including_running_stats() -> None:
    torch.manual_seed(0)
    head = MLP(8, byol_head(32, 4))
    separate = copy.deepcopy(head)
    x1, x2 = torch.randn(6, 8), torch.randn(6, 8) * 3 + 1  # different statistics per view
    stacked = head(torch.cat([x1, x2]), views=2)
    torch.testing.assert_close(stacked, torch.cat([separate(x1), separate(x2)]), atol=1e-5, rtol=1e-5)
    for a, b in zip(head.buffers(), separate.buffers()):
        torch.testing.assert_close(a, b)
    shared = copy.deepcopy(separate)(torch.cat([x1, x2]))  # one BN over both views differs
    assert not torch.allclose(stacked, shared, atol=1e-3)


def test_sync_flag_without_a_process_group_is_plain_batchnorm() -> None:
    torch.manual_seed(0)
    synced, plain = ViewBatchNorm1d(5, sync=True), nn.BatchNorm1d(5)
    x = torch.randn(7, 5)
    torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced.running_var, plain.running_var)
