"""The TensorFlow-free reload messages are wire-compatible with TF Serving's own."""

import subprocess
import sys

from tensorflow_serving.config import model_server_config_pb2

from pipeline.wire import reload_rpc


def _config():
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name, model.base_path = "mnist", "/models/mnist"
    model.model_version_policy.specific.versions.extend([3, 4])
    model.version_labels["stable"] = 3
    return config


def test_request_reads_as_tf_servings_request():
    from tensorflow_serving.apis import model_management_pb2

    wire = reload_rpc.reload_request(_config()).SerializeToString()
    theirs = model_management_pb2.ReloadConfigRequest.FromString(wire)
    assert theirs.config == _config()


def test_tf_servings_response_reads_as_ours():
    from tensorflow_serving.apis import model_management_pb2

    response = model_management_pb2.ReloadConfigResponse()
    response.status.error_code = 9  # FAILED_PRECONDITION
    response.status.error_message = "label stable points at version 9, which is not available"
    _, ours = reload_rpc.messages()
    parsed = ours.FromString(response.SerializeToString())
    assert (parsed.status.error_code, parsed.status.error_message) == (9, response.status.error_message)


def test_building_a_reload_imports_no_tensorflow():
    code = ("import sys; from pipeline.wire import reload_rpc; from pipeline.serving.client import ServingClient; "
            "from tensorflow_serving.config import model_server_config_pb2 as m; "
            "reload_rpc.reload_request(m.ModelServerConfig()); print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
