#!/usr/bin/env bash
# bench/gpu_wheels.sh OUT
#
# On a machine WITH network: download Joey NMT 2.3.0 and the few small pure-Python packages it
# imports that a CUDA PyTorch image does not have, as wheels, into OUT, for bench/gpu.sh's peer
# on a GPU machine without network:
#     bash bench/gpu_wheels.sh .joey_wheels          # here (about 200 kB, 4 wheels)
#     JOEYNMT_WHEELS=.joey_wheels bash bench/gpu.sh  # there
# gpu.sh installs them with `pip install --no-index --no-deps --target` into its work folder
# and puts that on PYTHONPATH for the Joey NMT process only (so the system torch is used).
#
# Why not all of joeynmt's declared requirements: 2.3.0 declares ~25 (protobuf<3.21, datasets,
# pylint, yapf, flake8, plotly, ...) of which `joeynmt train` on plain-text data imports only
# torch, numpy, PyYAML, tqdm, sacrebleu, sentencepiece, packaging, tensorboard (through
# torch.utils.tensorboard), subword-nmt and importlib-metadata (+ zipp). The first eight come
# with a CUDA PyTorch image (this project's GPU machines have them); the last ones are here.
# EXTRA="name==version ..." adds more pure-Python wheels (e.g. for an image without
# tensorboard: tensorboard and its dependencies, some of which are binary: then also set
# PIP_ARGS="--platform manylinux2014_x86_64" and PYVER to the GPU machine's Python).
#
# Env: PY (python with pip, default python3), PYVER (the GPU machine's Python, default 3.12).
# Never commit the wheels (keep OUT outside the repository, or in a git-ignored folder).
set -euo pipefail
OUT=${1:?usage: bench/gpu_wheels.sh OUT_DIR}
PY=${PY:-python3}
PYVER=${PYVER:-3.12}
mkdir -p "$OUT"
# importlib-metadata 8.7.0: the newest that needs nothing but zipp (9+ also need lazy-importer)
PKGS=(joeynmt==2.3.0 subword-nmt==0.3.8 importlib-metadata==8.7.0 zipp==3.23.0)
# shellcheck disable=SC2086
"$PY" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PYVER" ${PIP_ARGS:-} -d "$OUT" "${PKGS[@]}" ${EXTRA:-}
ls -l "$OUT"
