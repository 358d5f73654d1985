#!/usr/bin/python3
"""Summarise `ndpiReader -i FILE.pcap -v 2` outputs (OUTDIR/ndpi/*.txt) into
OUTDIR/ndpi-summary.json and print a table.

Per capture: number of flows, flows per nDPI protocol (with nDPI's
confidence: DPI, Match by port, guessed, ...), whether any flow is
BitTorrent, whether the largest flow (the one carrying the payload, for the
BitTorrent captures) is BitTorrent, and the non-BitTorrent protocols seen.
For BitTorrent captures it also carries swarm.py's result (complete or not),
for the collateral corpus (collateral-*.pcap) collateral.py's (sessions that
worked); both ordinary and collateral captures count as false positives
where nDPI says BitTorrent.
"""
import argparse
import glob
import json
import os
import re

FLOW = re.compile(
    r"^\s*\d+\s+(?P<l4>\S+)\s+(?P<a>\S+)\s+(?P<dir><->|->)\s+(?P<b>\S+)\s+"
    r"\[proto:\s*(?P<proto>[^\]]+)\]"
    r"(?P<rest>.*)$")
CONF = re.compile(r"\[Confidence:\s*([^\]]+)\]")
VOL = re.compile(r"\[(\d+) pkts/(\d+) bytes (?:<->|->) (\d+) pkts/(\d+) bytes\]")
DETECTED = re.compile(r"^\s+(\S.*?)\s+packets:\s*(\d+)\s+bytes:\s*(\d+)\s+flows:\s*(\d+)")


def proto_name(p):
    # "37/BitTorrent", "7.126/HTTP.Google", "188/QUIC" -> the name part
    p = p.strip()
    return p.split("/", 1)[1] if "/" in p else p


def is_bt(name):
    return "bittorrent" in name.lower()


BT_CLIENTS = ("aria2", "transmission", "libtorrent")


def capture_kind(name):
    """bittorrent (<client>-<mode>-<transport>-<discovery>), else the
    capture's own prefix (ordinary, collateral, ...): traffic that is not
    BitTorrent."""
    first = name.split("-", 1)[0]
    return "bittorrent" if first in BT_CLIENTS else first


