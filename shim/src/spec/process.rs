//! The process: command line (Kubernetes' entrypoint/cmd rules),
//! environment, working directory.

use caisson_proto::cri;

use super::SpecError;

/// The `PATH` a container gets when its image sets none (containerd's);
/// the shim resolves a bare program name with the same one.
pub(crate) use caisson_sandbox::backend::native::DEFAULT_PATH;

pub(crate) fn default_path_env() -> String {
    format!("PATH={DEFAULT_PATH}")
}

/// Kubernetes' rules: a CRI command replaces the image's entrypoint *and*
/// cmd (`command + args`); without one, the image's entrypoint runs with the
/// CRI args if any, else with the image's cmd.
pub(crate) fn args(
    command: &[String],
    args: &[String],
    entrypoint: &[String],
    cmd: &[String],
) -> Result<Vec<String>, SpecError> {
    let line: Vec<String> = if !command.is_empty() {
        command.iter().chain(args).cloned().collect()
    } else if !args.is_empty() {
        entrypoint.iter().chain(args).cloned().collect()
    } else {
        entrypoint.iter().chain(cmd).cloned().collect()
    };
    if line.is_empty() {
        return Err(SpecError::invalid(
            "config.command",
            "no command specified (neither the request nor the image has one)",
        ));
    }
    Ok(line)
}

/// Replaces `entry`'s key in `env` in place, or appends it; an entry with
/// no `=` removes the key (containerd's `WithEnv`).
pub(super) fn set_env(env: &mut Vec<String>, entry: &str) {
    let key = entry.split_once('=').map(|(k, _)| k).unwrap_or(entry);
    let has_value = entry.contains('=');
    let position = env
        .iter()
        .position(|e| e.split_once('=').map(|(k, _)| k).unwrap_or(e) == key);
    match (position, has_value) {
        (Some(i), true) => env[i] = entry.to_string(),
        (Some(i), false) => {
            env.remove(i);
        }
        (None, true) => env.push(entry.to_string()),
        (None, false) => {}
    }
}

/// `PATH` (default), `TERM=xterm` with a tty, `HOSTNAME`, then the image's
/// env, then the request's: each later one overrides an earlier one with
/// the same key, in place.
pub(crate) fn env(
    image_env: &[String],
    cri_envs: &[cri::KeyValue],
    hostname: &str,
    tty: bool,
) -> Vec<String> {
    let mut env = vec![default_path_env()];
    if tty {
        env.push("TERM=xterm".into());
    }
    if !hostname.is_empty() {
        env.push(format!("HOSTNAME={hostname}"));
    }
    for e in image_env {
        set_env(&mut env, e);
    }
    for kv in cri_envs.iter().filter(|kv| !kv.key.is_empty()) {
        set_env(&mut env, &format!("{}={}", kv.key, kv.value));
    }
    env
}

