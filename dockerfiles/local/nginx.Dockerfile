# Debian's nginx where `nginx:1.28.0-bookworm` cannot be pulled (docker-compose.local.yml). The compose proxy
# brings its own entrypoint and config (configs/proxy/compose-entrypoint.sh); this image only has to carry nginx.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
EXPOSE 8500 8501
CMD ["nginx", "-g", "daemon off;"]
