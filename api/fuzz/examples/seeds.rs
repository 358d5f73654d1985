//! Writes the seeds of the wire contract's corpora (`src/seeds.rs`) into
//! `corpus/`: `scripts/fuzz seeds` runs it after a change of the documents.

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    isdf_api_fuzz::seeds::write(dir, &isdf_api_fuzz::seeds::api_seeds())
}
