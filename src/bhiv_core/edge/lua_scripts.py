"""The edge's Lua scripts: the health router, and fixed replies.

The fixed replies refuse protocols the edge does not speak and an unknown ``x-bhiv-service``.

They run in Envoy's Lua filter, which has no default script: each runs only on the routes that name
it, so every other request pays nothing for them.

**Fixed replies** are local replies made by a Lua script on an ordinary route rather than a route's
``direct_response``, because Envoy's CORS filter skips direct-response routes, and a browser lets a
page read a reply only when it carries ``access-control-allow-origin``.

**The health router.** A health call's path is the same for every service
(``/grpc.health.v1.Health/Check``); the service it asks about is in the request body, which
Envoy's route table cannot see. The script runs only on health calls without an ``x-bhiv-service``
header, reads the ``service`` field from the one framed ``HealthCheckRequest``, and fills that
header in, so the ordinary header routes send the call on:

* ``Check`` / ``Watch`` naming a service: to the service whose package owns the name
  (``bhiv.crm.v1.CustomerService`` → crm). A name no package owns gets no header and goes to any
  live service, which answers as the health protocol says: NOT_FOUND (``Watch``: SERVICE_UNKNOWN).
* ``Check`` of ``""``, the edge's own view of the mesh: the script first asks every service's
  overall health (``Check("")`` on each service's cluster, one after another, 1 s each at most;
  each Envoy worker reuses its answer for the rest of that second, so a flood of such checks does
  not multiply into the services).
  When all answer SERVING the call goes to any of them and answers SERVING; otherwise it goes to the
  first that did not, so the reply is that service's own answer (NOT_SERVING, or UNAVAILABLE when
  the edge cannot reach it), and the ``x-bhiv-not-serving`` response header names every such
  service.
* ``Watch`` of ``""`` and ``List`` are answered here, UNIMPLEMENTED with a hint: the edge keeps
  no stream or list of the whole mesh; one service's come with ``x-bhiv-service``.
* A request it cannot read (compressed, or not one message) is INVALID_ARGUMENT with a hint. One
  larger than Envoy buffers for a filter (a stream's window) is refused by Envoy before the script
  sees it: RESOURCE_EXHAUSTED, by the edge's local-reply mapping.

The health router's own replies are gRPC trailers-only local replies (status and message in
headers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from bhiv_core.registry import ACCESS_LOG_STATUS_METADATA

__all__ = [
    "GRPC_STATUS_METADATA",
    "NOT_SERVING_HEADER",
    "NOT_SERVING_METADATA",
    "PROBE_USER_AGENT",
    "grpc_status_script",
    "health_router_script",
    "reply_script",
    "rewrite_script",
]

NOT_SERVING_HEADER: Final = "x-bhiv-not-serving"
"""Response header of an empty-name ``Check`` through the edge: the services not SERVING, comma-separated."""

PROBE_USER_AGENT: Final = "bhiv-edge-mesh-health"
"""The user agent of the health router's own checks of each service, which tells them from other callers'."""

GRPC_STATUS_METADATA: Final = ACCESS_LOG_STATUS_METADATA
"""Where the status step leaves the upstream's ``grpc-status`` (dynamic metadata namespace and key)."""

NOT_SERVING_METADATA: Final = ("bhiv.health", "not_serving")
"""Where the script leaves that list (dynamic metadata namespace and key) for the routes to copy."""

