"""The peers' virtual environments: built once under the cache, keyed by their pinned requirements.

Each peer pins what it installs, so its numbers come from known versions, and
its own pins (optimum-onnx wants transformers < 5) never touch the project's
venv. A venv's directory name carries a hash of its pins and of the Python
version: changing a pin builds a new venv, and the stale ones of the same peer
are removed once the new one is complete. Each takes about 6 GB, most of it
torch's CUDA libraries: PyPI's Linux torch wheels bring them, and torch does
not import without them.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.peers.exceptions import PeerInstallError
from bench.workload import CACHE_DIR

PEERS_DIR = CACHE_DIR / "peers"
# Written last, holding the pins: a venv directory without it is half-built.
COMPLETE_FILE = "zsc-peer-requirements.txt"
# pip resolves and downloads about 3 GB per venv; minutes on a good link.
INSTALL_TIMEOUT_S = 1800
KEY_CHARS = 12
# Lines of pip's error output kept in the reason a venv failed.
ERROR_TAIL_LINES = 6


@dataclass(frozen=True, slots=True)
class PeerEnv:
    """A peer's name and the exact requirement lines of its venv."""

    name: str
    requirements: tuple[str, ...]

    def directory(self, root: Path = PEERS_DIR) -> Path:
        """Where this peer's venv lives for the running Python version."""
        return root / f"{self.name}-{env_key(self.requirements, python_version())}"


# Versions resolved together by pip and run together on the benchmark's model.
ONNXRUNTIME = PeerEnv(
    "onnxruntime",
    (
        "optimum-onnx[onnxruntime]==0.1.0",
        "optimum==2.1.0",  # optimum-onnx 0.1.0 asks for ~=2.1.0
        "onnxruntime==1.32.0",
        "onnx==1.23.2",
        "transformers==4.57.6",  # optimum-onnx 0.1.0 asks for < 4.58
        "tokenizers==0.22.2",
        "huggingface-hub==0.36.2",
        "torch==2.15.0",  # the exporter traces the model with torch; the project's version
        "numpy==2.4.6",
    ),
)
OPENVINO = PeerEnv(
    "openvino",
    (
        "optimum-intel[openvino]==2.2.0",
        "optimum==2.3.0",
        "openvino==2026.4.1",
        "openvino-tokenizers==2026.4.1.0",
        "nncf==3.4.0",
        "transformers==5.5.4",  # optimum-intel 2.2.0 asks for < 5.6
        "tokenizers==0.22.2",
        "huggingface-hub==1.21.0",
        "torch==2.15.0",
        "torchvision==0.29.2",  # optimum-intel requires it
        "numpy==2.4.6",
    ),
)


def python_version() -> str:
    """The running Python's major.minor: a venv is built with it."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def env_key(requirements: Iterable[str], python: str) -> str:
    """A short hash of the requirement lines (order, blanks and comments aside) and Python.

    Any change to a pin gives another key, hence another venv.
    """
    lines = sorted(
        {line.split("#", 1)[0].strip() for line in requirements} - {""},
    )
    digest = hashlib.sha256("\n".join([f"python {python}", *lines]).encode())
    return digest.hexdigest()[:KEY_CHARS]


def ensure_env(env: PeerEnv, root: Path = PEERS_DIR) -> Path:
    """The python of `env`'s venv, built first unless a complete one is there.

    Raises PeerInstallError with pip's last lines when the build fails; the
    half-built venv is removed.
    """
    directory = env.directory(root)
    python = directory / "bin" / "python"
    if (directory / COMPLETE_FILE).is_file():
        return python
    shutil.rmtree(directory, ignore_errors=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    pins = "\n".join(env.requirements) + "\n"
    try:
        _run([sys.executable, "-m", "venv", str(directory)], f"{env.name}: python -m venv")
        (directory / "requirements.txt").write_text(pins)
        _run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(directory / "requirements.txt")],
            f"{env.name}: pip install",
        )
    except PeerInstallError:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    (directory / COMPLETE_FILE).write_text(pins)
    for stale in root.glob(f"{env.name}-*"):
        if stale != directory and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return python


def _run(command: list[str], what: str) -> None:
    try:
        subprocess.run(
            command, check=True, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
        )
    except subprocess.CalledProcessError as error:
        tail = " | ".join(error.stderr.strip().splitlines()[-ERROR_TAIL_LINES:])
        raise PeerInstallError(f"{what} failed (exit {error.returncode}): {tail}") from None
    except subprocess.TimeoutExpired:
        raise PeerInstallError(f"{what} took over {INSTALL_TIMEOUT_S} s") from None
    except OSError as error:
        raise PeerInstallError(f"{what}: {error}") from None
