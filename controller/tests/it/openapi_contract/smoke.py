"""A client generated from the operator API's OpenAPI document (by
openapi-python-client) drives the operator's first steps: register a
router, create a service, assign it, read the router's compiled config.

Run by controller/tests/it/openapi_contract.rs with the generated package
`isdf_client` on PYTHONPATH, ISDF_API_URL and ISDF_TOKEN set. Every answer
is parsed into the generated models, so a document that does not describe
what is served fails here.
"""

import json
import os
import sys

from isdf_client import AuthenticatedClient
from isdf_client.api.assignments import assignments_create
from isdf_client.api.devices import devices_config, devices_create, devices_get
from isdf_client.api.services import services_create
from isdf_client.models import (
    AssignmentView,
    CompiledConfigView,
    CreateAssignment,
    CreateDevice,
    CreateService,
    DeviceCreated,
    DeviceView,
    ErrorBody,
    ServiceView,
)


def expect(value, model, what):
    if not isinstance(value, model):
        detail = value.to_dict() if hasattr(value, "to_dict") else value
        sys.exit(f"{what}: expected {model.__name__}, got {detail!r}")
    return value


client = AuthenticatedClient(
    base_url=os.environ["ISDF_API_URL"],
    token=os.environ["ISDF_TOKEN"],
    raise_on_unexpected_status=True,
)
with client:
    created = expect(
        devices_create.sync(
            client=client,
            body=CreateDevice.from_dict({"name": "smoke-1", "labels": {"site": "smoke"}}),
        ),
        DeviceCreated,
        "register a router",
    )
    device = created.device
    assert created.enrollment_token, "an enrollment token"
    assert device.labels.to_dict() == {"site": "smoke"}, device.labels.to_dict()

    service = expect(
        services_create.sync(
            client=client,
            body=CreateService.from_dict(
                {
                    "name": "block-9000",
                    "type": "flow-block",
                    "spec": {"flows": [{"protocol": "tcp", "dport": 9000}]},
                }
            ),
        ),
        ServiceView,
        "create a service",
    )

    assignment = expect(
        assignments_create.sync(
            client=client,
            body=CreateAssignment.from_dict(
                {"service_id": str(service.id), "selector": "site=smoke"}
            ),
        ),
        AssignmentView,
        "assign it",
    )
    assert str(assignment.service_id) == str(service.id)

    again = expect(devices_get.sync(client=client, id=device.id), DeviceView, "read the router")
    assert again.name == "smoke-1", again.name

    config = expect(
        devices_config.sync(client=client, id=device.id),
        CompiledConfigView,
        "read its compiled config",
    )
    document = json.dumps(config.config.to_dict())
    assert config.version >= 1, config.version
    assert "9000" in document, f"the assigned flow is not in the config: {document}"

    # An error answer parses as the documented error body.
    missing = devices_get.sync(client=client, id="00000000-0000-0000-0000-000000000000")
    missing = expect(missing, ErrorBody, "read a router that does not exist")
    assert missing.error.code == "not_found", missing.error.code

print("smoke flow: ok")
