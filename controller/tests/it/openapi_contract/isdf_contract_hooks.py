"""schemathesis hooks for the OpenAPI contract test (openapi_contract.rs).

List cursors are opaque: the server's own encoding of the last sort key,
handed out as `next_cursor`. No JSON Schema can tell a valid one from any
other string, so generated cursors are left out of requests (the paging
tests in api.rs follow real ones); every other parameter is generated.

The device API's probe sends a UDP datagram to each WAN address it is
given: generated addresses are mapped to loopback (of their family) so
the run sends nothing beyond this machine; text that is no address stays
as generated, to be refused.
"""

import ipaddress

import schemathesis


@schemathesis.hook
def map_query(context, query):
    if query and "cursor" in query:
        query = {name: value for name, value in query.items() if name != "cursor"}
    return query


def _loopback(value):
    if not isinstance(value, str):
        return value
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return value
    return "::1" if address.version == 6 else "127.0.0.1"


@schemathesis.hook
def map_body(context, body):
    path = context.operation.path
    if (
        path == "/device/v1/wireguard/probe"
        and isinstance(body, dict)
        and isinstance(body.get("wan_addresses"), list)
    ):
        body = {**body, "wan_addresses": [_loopback(a) for a in body["wan_addresses"]]}
    return body
