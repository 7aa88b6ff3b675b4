"""gRPC conformance: PredictionService and ModelService on TF Serving's generated stubs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from pipeline.wire import model_config

MODEL = "half_plus_two"


@pytest.fixture
def stack(serve: Any, make_base_path: Any, half_plus_two_dir: Path, half_plus_three_dir: Path) -> Any:
    """A server on half_plus_two v1 (+ v2 = half_plus_three on disk, not pinned), and both stubs."""
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    base = make_base_path(MODEL, {1: half_plus_two_dir, 2: half_plus_three_dir})
    config = model_config.single_model_config(MODEL, base, versions=[1])
    path = model_config.write_config(base.parent / "models.config", config)
    server = serve(model_config_file=str(path))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield (server, base, prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


def predict_request(values: Any, name: str = MODEL, **spec: Any) -> Any:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = spec.pop("signature_name", "serving_default")
    if "version" in spec:
        request.model_spec.version.value = spec.pop("version")
    if "label" in spec:
        request.model_spec.version_label = spec.pop("label")
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values, dtype=spec.pop("dtype", tf.float32)))
    return request


def test_predict_with_make_tensor_proto(stack: Any) -> None:
    import tensorflow as tf

    _, _, prediction, _ = stack
    response = prediction.Predict(predict_request([1.0, 2.0, 5.0]), timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), [2.5, 3.0, 4.5])
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_tensor_content_of_the_wrong_size_is_invalid_argument(stack: Any) -> None:
    _, _, prediction, _ = stack
    request = predict_request([1.0, 2.0, 5.0])
    request.inputs["x"].tensor_content = request.inputs["x"].tensor_content[:-4]
    with pytest.raises(grpc.RpcError) as caught:
        prediction.Predict(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Could not parse input tensor x: tensor_content holds 8 bytes" in caught.value.details()
    assert prediction.Predict(predict_request([1.0]), timeout=10).outputs["y"]  # and it still answers


def test_predict_errors_carry_tf_codes_and_messages(stack: Any) -> None:
    import tensorflow as tf

    _, _, prediction, _ = stack
    cases = [
        (predict_request([1.0], name="nope"), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        (predict_request([1.0], version=7), grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({MODEL}, 7)"),
        (predict_request([1.0], label="nope"), grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: nope"),
        (predict_request([1], dtype=tf.int64), grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be float but int64 is provided"),
        (predict_request([1.0], signature_name="nope"), grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
    ]
    for request, code, message in cases:
        with pytest.raises(grpc.RpcError) as info:
            prediction.Predict(request, timeout=10)
        assert info.value.code() == code
        assert info.value.details() == message


def test_predict_missing_input_and_output_filter(stack: Any) -> None:
    _, _, prediction, _ = stack
    request = predict_request([1.0])
    request.inputs["z"].CopyFrom(request.inputs["x"])
    with pytest.raises(grpc.RpcError) as info:
        prediction.Predict(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input size does not match signature: 2!=1" in info.value.details()
    request = predict_request([1.0])
    request.output_filter.append("nope")
    with pytest.raises(grpc.RpcError) as info:
        prediction.Predict(request, timeout=10)
    assert "output tensor alias not found in signature: nope" in info.value.details()


def test_classify_regress_metadata_status(stack: Any) -> None:
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        regression_pb2,
    )

    _, _, prediction, models = stack
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL, "regress_x_to_y"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(80.0)
    assert [r.value for r in prediction.Regress(request, timeout=10).result.regressions] == [42.0]

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL, "classify_x_to_y"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(20.0)
    classes = prediction.Classify(request, timeout=10).result.classifications[0].classes
    assert [(c.label, c.score) for c in classes] == [("", 12.0)]

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = prediction.GetModelMetadata(request, timeout=10)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    assert signature_map.signature_def["serving_default"].inputs["x"].dtype == 1  # DT_FLOAT
    assert response.model_spec.version.value == 1

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    status = models.GetModelStatus(request, timeout=10).model_version_status
    assert [(s.version, s.state, s.status.error_code) for s in status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)]


def reload(models: Any, config: Any, timeout: float = 30) -> Any:
    from tensorflow_serving.apis import model_management_pb2

    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(config)
    return models.HandleReloadConfigRequest(request, timeout=timeout)


def test_reload_answers_once_new_version_serves_then_label_moves(stack: Any) -> None:
    import tensorflow as tf

    server, base, prediction, models = stack
    response = reload(models, model_config.single_model_config(MODEL, base, versions=[1, 2], labels={"stable": 1}))
    assert response.status.error_code == 0
    # Answered: version 2 is AVAILABLE right now.
    y = prediction.Predict(predict_request([2.0], version=2), timeout=10).outputs["y"]
    assert tf.make_ndarray(y).tolist() == [4.0]
    reload(models, model_config.single_model_config(MODEL, base, versions=[1, 2], labels={"stable": 1, "canary": 2}))
    canary = prediction.Predict(predict_request([2.0], label="canary"), timeout=10)
    assert canary.model_spec.version.value == 2
    stable = prediction.Predict(predict_request([2.0], label="stable"), timeout=10)
    assert stable.model_spec.version.value == 1


def test_reload_refuses_label_on_unavailable_version(stack: Any) -> None:
    server, base, prediction, models = stack
    with pytest.raises(grpc.RpcError) as info:
        reload(models, model_config.single_model_config(MODEL, base, versions=[1, 2], labels={"canary": 2}))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == (f"Request to assign label to version 2 of model {MODEL}, which is not currently "
                                    "available for inference")
    # Refused as a whole: version 2 was not loaded.
    assert [s.version for s in server.manager.status(MODEL)] == [1]


def test_reload_refuses_escaping_names_and_paths(stack: Any) -> None:
    _, base, _, models = stack
    for name, path in [("../etc", str(base)), ("a/b", str(base)), (MODEL, str(base) + "/../../etc")]:
        config = model_config.single_model_config(MODEL, base)
        config.model_config_list.config[0].name = name
        config.model_config_list.config[0].base_path = path
        with pytest.raises(grpc.RpcError) as info:
            reload(models, config)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_reload_fails_before_the_client_deadline(stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    server, base, _, models = stack
    real_loader = server.manager._loader

    def slow_loader(*args: Any) -> Any:
        time.sleep(2.0)
        return real_loader(*args)

    monkeypatch.setattr(server.manager, "_loader", slow_loader)
    with pytest.raises(grpc.RpcError) as info:
        reload(models, model_config.single_model_config(MODEL, base, versions=[1, 2]), timeout=1.0)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "still loading" in info.value.details()  # our message, sent before the client's own deadline
