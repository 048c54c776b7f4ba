"""One benchmark run's use of the peers: their venvs, and a scratch directory for their exports."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from bench.peers import client
from bench.peers.catalog import PEAK_ENV, PeerRun
from bench.peers.envs import PEERS_DIR, PeerEnv, ensure_env
from bench.peers.exceptions import PeerInstallError
from bench.workload import Workload


class PeerSession:
    """Builds (or reuses) each peer's venv once and runs its requests.

    The exported and quantized models live in a scratch directory under `root`
    (on the cache's disk: the full-size model's exports take a few GB) that a
    run's requests share and that is removed when the session closes.
    """

    def __init__(self, root: Path = PEERS_DIR) -> None:
        self.root = root
        self._pythons: dict[str, Path] = {}
        self._failures: dict[str, str] = {}
        self._work_dir: Path | None = None

    def __enter__(self) -> PeerSession:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None

    def python(self, env: PeerEnv) -> Path:
        """The python of `env`'s venv, built on first use; a failed build is not retried."""
        if env.name in self._failures:
            raise PeerInstallError(self._failures[env.name])
        if env.name not in self._pythons:
            try:
                self._pythons[env.name] = ensure_env(env, self.root)
            except PeerInstallError as error:
                self._failures[env.name] = str(error)
                raise
        return self._pythons[env.name]

    def pipeline(
        self, run: PeerRun, model: str, load: Workload, threads: int
    ) -> client.PipelineAnswer:
        """`run`'s pipeline over `load`'s texts."""
        python = self.python(run.env)
        request = client.pipeline_request(
            run.runtime, run.variant, run.batch_size, model, self.work_dir(), load, threads
        )
        return client.parse_pipeline_answer(client.call(python, request), len(load.texts))

    def int8_peak(self, shape: Sequence[int], threads: int, budget_s: float) -> client.PeakAnswer:
        """ONNX Runtime's best int8 product of `shape` on `threads`."""
        python = self.python(PEAK_ENV)
        request = client.peak_request(shape, threads, budget_s)
        return client.parse_peak_answer(client.call(python, request))

    def work_dir(self) -> Path:
        """The run's scratch directory for exports, made on first use."""
        if self._work_dir is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._work_dir = Path(tempfile.mkdtemp(dir=self.root, prefix=".exports-"))
        return self._work_dir
