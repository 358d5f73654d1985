#!/usr/bin/python3
"""libtorrent peer for the harness: the seeder (always) and the libtorrent
leecher. Run with Debian's /usr/bin/python3 (python3-libtorrent).

All of libtorrent's reach-the-internet features are off from the session's
first moment (settings are given to the constructor): no LSD, UPnP, NAT-PMP,
no default DHT bootstrap (only --dht-bootstrap, or no DHT at all), and web
seeds are not used (the harness's torrents carry none).

--mode plain: encryption disabled (pe_disabled both ways, plaintext only).
--mode encrypted: MSE/PE forced both ways (in_enc_policy and out_enc_policy
  pe_forced), RC4 the only allowed level (allowed_enc_level pe_rc4,
  prefer_rc4): every connection is MSE with full-stream RC4, or none.
--transport tcp|utp|both: only that transport, or both, incoming and
  outgoing (with both, libtorrent tries uTP first and falls back to TCP).
--connect IP:PORT (leecher): the peer is handed over by hand
  (torrent_handle.connect_peer), as peer exchange inside another session or
  a friend's address would give it, and handed over again every few seconds
  while no peer is connected (a real client keeps such a peer in its list).
--hidden: no discovery but the torrent's trackers and --connect: the session
  has no default plugins (no ut_pex, ut_metadata, smart_ban) and the torrent
  is added with disable_pex, disable_dht and disable_lsd.

Writes a status JSON (--status, atomically replaced) while it runs:
libtorrent's own verified byte count (total_wanted_done), peers, state.
Stops on SIGTERM/SIGINT or after --max-seconds.
"""
import argparse
import json
import os
import signal
import sys
import time

import libtorrent as lt


def settings(a):
    utp = a.transport in ("utp", "both")
    tcp = a.transport in ("tcp", "both")
    enc = a.mode == "encrypted"
    dht = bool(a.dht_bootstrap)
    s = {
        "listen_interfaces": a.listen,
        "outgoing_interfaces": a.listen.rsplit(":", 1)[0],
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_dht": dht,
        "dht_bootstrap_nodes": a.dht_bootstrap if dht else "",
        # a closed test DHT: all nodes share one address, in TEST-NET ranges
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_ignore_dark_internet": False,
        "dht_prefer_verified_node_ids": False,
        "enable_outgoing_utp": utp,
        "enable_incoming_utp": utp,
        "enable_outgoing_tcp": tcp,
        "enable_incoming_tcp": tcp,
        "out_enc_policy": int(lt.enc_policy.pe_forced if enc else lt.enc_policy.pe_disabled),
        "in_enc_policy": int(lt.enc_policy.pe_forced if enc else lt.enc_policy.pe_disabled),
        "allowed_enc_level": int(lt.enc_level.pe_rc4 if enc else lt.enc_level.pe_plaintext),
        "prefer_rc4": enc,
        "allow_multiple_connections_per_ip": True,
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        "stop_tracker_timeout": 1,
        "min_reconnect_time": 1,
        "peer_connect_timeout": 3,
        "alert_mask": int(lt.alert.category_t.error_notification
                          | lt.alert.category_t.status_notification
                          | lt.alert.category_t.tracker_notification
                          | lt.alert.category_t.dht_notification
                          | lt.alert.category_t.peer_notification
                          | lt.alert.category_t.connect_notification),
        "user_agent": "isdf-bt-harness/libtorrent-" + lt.__version__,
    }
    return s


def write_status(h, ses, a, listening, last):
    """Mirror libtorrent's own counters to --status when they change
    (last=None: always). total_wanted_done counts only hash-checked pieces."""
    st = h.status()
    doc = {
        "role": a.role,
        "state": str(st.state),
        "is_seeding": bool(st.is_seeding),
        "total_wanted": st.total_wanted,
        "total_wanted_done": st.total_wanted_done,
        "total_payload_upload": st.total_payload_upload,
        "total_payload_download": st.total_payload_download,
        "num_peers": st.num_peers,
        "dht_nodes": ses.status().dht_nodes if a.dht_bootstrap else 0,
        # socket types libtorrent reported listening on ("TCP", "uTP", ...)
        "listening": sorted(listening),
    }
    cur = json.dumps(doc, sort_keys=True)
    if a.status and cur != last:
        with open(a.status + ".tmp", "w") as f:
            f.write(cur)
        os.replace(a.status + ".tmp", a.status)
    return cur


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=["seed", "leech"], required=True)
    ap.add_argument("--torrent", required=True)
    ap.add_argument("--save", required=True, help="save path (holds the payload for a seeder)")
    ap.add_argument("--listen", required=True, help="IP:PORT")
    ap.add_argument("--mode", choices=["plain", "encrypted"], default="plain")
    ap.add_argument("--transport", choices=["tcp", "utp", "both"], default="tcp")
    ap.add_argument("--connect", default="", help="IP:PORT of a peer to connect to by hand (leecher)")
    ap.add_argument("--hidden", action="store_true",
                    help="no PEX/DHT/LSD for the torrent and no default plugins (hidden discovery)")
    ap.add_argument("--dht-bootstrap", default="", help="IP:PORT of the only DHT bootstrap node; empty = DHT off")
    ap.add_argument("--status", default="")
    ap.add_argument("--max-seconds", type=float, default=300)
    a = ap.parse_args()

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    # flags 0: without add_default_plugins (ut_pex, ut_metadata, smart_ban)
    ses = lt.session(settings(a), 0) if a.hidden else lt.session(settings(a))
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(a.torrent)
    params.save_path = a.save
    if a.role == "seed":
        params.flags |= lt.torrent_flags.seed_mode  # the payload is the original: skip re-hashing
    if a.hidden:
        params.flags |= lt.torrent_flags.disable_pex | lt.torrent_flags.disable_dht | lt.torrent_flags.disable_lsd
    h = ses.add_torrent(params)
    peer = None
    if a.connect:
        host, port = a.connect.rsplit(":", 1)
        peer = (host, int(port))
    last_connect = 0.0
    listening = set()

    last = ""
    last_dht_announce = 0.0
    dht_ready = False
    deadline = time.monotonic() + a.max_seconds
    while not stop and time.monotonic() < deadline:
        ses.wait_for_alert(200)
        for al in ses.pop_alerts():
            cat = al.category()
            if isinstance(al, lt.dht_bootstrap_alert):
                dht_ready = True
            if isinstance(al, lt.listen_succeeded_alert):
                listening.add(str(al.socket_type))
            if cat & lt.alert.category_t.error_notification or isinstance(
                    al, (lt.listen_succeeded_alert, lt.peer_connect_alert, lt.peer_disconnected_alert, lt.tracker_reply_alert,
                         lt.dht_bootstrap_alert, lt.torrent_finished_alert, lt.dht_reply_alert)):
                sys.stderr.write("%.3f %s %s: %s\n" % (time.time(), a.role, type(al).__name__, al.message()))
        now = time.monotonic()
        # With DHT only, announce (seeder) / look up (leecher) as soon as the
        # table is bootstrapped and again every 3 s, instead of libtorrent's
        # default 15-minute cadence.
        if a.dht_bootstrap and dht_ready and now - last_dht_announce > 3:
            h.force_dht_announce()
            last_dht_announce = now
        if peer and now - last_connect > 5 and h.status().num_peers == 0:
            h.connect_peer(peer)
            last_connect = now
        last = write_status(h, ses, a, listening, last)
    write_status(h, ses, a, listening, None)
    # pause so a final "stopped" announce is attempted, bounded by stop_tracker_timeout
    ses.pause()
    del ses


if __name__ == "__main__":
    main()
