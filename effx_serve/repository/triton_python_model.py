"""Triton Python-backend model: runs the member's model.onnx with ONNX Runtime inside Triton.

`effx-serve build-repo --triton-backend python` copies this file to `<member>/1/model.py`, beside
`model.onnx`. It is for Triton servers without the ONNX Runtime backend (such as the one the
nvidia-pytriton package ships); the official Triton container should use the onnxruntime backend.
It needs numpy and onnxruntime importable by the Python backend's interpreter, and nothing of effx-serve.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        threads = config.get("parameters", {}).get("intra_op_thread_count", {}).get("string_value", "1")
        # The options of effx_serve.perf.session (this file cannot import it): the session the profiles measured.
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        # Triton's dynamic batcher hands over several requests at once: run them as one batch.
        inputs = [pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy() for request in requests]
        sizes = [len(x) for x in inputs]
        try:
            logits = self.session.run([self.output_name], {self.input_name: np.concatenate(inputs).astype(np.float32, copy=False)})[0]
        except Exception as error:  # one bad batch answers every request in it with the error, not a dead model
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"ONNX Runtime failed: {error}")) for _ in requests]
        responses, start = [], 0
        for size in sizes:
            tensor = pb_utils.Tensor(self.output_name, logits[start : start + size])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += size
        return responses
