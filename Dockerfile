# The controller's image for deploy/kubernetes/ (docs/KUBERNETES.md): rlscale's wheel with the kubernetes extra in a
# venv, the shipped scenarios and models in /app, run as a non-root user (uid 65532, the manifests' runAsUser).
#   docker build -t registry.example.com/rlscale:0.1.0 .
# The install is deploy/docker/install.sh, which tests/test_dockerfile.py runs too (CI has no image registry).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rlscale ./rlscale
COPY deploy/docker/install.sh /tmp/install.sh
ARG TORCH_INSTALL="--index-url https://download.pytorch.org/whl/cpu torch>=2.3"
RUN TORCH_INSTALL="${TORCH_INSTALL}" PYTHON=python sh /tmp/install.sh /src /opt/rlscale

# only the venv travels: no wheel, no pip, no source tree in the image
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 65532 rlscale \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin rlscale
COPY --from=build /opt/rlscale /opt/rlscale
WORKDIR /app
COPY envs ./envs
COPY models ./models
ENV PATH=/opt/rlscale/bin:$PATH \
    RLSCALE_ENVS=/app/envs \
    NUMBA_CACHE_DIR=/tmp/numba \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["rlscale"]
CMD ["--help"]
