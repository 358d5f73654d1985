//! Replicas: any number of `isdf-controller serve` processes on one
//! PostgreSQL, each serving every listener, any request reaching any of
//! them.
//!
//! - [`follow`]: each replica hears what the others commit through the
//!   replicas' bus (`db::bus`, PostgreSQL `NOTIFY`): new configs wake the
//!   long polls it holds, status reports wake its portal waits and rollout
//!   loop, deleted devices are refused, dashboard topics reach its pages;
//!   after losing touch it reloads what it may have missed.
//! - [`leader`]: the background loops (rollout driver, re-signing, pass
//!   expiry, key rotations) run on one replica at a time, and on another
//!   within seconds of that one dying.
//! - [`history`]: the leader's minute samples of the fleet, for the
//!   dashboard's charts over time.

pub mod follow;
pub mod history;
pub mod leader;
pub mod site_resolution;

pub use follow::{forward_live, Follower};
