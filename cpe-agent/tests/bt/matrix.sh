#!/usr/bin/env bash
# Runs swarm.py for every (client, mode, transport, discovery) combination on
# the bth-* topology (brought up here, torn down at exit) with no blocking,
# and prints one JSON line per combination plus a Markdown table.
#
# Usage: matrix.sh [OUT.jsonl]    env: SIZE_MB (8), TIMEOUT (90),
#        CLIENTS, MODES, TRANSPORTS, DISCOVERIES (space-separated subsets)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-/var/tmp/isdf-bt-matrix.jsonl}
SIZE_MB=${SIZE_MB:-8}
TIMEOUT=${TIMEOUT:-90}
CLIENTS=${CLIENTS:-aria2 transmission libtorrent}
MODES=${MODES:-plain encrypted}
TRANSPORTS=${TRANSPORTS:-tcp utp}
DISCOVERIES=${DISCOVERIES:-http udp dht}

"$here/topology.sh" up >&2 || exit 1
trap '"$here/topology.sh" down >&2' EXIT
: >"$out"
for c in $CLIENTS; do for m in $MODES; do for t in $TRANSPORTS; do for d in $DISCOVERIES; do
    /usr/bin/python3 "$here/swarm.py" --client "$c" --mode "$m" --transport "$t" --discovery "$d" \
        --lan-ns bth-lan --lan-addr 192.0.2.2 --wan-ns bth-wan --wan-addr 198.51.100.2 \
        --size-mb "$SIZE_MB" --timeout "$TIMEOUT" | tee -a "$out"
done; done; done; done
/usr/bin/python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("\n| client | mode | transport | discovery | complete | seconds | note |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    note = "unsupported" if r.get("unsupported") else (r.get("error") or "")
    print("| %s | %s | %s | %s | %s | %s | %s |" % (r["client"], r["mode"], r["transport"], r["discovery"],
          "yes" if r.get("complete") else "no", r.get("seconds", "-"), note))
PY
