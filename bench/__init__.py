"""Side-by-side benchmarks of zsc-worker against transformers' zero-shot pipeline.

`python -m bench` (`make bench`) measures the pipeline's baselines, its peers
(ONNX Runtime and OpenVINO, each in a venv of its own: `bench/peers`) and the
worker's end-to-end throughput through Kafka in one run and prints their
ratios; `python -m bench.levers` measures the classifier's levers one by one;
`bench/gpu.sh` is the GPU mode. Nothing here is a test: numbers are reported,
not asserted.
"""
