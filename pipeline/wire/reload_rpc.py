"""ModelService.HandleReloadConfigRequest without importing TensorFlow.

The generated ``model_management_pb2`` depends on TF Serving's ``status.proto``, which depends on
TensorFlow's ``error_codes.proto``; importing it loads the whole ``tensorflow`` package (4 s here). A
rollback must not wait for that, so the request and response are declared here, wire-compatible with
TF Serving's (same field numbers and types; the error code enum travels as its int32 value). The
``ModelServerConfig`` they carry is TF Serving's own message, which imports no TensorFlow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from tensorflow_serving.config import model_server_config_pb2

METHOD = "/tensorflow.serving.ModelService/HandleReloadConfigRequest"
_FILE = "pipeline/serving/reload_rpc.proto"
_T = descriptor_pb2.FieldDescriptorProto


def _field(name: str, number: int, kind: Any, type_name: str | None = None) -> descriptor_pb2.FieldDescriptorProto:
    field = _T(name=name, number=number, type=kind, label=_T.LABEL_OPTIONAL)
    if type_name:
        field.type_name = type_name
    return field


@functools.cache
def messages() -> tuple[Any, Any]:
    """(ReloadConfigRequest, ReloadConfigResponse) message classes, built once."""
    pool = descriptor_pool.DescriptorPool()
    _add_with_dependencies(pool, model_server_config_pb2.DESCRIPTOR)
    proto = descriptor_pb2.FileDescriptorProto(name=_FILE, package="pipeline.reload", syntax="proto3",
                                               dependency=[model_server_config_pb2.DESCRIPTOR.name])
    proto.message_type.add(name="Request").field.append(
        _field("config", 1, _T.TYPE_MESSAGE, ".tensorflow.serving.ModelServerConfig"))
    status = proto.message_type.add(name="Status")
    status.field.extend([_field("error_code", 1, _T.TYPE_INT32), _field("error_message", 2, _T.TYPE_STRING)])
    proto.message_type.add(name="Response").field.append(_field("status", 1, _T.TYPE_MESSAGE, ".pipeline.reload.Status"))
    pool.Add(proto)
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("pipeline.reload.Request")), get(pool.FindMessageTypeByName(
        "pipeline.reload.Response"))


def _add_with_dependencies(pool: descriptor_pool.DescriptorPool, file: Any) -> None:
    for dependency in file.dependencies:
        _add_with_dependencies(pool, dependency)
    try:
        pool.AddSerializedFile(file.serialized_pb)
    except TypeError:
        pass  # already added through another path


def reload_call(channel: grpc.Channel) -> Callable[..., Any]:
    """A callable ``(request, timeout=...) -> response`` for the reload method on ``channel``."""
    request_class, response_class = messages()
    return channel.unary_unary(METHOD, request_serializer=request_class.SerializeToString,
                               response_deserializer=response_class.FromString)


def reload_request(config: model_server_config_pb2.ModelServerConfig) -> Any:
    """A ReloadConfigRequest carrying ``config``."""
    request_class, _ = messages()
    request = request_class()
    request.config.ParseFromString(config.SerializeToString())
    return request
