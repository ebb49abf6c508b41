"""What the config's strings refer to: ``${NAME}``, ``${NAME:-default}``, ``${file:...}``,
the paths taken from the config file's folder, and every file the config names.

Interpolation runs over the whole parsed document before any section is read; each
reference that cannot be resolved is collected, so one run names every missing variable.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from proxy.config.server import ServerConfig
from proxy.config.tls import TLSConfig
from proxy.config.values import ConfigError, join, read_secret_file

_REF = re.compile(r"\$\{([^}]*)\}")


def interpolate(
    value: Any, key: str, env: Mapping[str, str], errors: list[ConfigError], base: Path | None
) -> Any:
    """``value`` with every reference resolved; each one that cannot be goes to ``errors``."""
    if isinstance(value, str):
        return _REF.sub(lambda m: _resolve_or_note(m.group(1), key, env, errors, base), value)
    if isinstance(value, dict):
        return {k: interpolate(v, join(key, k), env, errors, base) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{key}[{i}]", env, errors, base) for i, v in enumerate(value)]
    return value


def _resolve_or_note(
    ref: str, key: str, env: Mapping[str, str], errors: list[ConfigError], base: Path | None
) -> str:
    try:
        return _resolve(ref, key, env, base)
    except ConfigError as exc:
        errors.append(exc)
        return ""


def _resolve(ref: str, key: str, env: Mapping[str, str], base: Path | None) -> str:
    if ref.startswith("file:"):
        return read_secret_file(at(base, ref[5:]), key)
    name, sep, default = ref.partition(":-")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(key, f"bad reference ${{{ref}}}")
    if name in env:
        return env[name]
    if sep:
        return default
    raise ConfigError(key, f"environment variable {name} is not set")


#: Keys (``section.name``) whose value is a path; so is every ``*_file`` key.
_PATH_KEYS: Final = frozenset(
    {
        "server.tls_cert",
        "server.tls_key",
        "server.client_ca",
        "tls.ca_bundle",
        "tls.client_cert",
        "tls.client_key",
        "store.path",
    }
)


def at(base: Path | None, path: str) -> str:
    """``path`` taken from ``base`` (the config file's folder) if it is relative."""
    if base is None or not path or Path(path).is_absolute():
        return path
    return str(base / path)


def anchor_paths(data: Any, key: str, base: Path | None) -> None:
    """Every path in the (interpolated) document made absolute from ``base``, in place:
    one rule for secret files, certificates, CA bundles and the store."""
    if isinstance(data, list):
        for i, item in enumerate(data):
            anchor_paths(item, f"{key}[{i}]", base)
    if not isinstance(data, dict):
        return
    for name, value in data.items():
        full = join(key, name)
        if isinstance(value, str) and (name.endswith("_file") or full in _PATH_KEYS):
            data[name] = at(base, value)
        else:
            anchor_paths(value, full, base)


def named_files(
    raw: Mapping[str, Any],
    resolved: Mapping[str, Any],
    server: ServerConfig,
    tls: TLSConfig,
    source: str,
    base: Path | None,
) -> tuple[str, ...]:
    """The config file and every file it names, each once, in a stable order."""
    found: list[str] = [source] if source else []

    def walk(value: Any, resolved_value: Any) -> None:
        if isinstance(value, str):
            refs = (m.group(1) for m in _REF.finditer(value))
            found.extend(at(base, ref[5:]) for ref in refs if ref[:5] == "file:")
        elif isinstance(value, dict):
            for key, item in value.items():
                other = resolved_value.get(key) if isinstance(resolved_value, dict) else None
                if key.endswith("_file") and isinstance(other, str):
                    found.append(other)
                walk(item, other)
        elif isinstance(value, list):
            others = resolved_value if isinstance(resolved_value, list) else []
            for i, item in enumerate(value):
                walk(item, others[i] if i < len(others) else None)

    walk(dict(raw), resolved)
    found += [server.tls_cert, server.tls_key, server.client_ca]
    found += [tls.ca_bundle, tls.client_cert, tls.client_key]
    return tuple(dict.fromkeys(path for path in found if path))


def file_digests(paths: Iterable[str]) -> dict[str, str]:
    """Each file's content hash (through symlinks); an unreadable file hashes as ``-``."""
    found: dict[str, str] = {}
    for path in paths:
        try:
            found[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            found[path] = "-"
    return found
