"""Deployment: ONNX export with NMS inside, precision variants, parity gate, TensorRT engines,
the runtime vehicle code imports (:mod:`pipeline.deploy.runtime`, numpy + onnxruntime only) and
the latency benchmark.

Importing this package imports nothing: the runtime must stay free of torch.
"""
