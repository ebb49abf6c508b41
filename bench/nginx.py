"""nginx configs: the fast upstream every proxy talks to, and the reference reverse proxy.

The upstream answers every path with one small JSON body, serves a large file under
``/files/`` (sendfile) and accepts uploads under ``/upload/`` (WebDAV ``PUT``, which
reads the whole body before answering). The reference proxy injects the same two
headers vipps-proxy does for a bearer route, keeps upstream connections alive and
streams bodies both ways without temp files.
"""

from __future__ import annotations

import os
from pathlib import Path

#: A Vipps-like answer: what a payment lookup might return.
SMALL_JSON = (
    '{"reference":"bench-0001","state":"AUTHORIZED","aggregate":{"authorizedAmount":'
    '{"currency":"NOK","value":4900},"capturedAmount":{"currency":"NOK","value":0}},'
    '"pspReference":"8391047293","redirectUrl":"https://example.com/redirect"}'
)


def _header(prefix: Path, name: str) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 1;\n"
        "daemon off;\n"
        f"pid {prefix / (name + '.pid')};\n"
        f"error_log {prefix / (name + '-error.log')} warn;\n"
        "events { worker_connections 4096; multi_accept on; }\n"
    )


def _http_common(prefix: Path, name: str) -> str:
    return (
        "access_log off;\n"
        "sendfile on; tcp_nopush on; tcp_nodelay on;\n"
        "keepalive_requests 10000000; keepalive_timeout 120s;\n"
        f"client_body_temp_path {prefix / (name + '-body')};\n"
        f"proxy_temp_path {prefix / (name + '-proxy')};\n"
        f"fastcgi_temp_path {prefix / (name + '-fcgi')};\n"
        f"uwsgi_temp_path {prefix / (name + '-uwsgi')};\n"
        f"scgi_temp_path {prefix / (name + '-scgi')};\n"
    )


def upstream_conf(prefix: Path, port: int, www: Path) -> str:
    """The fast upstream on 127.0.0.1:``port``; large files live in ``www``."""
    body = SMALL_JSON.replace("'", "\\'")
    return (
        _header(prefix, "upstream") + "http {\n" + _http_common(prefix, "upstream") + "  server {\n"
        f"    listen 127.0.0.1:{port} backlog=4096;\n"
        f"    root {www};\n"
        "    location /files/ { }\n"
        "    location /upload/ {\n"
        "      dav_methods PUT; create_full_put_path on;\n"
        "      client_max_body_size 0; client_body_buffer_size 256k;\n"
        "    }\n"
        "    location / {\n"
        "      default_type application/json;\n"
        f"      return 200 '{body}';\n"
        "    }\n"
        "  }\n"
        "}\n"
    )


def proxy_conf(prefix: Path, port: int, upstream_port: int, token: str, key: str) -> str:
    """nginx as a reverse proxy to the upstream, adding a bearer token and the key."""
    return (
        _header(prefix, "proxy")
        + "http {\n"
        + _http_common(prefix, "proxy")
        + f"  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}\n"
        "  server {\n"
        f"    listen 127.0.0.1:{port} backlog=4096;\n"
        "    client_max_body_size 0; client_body_buffer_size 256k;\n"
        "    location / {\n"
        "      proxy_pass http://up;\n"
        "      proxy_http_version 1.1;\n"
        '      proxy_set_header Connection "";\n'
        f'      proxy_set_header Authorization "Bearer {token}";\n'
        f'      proxy_set_header Ocp-Apim-Subscription-Key "{key}";\n'
        "      proxy_request_buffering off;\n"
        "      proxy_buffering on; proxy_max_temp_file_size 0;\n"
        "      proxy_buffer_size 256k; proxy_buffers 8 256k; proxy_busy_buffers_size 512k;\n"
        "    }\n"
        "  }\n"
        "}\n"
    )