/// The request's working directory, else the image's, else `/`.
pub(crate) fn working_dir(cri_dir: &str, image_dir: &str) -> Result<String, SpecError> {
    if !cri_dir.is_empty() {
        if !cri_dir.starts_with('/') {
            return Err(SpecError::invalid(
                "config.working_dir",
                format!("{cri_dir:?} is not an absolute path"),
            ));
        }
        return Ok(cri_dir.to_string());
    }
    if image_dir.is_empty() {
        return Ok("/".into());
    }
    // Images sometimes carry a relative WorkingDir; it is relative to `/`.
    if image_dir.starts_with('/') {
        Ok(image_dir.to_string())
    } else {
        Ok(format!("/{image_dir}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    #[allow(clippy::type_complexity)] // one tuple per table row
    fn command_table() {
        // (name, command, args, entrypoint, cmd, want)
        let cases: [(&str, &[&str], &[&str], &[&str], &[&str], &[&str]); 9] = [
            (
                "image only",
                &[],
                &[],
                &["/ep"],
                &["c1", "c2"],
                &["/ep", "c1", "c2"],
            ),
            (
                "image cmd only",
                &[],
                &[],
                &[],
                &["/bin/sh", "-c", "x"],
                &["/bin/sh", "-c", "x"],
            ),
            (
                "image entrypoint only",
                &[],
                &[],
                &["/ep", "e1"],
                &[],
                &["/ep", "e1"],
            ),
            (
                "cri args replace cmd",
                &[],
                &["a1"],
                &["/ep"],
                &["c1"],
                &["/ep", "a1"],
            ),
            (
                "cri args without entrypoint",
                &[],
                &["/bin/echo", "hi"],
                &[],
                &["c1"],
                &["/bin/echo", "hi"],
            ),
            (
                "cri command replaces both",
                &["/cmd"],
                &[],
                &["/ep"],
                &["c1"],
                &["/cmd"],
            ),
            (
                "cri command + args",
                &["/cmd"],
                &["a1", "a2"],
                &["/ep"],
                &["c1"],
                &["/cmd", "a1", "a2"],
            ),
            (
                "cri command, image has nothing",
                &["/cmd", "x"],
                &[],
                &[],
                &[],
                &["/cmd", "x"],
            ),
            (
                "empty strings are kept",
                &[],
                &[""],
                &["/ep"],
                &[],
                &["/ep", ""],
            ),
        ];
        for (name, command, a, ep, cmd, want) in cases {
            let got = args(&v(command), &v(a), &v(ep), &v(cmd)).unwrap();
            assert_eq!(got, v(want), "{name}");
        }
    }

    #[test]
    fn no_command_is_invalid() {
        let err = args(&[], &[], &[], &[]).unwrap_err();
        assert_eq!(err.field(), Some("config.command"));
        assert!(matches!(err, SpecError::InvalidArgument { .. }));
    }

    fn kv(k: &str, val: &str) -> cri::KeyValue {
        cri::KeyValue {
            key: k.into(),
            value: val.into(),
        }
    }

    #[test]
    #[allow(clippy::type_complexity)] // one tuple per table row
    fn env_table() {
        let default_path = default_path_env();
        let cases: Vec<(
            &str,
            Vec<String>,
            Vec<cri::KeyValue>,
            &str,
            bool,
            Vec<String>,
        )> = vec![
            (
                "defaults",
                vec![],
                vec![],
                "pod",
                false,
                vec![default_path.clone(), "HOSTNAME=pod".into()],
            ),
            (
                "image PATH replaces the default in place",
                v(&["PATH=/bin", "A=1"]),
                vec![],
                "pod",
                false,
                v(&["PATH=/bin", "HOSTNAME=pod", "A=1"]),
            ),
            (
                "cri overrides image, keeps order",
                v(&["A=1", "B=2"]),
                vec![kv("A", "x"), kv("C", "3")],
                "h",
                false,
                vec![
                    default_path.clone(),
                    "HOSTNAME=h".into(),
                    "A=x".into(),
                    "B=2".into(),
                    "C=3".into(),
                ],
            ),
            (
                "tty adds TERM, image may override",
                v(&["TERM=dumb"]),
                vec![],
                "h",
                true,
                vec![
                    default_path.clone(),
                    "TERM=dumb".into(),
                    "HOSTNAME=h".into(),
                ],
            ),
            (
                "values may hold '=' and be empty",
                vec![],
                vec![kv("X", "a=b"), kv("E", "")],
                "h",
                false,
                vec![
                    default_path.clone(),
                    "HOSTNAME=h".into(),
                    "X=a=b".into(),
                    "E=".into(),
                ],
            ),
            (
                "HOSTNAME from the request wins",
                vec![],
                vec![kv("HOSTNAME", "me")],
                "h",
                false,
                vec![default_path.clone(), "HOSTNAME=me".into()],
            ),
            (
                "image entry without '=' unsets",
                v(&["A=1", "A"]),
                vec![kv("", "ignored")],
                "",
                false,
                vec![default_path.clone()],
            ),
        ];
        for (name, image, cri_envs, hostname, tty, want) in cases {
            assert_eq!(env(&image, &cri_envs, hostname, tty), want, "{name}");
        }
    }

    #[test]
    fn working_dir_table() {
        for (cri_dir, image_dir, want) in [
            ("", "", "/"),
            ("", "/app", "/app"),
            ("", "app", "/app"),
            ("/work", "/app", "/work"),
        ] {
            assert_eq!(working_dir(cri_dir, image_dir).unwrap(), want);
        }
        let err = working_dir("rel", "/app").unwrap_err();
        assert_eq!(err.field(), Some("config.working_dir"));
    }
}
