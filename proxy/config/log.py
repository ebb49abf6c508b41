"""``[log]``: the log level and format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from proxy.config.values import Table

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("json", "console")


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "json"


def parse_log(t: Table) -> LogConfig:
    t.allow_only("level", "format")
    return LogConfig(
        level=t.choice("level", LOG_LEVELS, "info"),
        format=t.choice("format", LOG_FORMATS, "json"),
    )
