#!/usr/bin/env bash
# Adds Debian's bookworm-backports suite (deb and deb-src) when the machine lacks it, with the same mirror and
# keyring as its main Debian source. Idempotent; prints nothing when the suite is already there.
set -euo pipefail
if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then exit 0; fi
uri=http://deb.debian.org/debian
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  found=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  [ -n "$found" ] && uri=$found
fi
cat > /etc/apt/sources.list.d/enclave-runtime-backports.sources <<SRC
Types: deb deb-src
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: $keyring
SRC
echo "vm: added bookworm-backports (deb, deb-src) from $uri" >&2
