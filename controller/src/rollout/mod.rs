//! Staged rollouts: an assignment's change reaches its routers wave by
//! wave, each released only once the one before it is healthy. `plan.rs`
//! decides (pure: waves, verdicts, which form of an assignment a router
//! compiles); `driver.rs` acts (starting, operators' pause/resume/abort and
//! the loop that follows the routers' reports).

pub mod driver;
pub mod plan;
