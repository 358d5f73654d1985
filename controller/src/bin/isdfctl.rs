//! `isdfctl`, the operator CLI (its code is `isdf_controller::cli`).

fn main() -> std::process::ExitCode {
    isdf_controller::cli::main()
}