_SCRIPT: Final = r"""
local CHECK = "/grpc.health.v1.Health/Check"
local WATCH = "/grpc.health.v1.Health/Watch"
local LIST = "/grpc.health.v1.Health/List"
local EMPTY_REQUEST = "\0\0\0\0\0"
local SERVING_REPLY = "\0\0\0\0\2\8\1"
local PROBE_TIMEOUT_MS = 1000
-- One look at the mesh serves every empty-name Check of this worker for the rest of the second,
-- so a flood of them costs the services at most one round of checks per worker per second.
local mesh_checked_at, mesh_not_serving = nil, {}
local INVALID_ARGUMENT, UNIMPLEMENTED = "3", "12"

-- Reads a protobuf varint at i; returns the value and the next index, or nil.
local function varint(bytes, i)
  local value, scale = 0, 1
  while i <= #bytes and scale <= 2 ^ 63 do
    local byte = bytes:byte(i)
    i = i + 1
    value = value + (byte % 128) * scale
    if byte < 128 then return value, i end
    scale = scale * 128
  end
  return nil, i
end

-- The service field (1) of the one uncompressed gRPC message in frame: "" when it is absent,
-- nil when the frame is not exactly one readable message.
local function requested_service(frame)
  if #frame < 5 or frame:byte(1) ~= 0 then return nil end
  local length = ((frame:byte(2) * 256 + frame:byte(3)) * 256 + frame:byte(4)) * 256 + frame:byte(5)
  if #frame ~= 5 + length then return nil end
  local name, i, last = "", 6, #frame
  while i <= last do
    local key, size
    key, i = varint(frame, i)
    if key == nil then return nil end
    local field, wire = math.floor(key / 8), key % 8
    if wire == 0 then
      size, i = varint(frame, i)
      if size == nil then return nil end
    elseif wire == 1 then
      i = i + 8
    elseif wire == 2 then
      size, i = varint(frame, i)
      if size == nil or i + size - 1 > last then return nil end
      if field == 1 then name = frame:sub(i, i + size - 1) end
      i = i + size
    elseif wire == 5 then
      i = i + 4
    else
      return nil
    end
  end
  if i ~= last + 1 then return nil end
  return name
end

local function owner(name)
  for _, entry in ipairs(OWNERS) do
    if name:sub(1, #entry[1]) == entry[1] then return entry[2] end
  end
  return nil
end

local function serving(handle, cluster)
  local _, body = handle:httpCall(cluster, {
    [":method"] = "POST",
    [":path"] = CHECK,
    [":authority"] = cluster,
    ["content-type"] = "application/grpc",
    ["te"] = "trailers",
    ["user-agent"] = PROBE_USER_AGENT,
  }, EMPTY_REQUEST, PROBE_TIMEOUT_MS)
  return body == SERVING_REPLY
end

-- The services that do not answer SERVING now, in registry order (at most a second old).
local function not_serving_now(handle)
  local now = os.time()
  if mesh_checked_at == now then return mesh_not_serving end
  local found = {}
  for _, entry in ipairs(OWNERS) do
    if not serving(handle, entry[2]) then found[#found + 1] = entry[2] end
  end
  mesh_checked_at, mesh_not_serving = now, found
  return found
end

-- A gRPC trailers-only reply. The message goes in grpc-message, not the body, and the content type
-- is gRPC's, so that the grpc_web filter passes the status on to gRPC-web callers unchanged.
local function reply(handle, code, message)
  handle:respond({
    [":status"] = "200",
    ["content-type"] = "application/grpc",
    ["grpc-status"] = code,
    ["grpc-message"] = message,
  }, "")
end

function envoy_on_request(handle)
  local path = handle:headers():get(":path")
  if path == LIST then
    return reply(handle, UNIMPLEMENTED, "the edge lists no mesh-wide health: List one service with the "
      .. SERVICE_HEADER .. " header (" .. NAMES .. ")")
  end
  if path ~= CHECK and path ~= WATCH then return end
  local body = handle:body()
  local name = body and requested_service(body:getBytes(0, body:length()))
  if name == nil then
    return reply(handle, INVALID_ARGUMENT, "the edge reads the service name of an uncompressed health "
      .. "request only; send it uncompressed, or pick the service with the " .. SERVICE_HEADER .. " header")
  end
  if name ~= "" then
    local cluster = owner(name)
    -- Headers are fetched again: an object taken before handle:body() yielded is no longer valid.
    if cluster ~= nil then handle:headers():replace(SERVICE_HEADER, cluster) end
    return
  end
  if path == WATCH then
    return reply(handle, UNIMPLEMENTED, "the edge streams no mesh-wide health: Watch a service by its "
      .. "name, or one service's overall health with the " .. SERVICE_HEADER .. " header (" .. NAMES .. ")")
  end
  local not_serving = not_serving_now(handle)
  if #not_serving > 0 then
    handle:headers():replace(SERVICE_HEADER, not_serving[1])
    -- The health routes copy this into the response header NOT_SERVING_HEADER.
    handle:streamInfo():dynamicMetadata():set(METADATA[1], METADATA[2], table.concat(not_serving, ","))
  end
end
"""


