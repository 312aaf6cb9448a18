//! Programs of a process whose spec has no `PATH`.
//!
//! libcontainer's own executor refuses such a process outright ("PATH
//! environment variable is not set"), even when `args[0]` is absolute.
//! runc does not: it looks `args[0]` up with Go's `exec.LookPath`, which
//! takes a name with a `/` as it is, and it never adds `PATH` to the
//! process's environment. A pause image whose entrypoint is `/pause` and
//! whose config has no `Env` (containerd's CRI then puts no `PATH` in the
//! sandbox's spec) runs under runc and must run here too.
//!
//! [`DefaultPathExecutor`] keeps libcontainer's checks (the program exists
//! and is executable, looked up inside the container after `pivot_root`)
//! and, only when the spec has no `PATH`, looks a bare name up in
//! containerd's default [`DEFAULT_PATH`] (what containerd puts in a spec
//! built from an image without an environment) instead of refusing. The
//! process's environment stays exactly the spec's: the program is found
//! here and `execv`'d with the spec's `argv`, `argv[0]` unchanged, as runc
//! execs what `LookPath` found.

use std::ffi::CString;
use std::path::PathBuf;

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

/// containerd's default `PATH` (`oci.defaultUnixEnv`), used to find a bare
/// program name when the spec has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// libcontainer's executor, except that a spec without `PATH` is looked up
/// in [`DEFAULT_PATH`] rather than refused. See the module docs.
#[derive(Clone, Default)]
pub(crate) struct DefaultPathExecutor;

/// Whether the process's environment sets `PATH` (even to "").
fn has_path(spec: &Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.env().as_ref())
        .is_some_and(|env| env.iter().any(|e| e.starts_with("PATH=")))
}

/// A copy of `spec` whose environment has [`DEFAULT_PATH`]: only for
/// libcontainer's checks, never for the process.
fn with_default_path(spec: &Spec) -> Spec {
    let mut spec = spec.clone();
    if let Some(mut process) = spec.process().clone() {
        let mut env = process.env().clone().unwrap_or_default();
        env.push(format!("PATH={DEFAULT_PATH}"));
        process.set_env(Some(env));
        spec.set_process(Some(process));
    }
    spec
}

/// Where a program is looked for without a `PATH`: a name with a `/` as it
/// is (relative to the working directory), a bare name in each directory of
/// [`DEFAULT_PATH`], in order.
pub(crate) fn candidates(program: &str) -> Vec<PathBuf> {
    if program.contains('/') {
        return vec![PathBuf::from(program)];
    }
    DEFAULT_PATH
        .split(':')
        .map(|dir| PathBuf::from(dir).join(program))
        .collect()
}

impl Executor for DefaultPathExecutor {
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        if has_path(spec) {
            DefaultExecutor {}.validate(spec)
        } else {
            DefaultExecutor {}.validate(&with_default_path(spec))
        }
    }

    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if has_path(spec) {
            return DefaultExecutor {}.exec(spec);
        }
        let args = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .filter(|a| !a.is_empty())
            .ok_or(ExecutorError::InvalidArg)?;
        let argv: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_bytes()).map_err(|_| ExecutorError::InvalidArg))
            .collect::<Result<_, _>>()?;
        // execvp's rules: a directory without it or that may not be
        // searched is skipped; any other failure is the answer.
        let mut denied = None;
        for candidate in candidates(&args[0]) {
            let path = CString::new(candidate.as_os_str().as_encoded_bytes())
                .map_err(|_| ExecutorError::InvalidArg)?;
            let errno = match nix::unistd::execv(&path, &argv) {
                Ok(never) => match never {},
                Err(errno) => errno,
            };
            match errno {
                nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => {}
                nix::errno::Errno::EACCES => denied = Some((candidate, errno)),
                errno => return Err(exec_failed(&candidate, errno, args)),
            }
        }
        Err(match denied {
            Some((candidate, errno)) => exec_failed(&candidate, errno, args),
            None => ExecutorError::Execution(
                format!(
                    "executable {:?} not found in the default PATH {DEFAULT_PATH} (the process \
                     sets no PATH)",
                    args[0]
                )
                .into(),
            ),
        })
    }
}

fn exec_failed(path: &std::path::Path, errno: nix::errno::Errno, args: &[String]) -> ExecutorError {
    ExecutorError::Execution(
        format!(
            "error '{errno}' executing {} with args {args:?}",
            path.display()
        )
        .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Process;

    fn spec(args: &[&str], env: Option<&[&str]>) -> Spec {
        let mut process = Process::default();
        process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        process.set_env(env.map(|e| e.iter().map(|s| s.to_string()).collect()));
        let mut spec = Spec::default();
        spec.set_process(Some(process));
        spec
    }

    #[test]
    fn a_program_is_looked_for_in_the_default_path_only_when_bare() {
        let cases: &[(&str, &[&str])] = &[
            (
                "sh",
                &[
                    "/usr/local/sbin/sh",
                    "/usr/local/bin/sh",
                    "/usr/sbin/sh",
                    "/usr/bin/sh",
                    "/sbin/sh",
                    "/bin/sh",
                ],
            ),
            ("/pause", &["/pause"]),
            ("./run", &["./run"]),
            ("bin/app", &["bin/app"]),
        ];
        for (program, expected) in cases {
            let expected: Vec<PathBuf> = expected.iter().map(PathBuf::from).collect();
            assert_eq!(candidates(program), expected, "{program}");
        }
    }

    #[test]
    fn the_path_check_is_made_against_the_default_path_without_changing_the_env() {
        /// Args, env (None: absent), whether the check passes.
        type Case<'a> = (&'a [&'a str], Option<&'a [&'a str]>, bool);
        let cases: &[Case] = &[
            // No PATH: found in the default one (this host has a sh).
            (&["sh", "-c", "true"], None, true),
            (&["sh"], Some(&["TERM=xterm"]), true),
            (&["/bin/sh"], Some(&[]), true),
            (&["caisson-no-such-program"], None, false),
            (&["/caisson/no/such/program"], None, false),
            // A PATH the spec sets is the one used, even if it misses.
            (&["sh"], Some(&["PATH=/caisson/nowhere"]), false),
            (&["sh"], Some(&["PATH=/usr/bin:/bin"]), true),
        ];
        for (args, env, ok) in cases {
            let s = spec(args, *env);
            let before = s.clone();
            let result = DefaultPathExecutor.validate(&s);
            assert_eq!(result.is_ok(), *ok, "{args:?} {env:?}: {result:?}");
            assert_eq!(s, before);
        }
        // What the check uses is a copy.
        let copy = with_default_path(&spec(&["sh"], Some(&["A=1"])));
        let env = copy.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(env, ["A=1".to_string(), format!("PATH={DEFAULT_PATH}")]);
        assert!(!has_path(&spec(&["sh"], None)));
        assert!(has_path(&spec(&["sh"], Some(&["PATH="]))));
    }
}
