//! The hardened syscall filter as an OCI `linux.seccomp` section, and its
//! intersection with a pod's own profile.
//!
//! **Why an OCI section compiled by libseccomp (through libcontainer) and not
//! `seccompiler`**: libcontainer already loads the spec's filter at the right
//! moment in the container's init (after capabilities are set, right before
//! `execve` when `no_new_privs` is on, and for every exec process too), and
//! libseccomp resolves syscall names per architecture and compiles argument
//! comparisons. With `seccompiler` we would have to load a second filter
//! ourselves from an executor hook, and the pod's profile and ours would be
//! two stacked filters, one of them invisible in the spec.
//!
//! **Intersection.** One spec carries one filter, so a pod profile P and the
//! hardened policy H become one profile allowing what *both* allow:
//! * a syscall is allowed by a profile under a set of alternatives (each an
//!   AND of argument comparisons; an empty one is unconditional);
//! * P allows a syscall if P's default action is allow-like (allow, log) and
//!   no non-allow rule names it, or if an allow-like rule names it and no
//!   non-allow rule does (a syscall P treats both ways is denied: narrowing);
//! * the result for a syscall is every pair of alternatives, ANDed; a pair
//!   that compares the same argument twice is dropped (libcontainer would OR
//!   such comparisons, which could widen);
//! * the default action is always H's (`EPERM`), the architectures H's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::allowlist;

const EPERM: u32 = libc::EPERM as u32;
const ENOSYS: u32 = libc::ENOSYS as u32;

/// One way a syscall is allowed: all these comparisons hold.
type Alternative = Vec<LinuxSeccompArg>;
/// Per syscall name, the ways it is allowed (an empty alternative: always).
type Allowed = BTreeMap<String, Vec<Alternative>>;

fn arg(index: usize, op: LinuxSeccompOperator, value: u64, value_two: u64) -> LinuxSeccompArg {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value)
        .value_two(value_two)
        .build()
        .expect("every field of a seccomp arg is set")
}

fn eq(index: usize, value: u64) -> LinuxSeccompArg {
    arg(index, LinuxSeccompOperator::ScmpCmpEq, value, 0)
}

/// The hardened policy as allowed alternatives per syscall.
fn policy() -> Allowed {
    let mut allowed = Allowed::new();
    for (_, names) in allowlist::UNCONDITIONAL {
        for name in *names {
            allowed.insert(name.to_string(), vec![vec![]]);
        }
    }
    let each = |index: usize, values: &[u64]| -> Vec<Alternative> {
        values.iter().map(|v| vec![eq(index, *v)]).collect()
    };
    allowed.insert(
        "clone".into(),
        vec![vec![arg(
            0,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            allowlist::CLONE_NAMESPACE_FLAGS,
            0,
        )]],
    );
    let mut socket = each(0, allowlist::SOCKET_FAMILIES);
    socket.push(vec![eq(0, allowlist::AF_NETLINK), eq(2, 0)]);
    allowed.insert("socket".into(), socket);
    allowed.insert("socketpair".into(), each(0, &[allowlist::AF_UNIX]));
    allowed.insert("ioctl".into(), each(1, allowlist::IOCTL_REQUESTS));
    allowed.insert("prctl".into(), each(0, allowlist::PRCTL_OPTIONS));
    allowed.insert("personality".into(), each(0, allowlist::PERSONALITIES));
    allowed
}

fn allow_like(action: LinuxSeccompAction) -> bool {
    matches!(
        action,
        LinuxSeccompAction::ScmpActAllow | LinuxSeccompAction::ScmpActLog
    )
}

/// Splits a rule's comparisons the way libcontainer applies them: one
/// alternative, or (when an argument is compared twice) one per comparison.
fn alternatives_of(rule: &LinuxSyscall) -> Vec<Alternative> {
    let args = rule.args().clone().unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    if args.iter().all(|a| seen.insert(a.index())) {
        vec![args]
    } else {
        args.into_iter().map(|a| vec![a]).collect()
    }
}

/// Whether `profile` allows `name`, and under which alternatives.
fn pod_allows(profile: &LinuxSeccomp, name: &str) -> Vec<Alternative> {
    let rules = profile.syscalls().as_deref().unwrap_or_default();
    let naming: Vec<&LinuxSyscall> = rules
        .iter()
        .filter(|r| r.names().iter().any(|n| n == name))
        .collect();
    if naming.iter().any(|r| !allow_like(r.action())) {
        return vec![];
    }
    if allow_like(profile.default_action()) {
        return vec![vec![]];
    }
    naming.iter().flat_map(|r| alternatives_of(r)).collect()
}

