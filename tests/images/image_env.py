"""An image's Python environment, built by its own Dockerfile's steps (no container engine needed).

The Dockerfile is read, not imitated: its ARG defaults and ENV become the environment of each step,
its COPY instructions copy from the repository into a staging folder standing for WORKDIR, and each
RUN executes with `bash -c` in that folder, with `pip` and `python` resolving to a fresh virtual
environment's (the base image's interpreter, here CPython 3.11 with its own pip and setuptools). So a
requirement that cannot be installed is pip's error here, and a module the lists miss is an
ImportError when the entry point starts. Not executed: commands that change the machine rather than
the environment (`useradd`, `groupadd`, `apt-get`, `chown`), which belong to the container.

Layers are cached like Docker's: a RUN step is skipped when its instruction and everything copied
before it are unchanged since it last ran in this environment (so the dependency layer is built once
per machine and the code layer again after every change). Environments live under
`.tools/image-envs/<image>/`.
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SKIPPED_COMMANDS = ("useradd", "groupadd", "apt-get", "chown")


@dataclass
class Instruction:
    """One Dockerfile instruction: `keyword` (upper case) and its text, continuation lines joined."""

    keyword: str
    text: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile (comments dropped, `\\` continuations joined)."""
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        lines.append(buf.strip())
        buf = ""
    out = []
    for text in lines:
        keyword, _, rest = text.partition(" ")
        out.append(Instruction(keyword.upper(), rest.strip()))
    return out


@dataclass
class ImageEnv:
    """The environment of one image (`name`), built from `dockerfile` with the repository `root` as context."""

    name: str
    dockerfile: Path
    root: Path
    home: Path = field(init=False)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.home = self.root / ".tools" / "image-envs" / self.name
        self.log = self.home / "build.log"

    @property
    def venv(self) -> Path:
        return self.home / "venv"

    @property
    def workdir(self) -> Path:
        """The staging folder standing for the image's WORKDIR (what COPY put there)."""
        return self.home / "workdir"

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name

    def environ(self) -> dict[str, str]:
        """The environment an entry point runs with: the Dockerfile's ENV, the venv first on PATH."""
        env = dict(os.environ)
        env.update(self._env)
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        env.pop("PYTHONPATH", None)
        for key in ("HOME",):  # a folder of the image's, not of this machine
            if key in self._env:
                env[key] = str(self.home / "home")
                Path(env[key]).mkdir(parents=True, exist_ok=True)
        return env

    def build(self, timeout: float = 1800.0) -> "ImageEnv":
        """Run the Dockerfile's steps into the environment (cached layers skipped).

        Raises:
            RuntimeError: a step failed; the message names it and ends with its output's tail.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.bin("python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True)
        self._env: dict[str, str] = {}
        layer = hashlib.sha256(self.dockerfile.read_bytes())
        for ins in parse_dockerfile(self.dockerfile):
            if ins.keyword == "ARG":
                name, _, default = ins.text.partition("=")
                self._env[name.strip()] = default.strip().strip('"')
            elif ins.keyword == "ENV":
                for item in shlex.split(ins.text):
                    key, _, value = item.partition("=")
                    self._env[key] = value
            elif ins.keyword == "WORKDIR":
                self.workdir.mkdir(parents=True, exist_ok=True)
            elif ins.keyword == "COPY":
                *sources, dest = shlex.split(ins.text)
                for src in sources:
                    layer.update(self._copy(self.root / src, dest, src))
            elif ins.keyword == "RUN":
                layer.update(ins.text.encode())
                self._run(ins.text, layer.hexdigest(), timeout)
        return self

    def _copy(self, src: Path, dest: str, shown: str) -> bytes:
        """COPY `src` to `dest` (relative to WORKDIR): a folder's contents to `dest`, a file into `dest` when it
        ends with `/` (or is `.`), else to `dest`. Returns a digest of what was copied (the layer's input)."""
        target = self.workdir / dest  # a folder's contents go to dest; a file into dest/ or to dest
        if src.is_file() and (dest.endswith("/") or dest in (".", "./")):
            target = target / src.name
        digest = hashlib.sha256(shown.encode())
        if src.is_dir():
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
            for f in sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
                digest.update(str(f.relative_to(src)).encode() + f.read_bytes())
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
            digest.update(src.read_bytes())
        return digest.digest()

    def _run(self, command: str, layer: str, timeout: float) -> None:
        marker = self.home / "layers" / layer
        if marker.exists():
            return
        kept = [part for part in re.split(r"\s&&\s", command)
                if not part.strip().split(" ")[0] in SKIPPED_COMMANDS]
        script = " && ".join(kept)
        env = self.environ()
        with self.log.open("a") as log:
            log.write(f"\n$ {script}\n")
            log.flush()
            r = subprocess.run(["bash", "-c", script], cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                               timeout=timeout)
        if r.returncode != 0:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-25:])
            raise RuntimeError(f"{self.dockerfile.relative_to(self.root)}: `RUN {command}` failed "
                               f"(exit {r.returncode}):\n{tail}")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(command)
