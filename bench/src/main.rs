//! `caisson-bench`: side-by-side benchmarks of Caisson against the tools of
//! the containerd/runc world, reported as ratios.
//!
//! * [`image_import`]: OCI archive import + unpack, against
//!   `skopeo copy` + `umoci unpack`.
//! * [`synthetic`]: the deterministic image it imports.
//! * [`measure`]: wall/CPU timing, min and median.

mod image_import;
mod measure;
mod synthetic;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: caisson-bench <benchmark> [options]

benchmarks:
  image-import   import + unpack an OCI archive: caisson vs skopeo copy + umoci unpack
      --size-mb N      file content of the synthetic image, in MB (default 100)
      --runs N         timed runs of each side, after one warm-up (default 3)
      --work-dir DIR   where a temporary bench dir is made (default /var/tmp)
      --json FILE      also write the results as JSON
";

fn parse_image_import(
    mut args: impl Iterator<Item = String>,
) -> Result<image_import::Options, String> {
    let mut opts = image_import::Options::default();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--size-mb" => {
                opts.size_mb = value()?.parse().map_err(|e| format!("--size-mb: {e}"))?
            }
            "--runs" => opts.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--work-dir" => opts.work_dir = Some(PathBuf::from(value()?)),
            "--json" => opts.json = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let result = match args.next().as_deref() {
        Some("image-import") => match parse_image_import(args) {
            Ok(opts) => image_import::bench(&opts),
            Err(e) => {
                eprintln!("caisson-bench: {e}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("caisson-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<image_import::Options, String> {
        parse_image_import(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_image_import_options() {
        let opts = parse(&["--size-mb", "20", "--runs", "5", "--json", "out.json"]).unwrap();
        assert_eq!((opts.size_mb, opts.runs), (20, 5));
        assert_eq!(opts.json, Some(PathBuf::from("out.json")));
        assert_eq!(opts.work_dir, None);

        let defaults = parse(&[]).unwrap();
        assert_eq!((defaults.size_mb, defaults.runs), (100, 3));

        for bad in [&["--runs"][..], &["--runs", "x"], &["--frobnicate"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
