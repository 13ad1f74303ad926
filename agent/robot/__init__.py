"""The robot side: frame sources and capture, the ZeroMQ transport (CURVE-secured off the machine), and the
hot-swapping ONNX runtime a policy embeds. Imports the kernel and the published-directory contract
(export.manifest, export.sessions), never the learner.
"""
