"""Vipps Login: OpenID discovery and userinfo, which a proxy passes untouched.

Userinfo wants a token the emulator issued and no subscription key: like the real
endpoint, it refuses any other bearer and a request that carries
``Ocp-Apim-Subscription-Key``.
"""

from aiohttp import web

from .answers import INVALID_SUBSCRIPTION_KEY, INVALID_TOKEN, MISSING_TOKEN, apim_error
from .credentials import SUBSCRIPTION_KEY, bearer_token
from .keys import request_state

LOGIN_PREFIX = "/access-management-1.0/access"
USERINFO_PATH = "/vipps-userinfo-api/userinfo"


async def openid_configuration(request: web.Request) -> web.StreamResponse:
    """``GET .../.well-known/openid-configuration``: the discovery document, no auth."""
    base = f"{request.url.origin()}{LOGIN_PREFIX}"
    return web.json_response(
        {
            "issuer": f"{base}/",
            "authorization_endpoint": f"{base}/oauth2/auth",
            "token_endpoint": f"{base}/oauth2/token",
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "userinfo_endpoint": f"{request.url.origin()}{USERINFO_PATH}",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public", "pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "name", "email", "phoneNumber", "address"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "grant_types_supported": ["authorization_code", "client_credentials"],
        }
    )


async def userinfo(request: web.Request) -> web.StreamResponse:
    """``GET /vipps-userinfo-api/userinfo[/{sub}]``: a made-up user."""
    if SUBSCRIPTION_KEY in request.headers:
        return apim_error(401, INVALID_SUBSCRIPTION_KEY)
    token = bearer_token(request)
    if token is None:
        return apim_error(401, MISSING_TOKEN)
    if request_state(request).token_owner(token) is None:
        return apim_error(401, INVALID_TOKEN)
    sub = request.match_info.get("sub", "c06c4afe-d9e1-4c5d-939a-177d752a0944")
    return web.json_response(
        {
            "sub": sub,
            "name": "Ada Lovelace",
            "given_name": "Ada",
            "family_name": "Lovelace",
            "email": "ada@example.com",
            "email_verified": True,
            "phone_number": "4712345678",
            "sid": "7d78a726-af92-499e-b857-de263ef9a969",
        }
    )
