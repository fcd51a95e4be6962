# qsm_bids as a container image (BIDS app).
#
#   docker build -t qsm_bids:0.1.0 .
#   docker run --rm -v /data:/data qsm_bids:0.1.0 /data/bids /data/out participant
#   docker run --rm --tmpfs /tmp qsm_bids:0.1.0 demo /tmp/demo_out
#
# BASE must provide `python3` (>= 3.11) with the venv module; the default is the official
# Python image. scripts/container_check.sh builds it with podman from a local Debian base
# (`--build-arg BASE=localhost/...`) and with `--build-arg PIP_CERT=...` where pip needs an
# extra CA bundle (mounted into the build with `-v`); an empty PIP_CERT changes nothing.
# Apptainer/Singularity: see singularity.def.

ARG BASE=python:3.11-slim

# ---------------------------------------------------------------------------------------
# build stage: the package and its dependencies in a virtual environment (/opt/venv)
# ---------------------------------------------------------------------------------------
FROM ${BASE} AS build
ARG PIP_CERT=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
# Only what the install needs (see .dockerignore); qsm_bids/recipes is a symlink to
# ../workflows, so both are copied and the wheel carries the recipe TOML files.
COPY pyproject.toml README.md /src/
COPY workflows /src/workflows
COPY qsm_bids /src/qsm_bids
RUN if [ -z "${PIP_CERT}" ]; then unset PIP_CERT; fi \
 && /opt/venv/bin/python -m pip install --upgrade pip \
 && /opt/venv/bin/python -m pip install /src \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
 && /opt/venv/bin/python -c "from qsm_bids.recipe import builtin_recipes as b; r = b(); print('recipes:', r); assert 'default' in r, r"

# ---------------------------------------------------------------------------------------
# final stage: the same base, only the venv copied in; no compilers, no source tree
# ---------------------------------------------------------------------------------------
FROM ${BASE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="qsm_bids" \
      org.opencontainers.image.description="BIDS app: Quantitative Susceptibility Mapping from multi-echo GRE MRI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/qsm-bids/qsm_bids" \
      org.opencontainers.image.licenses="MIT"

COPY --from=build /opt/venv /opt/venv

# Unprivileged user; the image itself may be mounted read-only: everything written at run
# time goes to the output/work folders given on the command line or under /tmp (numba's
# cache of compiled functions: NUMBA_CACHE_DIR, created on first use, so /tmp must be
# writable: e.g. `--read-only --tmpfs /tmp`). /tmp/numba is deliberately not created here:
# a tmpfs over /tmp would get a root-owned copy of it that the user cannot write to.
RUN groupadd --gid 1000 qsm \
 && useradd --uid 1000 --gid qsm --home-dir /home/qsm --create-home --shell /bin/sh qsm \
 && mkdir -p /work \
 && chown qsm:qsm /work \
 && chmod 1777 /tmp

ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NIPYPE_NO_ET=1 \
    OMP_NUM_THREADS=1 \
    ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 \
    MPLCONFIGDIR=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba

USER qsm
WORKDIR /work
ENTRYPOINT ["qsm-bids"]
CMD ["--help"]
