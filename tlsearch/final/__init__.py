"""The final model: its one test evaluation, its directory (`final/model/`), its ONNX export and latency."""
