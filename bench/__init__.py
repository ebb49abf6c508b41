"""``python -m bench``: what vipps-proxy adds to a call, measured against floors in one run.

One concept per module:

- ``plan``: how long and how hard each measurement runs (full, ``--quick``);
- ``tools``: finds wrk, nginx and curl, installing the Debian packages when missing;
- ``machine``: the machine's description and how the CPUs are split;
- ``procs``: CPU time and memory of a process tree, from ``/proc``;
- ``nginx``: the two nginx configs (fast upstream, reference reverse proxy);
- ``hello``: the bare aiohttp server, the floor (``python -m bench.hello``);
- ``servers``: starting, checking and stopping every server of the run;
- ``wrk`` and ``wrk.lua``: saturation and fixed-rate load, parsed from wrk;
- ``openloop``: an open-loop asyncio client that keeps every call's time;
- ``stream``: 1 GiB up and down with curl while the proxy's memory is sampled;
- ``scenarios``: the four measurements;
- ``report``: the table, the targets and the JSON file;
- ``profile``: a py-spy profile of the proxy under load (``--profile``).

Only loopback addresses receive traffic; every load has a count or a duration and a
time-out.
"""
