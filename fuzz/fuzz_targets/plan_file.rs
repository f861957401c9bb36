//! A saved plan, as `dstack apply FILE` reads it: no input panics.
//! `cargo +nightly fuzz run plan_file fuzz/corpus/plan_file fuzz/seeds/plan_file` (see `fuzz/README.md`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dstack_fuzz::plan_file(data));
