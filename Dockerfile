# pneumoscan image for distributed mode: one image for the workers and the scheduler.
# CPU by default; build the GPU variant with:  docker build --build-arg EXTRAS=gpu -t pneumoscan:gpu .
FROM python:3.11-slim

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PNEUMOSCAN_DATA_DIR=/var/lib/pneumoscan

WORKDIR /opt/pneumoscan
COPY pyproject.toml README.md ./
COPY src ./src
# The GPU variant swaps tensorflow-cpu for the CUDA build (the `gpu` extra).
RUN pip install . \
    && if [ "$EXTRAS" = "gpu" ]; then pip uninstall -y tensorflow-cpu && pip install ".[gpu]"; fi

RUN useradd --system --uid 1000 --home-dir /var/lib/pneumoscan --create-home pneumoscan
USER pneumoscan
ENTRYPOINT ["pneumoscan"]
CMD ["--help"]
