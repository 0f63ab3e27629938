//! The `wsync` binary: parse the command line, set up logging, run, map the
//! outcome to an exit code. Everything else lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    wsync::cli::main()
}
