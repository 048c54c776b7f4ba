"""The peers' rows: which runtime, variant and batch size each one measures."""

from __future__ import annotations

from dataclasses import dataclass

from bench.peers.envs import ONNXRUNTIME, OPENVINO, PeerEnv

# The batched rows' size: the pipeline's batched rows use it too.
PEER_BATCH = 16

ORT_FLOAT32_BS1 = "onnxruntime pipeline float32 bs=1"
ORT_FLOAT32 = f"onnxruntime pipeline float32 bs={PEER_BATCH}"
ORT_INT8 = f"onnxruntime pipeline int8 bs={PEER_BATCH}"
OPENVINO_DEFAULT_BS1 = "openvino pipeline default precision bs=1"
OPENVINO_DEFAULT = f"openvino pipeline default precision bs={PEER_BATCH}"
OPENVINO_INT8 = f"openvino pipeline int8 weights bs={PEER_BATCH}"


@dataclass(frozen=True, slots=True)
class PeerRun:
    """One row: the zero-shot pipeline over `runtime`'s model in `variant`."""

    name: str
    env: PeerEnv
    runtime: str
    variant: str
    batch_size: int


PEER_RUNS = (
    PeerRun(ORT_FLOAT32_BS1, ONNXRUNTIME, "onnxruntime", "float32", 1),
    PeerRun(ORT_FLOAT32, ONNXRUNTIME, "onnxruntime", "float32", PEER_BATCH),
    # Dynamic quantization with optimum's recipe for the CPU's flags (AVX512-VNNI where there).
    PeerRun(ORT_INT8, ONNXRUNTIME, "onnxruntime", "int8", PEER_BATCH),
    # OpenVINO's default CPU precision: bfloat16 where the CPU has it, else float32.
    PeerRun(OPENVINO_DEFAULT_BS1, OPENVINO, "openvino", "default", 1),
    PeerRun(OPENVINO_DEFAULT, OPENVINO, "openvino", "default", PEER_BATCH),
    PeerRun(OPENVINO_INT8, OPENVINO, "openvino", "int8", PEER_BATCH),
)
# The env that measures the int8 matmul peak (ONNX Runtime's MatMulInteger).
PEAK_ENV = ONNXRUNTIME
