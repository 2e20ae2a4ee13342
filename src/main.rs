//! `ringfs [OPTIONS] <SOURCE> <MOUNTPOINT>`: see `ringfs --help` and the README.

use std::process::ExitCode;

fn main() -> ExitCode {
    let result = ringfs::cli::parse(std::env::args_os()).and_then(ringfs::cli::run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
