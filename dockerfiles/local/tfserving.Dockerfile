# The embedded TF-Serving-compatible server in TF Serving's image layout, to run where `tensorflow/serving` runs:
# `tensorflow_model_server` on PATH taking TF Serving's flags, and the official image's entrypoint (gRPC on 8500,
# REST on 8501, MODEL_NAME/MODEL_BASE_PATH, extra flags appended). A local-testing aid (docker-compose.local.yml,
# the docker backend's tests); production compose and Kubernetes keep the real tensorflow/serving image.
ARG PIPELINE_IMAGE
FROM ${PIPELINE_IMAGE}
USER root
COPY tensorflow_model_server tf_serving_entrypoint.sh /usr/bin/
RUN chmod 0755 /usr/bin/tensorflow_model_server /usr/bin/tf_serving_entrypoint.sh
ENV MODEL_BASE_PATH=/models MODEL_NAME=model
EXPOSE 8500 8501
ENTRYPOINT ["/usr/bin/tf_serving_entrypoint.sh"]
