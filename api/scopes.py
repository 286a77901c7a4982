"""What a token may see and run beyond its route's scope (no token gets more than its
scope): a function's env values are the admin's (secrets go there); a one-off job runs
what its spec names, so submitting or replaying one needs the admin scope, unless it is a
docker job of an allow-listed image, without network, within the invoke tokens' time
budget over all its attempts."""

from __future__ import annotations

import fnmatch
from typing import Any

from aiohttp import web

from hodei.api.settings import GatewaySettings
from hodei.api.state import Gateway
from hodei.domain import is_job
from hodei.errors import Conflict, InvalidSpec, NotFound
from hodei.plugin.models import FunctionSpec

# What a caller without the admin scope reads in place of each env value; a spec that
# carries it back (PUT, a job) is refused, so a redacted read never overwrites the values.
HIDDEN = "(hidden: needs the admin scope)"
ENV_REDACTED = "env_redacted"  # true in a function read with its env values hidden


def function_view(spec: FunctionSpec, scopes: frozenset[str]) -> dict[str, Any]:
    """A function as this caller may see it: env names always, values for admins only."""
    view = spec.to_dict()
    if spec.env and "admin" not in scopes:
        view["env"] = dict.fromkeys(spec.env, HIDDEN)
        view[ENV_REDACTED] = True
    return view


def refuse_hidden_env(raw: dict[str, Any]) -> None:
    """422 for a spec that was read with its env values hidden (PUT back, or run as a job)."""
    why = (
        "this spec was read without the admin scope, so its env values are hidden; give the "
        "values (a token with the admin scope reads them)"
    )
    env = raw.get("env")
    if isinstance(env, dict):
        for name, value in env.items():
            if value == HIDDEN:
                raise InvalidSpec(f"env.{str(name)[:128]}", why)
    if raw.get(ENV_REDACTED) is True:  # (anything else is an unknown field: from_dict)
        raise InvalidSpec(
            ENV_REDACTED,
            "a spec as read without the admin scope: give the env values and "
            f"leave {ENV_REDACTED} out",
        )


def job_image_allowed(spec: FunctionSpec, patterns: tuple[str, ...]) -> bool:
    """A docker job of an allow-listed image, kept off the network: what runs is the
    image's, confined by the container, whatever its command."""
    return (
        spec.runtime == "docker"
        and not spec.network
        and any(fnmatch.fnmatchcase(spec.image, pattern) for pattern in patterns)
    )


def check_job(
    spec: FunctionSpec, scopes: frozenset[str], settings: GatewaySettings, doing: str
) -> None:
    """Whether this caller may run this one-off job's spec, ``doing`` "submit" or "replay"
    (the same rule for both): 403 without the admin scope unless its image is allowed and
    its attempts fit in the invoke tokens' time budget (the spec is valid: an admin may run
    it)."""
    if "admin" in scopes:
        return
    if not job_image_allowed(spec, settings.job_images):
        allowed = ", ".join(settings.job_images) or "none here"
        lead = (
            "replaying this one-off job needs the admin scope, as submitting its spec would: "
            "a one-off job runs the command it names"
            if doing == "replay"
            else "a one-off job runs the command it names, so it needs the admin scope"
        )
        raise web.HTTPForbidden(
            reason=f"{lead}; an invoke token may {doing} docker jobs without network of the "
            f"job_images ({allowed})"
        )
    budget = settings.invoke_job_budget_s
    attempts = 1 + spec.max_retries
    asked = spec.timeout_s * attempts
    if not asked <= budget:  # (so that a budget of NaN refuses: fail closed)
        raise web.HTTPForbidden(
            reason=f"an invoke token's job may take {budget:g} s of a worker over all its "
            f"attempts (the gateway's invoke_job_budget_s); this one may take {asked:g} "
            f"(timeout_s {spec.timeout_s:g} for each of {attempts} attempts, 1 + max_retries): "
            "lower either, or use an admin token"
        )


async def check_replay(gw: Gateway, invocation_id: str, scopes: frozenset[str]) -> None:
    """Replaying a one-off job needs what submitting its spec would need now; replaying a
    registered function's invocation, the invoke scope of the route alone."""
    if "admin" in scopes:
        return
    found = await gw.data.invocations.get(invocation_id)
    if not is_job(found.revision):
        return
    try:
        spec = await gw.data.functions.spec(found.function, found.revision)
    except NotFound:
        raise Conflict(f"invocation {invocation_id} can no longer be replayed (expired)") from None
    check_job(spec, scopes, gw.settings, "replay")
