"""The serving API on protos, shared by the REST and gRPC front ends (TF Serving's *_impl.cc files)."""

from __future__ import annotations

from typing import Any

from pipeline.embedded_server.manager import ModelManager, VersionState
from pipeline.embedded_server.servable import Servable
from pipeline.wire.status import ServingError, invalid_argument

_SIGNATURE_DEF_FIELD = "signature_def"


def resolve(manager: ModelManager, model_spec: Any) -> Servable:
    """The servable a ``ModelSpec`` asks for (version, label or latest)."""
    if not model_spec.name:
        raise invalid_argument("Missing ModelSpec")
    choice = model_spec.WhichOneof("version_choice")
    version = model_spec.version.value if choice == "version" else None
    label = model_spec.version_label if choice == "version_label" else None
    return manager.get_servable(model_spec.name, version=version, label=label)


def get_model_status(manager: ModelManager, request: Any) -> Any:
    """A ``GetModelStatusResponse`` for a ``GetModelStatusRequest``."""
    from tensorflow_serving.apis import get_model_status_pb2

    spec = request.model_spec
    if not spec.name:
        raise invalid_argument("Missing ModelSpec")
    choice = spec.WhichOneof("version_choice")
    states = manager.status(
        spec.name,
        version=spec.version.value if choice == "version" else None,
        label=spec.version_label if choice == "version_label" else None,
    )
    response = get_model_status_pb2.GetModelStatusResponse()
    for state in states:
        _add_version_status(response, state)
    return response


def _add_version_status(response: Any, state: VersionState) -> None:
    from tensorflow_serving.apis import get_model_status_pb2

    entry = response.model_version_status.add()
    entry.version = state.version
    entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
    entry.status.error_code = _code_number(state.error_code)
    entry.status.error_message = state.error_message


def _code_number(name: str) -> int:
    return ServingError(name, "").code_number


def get_model_metadata(manager: ModelManager, request: Any) -> Any:
    """A ``GetModelMetadataResponse``: the ``signature_def`` map (the only field TF Serving supports)."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    if not request.metadata_field:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != _SIGNATURE_DEF_FIELD:
            raise invalid_argument(f"Metadata field {field} is not supported")
    servable = resolve(manager, request.model_spec)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig_def in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(sig_def)
    response.metadata[_SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response
