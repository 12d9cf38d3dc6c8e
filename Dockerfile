# pneumoscan: one image for the migration, the workers, the scheduler and the web app.
#   docker build -t pneumoscan .                                  (CPU; base python:3.11-slim-bookworm)
#   docker build --build-arg EXTRAS=gpu -t pneumoscan:gpu .       (the CUDA build of TensorFlow)
#   docker build --build-arg PNEUMOSCAN_BASE_IMAGE=IMAGE ...      (another base: a mirror, or deploy/offline-images.sh's)
# Needs BuildKit (the default of Docker 23 and later; DOCKER_BUILDKIT=1 before that) for pip's cache mount.
# No "# syntax=" line: that would fetch the Dockerfile frontend from a registry.
ARG PNEUMOSCAN_BASE_IMAGE=python:3.11-slim-bookworm
FROM ${PNEUMOSCAN_BASE_IMAGE}

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PNEUMOSCAN_DATA_DIR=/var/lib/pneumoscan

RUN useradd --system --uid 1000 --user-group --home-dir /var/lib/pneumoscan --create-home pneumoscan \
    && mkdir -p /srv/pneumoscan/inbox /srv/pneumoscan/received \
    && chown pneumoscan:pneumoscan /srv/pneumoscan/received

WORKDIR /opt/pneumoscan
# Dependencies first, from pyproject.toml alone, so that a change to the source reuses this layer (TensorFlow
# and all); pip's downloads stay in a build cache, not in the image, and TensorFlow's C++ headers (290 MB, for
# building custom ops) are dropped.
COPY pyproject.toml deploy/requirements.py ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python requirements.py pyproject.toml $EXTRAS > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && rm -rf "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tensorflow/include"
COPY README.md ./
COPY src ./src
RUN pip install --no-deps --no-cache-dir . && rm -rf build src/*.egg-info

USER pneumoscan
WORKDIR /var/lib/pneumoscan
EXPOSE 8080 11112
ENTRYPOINT ["pneumoscan"]
CMD ["--help"]
