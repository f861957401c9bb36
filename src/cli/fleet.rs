//! `dstack fleet list | delete`: the recorded fleets of every backend, read afresh.
//!
//! `list` shows each fleet's live nodes against its target, its GPUs and spot policy as
//! configured, its backend and region, and the estimated price per hour of its nodes (see the
//! price table of the aws backend). `delete NAME` goes through the executor, like
//! `dstack volume delete`.

use clap::{Args, Subcommand};
use serde_json::{Value as Json, json};

use super::context::{self, Globals};
use super::printer::{ago, table};
use super::volume::{Read, backend_column, delete_recorded, open, read_all};
use super::{ExitStatus, Printer};
use crate::model::Kind;
use crate::model::fleet::FleetSpec;
use crate::model::profile::SpotPolicy;
use crate::state::ResourceRecord;

#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    pub command: FleetCommand,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// List the recorded fleets of every backend, read afresh.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  dstack fleet list\n  dstack fleet ls --json"
    )]
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a recorded fleet, terminating its instances.
    #[command(
        visible_alias = "rm",
        after_help = "Example:\n  dstack fleet delete gpus -y"
    )]
    Delete {
        name: String,
        /// Do not ask for confirmation (needed without a terminal).
        #[arg(short = 'y', long)]
        yes: bool,
    },
}

pub fn run(args: &FleetArgs, globals: &Globals, printer: &Printer) -> miette::Result<ExitStatus> {
    context::block_on(async {
        match &args.command {
            FleetCommand::List { json } => list(*json, globals, printer).await,
            FleetCommand::Delete { name, yes } => {
                delete_recorded(Kind::Fleet, name, *yes, globals, printer).await
            }
        }
    })?
}

/// One row of the listing.
struct Row {
    name: String,
    live: Option<i64>,
    target: Option<i64>,
    nodes_spec: Option<String>,
    gpu: Option<String>,
    spot: String,
    backend: String,
    price: Option<f64>,
    status: String,
    record: ResourceRecord,
}

fn row(record: &ResourceRecord, read: &Read) -> Row {
    // The recorded spec is the canonical JSON of the configuration, `type` included.
    let mut fields = record.spec.clone();
    if let Json::Object(map) = &mut fields {
        map.remove("type");
        map.remove("name");
    }
    let spec: Option<FleetSpec> = serde_json::from_value(fields).ok();
    let nodes = spec.as_ref().and_then(|s| s.nodes);
    let live = read.attribute(record, "nodes").and_then(Json::as_i64);
    let spot = match spec.as_ref().and_then(|s| s.spot_policy) {
        Some(SpotPolicy::Spot) => "spot",
        Some(SpotPolicy::Auto) => "auto",
        Some(SpotPolicy::OnDemand) | None => "on-demand",
    };
    Row {
        name: record.name.clone(),
        live,
        target: nodes.map(|n| n.target),
        nodes_spec: nodes.map(|n| n.to_string()),
        gpu: spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.gpu.as_ref())
            .map(ToString::to_string),
        spot: spot.into(),
        backend: backend_column(record, read),
        price: read.attribute(record, "price").and_then(Json::as_f64),
        status: read.status(record),
        record: record.clone(),
    }
}

/// `2/2`: live nodes of the target (the target alone when nothing was read).
fn nodes_column(row: &Row) -> String {
    match (row.live, row.target) {
        (Some(live), Some(target)) => format!("{live}/{target}"),
        (None, Some(target)) => target.to_string(),
        (Some(live), None) => live.to_string(),
        (None, None) => "-".into(),
    }
}

async fn list(json: bool, globals: &Globals, printer: &Printer) -> miette::Result<ExitStatus> {
    let opened = open(globals).await?;
    let snapshot = opened.store.load().await?;
    let rows: Vec<Row> = read_all(&snapshot, &opened.backends, Kind::Fleet, printer)
        .await
        .iter()
        .map(|(record, read)| row(record, read))
        .collect();
    if json {
        let fleets: Vec<Json> = rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "backend": r.record.backend,
                    "backend_id": r.record.backend_id,
                    "nodes": {"live": r.live, "target": r.target, "spec": r.nodes_spec},
                    "gpu": r.gpu,
                    "spot_policy": r.spot,
                    "price": r.price,
                    "status": r.status,
                    "instances": r.record.attributes.get("instances"),
                    "source": r.record.source.file,
                    "created_at": r.record.created_at,
                })
            })
            .collect();
        printer.data_line(&serde_json::to_string_pretty(&fleets).unwrap_or_default());
        return Ok(ExitStatus::Success);
    }
    if rows.is_empty() {
        printer.message("No fleets recorded.");
        return Ok(ExitStatus::Success);
    }
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                nodes_column(r),
                r.gpu.clone().unwrap_or_else(|| "-".into()),
                r.spot.clone(),
                r.backend.clone(),
                r.price.map_or_else(|| "-".into(), |p| format!("${p:.4}")),
                r.status.clone(),
                ago(r.record.created_at),
            ]
        })
        .collect();
    printer.data(&table(
        &[
            "NAME", "NODES", "GPU", "SPOT", "BACKEND", "PRICE", "STATUS", "CREATED",
        ],
        lines,
    ));
    Ok(ExitStatus::Success)
}
