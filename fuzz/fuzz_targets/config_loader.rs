//! A `*.dstack.yml` text (also read as `.dstack/config.yml` and `.dstack/variables.yaml`): no input panics.
//! `cargo +nightly fuzz run config_loader fuzz/corpus/config_loader fuzz/seeds/config_loader` (see `fuzz/README.md`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dstack_fuzz::config_loader(data));
