# shellcheck shell=bash
# Installing Debian packages that ship daemons the host must not run (the
# tests start their own instances, on loopback or inside namespaces):
#
#   . scripts/lib/apt-no-daemons.sh
#   apt_install_without_daemons LOG PACKAGE...   # 0 when apt-get succeeded
#   disable_units LOG UNIT...                    # for the next boot
#
# A policy-rc.d refusing every start (exit 101; invoke-rc.d and
# deb-systemd-invoke honour it) stands in place during apt-get, and any
# existing one is put back afterwards. New listening sockets on the host
# after the install are reported on stderr.

apt_install_without_daemons() {
    local log=$1
    shift
    local policy=/usr/sbin/policy-rc.d saved='' ok=1 before after new
    if [ -e "$policy" ]; then
        saved=$(mktemp /tmp/apt-no-daemons.policy-rc.d.XXXXXX)
        cp -p "$policy" "$saved"
    fi
    printf '#!/bin/sh\n# apt-no-daemons: start no daemon while installing\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    before=$(ss -Hltnup 2>/dev/null | awk '{print $1, $5}' | sort -u || true)
    export DEBIAN_FRONTEND=noninteractive
    # Refresh the lists only when a first try fails (saves time on warm machines).
    if ! apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1; then
        apt-get update -q >>"$log" 2>&1 || true
        apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1 || ok=0
    fi
    if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi
    after=$(ss -Hltnup 2>/dev/null | awk '{print $1, $5}' | sort -u || true)
    new=$(comm -13 <(echo "$before") <(echo "$after") | grep . || true)
    if [ -n "$new" ]; then
        echo "apt-no-daemons: WARNING: new listening sockets on the host after installing $*: $new" >&2
    fi
    [ "$ok" = 1 ]
}

# Installed enabled for the next boot: disable (and stop, should one have
# started after all) these units.
disable_units() {
    local log=$1 unit
    shift
    for unit in "$@"; do
        if [ -d /run/systemd/system ]; then
            systemctl disable --now "$unit" >>"$log" 2>&1 || true
        elif command -v systemctl >/dev/null; then
            # systemd installed but not running (a container): disable offline.
            systemctl disable "$unit" >>"$log" 2>&1 || true
        fi
        case "$unit" in
            *.service) command -v update-rc.d >/dev/null &&
                { update-rc.d "${unit%.service}" disable >>"$log" 2>&1 || true; } ;;
        esac
    done
}
