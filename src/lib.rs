//! `dstack`: declarative, Terraform-style desired state for ML compute.
//!
//! # Architecture
//!
//! The data path of every command that changes something:
//!
//! ```text
//! config ──► model ──► (state, backend refresh) ──► plan ──► apply ──► state
//! ```
//!
//! - [`config`] finds the project directory, reads `.dstack/config.yml`, and loads
//!   `*.dstack.yml` files with a span-keeping YAML 1.2 reader. Documents are interpolated
//!   (`${{ var.X }}`), validated against the JSON Schemas in `schemas/` and read into typed
//!   resources; every problem names `file:line:column`.
//! - [`model`] holds the typed resources (`volume`, `task`, `dev-environment`, `service`,
//!   `fleet`, `tag`), their shorthand value types (ranges, sizes, GPU specs, durations, ports,
//!   mounts), identity (`kind/name`) and the schemas generated from those types.
//! - [`cli`] is thin: clap types, one file per command, and the printer (stdout carries data,
//!   stderr carries messages; `NO_COLOR` and non-terminals are respected). Only `main` exits.
//!
//! Invariants kept across modules: no input makes the binary panic; configuration errors are
//! collected and reported all at once; the schemas and the Rust types never drift (a test
//! regenerates `schemas/` and compares).

pub mod apply;
pub mod artifacts;
pub mod aws;
pub mod backend;
pub mod cli;
pub mod config;
pub mod legacy;
pub mod model;
pub mod plan;
pub mod runner;
pub mod state;
