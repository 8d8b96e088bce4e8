"""`engine.kind: tensorrt`: ONNX Runtime with its TensorRT execution provider (and the CUDA provider
for any node TensorRT does not take), configured from TensorRTConfig.

Written to ONNX Runtime's TensorRT provider options (TensorRT 10); not yet run on a GPU. It needs an
onnxruntime build with TensorrtExecutionProvider (onnxruntime-gpu) and TensorRT's libraries, which come
only from NVIDIA's package index; `unavailable_reason` says in one line when they are missing.

What ONNX Runtime's TensorRT provider does, so nothing here does it (a hand-written TensorRT 10 engine,
never run, was cut for it):
  - parsing and building each model part (trt_max_workspace_size, device_id);
  - FP16 (trt_fp16_enable; the provider turns it off, with a warning, on GPUs without fast FP16);
  - INT8 from a calibration table (trt_int8_enable, trt_int8_calibration_table_name);
  - the engine cache (trt_engine_cache_enable, trt_engine_cache_path): its file names cover the model's
    file name and graph, the OS, the ONNX Runtime / CUDA / TensorRT versions, the precision and the GPU's
    compute capability;
  - the timing cache (trt_timing_cache_enable, trt_timing_cache_path), one per compute capability;
  - CUDA streams, device buffers and execution.

What is ours:
  - cache.py: one engine-cache folder per model *content* and build setting. ONNX Runtime's cache names
    hash the graph's structure, not its weights, so a retrained exit head exported under the same name
    would silently reuse the old engine;
  - calibration.py: INT8 calibration on real video frames, letterboxed as the detector sees them, run
    on the CPU with onnxruntime.quantization into the calibration table the provider reads (the
    provider only consumes a table; it does not calibrate);
  - provider.py: TensorRTConfig to provider options (a pure function);
  - runtime.py: the Engine, which refuses to run silently without TensorRT (ONNX Runtime would fall
    back to CUDA or the CPU);
  - build.py: `perception build-engine`, which opens every part of a manifest once so the engines are
    built and cached before the detector needs them (a build takes minutes, a frame has 100 ms).

One behaviour differs from a native build: `precision: fp32` may use TF32 on Ampere and newer GPUs
(the provider has no option to clear TensorRT's TF32 flag).
"""
