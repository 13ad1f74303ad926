"""byol-agent's robot side and orchestration.

Layers, each importing only those below it (enforced by import-linter, contracts in pyproject.toml):

    agent.cli, .commands, .supervisor, .replay, .pipeline       orchestration: wires the rest, starts processes
    agent.robot                                                 capture, transport, HotEncoder runtime
    export                                                      ONNX export, verification, publishing, evaluation
    trainer                                                     the BYOL learner, replay buffer, continual loop
    agent.core                                                  config, errors, atomic files, wire format, frames
"""
