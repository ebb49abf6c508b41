"""vipps-proxy: an authenticating reverse proxy for the Vipps MobilePay APIs.

Legacy apps talk plain HTTP to the proxy; the proxy holds the credentials, fetches and
refreshes access tokens, injects them, and streams each call to Vipps and back.

The map, one concept per module:

- ``config``: TOML in, frozen dataclasses out; ``${ENV}`` and ``${file:...}``; errors
  name the key (``ConfigError``); one module per section of the file (its own package
  map)
- ``secret``: ``Secret``, a string that never shows itself
- ``tokens``: ``TokenProvider``, one token cache per credential set: shared fetch,
  early background refresh, backoff, invalidation on 401
- ``tokenfetch``: one token fetch: the request each token style asks with, the answer
  read whole and checked, the token's lifetime and refresh time
- ``access``: who gets in: socket peer address and client keys
- ``inbound``: request shapes refused before anything goes upstream
- ``routing``: path normalisation, longest-prefix routes, credential set by MSN
- ``headers``: header policy as data: hop-by-hop, client credentials, what we inject
- ``forwarding``: ``Forwarder``: body in, upstream call, answer streamed back, the one
  safe replay; the one place upstream errors become 502/504
- ``calls``: ``CallRecord``, what one call's log line and metrics report
- ``upstream``: ``UpstreamPool``: keep-alive HTTP/1.1 connections to upstreams,
  limited per origin; the request head and its framing, written by the pool; the one
  safe resend on a connection found closed
- ``upstream_connection``: one upstream connection over aiohttp's client protocol (its
  parser, flow control, read time-outs): connecting, the answer's head read and
  checked, interim answers, a streamed request body sent
- ``resolver``: ``Resolver``: upstream name look-ups shared while under way, kept 10 s
- ``relayed_response``: ``RelayedResponse``: the upstream's answer to the client, its
  head as received; interim 1xx answers relayed first
- ``errors``: the proxy's own errors and their problem+json answers
- ``admin``: ``/-/health``, ``/-/ready``, ``/-/metrics``, legacy token calls answered
  with a placeholder
- ``app``: ``ProxyApp``, the handler every call meets (checks, dispatch, one log line)
- ``runner``: ``ProxyRunner``, which serves it on aiohttp's low-level server: start,
  drain and close; client connections counted, refused requests answered our way
- ``aiohttp_seam``: the one module that touches aiohttp's private or undocumented
  parts, each listed with why and the versions verified
- ``state``: ``ProxyState``, one config's snapshot: what every part of a call reads,
  built whole by ``build_state`` and frozen
- ``reload``: ``Reloader``, the one owner of reloading: SIGHUP and files watched by
  content; a new snapshot built whole (a changed credential set fetching first) and
  swapped in, or the reload refused with the old one serving
- ``metrics``: Prometheus metrics, one registry per app
- ``families``: ``ScrapeCollector`` and ``family``, the one way the proxy's collectors
  make metric families at scrape time
- ``groupmetrics``: with several workers, each one's metrics shared through the run's
  folder, so that one scrape shows the whole group
- ``logs``: structlog JSON lines (orjson), aiohttp's logs rendered alike
- ``redact``: ``Redactor``, scrubs known secret values from every log line
- ``tls``: outbound and inbound SSL contexts (the listener bounding TLS handshakes is
  ``aiohttp_seam.HandshakeBoundSite``)
- ``server``: listening, workers sharing a port, draining on SIGTERM, SIGHUP passed on
- ``startup``: ``StartupError``, a failure to listen or load a certificate as one line
  naming the key or flag
- ``demo``: ``vipps-proxy demo`` and ``vipps-proxy emulator``
- ``cli``: the command line
- ``emulator``: a Vipps emulator (its own package map) for offline work and the tests
- ``webhooks``: inbound Vipps webhooks and eCom callbacks, verified, stored and
  relayed to the legacy app (its own package map)
"""

from importlib import metadata

try:  # pyproject.toml holds the version; the installed metadata carries it here
    __version__ = metadata.version("vipps-proxy")
except metadata.PackageNotFoundError:  # pragma: no cover - a source tree never installed
    __version__ = "0+unknown"
