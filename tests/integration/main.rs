//! Integration tests: the real `dstack` binary against real parts (a `SQLite` file, the Docker
//! daemon, an S3/EC2 API server on 127.0.0.1), one test binary with modules by topic.

mod common;

mod artifacts;
mod artifacts_remote;
mod aws;
mod aws_runs;
mod ci_gate;
mod cli;
mod conformance;
mod examples;
mod fuzz_config;
mod help;
mod legacy;
mod local;
mod orphans;
mod plan_apply;
mod pool;
mod security;
mod state;
mod state_cli;
mod validate;
