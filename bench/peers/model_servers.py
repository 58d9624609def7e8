"""The serving benchmark's model-server peers: Seldon's MLServer and KServe's Python model server,
each serving loopline's champion rebuilt as a plain scikit-learn pipeline, each in its own virtual
environment (``bench/peers/<peer>/.venv``, made by ``bench/peers/<peer>/setup.sh``: their pins
clash with loopline's).

The model travels as parameters, not as a pickle (the environments' scikit-learn may differ):
``bench/peers/sklearn_export.py`` (``model_parameters``) reads them from the champion in
loopline's environment, :func:`prepare` writes them to the server's folder and rebuilds the
pipeline there with the peer's own interpreter (``bench/peers/sklearn_rebuild.py``), saved with
joblib as both servers load scikit-learn models. The pipeline answers exactly as the champion
does: same class, same probability (the coefficients keep their float32 dtype).

- ``mlserver``: ``mlserver start FOLDER`` with the ``mlserver_sklearn.SKLearnModel`` runtime, V2
  inference protocol, ``POST /v2/models/NAME/infer`` with one FP64 tensor ``[1, features]`` and
  the outputs ``predict`` and ``predict_proba`` requested (the runtime calls the pipeline once
  for each). Server settings in ``FOLDER/settings.json``, the model's in
  ``FOLDER/NAME/model-settings.json``; the ports come from the environment (``MLSERVER_*``).
- ``kserve``: ``bench/peers/kserve/model_server.py`` (a ``kserve.Model`` subclass under
  ``kserve.ModelServer``), v1 protocol, ``POST /v1/models/NAME:predict`` with
  ``{"instances": [[...]]}``; it answers each instance's class and that class's probability.

Both are configured as one would run them in production on this machine, from their own docs
and source: no debug mode, no per-request log lines (access logs, KServe's latency log), only the
HTTP port they are measured on plus what they cannot turn off; :func:`describe` says what was
chosen and why.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REBUILD = HERE / "sklearn_rebuild.py"
PEERS = ("mlserver", "kserve")
#: The name the model is served under unless the parameters carry a ``model_name``.
MODEL_NAME = "champion"
#: The file :func:`prepare` leaves in the folder: what :func:`command` needs to know of it.
SERVED = "served.json"

#: MLServer's adaptive batching when on: at most this many requests per batch (the benchmark's
#: highest concurrency), waiting at most this many seconds for it to fill. Measured here (one
#: process, 2 cores shared with the load generator): 2 ms peaked at 1,490-1,660 req/s against
#: 1,140-1,400 for 1 ms, for 220 req/s instead of 260 at concurrency 1 (a lone request waits).
MLSERVER_MAX_BATCH_SIZE = 64
MLSERVER_MAX_BATCH_TIME = 0.002

#: KServe's logging (``--log_config_file``): its own and uvicorn's start-up lines as by default,
#: but neither the access log nor the ``kserve.trace`` timing line that KServe writes on every
#: request (its TimingMiddleware logs even with ``--enable_latency_logging false``).
KSERVE_LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(process)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                            "stream": "ext://sys.stderr"}},
    "loggers": {
        "kserve": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "kserve.trace": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}


def _check(peer: str) -> str:
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}: one of {PEERS}")
    return peer


def _python(peer: str) -> Path:
    return HERE / _check(peer) / ".venv" / "bin" / "python"


def _installed(peer: str) -> bool:
    """Whether the environment exists and was made from the current requirements.txt
    (``setup.sh`` copies it into the environment last, once everything installed).
    """
    folder = HERE / peer
    marker = folder / ".venv" / "requirements.installed"
    return (_python(peer).exists() and marker.exists()
            and marker.read_text() == (folder / "requirements.txt").read_text())


def ensure_environment(peer: str) -> Path:
    """The peer's environment's interpreter, made (or brought up to date) by its ``setup.sh``
    first when it is missing or its requirements changed; the first run needs the package index.
    """
    if not _installed(_check(peer)):
        print(f"[model_servers] creating {peer}'s environment in {HERE / peer / '.venv'} "
              "(needs the package index)", file=sys.stderr, flush=True)
        subprocess.run(["bash", str(HERE / peer / "setup.sh")], check=True)
    return _python(peer)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _mlserver_parallel_workers(workers: int) -> int:
    """MLServer's ``parallel_workers`` for ``workers`` serving processes: 0 (inference in the one
    HTTP process) for one, else that many inference processes behind the HTTP process (MLServer
    has a single HTTP process: its workers only run the model).

    Not MLServer's default of 1 for one worker: each request then crosses to the inference
    process and back (pickled over multiprocessing queues), which measured here (2 cores, the
    load generator beside it, no batching) about 300-320 req/s against 530 with 0.
    """
    return 0 if workers <= 1 else workers


def prepare(peer: str, parameters: dict[str, Any], folder: Path, *, workers: int,
            batching: bool) -> None:
    """Write the model (rebuilt by the peer's own interpreter) and the server's settings into
    ``folder``: ``parameters.json``, the joblib pipeline, and per peer ``settings.json`` +
    ``NAME/model-settings.json`` (MLServer) or ``logging.json`` (KServe).
    """
    python = ensure_environment(peer)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = str(parameters.get("model_name", MODEL_NAME))
    (folder / "parameters.json").write_text(json.dumps(parameters))
    model_dir = folder / name if peer == "mlserver" else folder
    done = subprocess.run([str(python), str(REBUILD), str(folder / "parameters.json"),
                           str(model_dir / "model.joblib")], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rebuilding the model in {peer}'s environment failed "
                           f"(exit {done.returncode}):\n{done.stderr[-4000:]}")
    (folder / SERVED).write_text(json.dumps({"model_name": name, "workers": workers,
                                             "batching": batching}))
    if peer == "mlserver":
        settings = {
            "debug": False,  # its default is True: DEBUG logging and an access log line per request
            "host": "127.0.0.1",
            "parallel_workers": _mlserver_parallel_workers(workers),
            # The defaults are folders in the working directory (the repository).
            "metrics_dir": str(folder / ".metrics"),
            "environments_dir": str(folder / ".envs"),
            # GZipMiddleware wraps every response: nothing to compress in a one-record answer.
            "gzip_enabled": False,
            "load_models_at_startup": True,
        }
        (folder / "settings.json").write_text(json.dumps(settings, indent=2))
        model_settings: dict[str, Any] = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "1"},
        }
        if batching:
            model_settings["max_batch_size"] = MLSERVER_MAX_BATCH_SIZE
            model_settings["max_batch_time"] = MLSERVER_MAX_BATCH_TIME
        (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    else:
        (folder / "logging.json").write_text(json.dumps(KSERVE_LOG_CONFIG, indent=2))


def command(peer: str, folder: Path, port: int, *, workers: int, batching: bool
            ) -> tuple[list[str], dict[str, str]]:
    """The server's argv and extra environment, listening on ``127.0.0.1:port`` (the folder made
    by :func:`prepare` with the same ``workers`` and ``batching``).
    """
    folder = Path(folder)
    served = json.loads((folder / SERVED).read_text())
    if (served["workers"], served["batching"]) != (workers, batching):
        raise ValueError(f"{folder} was prepared for workers={served['workers']} "
                         f"batching={served['batching']}, not {workers} {batching}")
    bin_ = _python(peer).parent
    env = {"PATH": f"{bin_}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    if peer == "mlserver":
        # MLServer always starts its gRPC server and (metrics on) a metrics server: free ports for
        # both, so that several servers never clash on the defaults 8081/8082.
        return ([str(bin_ / "mlserver"), "start", str(folder)],
                {**env, "MLSERVER_HTTP_PORT": str(port), "MLSERVER_GRPC_PORT": str(_free_port()),
                 "MLSERVER_METRICS_PORT": str(_free_port())})
    return ([str(bin_ / "python"), str(HERE / "kserve" / "model_server.py"),
             "--model_name", served["model_name"], "--model_dir", str(folder),
             "--http_port", str(port), "--workers", str(workers),
             "--enable_grpc", "false", "--enable_latency_logging", "false",
             "--log_config_file", str(folder / "logging.json")], env)


def ready_path(peer: str, model_name: str) -> str:
    """The path that answers 200 once the model is loaded (GET)."""
    if _check(peer) == "mlserver":
        return f"/v2/models/{model_name}/ready"
    return f"/v1/models/{model_name}"


def load_path(peer: str, model_name: str) -> str:
    """The path the load is sent to (POST)."""
    if _check(peer) == "mlserver":
        return f"/v2/models/{model_name}/infer"
    return f"/v1/models/{model_name}:predict"


def request_body(peer: str, features: dict[str, float], feature_names: list[str]) -> dict[str, Any]:
    """One record as a client of the peer sends it: the values in ``feature_names`` order (the
    exported ``parameters["features"]``).
    """
    values = [float(features[name]) for name in feature_names]
    if _check(peer) == "mlserver":
        return {"inputs": [{"name": "input-0", "shape": [1, len(values)], "datatype": "FP64",
                            "data": values}],
                "outputs": [{"name": "predict"}, {"name": "predict_proba"}]}
    return {"instances": [values]}


def parse_answer(peer: str, answer: dict[str, Any]) -> tuple[Any, float]:
    """The first record's prediction and the probability of the predicted class."""
    if _check(peer) == "mlserver":
        outputs = {output["name"]: output for output in answer["outputs"]}
        probabilities = outputs["predict_proba"]
        width = probabilities["shape"][-1]
        # The predicted class is the most probable one (LogisticRegression.predict is the argmax).
        return outputs["predict"]["data"][0], float(max(probabilities["data"][:width]))
    first = answer["predictions"][0]
    return first["prediction"], float(first["probability"])


