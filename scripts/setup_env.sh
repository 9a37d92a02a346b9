#!/usr/bin/env bash
# Builds the project's virtual environment from nothing, idempotently: `make demo` and `make test` call it first.
#
#   HARNESS_VENV       where the venv goes (default: .venv in the repository)
#   HARNESS_WHEELHOUSE a folder holding a prebuilt mmcv-2.1.0 wheel (CI: ../shared/wheelhouse)
#   HARNESS_CACHE      per-machine cache; an mmcv wheel built from source is kept in $HARNESS_CACHE/wheels
#   PYTHON             the interpreter to build the venv with (default: python3.11, else python3)
#
# Steps: the Debian data set (as root), the venv, the exact versions of requirements/lock.txt (--no-deps, so nothing
# outside the lock sneaks in), mmcv 2.1.0 with compiled ops, then this package in editable mode. A stamp of the inputs
# makes a second call return in about a second.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HARNESS_VENV:-$repo/.venv}
cache=${HARNESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/harness}
mmcv_version=2.1.0
log() { printf '[setup] %s\n' "$*" >&2; }

fashion_mnist() {
  local dir=/usr/share/datasets/fashion-mnist
  [ -f "$dir/train-images-idx3-ubyte.gz" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing the Debian package dataset-fashion-mnist"
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  else
    log "Fashion-MNIST is missing from $dir: run 'sudo apt-get install dataset-fashion-mnist'," \
      "or set HARNESS_FASHION_MNIST to a folder with the four IDX files"
  fi
}

stamp_of() {
  cat "$repo/requirements/lock.txt" "$repo/pyproject.toml" "$repo/scripts/setup_env.sh" | sha256sum | cut -d' ' -f1
}

mmcv_wheel() {
  # Prints the path of an mmcv wheel for this interpreter: wheelhouse first, then the cache, else a source build.
  local tag whl
  tag=$("$venv/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  for dir in ${HARNESS_WHEELHOUSE:-} "$cache/wheels"; do
    whl=$(ls "$dir"/mmcv-$mmcv_version-$tag-$tag-linux_*.whl 2>/dev/null | head -n 1 || true)
    if [ -n "$whl" ]; then echo "$whl"; return 0; fi
  done
  build_mmcv "$tag"
}

build_mmcv() {
  # mmcv 2.1.0's setup.py passes -std=c++17, but torch >= 2.14 headers stop with "C++20 or later compatible compiler
  # is required". The sdist is unpacked and only that flag is changed; build isolation is off so that the ops are
  # compiled against the venv's torch (with isolation mmcv silently skips its ops).
  local tag=$1 work
  work=$(mktemp -d)
  log "no mmcv $mmcv_version wheel for $tag in \$HARNESS_WHEELHOUSE or $cache/wheels: building from source"
  log "(about 25-45 minutes on 2 cores; the wheel is cached in $cache/wheels for the next time)"
  "$venv/bin/pip" download -q --no-deps --no-binary mmcv --no-build-isolation -d "$work" "mmcv==$mmcv_version" >&2
  tar -xzf "$work"/mmcv-$mmcv_version.tar.gz -C "$work"
  sed -i 's/-std=c++17/-std=c++20/g' "$work/mmcv-$mmcv_version/setup.py"
  grep -q -- '-std=c++20' "$work/mmcv-$mmcv_version/setup.py" || { log "mmcv setup.py patch did not apply"; exit 1; }
  mkdir -p "$cache/wheels"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "$venv/bin/pip" wheel -q --no-build-isolation --no-deps \
    "$work/mmcv-$mmcv_version" -w "$cache/wheels" >&2
  rm -rf "$work"
  ls "$cache/wheels"/mmcv-$mmcv_version-$tag-$tag-linux_*.whl | head -n 1
}

main() {
  fashion_mnist
  local stamp
  stamp=$(stamp_of)
  if [ -f "$venv/.harness-stamp" ] && [ "$(cat "$venv/.harness-stamp")" = "$stamp" ]; then
    return 0
  fi
  local py=${PYTHON:-$(command -v python3.11 || command -v python3)}
  [ -x "$venv/bin/python" ] || { log "creating $venv with $py"; "$py" -m venv "$venv"; }
  log "installing the locked packages (torch $(grep '^torch==' "$repo/requirements/lock.txt" | cut -d= -f3))"
  "$venv/bin/pip" install -q "pip>=24,<26" "setuptools>=69,<82" wheel
  "$venv/bin/pip" install -q --no-deps -r "$repo/requirements/lock.txt"
  if ! "$venv/bin/python" -c "import mmcv, mmcv._ext; assert mmcv.__version__ == '$mmcv_version'" 2>/dev/null; then
    local whl
    whl=$(mmcv_wheel)
    log "installing $whl"
    "$venv/bin/pip" install -q --no-deps --force-reinstall "$whl"
  fi
  "$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$repo"
  "$venv/bin/python" -c "import mmcv._ext, mmdet, mmseg, timm" ||
    { log "the environment in $venv does not import; remove it and run again"; exit 1; }
  echo "$stamp" >"$venv/.harness-stamp"
  log "environment ready: $venv"
}

main "$@"