def _lua_string(value: str) -> str:
    """Quote ``value`` as a Lua string literal.

    Its UTF-8 bytes go in as they are when they are letters, digits or ``._-/ ,``, otherwise as
    decimal escapes, so no value can end the literal or change the script.
    """
    plain = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/ ,")
    return '"' + "".join(chr(b) if b in plain else f"\\{b:03d}" for b in value.encode()) + '"'


def health_router_script(owners: Sequence[tuple[str, str]], service_header: str) -> str:
    """Returns the Lua source of the health router for these services.

    Args:
        owners: ``(name prefix, cluster)`` per service, in registry order, like
            ``("bhiv.crm.v1.", "crm")``; a health name starting with the prefix belongs to the cluster.
            An empty-name ``Check`` asks the clusters in this order.
        service_header: The request header the health routes route by (``x-bhiv-service``).

    Returns:
        The script, for ``Lua.source_codes``.
    """
    table = ",\n".join(f"  {{{_lua_string(prefix)}, {_lua_string(cluster)}}}" for prefix, cluster in owners)
    namespace, key = NOT_SERVING_METADATA
    preamble = "\n".join(
        (
            "-- Generated by bhiv_core.edge.lua_scripts from the registry; see that module's docstring.",
            f"local OWNERS = {{\n{table},\n}}",
            f"local NAMES = {_lua_string(', '.join(cluster for _, cluster in owners))}",
            f"local SERVICE_HEADER = {_lua_string(service_header)}",
            f"local METADATA = {{{_lua_string(namespace)}, {_lua_string(key)}}}",
            f"local PROBE_USER_AGENT = {_lua_string(PROBE_USER_AGENT)}",
        )
    )
    return preamble + "\n" + _SCRIPT


def reply_script(status: int, body: str, headers: Mapping[str, str]) -> str:
    """Returns the Lua source that answers every request it sees with ``status``, ``headers`` and ``body``.

    Args:
        status: The HTTP status, like 415.
        body: The response body.
        headers: Response headers, like ``{"content-type": "application/json"}``.
    """
    fields = "".join(f"[{_lua_string(k)}] = {_lua_string(v)}, " for k, v in headers.items())
    return (
        "-- Generated by bhiv_core.edge.lua_scripts: a fixed reply, made before any upstream is asked.\n"
        "function envoy_on_request(handle)\n"
        f'  handle:respond({{[":status"] = "{status}", {fields}}}, {_lua_string(body)})\n'
        "end\n"
    )


def rewrite_script(headers: Mapping[str, str]) -> str:
    """Returns the Lua source that sets request ``headers`` (pseudo-headers too) and lets the request go on.

    The Lua filter clears the route cache after it, so the rewritten request is routed afresh.

    Args:
        headers: Request headers to set, like ``{":path": "/pkg.Service/Method"}``.
    """
    sets = "".join(f"  headers:replace({_lua_string(k)}, {_lua_string(v)})\n" for k, v in headers.items())
    return (
        "-- Generated by bhiv_core.edge.lua_scripts: a request rewritten before the filters after it.\n"
        "function envoy_on_request(handle)\n"
        "  local headers = handle:headers()\n"
        f"{sets}"
        "end\n"
    )


def grpc_status_script() -> str:
    """The status step: copies the upstream reply's ``grpc-status`` into dynamic metadata.

    From the response headers of a trailers-only reply, else from the trailers, which the script
    waits for without holding the body back (``handle:trailers()`` lets data pass). A reply without
    a status (a reset, an HTTP error) leaves nothing. Runs on the response only.
    """
    namespace, key = GRPC_STATUS_METADATA
    return f"""
function envoy_on_response(handle)
  local status = handle:headers():get("grpc-status")
  if status == nil then
    local trailers = handle:trailers()
    if trailers ~= nil then
      status = trailers:get("grpc-status")
    end
  end
  if status ~= nil then
    handle:streamInfo():dynamicMetadata():set("{namespace}", "{key}", status)
  end
end
"""
