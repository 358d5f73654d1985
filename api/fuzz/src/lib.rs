//! What the fuzz targets share, the agent's (`cpe-agent/fuzz/`) and the
//! controller's (`controller/fuzz/`) too: the fixed keys and policy configs
//! are opened with, the properties checked on every document a side
//! accepts, and the seeds the corpora start from (`examples/seeds.rs`
//! writes them).

pub mod fixtures;
pub mod properties;
pub mod seeds;
