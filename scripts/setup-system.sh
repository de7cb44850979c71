#!/usr/bin/env bash
# System packages the build and the tests need (Debian). Installs only what is missing.
#   cmake                      CharLS (JPEG-LS) is built from source by the charls crate
#   dcmtk libgdcm-tools        peers of the DICOM benchmark (dcmj2pnm, dcml2pnm, gdcmconv…) and
#                              dsrdump, which must read our exported Structured Reports
#   xvfb mesa-vulkan-drivers libvulkan1 imagemagick
#                              headless GUI tests: Xvfb + lavapipe (wgpu on Vulkan), `import` screenshots
#   libxkbcommon-x11-0 libxcursor1 libxrandr2 libxi6 libx11-xcb1   winit on X11
#   iproute2                   private network namespaces for the Milvus and Orthanc servers under test
#   orthanc orthanc-dicomweb   the real archive the PACS tests run against (scripts/orthanc.sh);
#                              installed with services kept from starting: it only ever runs
#                              inside a private network namespace
#   curl openssl socat         seeding Orthanc; test certificates; the HTTPS front end of the
#                              DICOMweb tests (socat terminates TLS in front of Orthanc)
#   python3-venv               the Milvus standalone server and benchmark peers come from PyPI
set -euo pipefail
pkgs=(cmake dcmtk libgdcm-tools xvfb mesa-vulkan-drivers libvulkan1 imagemagick
      libxkbcommon-x11-0 libxcursor1 libxrandr2 libxi6 libx11-xcb1 iproute2 python3-venv pkg-config
      orthanc orthanc-dicomweb curl openssl socat)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# python3-venv is satisfied by a python with a working venv module
if [[ " ${missing[*]} " == *" python3-venv "* ]] && python3 -m venv --help >/dev/null 2>&1; then
  missing=("${missing[@]/python3-venv}")
fi
missing=($(printf '%s\n' "${missing[@]}" | sed '/^$/d'))
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  # keep package scripts from starting services (Orthanc would listen on every interface)
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    guard=1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  [ -n "$guard" ] && $SUDO rm -f /usr/sbin/policy-rc.d
  # and if a service manager started it anyway, stop it
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
    $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true
  fi
fi
