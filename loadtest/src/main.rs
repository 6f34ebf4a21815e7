//! `loadtest`: parse flags, run or merge, print the table, write the JSON and the plot, and
//! exit 1 when any delivery was lost, duplicated or reordered.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use loadtest::cli::{Cli, Command};
use loadtest::scenario::room_name;
use loadtest::{Report, write_json, write_plot};

fn finish(
    report: &Report,
    prefix: &str,
    json: Option<&std::path::Path>,
    plot: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    print!("{}", report.table(|r| room_name(prefix, r)));
    if let Some(path) = json {
        write_json(report, path)?;
    }
    if let Some(path) = plot {
        write_plot(report, path)?;
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Some(Command::Merge { reports, json, plot }) => (|| {
            let mut parsed = Vec::with_capacity(reports.len());
            for path in reports {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                parsed.push(Report::from_json(&text).with_context(|| path.display().to_string())?);
            }
            let merged = Report::merge(&parsed)?;
            finish(&merged, &cli.run.prefix, json.as_deref(), plot.as_deref())
        })(),
        Some(Command::Api(args)) => (|| {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let report = runtime.block_on(loadtest::api::run(args))?;
            print!("{}", report.table());
            if let Some(path) = &args.json {
                write_json(&report, path)?;
            }
            Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        })(),
        None => (|| {
            let config = cli.run.config()?;
            let runtime = cli.run.runtime()?;
            let report = runtime.block_on(loadtest::run(config))?;
            finish(&report, &cli.run.prefix, cli.run.json.as_deref(), cli.run.plot.as_deref())
        })(),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}