@functools.cache
def versions(peer: str) -> dict[str, str]:
    """The versions of the peer's server and what it serves with, from its own environment."""
    packages = {"mlserver": ("mlserver", "mlserver-sklearn"), "kserve": ("kserve",)}[_check(peer)]
    packages += ("scikit-learn", "numpy", "fastapi", "uvicorn", "uvloop", "httptools")
    script = ("import json, sys\nfrom importlib.metadata import version, PackageNotFoundError\n"
              "def get(name):\n    try:\n        return version(name)\n"
              "    except PackageNotFoundError:\n        return None\n"
              "print(json.dumps({name: get(name) for name in sys.argv[1:]}))")
    done = subprocess.run([str(ensure_environment(peer)), "-c", script, *packages], check=True,
                          capture_output=True, text=True)
    found: dict[str, str | None] = json.loads(done.stdout)
    return {name: value for name, value in found.items() if value is not None}


def describe(peer: str, *, workers: int, batching: bool) -> str:
    """The peer's name, version and configuration, for results.json."""
    found = versions(peer)
    stack = (f"scikit-learn {found['scikit-learn']}, uvicorn {found['uvicorn']}"
             + (" + httptools" if "httptools" in found else " (h11)") + " + uvloop")
    if peer == "mlserver":
        parallel = _mlserver_parallel_workers(workers)
        processes = ("one process (parallel_workers=0: the model runs in the HTTP process)"
                     if parallel == 0 else
                     f"parallel_workers={parallel} (one HTTP process handing requests to "
                     f"{parallel} inference processes)")
        batch = (f"adaptive batching on (max_batch_size={MLSERVER_MAX_BATCH_SIZE}, "
                 f"max_batch_time={MLSERVER_MAX_BATCH_TIME} s)" if batching
                 else "adaptive batching off")
        return (f"MLServer {found['mlserver']} + mlserver-sklearn {found['mlserver-sklearn']} "
                f"({stack}), V2 REST POST /v2/models/NAME/infer, one FP64 tensor, outputs "
                f"predict + predict_proba (the runtime calls the pipeline once per output); "
                f"{processes}; {batch}; debug off (no access log), gzip off, metrics server on "
                "(its default), gRPC on (it cannot be turned off, unused)")
    processes = (f"ModelServer workers={workers} (a parent process watching {workers} spawned "
                 "uvicorn worker processes that share the socket, each holding the model)"
                 if workers > 1 else "one process (ModelServer workers=1)")
    batch = ("no adaptive batching: the Python ModelServer has none (KServe batches in its "
             "Kubernetes agent sidecar), so batching=on is ignored" if batching
             else "no adaptive batching (the Python ModelServer has none)")
    return (f"KServe ModelServer {found['kserve']} ({stack}), a kserve.Model subclass "
            "(one predict_proba per request), v1 REST POST /v1/models/NAME:predict; "
            f"{processes}; {batch}; gRPC off, latency logging off, access log and kserve.trace "
            "timing log off (--log_config_file), FastAPI's per-answer ORJSONResponse deprecation "
            "warning silenced; Prometheus histograms on (always)")
