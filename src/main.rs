//! The `dynia` command: CLI parsing and wiring only.
fn main() {}
