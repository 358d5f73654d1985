//! What the agent's fuzz targets share: the router they run on (settings,
//! interfaces, the classifier's limits), the framing of several
//! packets in one input, and the seeds their corpora start from
//! (`examples/seeds.rs` writes them). Keys, policies and properties come
//! from the wire contract's fuzz crate (`isdf_api_fuzz`).

pub mod packets;
pub mod router;
pub mod seeds;
