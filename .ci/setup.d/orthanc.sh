#!/usr/bin/env bash
# Orthanc PACS server (Debian packages orthanc + orthanc-dicomweb) for the busgen-deploy round-trip tests, and
# dicom3tools (dciodvfy, the DICOM IOD validator the busgen-deploy tests run on the SR and SC they write).
# Idempotent: installs only what is missing (one apt-get update at most). It never leaves a server running:
# the tests start their own Orthanc on loopback with a temporary storage folder and free ports, and stop it.
set -euo pipefail
missing=()
command -v Orthanc >/dev/null 2>&1 || missing+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
if [ ${#missing[@]} -eq 0 ]; then
    echo "orthanc, dicom3tools: already installed ($(Orthanc --version 2>/dev/null | head -n1))"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "orthanc: no apt-get here; could not install ${missing[*]} (the Orthanc tests skip, dciodvfy checks are left out)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq; then
    echo "orthanc: apt-get update failed; could not install ${missing[*]} (the Orthanc tests skip, dciodvfy checks are left out)"
    exit 0
fi
# policy-rc.d keeps the package's post-install from starting the system service
had_policy=0
[ -e /usr/sbin/policy-rc.d ] && had_policy=1
if [ $had_policy -eq 0 ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi
status=0
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
if [ $had_policy -eq 0 ]; then rm -f /usr/sbin/policy-rc.d; fi
if [ $status -ne 0 ]; then
    echo "orthanc: apt-get install ${missing[*]} failed ($status); the Orthanc tests skip, dciodvfy checks are left out"
    exit 0
fi
# a package install may still have started the service (no systemd in containers: usually not)
if command -v service >/dev/null 2>&1; then service orthanc stop >/dev/null 2>&1 || true; fi
echo "orthanc: installed ${missing[*]} ($(Orthanc --version 2>/dev/null | head -n1))"
