#!/usr/bin/env bash
# Run the test suite against another torch release.
#
#   tools/compat.sh TORCH_VERSION [TORCHVISION_VERSION] [-- PYTEST_ARGS...]
#   tools/compat.sh 2.13.0                 # a CPU build
#   tools/compat.sh 2.9.1 0.24.1 -- -x     # a CUDA build from the registry (several GB)
#
# Makes (or reuses) a virtualenv under ${FKERNEL_COMPAT_DIR:-$HOME/.cache/fkernel-compat} with that
# torch, torchvision (the given version, else the release made for that torch: 0.<minor + 15>), the
# project's other dependencies and its dev, tensorboard and plot extras, then runs pytest from the
# repository root with that venv's python. The project itself is not installed into the venv: pytest
# puts the repository root on sys.path. Each torch gets its own inductor cache next to the venv.
set -euo pipefail
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    echo "usage: tools/compat.sh TORCH_VERSION [TORCHVISION_VERSION] [-- PYTEST_ARGS...]" >&2
    exit 2
fi
torch_version=$1; shift
vision_version=""
if [ $# -gt 0 ] && [ "$1" != "--" ]; then vision_version=$1; shift; fi
vision_given=$vision_version
if [ $# -gt 0 ] && [ "$1" == "--" ]; then shift; fi

root=$(cd "$(dirname "$0")/.." && pwd)
base=${FKERNEL_COMPAT_DIR:-$HOME/.cache/fkernel-compat}
venv=$base/torch-$torch_version
pip_quiet=(--disable-pip-version-check -q)

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
have=$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have" != "$torch_version" ]; then
    echo "installing torch==$torch_version into $venv" >&2
    "$venv/bin/pip" install "${pip_quiet[@]}" "torch==$torch_version"
fi
if [ -z "$vision_version" ]; then
    minor=$(echo "$torch_version" | cut -d. -f2)
    vision_version="0.$((minor + 15)).*"
fi
if [ -n "$vision_given" ] || ! "$venv/bin/python" -c 'import torchvision' 2>/dev/null; then
    "$venv/bin/pip" install "${pip_quiet[@]}" "torch==$torch_version" "torchvision==$vision_version"
fi
# The project's other dependencies and the extras the tests use, read from pyproject.toml
# (torch/torchvision excluded).
deps=$("$venv/bin/python" - "$root/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project["optional-dependencies"]
wanted = project["dependencies"] + extras["dev"] + extras["tensorboard"] + extras["plot"]
print("\n".join(d for d in wanted if not d.replace(" ", "").startswith(("torch>", "torch=", "torch<", "torchvision"))))
PY
)
mapfile -t deps <<< "$deps"
"$venv/bin/pip" install "${pip_quiet[@]}" "${deps[@]}"

"$venv/bin/python" -c 'import torch; print("torch", torch.__version__, "from", torch.__file__)'
cd "$root"
export TORCHINDUCTOR_CACHE_DIR=$venv/inductor-cache
exec "$venv/bin/python" -m pytest "$@"
