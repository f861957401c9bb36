//! A state document, as `dstack state push FILE` and the S3 store read it: no input panics.
//! `cargo +nightly fuzz run state_document fuzz/corpus/state_document fuzz/seeds/state_document` (see `fuzz/README.md`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dstack_fuzz::state_document(data));
