#!/usr/bin/env bash
# Debian packages kiln's tests need beyond Python: the aarch64 cross compilers (C, C++) and qemu-user
# (to build and run aarch64 artifacts on x86), and the libraries the reference MXNet needs.
# Installs only what is missing.
set -euo pipefail
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
# libmxnet.so (the reference MXNet in tests/mxnet's side virtualenv) links these
libs=$(ldconfig -p)
grep -q libgomp.so.1 <<<"$libs" || need+=(libgomp1)
grep -q libquadmath.so.0 <<<"$libs" || need+=(libquadmath0)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
