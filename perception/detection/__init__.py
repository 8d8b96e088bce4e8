"""Object detection at run time: manifests, pre/post-processing, adaptive-depth execution, policies.
numpy/OpenCV and an inference engine only; never imports torch."""
