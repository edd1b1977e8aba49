# Helpers for .ci/services/*.sh and .ci/steps/*.sh (sourced, never run).
# shellcheck shell=bash

# apt_install PACKAGE...: install the Debian packages not installed yet
# (apt-get update at most once per CI run).
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "Installing Debian's ${missing[*]}"
    local stamp="${CI_LOGS:-/tmp}/.apt-updated"
    if [ ! -e "$stamp" ]; then
        apt-get update -qq && touch "$stamp"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# wait_for SECONDS COMMAND...: run COMMAND once a second until it succeeds.
wait_for() {
    local seconds="$1"; shift
    for _ in $(seq "$seconds"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    "$@"
}
