//! Configuration: the project directory, `.dstack/config.yml`, variables, and the loading of
//! `*.dstack.yml` files (span-keeping YAML, interpolation, schema validation, typed model).
//!
//! Invariant: every problem found in a file is reported with its `file:line:column`; nothing in
//! this module panics on any input (the fuzz target and property tests feed it random text).

pub mod de;
pub mod diagnostic;
pub mod interpolate;
pub mod load;
pub mod project;
pub mod schema;
pub mod variables;
pub mod yaml;
