#!/usr/bin/env bash
# The Python package as users install it: a wheel built with maturin, and
# `pip install ./python` (PEP 517, maturin fetched into pip's isolated build
# environment), each into a fresh virtualenv with only the test
# dependencies, then the whole Python suite against that installation.
# `make test-python-package` runs this (a few minutes); `make test` runs the
# suite against the development install only.
#
# Both builds use the dev profile (MQS_PY_PROFILE to change it), so they
# share compiled dependencies with `make python-dev`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv_dev="$root/.venv"
profile=${MQS_PY_PROFILE:-dev}
# The development virtualenv's packages (the Makefile's PIP_PKGS) but
# maturin: the suite's own dependencies, kept in one place.
mapfile -t test_deps < <(sed -n 's/^PIP_PKGS *:= *//p' "$root/Makefile" | tr ' ' '\n' | grep -v -e '^maturin' -e '^$')
[[ ${#test_deps[@]} -gt 0 ]] || { echo "package.sh: no PIP_PKGS in the Makefile" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

suite() {
    local venv=$1 label=$2
    local where
    # Run from outside the tree: `mqstore` must come from the virtualenv.
    where=$(cd "$work" && "$venv/bin/python" -c 'import mqstore; print(mqstore.__file__)')
    case "$where" in
        "$venv"/*) ;;
        *) echo "package.sh: $label imports mqstore from $where, not from $venv" >&2; exit 1 ;;
    esac
    (cd "$work" && "$venv/bin/python" -m mqstore)
    "$venv/bin/python" -m pytest "$root/tests/python" -q -p no:cacheprovider
    echo "package.sh: $label passed the Python suite"
}

fresh_venv() {
    python3 -m venv "$1"
    "$1/bin/pip" install --quiet --upgrade pip
    "$1/bin/pip" install --quiet "${test_deps[@]}"
}

echo "== wheel (maturin build --profile $profile)"
"$venv_dev/bin/maturin" build --quiet --profile "$profile" -m "$root/python/Cargo.toml" -o "$work/wheels"
wheel=$(ls "$work"/wheels/mqstore-*.whl)
echo "built $(basename "$wheel") ($(stat -c %s "$wheel") bytes)"
fresh_venv "$work/venv-wheel"
"$work/venv-wheel/bin/pip" install --quiet "$wheel"
suite "$work/venv-wheel" "the wheel"

echo "== pip install ./python"
fresh_venv "$work/venv-pip"
MATURIN_PEP517_ARGS="--profile $profile" "$work/venv-pip/bin/pip" install --quiet "$root/python"
suite "$work/venv-pip" "pip install ./python"
