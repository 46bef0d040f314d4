"""Export of the world model for deployment: ONNX graphs (:mod:`.onnx_export`) and TensorRT engines built from
them (:mod:`.tensorrt_build`); ``oniwm export`` (:mod:`.cli`). Heavy dependencies (onnx, tensorrt) load inside
the functions that need them."""
