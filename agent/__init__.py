"""byol-agent's robot side: capture sources, the wire protocol, the hot ONNX runtime and the CLI."""
