//! `wsync export PIPELINE --out PATH`: a one-off Parquet snapshot of a pipeline's
//! model (the `rows` dataset, SQL types kept). Sends nothing, records nothing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::export::Compression;

/// Arguments of `wsync export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipeline id (its connection and data model are used).
    pub pipeline: String,
    /// The Parquet file to write (written to a temporary name, then renamed).
    #[arg(long)]
    pub out: PathBuf,
    /// Column compression.
    #[arg(long, value_enum, default_value_t = Codec::Zstd)]
    pub compression: Codec,
}

/// Compression choices.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Codec {
    /// Zstandard.
    Zstd,
    /// Snappy.
    Snappy,
    /// None.
    None,
}

/// Write the file and say what was written.
pub async fn execute(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let project = super::load(root)?;
    let pipeline = crate::sync::find_pipeline(&project, &args.pipeline)?;
    let compression = match args.compression {
        Codec::Zstd => Compression::Zstd,
        Codec::Snappy => Compression::Snappy,
        Codec::None => Compression::None,
    };
    let counters = std::sync::Arc::new(crate::telemetry::progress::RunProgress::default());
    let progress = super::progress::Progress::start(
        std::sync::Arc::clone(&counters),
        &format!("export {}", args.pipeline),
    );
    let file =
        crate::sync::export_once(&project, pipeline, &args.out, compression, &counters).await;
    drop(progress);
    let file = file?;
    println!(
        "Exported {} row(s), {} bytes, to {}",
        file.rows,
        file.bytes,
        file.path.display()
    );
    Ok(ExitCode::SUCCESS)
}
