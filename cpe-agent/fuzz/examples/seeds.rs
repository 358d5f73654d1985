//! Writes the seeds of the agent's corpora (`src/seeds.rs`) into `corpus/`:
//! `scripts/fuzz seeds` runs it after a change of the formats.

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    isdf_api_fuzz::seeds::write(dir, &isdf_agent_fuzz::seeds::agent_seeds())
}