/// ANDs two alternatives; None when that would compare an argument twice.
fn both(a: &Alternative, b: &Alternative) -> Option<Alternative> {
    let mut merged = a.clone();
    for cmp in b {
        match merged.iter().find(|m| m.index() == cmp.index()) {
            Some(same) if same == cmp => {}
            Some(_) => return None,
            None => merged.push(*cmp),
        }
    }
    Some(merged)
}

fn intersect(policy: Allowed, pod: &LinuxSeccomp) -> Allowed {
    policy
        .into_iter()
        .filter_map(|(name, ours)| {
            let theirs = pod_allows(pod, &name);
            let mut result: Vec<Alternative> = Vec::new();
            for a in &ours {
                for b in &theirs {
                    if let Some(m) = both(a, b) {
                        if !result.contains(&m) {
                            result.push(m);
                        }
                    }
                }
            }
            if result.iter().any(Vec::is_empty) {
                result = vec![vec![]];
            }
            (!result.is_empty()).then_some((name, result))
        })
        .collect()
}

fn rule(
    names: Vec<String>,
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: Alternative,
) -> LinuxSyscall {
    let mut builder = LinuxSyscallBuilder::default().names(names).action(action);
    if let Some(errno) = errno {
        builder = builder.errno_ret(errno);
    }
    if !args.is_empty() {
        builder = builder.args(args);
    }
    builder
        .build()
        .expect("every field of a seccomp rule is set")
}

fn render(allowed: Allowed) -> LinuxSeccomp {
    let mut unconditional = Vec::new();
    let mut syscalls = Vec::new();
    for (name, alternatives) in allowed {
        for alternative in alternatives {
            if alternative.is_empty() {
                unconditional.push(name.clone());
            } else {
                syscalls.push(rule(
                    vec![name.clone()],
                    LinuxSeccompAction::ScmpActAllow,
                    None,
                    alternative,
                ));
            }
        }
    }
    syscalls.insert(
        0,
        rule(
            unconditional,
            LinuxSeccompAction::ScmpActAllow,
            None,
            vec![],
        ),
    );
    syscalls.push(rule(
        allowlist::ENOSYS.iter().map(|s| s.to_string()).collect(),
        LinuxSeccompAction::ScmpActErrno,
        Some(ENOSYS),
        vec![],
    ));
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(vec![Arch::ScmpArchX86_64])
        .syscalls(syscalls)
        .build()
        .expect("every field of a seccomp profile is set")
}

/// The filter for a container whose spec carries `pod` (None: unconfined).
pub fn hardened_profile(pod: Option<&LinuxSeccomp>) -> LinuxSeccomp {
    match pod {
        None => render(policy()),
        Some(pod) => render(intersect(policy(), pod)),
    }
}

