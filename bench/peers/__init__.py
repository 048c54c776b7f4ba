"""The peers a user would pick instead of the worker, each in a virtual environment of its own.

ONNX Runtime (through optimum-onnx, which pins transformers 4) and OpenVINO
(through optimum-intel) run transformers' zero-shot pipeline on their own
export of the benchmark's model. `envs` builds and reuses their venvs, keyed by
their pinned requirements; `runner.py` is the standalone script each venv's
python runs; `client` speaks its JSON; `catalog` lists the rows measured.
"""