def parse(path):
    flows, detected = [], {}
    section = None
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("Detected protocols:"):
                section = "det"
                continue
            if section == "det":
                m = DETECTED.match(line)
                if m:
                    detected[m.group(1)] = {"packets": int(m.group(2)), "bytes": int(m.group(3)),
                                            "flows": int(m.group(4))}
                    continue
                if line.strip():
                    section = None
            m = FLOW.match(line)
            if m:
                conf = CONF.search(m.group("rest"))
                vol = VOL.search(m.group("rest"))
                flows.append({
                    "l4": m.group("l4"),
                    "a": m.group("a"), "b": m.group("b"),
                    "proto": proto_name(m.group("proto")),
                    "confidence": conf.group(1) if conf else "",
                    "bytes": (int(vol.group(2)) + int(vol.group(4))) if vol else 0,
                })
    return flows, detected


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--ndpi-version", default="")
    a = ap.parse_args()

    results = {}
    rp = os.path.join(a.outdir, "swarm-results.jsonl")
    if os.path.exists(rp):
        for line in open(rp):
            try:
                r = json.loads(line)
            except ValueError:
                continue
            results["%s-%s-%s-%s" % (r["client"], r["mode"], r["transport"], r["discovery"])] = r

    collateral = {}
    cp = os.path.join(a.outdir, "collateral-results.jsonl")
    if os.path.exists(cp):
        for line in open(cp):
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "capture" in r:
                collateral[r["capture"]] = r

    summary = {"ndpi_version": a.ndpi_version, "command": "ndpiReader -i FILE.pcap -v 2", "captures": {}}
    for txt in sorted(glob.glob(os.path.join(a.outdir, "ndpi", "*.txt"))):
        if txt.endswith(".peer.txt"):
            continue
        name = os.path.basename(txt)[:-4]
        flows, detected = parse(txt)
        by_proto = {}
        for fl in flows:
            key = fl["proto"]
            e = by_proto.setdefault(key, {"flows": 0, "bytes": 0, "confidence": {}})
            e["flows"] += 1
            e["bytes"] += fl["bytes"]
            e["confidence"][fl["confidence"]] = e["confidence"].get(fl["confidence"], 0) + 1
        biggest = max(flows, key=lambda f: f["bytes"]) if flows else None
        entry = {
            "kind": capture_kind(name),
            "flows": len(flows),
            "bittorrent_flows": sum(1 for f in flows if is_bt(f["proto"])),
            "bittorrent_detected": any(is_bt(f["proto"]) for f in flows),
            "largest_flow": ({"l4": biggest["l4"], "a": biggest["a"], "b": biggest["b"],
                              "proto": biggest["proto"], "confidence": biggest["confidence"],
                              "bytes": biggest["bytes"]} if biggest else None),
            "largest_flow_is_bittorrent": bool(biggest and is_bt(biggest["proto"])),
            "protocols": by_proto,
            "non_bittorrent_protocols": sorted(p for p in by_proto if not is_bt(p)),
            "detected_protocols": detected,
        }
        peer_txt = txt[:-4] + ".peer.txt"
        if os.path.exists(peer_txt):
            pflows, _ = parse(peer_txt)
            pbig = max(pflows, key=lambda f: f["bytes"]) if pflows else None
            entry["peer_port_only"] = {
                "filter": "tcp|udp port 40000 (by transport)",
                "flows": len(pflows),
                "bittorrent_flows": sum(1 for f in pflows if is_bt(f["proto"])),
                "largest_flow": ({"l4": pbig["l4"], "proto": pbig["proto"], "confidence": pbig["confidence"],
                                  "bytes": pbig["bytes"]} if pbig else None),
                "largest_flow_is_bittorrent": bool(pbig and is_bt(pbig["proto"])),
            }
        if name in collateral:
            entry["sessions"] = collateral[name].get("sessions")
            entry["sessions_ok"] = collateral[name].get("ok")
        if name in results:
            entry["download_complete"] = bool(results[name].get("complete"))
            entry["seconds"] = results[name].get("seconds")
        summary["captures"][name] = entry

    bt = [e for n, e in summary["captures"].items() if e["kind"] == "bittorrent"]
    od = [e for n, e in summary["captures"].items() if e["kind"] == "ordinary"]
    co = [e for n, e in summary["captures"].items() if e["kind"] == "collateral"]
    summary["totals"] = {
        "bittorrent_captures": len(bt),
        "bittorrent_captures_flagged": sum(e["bittorrent_detected"] for e in bt),
        "bittorrent_captures_payload_flow_flagged": sum(e["largest_flow_is_bittorrent"] for e in bt),
        "bittorrent_captures_payload_flow_flagged_peer_port_only": sum(
            bool(e.get("peer_port_only", {}).get("largest_flow_is_bittorrent")) for e in bt),
        "ordinary_captures": len(od),
        "ordinary_captures_flagged_bittorrent": sum(e["bittorrent_detected"] for e in od),
        "collateral_captures": len(co),
        "collateral_flows": sum(e["flows"] for e in co),
        "collateral_flows_flagged_bittorrent": sum(e["bittorrent_flows"] for e in co),
    }
    with open(os.path.join(a.outdir, "ndpi-summary.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)

    w = max([len(n) for n in summary["captures"]] + [10])
    print("%-*s  %-8s  %5s  %4s  %-30s  %-30s  %s" % (w, "capture", "complete", "flows", "BT", "largest flow (confidence)",
                                                     "peer port alone", "other protocols"))
    for n, e in summary["captures"].items():
        lf = e["largest_flow"]
        lfs = "%s (%s)" % (lf["proto"], lf["confidence"]) if lf else "-"
        po = e.get("peer_port_only")
        pos = "-"
        if po and po["largest_flow"]:
            pos = "%s (%s)" % (po["largest_flow"]["proto"], po["largest_flow"]["confidence"])
        comp = {True: "yes", False: "NO"}.get(e.get("download_complete"), "-")
        if e["kind"] == "collateral" and e.get("sessions") is not None:
            comp = "%s/%s" % (e.get("sessions_ok"), e["sessions"])
        others = ", ".join("%s:%d" % (p, e["protocols"][p]["flows"]) for p in e["non_bittorrent_protocols"])
        print("%-*s  %-8s  %5d  %4d  %-30s  %-30s  %s" % (w, n, comp, e["flows"], e["bittorrent_flows"], lfs[:30],
                                                      pos[:30], others))
    t = summary["totals"]
    print("\nBitTorrent captures flagged by nDPI: %d/%d (payload flow flagged: %d/%d; "
          "with the peer port's packets alone: %d/%d); "
          "ordinary captures flagged as BitTorrent: %d/%d"
          % (t["bittorrent_captures_flagged"], t["bittorrent_captures"],
             t["bittorrent_captures_payload_flow_flagged"], t["bittorrent_captures"],
             t["bittorrent_captures_payload_flow_flagged_peer_port_only"], t["bittorrent_captures"],
             t["ordinary_captures_flagged_bittorrent"], t["ordinary_captures"]))
    if t["collateral_captures"]:
        print("collateral corpus: %d captures, %d flows, flagged as BitTorrent by nDPI: %d flows"
              % (t["collateral_captures"], t["collateral_flows"], t["collateral_flows_flagged_bittorrent"]))
    print("summary: %s" % os.path.join(a.outdir, "ndpi-summary.json"))


if __name__ == "__main__":
    main()
