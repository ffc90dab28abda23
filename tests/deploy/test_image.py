"""The image's Dockerfile, parsed (no Docker daemon runs here: `noetl-runtime build` builds
it, see documentation/docs/deployment/kubernetes.md)."""

from __future__ import annotations

import json
import re

from dockerfile_parse import DockerfileParser

from tests.deploy.chart import DOCKERFILE, ROOT

COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cargo|rustc)\b")


def _stages() -> list[list[dict[str, str]]]:
    """The instructions of each stage, in order."""
    stages: list[list[dict[str, str]]] = []
    for instruction in DockerfileParser(str(DOCKERFILE)).structure:
        if instruction["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _values(stage: list[dict[str, str]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def test_multi_stage_on_a_pinned_slim_python_3_11() -> None:
    parser = DockerfileParser(str(DOCKERFILE))
    assert len(_stages()) >= 2
    assert len(set(parser.parent_images)) == 1, "build and runtime share one base"
    (base,) = set(parser.parent_images)
    # Pinned: a full version and the digest of that image.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base), base


def test_the_final_stage_runs_the_cli_as_a_numeric_non_root_user() -> None:
    final = _stages()[-1]
    (user,) = _values(final, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, user
    (entrypoint,) = _values(final, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["noetl-runtime"]  # exec form: signals reach the CLI
    assert json.loads(_values(final, "CMD")[0]) == ["up"]
    assert "8082" in _values(final, "EXPOSE")


def test_the_final_stage_copies_the_built_environment_and_compiles_nothing() -> None:
    build, *_, final = _stages()
    assert any(v.startswith("--from=build ") for v in _values(final, "COPY"))
    for stage in (build, final):
        for command in _values(stage, "RUN"):
            assert not COMPILERS.search(command), command
    # Dependencies come as binary wheels only, so no stage needs a compiler.
    assert any("--only-binary=:all:" in command for command in _values(build, "RUN"))


def test_the_image_has_every_package_the_cli_imports() -> None:
    copied = " ".join(_values(_stages()[0], "COPY"))
    for needed in ("pyproject.toml", "README.md", "noetl", "actors", "plugins"):
        assert needed in copied, needed


def test_the_build_context_leaves_out_what_the_image_does_not_need() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "tests", "documentation", "**/__pycache__"} <= ignored
    assert not ignored & {"noetl", "actors", "plugins", "pyproject.toml", "README.md"}
