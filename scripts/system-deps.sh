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
# The runtime-only install's aarch64 test unpacks Debian's arm64 python3.11 (kiln/testing/aarch64.py): apt must
# know the arm64 architecture to download it
add_arm64=0
dpkg --print-foreign-architectures | grep -qx arm64 || add_arm64=1
[ ${#need[@]} -eq 0 ] && [ $add_arm64 -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
[ $add_arm64 -eq 0 ] || $sudo dpkg --add-architecture arm64
$sudo apt-get update -qq
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${need[*]}"
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
