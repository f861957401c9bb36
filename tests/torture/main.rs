//! The torture suite: slow tests of the real binary, in a test binary of their own (`cargo test
//! --test torture`, run by `.ci/run`).
//!
//! - [`sequences`]: 200 randomized apply sequences on the fake backend with injected faults,
//!   latency and `kill -9` at random points, each followed by a recovery apply; afterwards the
//!   fake backend's objects and the state's records agree exactly.
//! - [`concurrent`]: 16 `dstack apply` processes at once on one SQLite state and on one S3
//!   state (moto): losers exit 1 naming the lock holder, no successful apply's change is lost.
//! - [`fuzz`]: the bodies of the cargo-fuzz targets (`fuzz/`) fed their seed corpus and a few
//!   thousand mutations of it, on stable Rust.
//!
//! Randomness comes from [`random::Random`] with fixed seeds, so a failure names the seed that
//! reproduces it.

#[path = "../integration/common/mod.rs"]
mod common;

#[path = "../../fuzz/src/lib.rs"]
mod fuzz_targets;

mod concurrent;
mod fuzz;
mod random;
mod sequences;
