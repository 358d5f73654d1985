//! `isdf-agent uninstall`: the operator hands the router back. Stopping the
//! agent (SIGTERM, the service manager, a crash) leaves the router as it is,
//! fail-static: rules, sets and the managed dnsmasq keep working without
//! it. Uninstalling is the one deliberate way to take them away: with the
//! agent stopped, it ends the managed dnsmasq (or removes `isdf.conf` from
//! the system dnsmasq's conf-dir and reloads it), removes the tunnels and
//! removes the agent's table or chains. The LAN then has no resolver from
//! the agent: on a router with a system resolver, start it again. The state
//! directory (identity, last good config) stays; delete it to forget the
//! enrollment.

use anyhow::{bail, Context};

use crate::backend::{self, Interfaces};
use crate::control::{self, Request};
use crate::dns::{Dnsmasq, Resolver};
use crate::sys::settings::Settings;
use crate::wireguard::Tunnels;

/// Removes everything the agent put on the router, each part tried
/// whatever the others did; fails if an agent still runs (it would put
/// them back) or if a part could not be removed.
pub fn uninstall(settings: &Settings) -> anyhow::Result<()> {
    let socket = settings.control_socket_path();
    if control::call(&socket, &Request::List {}).is_ok() {
        bail!(
            "an agent is running (its control socket {} answers): stop it first, \
             or it enforces its config again",
            socket.display()
        );
    }
    let resolver = Dnsmasq::new(settings)
        .apply(None)
        .context("ending the agent's resolver");
    let tunnels = Tunnels::new(settings.tunnel_settings())
        .and_then(|mut tunnels| tunnels.remove())
        .context("removing the WireGuard tunnels");
    let interfaces = Interfaces {
        lan: settings.lan_interfaces.clone(),
        wan: settings.wan_interfaces.clone(),
    };
    let firewall = backend::select(settings.backend, interfaces)
        .and_then(|mut backend| backend.remove())
        .context("removing the firewall rules");
    let failed: Vec<String> = [resolver, tunnels, firewall]
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if !failed.is_empty() {
        bail!("uninstall left something behind: {}", failed.join("; "));
    }
    Ok(())
}
