//! `dstack schema [TYPE]`: print a JSON Schema (for editors: map `*.dstack.yml` to it).

use clap::Args;

use super::{ExitStatus, Printer};
use crate::model::schema::{SCHEMA_NAMES, embedded};

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// `task`, `dev-environment`, `service`, `volume`, `fleet`, `tag`, or `config` for
    /// `.dstack/config.yml`; without it, the schema of every configuration type.
    #[arg(value_name = "TYPE", value_parser = clap::builder::PossibleValuesParser::new(SCHEMA_NAMES))]
    pub name: Option<String>,
}

pub fn run(args: &SchemaArgs, printer: &Printer) -> miette::Result<ExitStatus> {
    let file = match &args.name {
        Some(name) => format!("{name}.schema.json"),
        None => "dstack.schema.json".to_string(),
    };
    let text = embedded(&file).ok_or_else(|| miette::miette!("no schema named `{file}`"))?;
    printer.data(text);
    Ok(ExitStatus::Success)
}
