"""The controller's image: what the Dockerfile says, and its install run for real (no image registry here).

The Dockerfile installs with ``deploy/docker/install.sh``; the slow test runs
that script into a fresh venv, lays out ``/app`` as the image does (the
shipped ``envs/`` and ``models/``, ``RLSCALE_ENVS``), and runs the command
line of ``deploy/kubernetes/deployment.yaml`` from that install against the
project's own Kubernetes API server and a Prometheus of registered queries.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from k8s_apiserver import FakeApiServer, FakeCluster, FakePrometheus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
DEPLOY = ROOT / "deploy" / "kubernetes"


def _manifest(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_the_image_is_slim_non_root_as_the_manifests_expect_and_leaves_its_build_stage_behind() -> None:
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", DOCKERFILE, re.M)
    assert [s[1] for s in stages] == ["build", ""] and all(s[0] == "${PYTHON_IMAGE}" for s in stages)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+-slim$", DOCKERFILE, re.M)
    final = DOCKERFILE.split("\nFROM ${PYTHON_IMAGE}\n")[1]
    assert "COPY --from=build /opt/rlscale /opt/rlscale" in final and "install.sh" not in final and "pip" not in final
    pod = _manifest("deployment.yaml")["spec"]["template"]["spec"]
    uid, gid = pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]
    assert re.search(rf"^USER {uid}:{gid}$", final, re.M)
    assert "RUN TORCH_INSTALL=" in DOCKERFILE and "sh /tmp/install.sh /src /opt/rlscale" in DOCKERFILE
    assert 'ENTRYPOINT ["rlscale"]' in final


def _torch_install() -> str:
    """The Dockerfile's CPU-only torch, or the same build from a local wheel directory when pip is given one."""
    for folder in os.environ.get("PIP_FIND_LINKS", "").split():
        wheels = sorted(Path(folder).glob("torch-*+cpu-*.whl"))
        if wheels:
            return str(wheels[-1])
    return re.search(r'^ARG TORCH_INSTALL="(.*)"$', DOCKERFILE, re.M)[1]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_images_install_runs_the_manifests_command_line(tmp_path: Path) -> None:
    venv = tmp_path / "opt" / "rlscale"
    env = {**os.environ, "PYTHON": sys.executable, "TORCH_INSTALL": _torch_install()}
    env.pop("PYTHONPATH", None)  # the install alone, not this checkout
    built = subprocess.run(["sh", str(ROOT / "deploy" / "docker" / "install.sh"), str(ROOT), str(venv)], env=env,
                           capture_output=True, text=True, timeout=1100)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert not (venv / "bin" / "pip").exists() and (venv / "bin" / "rlscale").is_file()
    assert subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"], capture_output=True).returncode != 0
    probe = "import kubernetes, torch, rlscale; print(rlscale.__file__, torch.version.cuda)"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert where.returncode == 0 and where.stdout.startswith(str(venv)) and where.stdout.split()[1] == "None", where

    # /app as the image lays it out, the pod's mounts under tmp_path
    app = tmp_path / "app"
    shutil.copytree(ROOT / "envs", app / "envs")
    shutil.copytree(ROOT / "models", app / "models")
    mounts = {"/etc/rlscale": tmp_path / "etc", "/var/run/rlscale/token": tmp_path / "token", "/var/lib/rlscale": tmp_path / "audit"}
    for path in mounts.values():
        path.mkdir()
    (mounts["/var/run/rlscale/token"] / "token").write_text("s3cret-token\n")
    cluster = FakeCluster(startup_delay_s=0.05)
    cluster.add_node("node-0", "8", {"rlscale.io/pool": "on-demand"})
    cluster.add_deployment("shop", "api", 3, cpu="500m")
    cluster.start()
    server = FakeApiServer(cluster).start()
    config = yaml.safe_load(_manifest("configmap.yaml")["data"]["cluster.yaml"])
    values = {"arrivals_rps": 150.0, "utilisation": 0.6, "latency_p95_s": 0.08}
    prometheus = FakePrometheus({q: (lambda v=values[k]: v) for s in config["services"] for k, q in s["queries"].items()})
    try:
        server.kubeconfig(tmp_path / "kubeconfig")
        config |= {"kubeconfig": str(tmp_path / "kubeconfig"), "prometheus": {"url": prometheus.url, "timeout_s": 1.0}}
        (mounts["/etc/rlscale"] / "cluster.yaml").write_text(yaml.safe_dump(config))
        container = _manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
        args = []
        for arg in container["args"]:
            for mount, path in mounts.items():
                arg = arg.replace(mount, str(path))
            args.append({"--host=0.0.0.0": "--host=127.0.0.1", "--port=8080": "--port=0"}.get(arg, arg))
        run_env = {**env, "RLSCALE_ENVS": str(app / "envs"), "NUMBA_CACHE_DIR": str(tmp_path / "numba"),
                   "MPLCONFIGDIR": str(tmp_path / "mpl")}
        served = subprocess.run([str(venv / "bin" / "rlscale"), *args, "--steps", "2", "--interval", "1"], cwd=app,
                                env=run_env, capture_output=True, text=True, timeout=120)
    finally:
        prometheus.stop()
        server.stop()
        cluster.stop()
    assert served.returncode == 0, served.stdout[-2000:] + served.stderr[-2000:]
    assert "rlscale serve: ppo:models/web-diurnal on cluster kubernetes" in served.stdout
    assert served.stdout.strip().splitlines()[-1].startswith("rlscale serve stopped: 2 decisions")
    assert (mounts["/var/lib/rlscale"] / "audit.jsonl").stat().st_size > 0
