#!/usr/bin/env bash
# Installs Chromium (Debian's `chromium` package) where it is missing: the dashboard's
# end-to-end test (tests/dashboard.rs) renders the page in headless Chromium, and
# docs/dashboard.png is a screenshot taken with it. Non-interactive; does nothing when
# `chromium` is already on PATH. Needs root (or sudo) and apt-get; .ci/run calls it
# before `cargo test`.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "install-chromium: $(command -v chromium) is already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: no apt-get here; install Chromium by hand so that \`chromium\` is on PATH" >&2
    exit 1
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        as_root=(sudo -n)
    else
        echo "install-chromium: needs root (or sudo) to run apt-get" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -q
# fonts-dejavu-core: legible text in the headless page and its screenshot.
"${as_root[@]}" apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
chromium --version
