"""schemathesis hooks for the OpenAPI contract test (openapi_contract.rs).

List cursors are opaque: the server's own encoding of the last sort key,
handed out as `next_cursor`. No JSON Schema can tell a valid one from any
other string, so generated cursors are left out of requests (the paging
tests in api.rs follow real ones); every other parameter is generated.
"""

import schemathesis


@schemathesis.hook
def map_query(context, query):
    if query and "cursor" in query:
        query = {name: value for name, value in query.items() if name != "cursor"}
    return query
