"""Quantization-aware training: BatchNorm folding, int8 fake quantization with the TensorRT int8
export's placement, and the Q/DQ export of the trained model (stages qat, qat_export)."""
