#!/bin/sh
# As tensorflow/serving's /usr/bin/tf_serving_entrypoint.sh: one model from the environment, extra flags appended.
exec tensorflow_model_server --port=8500 --rest_api_port=8501 \
  --model_name="${MODEL_NAME}" --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" "$@"
