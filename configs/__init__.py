"""The shipped configs, installed as package data so `--config default` works from any directory.

`default.yaml` (CPU, minutes), `robot-resnet18.yaml` (a robot's camera, ResNet-18), `gpu-resnet50.yaml`
(a GPU box fed by robots over CURVE). `agent.core.config.load_config` resolves a bare name to these files.
"""
