//! What the agent could not write to its state directory (a full disk, a
//! flash gone read-only): kept, retried at every pass, and named in every
//! status report until it is written.
//!
//! A config that could not be saved as the last good one is still
//! enforced: the kernel holds it, and after a reboot before the retry
//! succeeds the previous last good config comes back (verified, older) and
//! the newer one is fetched again. The router's own blocks stay in force
//! the same way. Nothing half-written is left behind (`write_atomically`).

use super::{error_debug, Agent};

/// State the agent holds but could not save yet.
#[derive(Default)]
pub(super) struct Unsaved {
    /// The envelope of the enforced config (its version), and why it could
    /// not be saved.
    last_good: Option<(u64, Vec<u8>, String)>,
    /// Why the router's blocks could not be saved.
    router_blocks: Option<String>,
}

impl Agent {
    /// Saves `envelope` (of config `version`) as the last good config;
    /// on failure it is kept to try again.
    pub(super) fn save_last_good(&mut self, version: u64, envelope: Vec<u8>) {
        match self.state.save_last_good(&envelope) {
            Ok(()) => self.unsaved.last_good = None,
            Err(e) => {
                // Enforced but not persisted: after a reboot the previous
                // good config comes back, which is safe; say so.
                error_debug("persisting the last good config", &e);
                self.unsaved.last_good = Some((version, envelope, format!("{e:#}")));
            }
        }
    }

    /// Saves the router blocks to the state directory; a failure is logged
    /// and reported (they stay in force) and retried at the next pass.
    pub(super) fn persist_router_blocks(&mut self) {
        let saved =
            crate::router_blocks::persist::save(&self.state, self.router_blocks.persisted());
        self.unsaved.router_blocks = match saved {
            Ok(()) => None,
            Err(e) => {
                error_debug("persisting router blocks", &e);
                Some(format!("{e:#}"))
            }
        };
    }

    /// Tries again what could not be saved; once it is, the next report
    /// (due at once) no longer names it.
    pub(super) fn retry_unsaved(&mut self) {
        let before = self.unsaved_errors().len();
        if let Some((version, envelope, _)) = self.unsaved.last_good.take() {
            let still_enforced = self.enforced_version() == Some(version);
            if still_enforced {
                self.save_last_good(version, envelope);
            }
        }
        if self.unsaved.router_blocks.is_some() {
            self.persist_router_blocks();
        }
        if self.unsaved_errors().len() < before {
            self.report_due = true;
        }
    }

    /// One line per file not saved, for the status report.
    pub(super) fn unsaved_errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some((version, _, e)) = &self.unsaved.last_good {
            errors.push(format!(
                "state_not_saved: config {version} is enforced but not saved as the last good one \
                 (a reboot would enforce the previous one until it is fetched again): {e}"
            ));
        }
        if let Some(e) = &self.unsaved.router_blocks {
            errors.push(format!(
                "state_not_saved: the router's own blocks are enforced but not saved: {e}"
            ));
        }
        errors
    }
}
