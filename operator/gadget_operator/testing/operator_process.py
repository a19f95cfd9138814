"""The real operator as a separate process (``python -m gadget_operator run``), for tests, bench and demo.

It runs exactly what a user runs; only its flags point it at the emulated API server (or a kubeconfig)
and at simulated daemons through static discovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import aiohttp

_SETPRIV = shutil.which("setpriv")
_DIE_WITH_PARENT: tuple[str, ...] = (_SETPRIV, "--pdeathsig", "KILL", "--") if _SETPRIV else ()
"""Run the operator so that the kernel kills it when the test process dies, however it dies: a run that
crashes must not leave an operator behind, still reconciling (on a real cluster: the next run's
cluster-scoped resources). util-linux's ``setpriv`` sets it between fork and exec; a ``preexec_fn``
would run Python in a forked copy of a process that holds gRPC's event engine, which aborts."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OperatorProcess:
    """``gadget-operator run``; ``start`` returns once its liveness probe answers.

    With ``static_nodes`` it uses static discovery from that file; without, pods discovery as
    configured by ``extra_args``. Its control API listens on free loopback ports picked at each start
    (``control_address``, ``control_http_url``), unless ``extra_args`` say where.
    """

    def __init__(
        self,
        static_nodes: Path | None,
        *,
        kube_server: str | None = None,
        kubeconfig: str | None = None,
        extra_args: Sequence[str] = (),
        log_dir: Path | None = None,
    ) -> None:
        """``log_dir``: where the operator's log goes (a test's own directory, removed with it);
        default: a file in the system temp directory, kept for a look after a benchmark or the demo."""
        self.static_nodes = static_nodes
        self.kube_server = kube_server
        self.kubeconfig = kubeconfig
        self.extra_args = list(extra_args)
        self.log_path = Path(tempfile.mkstemp(prefix="gadget-operator-", suffix=".log", dir=log_dir)[1])
        self.process: asyncio.subprocess.Process | None = None
        self.liveness_port = 0
        self.control_port = 0
        self.control_http_port = 0
        self._log_dir = log_dir
        self._temp_dir: str | None = None

    async def start(self, *, within: float = 30.0, attempts: int = 3) -> None:
        """Start and wait until alive. The liveness port is picked free just before, so another process
        may take it first: then the operator exits at once, and it is started again on another port."""
        for attempt in range(attempts):
            try:
                await self._start(within)
                return
            except RuntimeError:
                if attempt + 1 == attempts or "address already in use" not in self.logs():
                    raise

    async def _start(self, within: float) -> None:
        self.liveness_port = free_port()
        args = ["-m", "gadget_operator", "run"]
        if not any(arg.startswith("--control-") for arg in self.extra_args):
            self.control_port, self.control_http_port = free_port(), free_port()
            args += ["--control-address", self.control_address, "--control-http-address", self.control_http_address]
        if self.static_nodes is not None:
            args += ["--discovery", "static", "--static-nodes", str(self.static_nodes)]
        args += [
            "--liveness",
            f"http://127.0.0.1:{self.liveness_port}/healthz",
            "--metrics-port",
            "0",
            *self.extra_args,
        ]
        if self.kube_server:
            args += ["--kube-server", self.kube_server]
        env = dict(os.environ)
        if self.kubeconfig:
            env["KUBECONFIG"] = self.kubeconfig
        # The Kubernetes client writes a kubeconfig's certificates to temporary files, removed only at a
        # clean exit: a process of its own keeps a killed operator's from piling up in the system's.
        self._temp_dir = tempfile.mkdtemp(prefix="gadget-operator-tmp-", dir=self._log_dir)
        env["TMPDIR"] = self._temp_dir
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *_DIE_WITH_PARENT, sys.executable, *args, stdout=log, stderr=asyncio.subprocess.STDOUT, env=env
            )
        await self._wait_alive(within)

    @property
    def control_address(self) -> str:
        """``host:port`` of its control API's gRPC listener."""
        return f"127.0.0.1:{self.control_port}"

    @property
    def control_http_address(self) -> str:
        return f"127.0.0.1:{self.control_http_port}"

    @property
    def control_http_url(self) -> str:
        """The base URL of its control API's HTTP/JSON listener."""
        return f"http://{self.control_http_address}"

    async def _wait_alive(self, within: float) -> None:
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        async with asyncio.timeout(within), aiohttp.ClientSession() as session:
            while True:
                if self.process is not None and self.process.returncode is not None:
                    raise RuntimeError(f"the operator exited with {self.process.returncode}:\n{self.logs()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)  # polling a port that is not open yet; no event to wait on

    async def stop(self, *, grace: float = 20.0) -> int | None:
        """SIGTERM, as Kubernetes stops a pod; returns the exit code."""
        return await self._signal(signal.SIGTERM, grace)

    async def kill(self) -> None:
        """SIGKILL: a crash at any point, with no chance to clean up."""
        await self._signal(signal.SIGKILL, 10.0)

    async def _signal(self, signum: int, grace: float) -> int | None:
        process, self.process = self.process, None
        try:
            if process is None or process.returncode is not None:
                return None if process is None else process.returncode
            process.send_signal(signum)
            try:
                async with asyncio.timeout(grace):
                    return await process.wait()
            except TimeoutError:
                process.kill()
                return await process.wait()
        finally:
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")
