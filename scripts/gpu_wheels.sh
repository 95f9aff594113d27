#!/usr/bin/env bash
# Wheels of what speedtrain imports that a CUDA image without a package registry may lack, for Python 3.12 on
# x86-64, into ./.whl (git-ignored through .git/info/exclude): carry .whl to the GPU machine and there run
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src
# Runs after the workplace's own wheel script (hydra, datasets, deepspeed, wandb, ...) where there is one; adds the
# packages that one misses (Hydra's launcher/sweeper plugins, jsonschema, orjson): without them a run there stops
# at an ImportError before any GPU work.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
if [ -x ../shared/gpu/prepare_wheels.sh ]; then bash ../shared/gpu/prepare_wheels.sh; fi
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl \
  jsonschema referencing jsonschema-specifications rpds-py orjson hydra-submitit-launcher submitit \
  hydra-optuna-sweeper "optuna<3" "sqlalchemy<2" alembic cmaes colorlog mako greenlet cliff stevedore autopage cmd2 \
  prettytable pyperclip wcwidth
du -sh .whl
