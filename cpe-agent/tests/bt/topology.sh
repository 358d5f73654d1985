#!/usr/bin/env bash
# Self-contained three-namespace topology for the BitTorrent harness:
#
#   bth-lan  eth0 192.0.2.2/24  ──veth──  lan0 192.0.2.1/24   bth-router
#   (leecher, default via .1)             wan0 198.51.100.1/24 (forwarding on)
#                                                 │ veth
#   bth-wan  eth0 198.51.100.2/24 (+ .3 .. .5 for extra seeders)
#            (tracker, seeder(s), DHT bootstrap; route to 192.0.2.0/24 via .1)
#
# The veth pairs are created inside the namespaces (`ip -n NS link add ...
# peer ... netns OTHER`), so nothing is ever attached to the root namespace or
# a real interface, and no namespace has a route off this topology.
#
# /etc/netns/<ns>/{resolv.conf,hosts} are laid down too: `ip netns exec`
# bind-mounts them over /etc, so inside these namespaces DNS goes to the
# namespace's own loopback and the well-known public DHT bootstrap names map
# to 127.0.0.1 (a dead end), as defence in depth behind each client's own
# settings.
#
# Usage: topology.sh up|down|status [PREFIX]      (PREFIX defaults to "bth")
# Namespaces are PREFIX-lan, PREFIX-router, PREFIX-wan; PREFIX must start
# with "bth" so this never touches namespaces other tests own.
set -euo pipefail

cmd=${1:-}
P=${2:-${BTH_PREFIX:-bth}}
case "$P" in bth*) ;; *) echo "topology.sh: prefix must start with 'bth'" >&2; exit 2 ;; esac
LAN=$P-lan RTR=$P-router WAN=$P-wan

etc_files() {
    local ns=$1
    mkdir -p "/etc/netns/$ns"
    printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"/etc/netns/$ns/resolv.conf"
    {
        printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
        # Public DHT bootstrap routers / trackers that clients may carry
        # built in: send them nowhere.
        for h in router.bittorrent.com router.utorrent.com dht.transmissionbt.com \
                 dht.libtorrent.org router.bitcomet.com dht.aelitis.com \
                 router.silotis.us dht.anacrolix.link; do
            printf '127.0.0.1\t%s\n' "$h"
        done
    } >"/etc/netns/$ns/hosts"
}

down() {
    for ns in "$LAN" "$RTR" "$WAN"; do
        ip netns del "$ns" 2>/dev/null || true
        rm -rf "/etc/netns/$ns"
    done
}

up() {
    down
    ip netns add "$LAN"; ip netns add "$RTR"; ip netns add "$WAN"
    for ns in "$LAN" "$RTR" "$WAN"; do
        etc_files "$ns"
        ip -n "$ns" link set lo up
    done
    # veth pairs born inside the namespaces
    ip -n "$RTR" link add lan0 type veth peer name eth0 netns "$LAN"
    ip -n "$RTR" link add wan0 type veth peer name eth0 netns "$WAN"

    ip -n "$RTR" addr add 192.0.2.1/24 dev lan0
    ip -n "$RTR" addr add 198.51.100.1/24 dev wan0
    ip -n "$RTR" link set lan0 up
    ip -n "$RTR" link set wan0 up
    ip netns exec "$RTR" sysctl -qw net.ipv4.ip_forward=1

    ip -n "$LAN" addr add 192.0.2.2/24 dev eth0
    ip -n "$LAN" link set eth0 up
    ip -n "$LAN" route add default via 192.0.2.1

    ip -n "$WAN" addr add 198.51.100.2/24 dev eth0
    for a in 3 4 5; do ip -n "$WAN" addr add "198.51.100.$a/24" dev eth0; done
    ip -n "$WAN" link set eth0 up
    # Only the LAN prefix, through the router: the WAN side has no default.
    ip -n "$WAN" route add 192.0.2.0/24 via 198.51.100.1

    # IPv6 is not used by the harness; keep the namespaces quiet on it
    # (no router solicitations / DAD chatter in the captures).
    for ns in "$LAN" "$RTR" "$WAN"; do
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null || true
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
    done

    # Wait (bounded) until LAN reaches WAN through the router.
    for _ in $(seq 1 50); do
        if ip netns exec "$LAN" ping -c1 -W1 -q 198.51.100.2 >/dev/null 2>&1; then
            echo "topology $P: up"; return 0
        fi
        sleep 0.1
    done
    echo "topology $P: LAN cannot reach WAN" >&2
    return 1
}

status() {
    for ns in "$LAN" "$RTR" "$WAN"; do
        echo "== $ns"; ip -n "$ns" -br addr 2>/dev/null || echo "(absent)"
    done
}

case "$cmd" in
    up) up ;;
    down) down; echo "topology $P: down" ;;
    status) status ;;
    *) echo "usage: $0 up|down|status [PREFIX]" >&2; exit 2 ;;
esac
