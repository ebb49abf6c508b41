"""The typed keys the emulator keeps things under, declared once, and their accessors."""

from aiohttp import web

from .faults import Faults
from .state import EmulatorState

STATE_KEY = web.AppKey("vipps_emulator_state", EmulatorState)
# Set on a request whose body a fault must break; a streaming handler acts it out.
BODY_FAULT_KEY = web.RequestKey("vipps_emulator_body_fault", Faults)
# Set on a request answered with a fault acted out: that answer is meant to be wrong.
FAULTED_KEY = web.RequestKey("vipps_emulator_faulted", bool)


def emulator_state(app: web.Application) -> EmulatorState:
    """The state of an emulator (or of its admin app)."""
    return app[STATE_KEY]


def request_state(request: web.Request) -> EmulatorState:
    """The state of the emulator serving ``request``."""
    return request.config_dict[STATE_KEY]