/// [`hardened_profile`] and its JSON, the last few kept: a node's tasks ask
/// for one of a few (none, RuntimeDefault, a pod's own), and rendering and
/// serialising the allow-list took about 0.25 ms of every create.
pub fn hardened_profile_and_json(pod: Option<&LinuxSeccomp>) -> (LinuxSeccomp, Arc<str>) {
    type Kept = Vec<(Option<LinuxSeccomp>, LinuxSeccomp, Arc<str>)>;
    static KEPT: Mutex<Kept> = Mutex::new(Vec::new());
    const CAPACITY: usize = 4;
    let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, profile, json)) = kept.iter().find(|(p, _, _)| p.as_ref() == pod) {
        return (profile.clone(), json.clone());
    }
    let profile = hardened_profile(pod);
    let json: Arc<str> = serde_json::to_string(&profile)
        .expect("a seccomp profile serialises")
        .into();
    if kept.len() >= CAPACITY {
        kept.remove(0);
    }
    kept.push((pod.cloned(), profile.clone(), json.clone()));
    (profile, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(default: LinuxSeccompAction, rules: Vec<LinuxSyscall>) -> LinuxSeccomp {
        LinuxSeccompBuilder::default()
            .default_action(default)
            .syscalls(rules)
            .build()
            .unwrap()
    }

    fn allowed_names(p: &LinuxSeccomp) -> Vec<String> {
        p.syscalls()
            .clone()
            .unwrap()
            .iter()
            .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow)
            .flat_map(|r| r.names().clone())
            .collect()
    }

    fn unconditional(p: &LinuxSeccomp) -> Vec<String> {
        p.syscalls().clone().unwrap()[0].names().clone()
    }

    #[test]
    fn kept_profiles_are_the_ones_rendered_for_the_same_pod_filter() {
        let pod = profile(
            LinuxSeccompAction::ScmpActErrno,
            vec![rule(
                vec!["getpid".into(), "read".into()],
                LinuxSeccompAction::ScmpActAllow,
                None,
                vec![],
            )],
        );
        for input in [None, Some(&pod), None, Some(&pod)] {
            let (kept, json) = hardened_profile_and_json(input);
            assert_eq!(kept, hardened_profile(input));
            assert_eq!(*json, serde_json::to_string(&kept).unwrap());
        }
        let (narrowed, _) = hardened_profile_and_json(Some(&pod));
        assert_ne!(narrowed, hardened_profile_and_json(None).0);
    }

    #[test]
    fn the_policy_denies_by_default_with_eperm_and_clone3_with_enosys() {
        let p = hardened_profile(None);
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        let last = p.syscalls().clone().unwrap().pop().unwrap();
        assert_eq!(last.names(), &vec!["clone3".to_string()]);
        assert_eq!(last.errno_ret(), Some(ENOSYS));
        let names = allowed_names(&p);
        for denied in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "ptrace",
            "bpf",
            "keyctl",
            "add_key",
            "init_module",
            "finit_module",
            "kexec_load",
            "perf_event_open",
            "userfaultfd",
            "io_uring_setup",
            "open_by_handle_at",
            "clone3",
        ] {
            assert!(!names.contains(&denied.to_string()), "{denied} allowed");
        }
        for conditional in ["clone", "socket", "ioctl", "prctl", "personality"] {
            assert!(
                !unconditional(&p).contains(&conditional.to_string()),
                "{conditional}"
            );
            assert!(names.contains(&conditional.to_string()), "{conditional}");
        }
    }

    #[test]
    fn a_pod_profile_only_narrows() {
        let cases: Vec<(&str, LinuxSeccomp, &[&str], &[&str])> = vec![
            (
                "default-allow pod profile denying mkdir",
                profile(
                    LinuxSeccompAction::ScmpActAllow,
                    vec![rule(
                        vec!["mkdir".into(), "mount".into()],
                        LinuxSeccompAction::ScmpActErrno,
                        None,
                        vec![],
                    )],
                ),
                &["read", "write"],
                &["mkdir", "mount"],
            ),
            (
                "default-deny pod profile allowing a few, some we deny",
                profile(
                    LinuxSeccompAction::ScmpActErrno,
                    vec![rule(
                        vec!["read".into(), "mount".into(), "bpf".into()],
                        LinuxSeccompAction::ScmpActAllow,
                        None,
                        vec![],
                    )],
                ),
                &["read"],
                &["write", "mount", "bpf"],
            ),
        ];
        for (name, pod, allowed, denied) in cases {
            let p = hardened_profile(Some(&pod));
            let got = allowed_names(&p);
            for a in allowed {
                assert!(
                    got.contains(&a.to_string()),
                    "{name}: {a} should be allowed"
                );
            }
            for d in denied {
                assert!(
                    !got.contains(&d.to_string()),
                    "{name}: {d} should be denied"
                );
            }
        }
    }

    #[test]
    fn conditions_are_anded_and_conflicting_ones_dropped() {
        // The pod allows socket for AF_INET only: the result keeps just that.
        let pod = profile(
            LinuxSeccompAction::ScmpActErrno,
            vec![rule(
                vec!["socket".into()],
                LinuxSeccompAction::ScmpActAllow,
                None,
                vec![eq(0, 2)],
            )],
        );
        let p = hardened_profile(Some(&pod));
        let socket: Vec<_> = p
            .syscalls()
            .clone()
            .unwrap()
            .into_iter()
            .filter(|r| r.names() == &vec!["socket".to_string()])
            .collect();
        assert_eq!(socket.len(), 1);
        assert_eq!(socket[0].args().clone().unwrap(), vec![eq(0, 2)]);
        // A pod ioctl condition on another argument is ANDed with ours.
        let a = vec![eq(1, 0x5401)];
        let b = vec![eq(0, 1)];
        assert_eq!(both(&a, &b), Some(vec![eq(1, 0x5401), eq(0, 1)]));
        assert_eq!(both(&a, &vec![eq(1, 0x5402)]), None);
    }
}
