//! `stratad`: the engine daemon. Wiring only; the work is in the library.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    anyhow::bail!("stratad: the daemon entry point is being wired")
}
