"""ladd_jax.distributed.initialize: two processes on localhost join and reduce across each other; single
process and launcher detection; bad setups give one clear error."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import jax
import pytest
from cpu_devices import cpu_env

from ladd_jax import distributed
from ladd_jax.errors import LaddError

WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from ladd_jax.distributed import initialize

    port, pid = sys.argv[1], int(sys.argv[2])
    initialize({"coordinator_address": f"localhost:{port}", "num_processes": 2, "process_id": pid,
                "initialization_timeout": 30})

    import jax
    import jax.numpy as jnp
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("data",))
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), np.array([pid + 1.0], np.float32))
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)  # a psum across the processes
    gathered = multihost_utils.process_allgather(np.array([10 * pid], np.int32))
    print(json.dumps({"count": jax.process_count(), "index": jax.process_index(), "devices": jax.device_count(),
                      "sum": float(total), "gathered": np.asarray(gathered).ravel().tolist()}))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost():
    port = _free_port()
    env = cpu_env(1)  # one CPU device per process
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(port), str(pid)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(2)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    for pid, got in enumerate(outs):
        assert got == {"count": 2, "index": pid, "devices": 2, "sum": 3.0, "gathered": [0, 10]}


def _no_launcher(monkeypatch):
    for k in (*distributed.SLURM_VARS, distributed.OMPI_URI, "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: None)


def _recorder(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    return calls


def test_single_process_is_a_no_op(monkeypatch):
    _no_launcher(monkeypatch)
    calls = _recorder(monkeypatch)
    distributed.initialize(None)
    distributed.initialize({"coordinator_address": "localhost:1234", "num_processes": 1, "process_id": 0})
    assert calls == [] and distributed.detect_launcher() is None


def test_launchers_are_detected(monkeypatch):
    _no_launcher(monkeypatch)
    calls = _recorder(monkeypatch)
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}
    for k, v in {**slurm, "SLURM_LOCALID": "0"}.items():
        monkeypatch.setenv(k, v)
    assert distributed.detect_launcher() == "slurm"
    distributed.initialize(type("Args", (), {"local_device_ids": (0, 1)})())  # any object with the fields
    assert calls == [{"initialization_timeout": distributed.DEFAULT_TIMEOUT_S, "local_device_ids": [0, 1]}]
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: one process, nothing to join
    assert distributed.detect_launcher() is None
    monkeypatch.setenv(distributed.OMPI_URI, "1531576320.0;tcp://10.0.0.1:34911")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert distributed.detect_launcher() == "openmpi"


def test_bad_setups():
    with pytest.raises(LaddError, match="process_id"):
        distributed.initialize({"coordinator_address": "localhost:1234", "num_processes": 2})
    with pytest.raises(LaddError, match="outside"):
        distributed.initialize({"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 2})
    jax.devices()  # the backend is up: too late to join others
    with pytest.raises(LaddError, match="before any other JAX call"):
        distributed.initialize({"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 0})
