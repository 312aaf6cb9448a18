//! `caisson-probe`: a static program that Caisson's tests copy into a test
//! image and run inside containers.
//!
//! * `escape [--marker PATH --token TEXT]`: tries to reach the kernel and the
//!   host in the ways a container escape starts ([`escape`]), one line per
//!   attempt: `name<TAB>allowed|blocked|error<TAB>detail`. Each attempt is made
//!   so that success really means the capability is there, without doing
//!   anything to the host.
//! * `workload`: the compatibility workload ([`workload`]): threads, futex,
//!   epoll, mmap, signals, pipes, file I/O, TCP and unix sockets, exec, fork;
//!   one line per check (`name<TAB>ok|fail<TAB>detail`), exit 1 if any fails.
//! * `bench getpid N`, `bench getpid-allow-all N`, `bench openread N [PATH]`,
//!   `bench run N -- CMD...`,
//!   `bench mktree DIR FILES`: micro-benchmarks ([`bench`]) printing
//!   `name<TAB>iterations<TAB>ns/op`.

mod bench;
mod escape;
mod sys;
mod workload;

use std::process::ExitCode;

const USAGE: &str = "\
usage: caisson-probe escape [--marker PATH --token TEXT]
       caisson-probe workload
       caisson-probe bench getpid N
       caisson-probe bench getpid-allow-all N
       caisson-probe bench openread N [PATH]
       caisson-probe bench run N -- CMD [ARGS...]
       caisson-probe bench mktree DIR FILES
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("escape") => escape::main(&args[1..]),
        Some("workload") => workload::main(),
        Some("bench") => bench::main(&args[1..]),
        // Used by the workload's exec check: prints its arguments.
        Some("echo") => {
            println!("{}", args[1..].join(" "));
            Ok(true)
        }
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(true)
        }
        _ => Err(format!("unknown command\n{USAGE}")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("caisson-probe: {e}");
            ExitCode::from(2)
        }
    }
}
