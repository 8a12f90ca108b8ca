#!/bin/sh
# Sets up a Debian or Ubuntu machine for deno-mec: Deno (the version the
# toolkit is tested with) and the system libraries it loads through FFI.
# Run it again at any time: what is already there is left alone.
#
#   sh install.sh          Deno, OpenBLAS, oneDNN, libjpeg-turbo, Open MPI,
#                          the full Fashion-MNIST for the demo
#   sh install.sh --gpu    the same, then how to get NVIDIA's libraries
set -eu

DENO_VERSION=2.9.6
# Debian package, and the library file whose presence means it is installed.
PACKAGES="libopenblas0-pthread:libopenblas.so.0
libdnnl2:libdnnl.so.2
libturbojpeg0:libturbojpeg.so.0
openmpi-bin:libmpi.so.40"

gpu=no
for arg in "$@"; do
  case "$arg" in
  --gpu) gpu=yes ;;
  -h | --help)
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "install.sh: unknown argument $arg; see sh install.sh --help." >&2
    exit 2
    ;;
  esac
done

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install.sh: this machine has no apt-get; install Deno $DENO_VERSION, OpenBLAS, oneDNN, libjpeg-turbo and Open MPI with its package manager." >&2
  exit 1
fi
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The system libraries, with one apt-get update and one install for all
# that are missing.
missing=""
for entry in $PACKAGES; do
  package=${entry%%:*}
  library=${entry#*:}
  if ! ldconfig -p | grep -q "[[:space:]]$library "; then
    missing="$missing $package"
  fi
done
# The demo's full data set (60,000 + 10,000 images; without it the demo
# runs on the repository's 10,000 + 2,000).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  missing="$missing dataset-fashion-mnist"
fi
if [ -n "$missing" ]; then
  echo "Installing$missing"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y $missing
fi

# Deno, pinned: from npm (the package ships the binary) where npm is
# there, else the release archive into ~/.deno/bin.
if ! command -v deno >/dev/null 2>&1 ||
  [ "$(deno --version | head -n 1 | cut -d ' ' -f 2)" != "$DENO_VERSION" ]; then
  if command -v npm >/dev/null 2>&1; then
    as_root npm install -g "deno@$DENO_VERSION"
  else
    for tool in curl unzip; do
      command -v $tool >/dev/null 2>&1 || as_root apt-get install -y $tool
    done
    arch=$(uname -m)
    url="https://github.com/denoland/deno/releases/download/v$DENO_VERSION/deno-$arch-unknown-linux-gnu.zip"
    mkdir -p "$HOME/.deno/bin"
    curl -fsSL "$url" -o "$HOME/.deno/deno.zip"
    unzip -o -q "$HOME/.deno/deno.zip" -d "$HOME/.deno/bin"
    rm "$HOME/.deno/deno.zip"
    echo "Deno $DENO_VERSION is in $HOME/.deno/bin: add it to PATH (export PATH=\"\$HOME/.deno/bin:\$PATH\")."
    PATH="$HOME/.deno/bin:$PATH"
  fi
fi
echo "Ready: $(deno --version | head -n 1); OpenBLAS, oneDNN, libjpeg-turbo, Open MPI and Fashion-MNIST installed."

if [ "$gpu" = yes ]; then
  cat <<'GPU'

For NVIDIA GPUs, besides the NVIDIA driver: cuBLAS, cuDNN, NVRTC and NCCL.
A PyTorch CUDA install already has them; otherwise, in a virtual environment
or with pip's --user:

  pip install nvidia-cublas nvidia-cudnn-cu13 nvidia-cuda-nvrtc nvidia-nccl-cu13

deno-mec finds them in the active environment's nvidia/*/lib folders (or set
MEC_CUDA_LIBS to their folders, separated by ':'); check with
deno task cuda-info.
GPU
fi
