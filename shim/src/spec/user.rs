//! The process user: `run_as_username` > `run_as_user` > the image's `USER`,
//! `run_as_group` overriding the group, supplemental groups from the
//! container's `/etc/group` and the request.
//!
//! `/etc/passwd` and `/etc/group` are read from the container's rootfs with
//! `openat2(RESOLVE_IN_ROOT)`: symlinks (absolute or `..`) resolve inside the
//! rootfs, never out of it, and only regular files are read (a FIFO cannot
//! block the request, a huge file cannot exhaust memory).

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use caisson_proto::cri;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use oci_spec::runtime::User;

use super::{SpecError, PAUSE_UID};

/// The most of `/etc/passwd` or `/etc/group` we read.
const MAX_DB_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_string(),
                uid: fields[2].trim().parse().ok()?,
                gid: fields[3].trim().parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 3 || fields[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: fields[0].to_string(),
                gid: fields[2].trim().parse().ok()?,
                members: fields
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Reads `path` (absolute, as seen inside the container) from `rootfs`
/// without leaving it. `Ok(None)` when it does not exist or is not a
/// regular file.
pub(crate) fn read_in_rootfs(rootfs: &Path, path: &str) -> Result<Option<String>, SpecError> {
    let root = std::fs::File::open(rootfs)
        .map_err(|e| SpecError::io(format!("opening rootfs {}", rootfs.display()), e))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .mode(Mode::empty())
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match nix::fcntl::openat2(root.as_fd(), path, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR | nix::errno::Errno::ELOOP) => {
            return Ok(None)
        }
        Err(e) => {
            return Err(SpecError::io(
                format!("opening {path} in {}", rootfs.display()),
                e.into(),
            ))
        }
    };
    let file = std::fs::File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| SpecError::io(format!("stat {path} in {}", rootfs.display()), e))?;
    if !meta.is_file() {
        tracing::warn!(path, rootfs = %rootfs.display(), "not a regular file; ignoring it");
        return Ok(None);
    }
    let mut text = String::new();
    file.take(MAX_DB_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| SpecError::io(format!("reading {path} in {}", rootfs.display()), e))?;
    Ok(Some(text))
}

/// The rootfs's user and group databases, read on first need.
struct Databases<'a> {
    rootfs: &'a Path,
    passwd: Option<Option<Vec<PasswdEntry>>>,
    group: Option<Option<Vec<GroupEntry>>>,
}

impl<'a> Databases<'a> {
    fn new(rootfs: &'a Path) -> Databases<'a> {
        Databases {
            rootfs,
            passwd: None,
            group: None,
        }
    }

    /// `None` when the image has no `/etc/passwd`.
    fn passwd(&mut self) -> Result<Option<&[PasswdEntry]>, SpecError> {
        if self.passwd.is_none() {
            let text = read_in_rootfs(self.rootfs, "/etc/passwd")?;
            self.passwd = Some(text.as_deref().map(parse_passwd));
        }
        Ok(self.passwd.as_ref().and_then(|p| p.as_deref()))
    }

    fn group(&mut self) -> Result<Option<&[GroupEntry]>, SpecError> {
        if self.group.is_none() {
            let text = read_in_rootfs(self.rootfs, "/etc/group")?;
            self.group = Some(text.as_deref().map(parse_group));
        }
        Ok(self.group.as_ref().and_then(|g| g.as_deref()))
    }

    fn user_by_name(&mut self, name: &str) -> Result<Option<PasswdEntry>, SpecError> {
        Ok(self
            .passwd()?
            .and_then(|p| p.iter().find(|e| e.name == name).cloned()))
    }

    fn user_by_uid(&mut self, uid: u32) -> Result<Option<PasswdEntry>, SpecError> {
        Ok(self
            .passwd()?
            .and_then(|p| p.iter().find(|e| e.uid == uid).cloned()))
    }

    fn group_by_name(&mut self, name: &str) -> Result<Option<GroupEntry>, SpecError> {
        Ok(self
            .group()?
            .and_then(|g| g.iter().find(|e| e.name == name).cloned()))
    }

    /// Groups listing `username` as a member (not its own primary group by name).
    fn groups_of(&mut self, username: &str) -> Result<Vec<u32>, SpecError> {
        Ok(self
            .group()?
            .map(|groups| {
                groups
                    .iter()
                    .filter(|g| g.name != username && g.members.iter().any(|m| m == username))
                    .map(|g| g.gid)
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// A user name as passwd(5) allows it: portable characters (plus a
/// trailing `$` for machine accounts), not starting with `-`, not all
/// digits (that would read as a uid), at most 256 bytes.
pub(crate) fn validate_username(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty user name".into());
    }
    if name.len() > 256 {
        return Err("user name longer than 256 bytes".into());
    }
    if name.starts_with('-') {
        return Err(format!("user name {name:?} starts with '-'"));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("user name {name:?} is numeric; use run_as_user"));
    }
    let body = name.strip_suffix('$').unwrap_or(name);
    if let Some(bad) = body
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!("user name {name:?} contains {bad:?}"));
    }
    Ok(())
}

/// A CRI id (`Int64Value`) as a uid/gid.
fn id_from_request(value: i64, field: &str) -> Result<u32, SpecError> {
    u32::try_from(value)
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or_else(|| SpecError::invalid(field, format!("{value} is not a valid id")))
}

fn add_unique(list: &mut Vec<u32>, id: u32) {
    if !list.contains(&id) {
        list.push(id);
    }
}

/// Who the user is before groups: uid, primary gid, and the name to look
/// group memberships up by.
struct Primary {
    uid: u32,
    gid: u32,
    name: Option<String>,
}

/// The container's process user.
pub(crate) fn container_user(
    sc: &cri::LinuxContainerSecurityContext,
    image_user: &str,
    rootfs: &Path,
    sc_field: &str,
) -> Result<User, SpecError> {
    let mut db = Databases::new(rootfs);
    let group_override = sc
        .run_as_group
        .map(|g| id_from_request(g.value, &format!("{sc_field}.run_as_group.value")))
        .transpose()?;

    let primary = if !sc.run_as_username.is_empty() {
        let field = format!("{sc_field}.run_as_username");
        validate_username(&sc.run_as_username).map_err(|r| SpecError::invalid(&field, r))?;
        let entry = db.user_by_name(&sc.run_as_username)?.ok_or_else(|| {
            SpecError::not_found(
                &field,
                format!(
                    "user {:?} not found in the image's /etc/passwd",
                    sc.run_as_username
                ),
            )
        })?;
        Primary {
            uid: entry.uid,
            gid: entry.gid,
            name: Some(entry.name),
        }
    } else if let Some(uid) = sc.run_as_user {
        let uid = id_from_request(uid.value, &format!("{sc_field}.run_as_user.value"))?;
        // A uid the image does not know runs with gid 0 (containerd).
        let entry = db.user_by_uid(uid)?;
        Primary {
            uid,
            gid: entry.as_ref().map(|e| e.gid).unwrap_or(0),
            name: entry.map(|e| e.name),
        }
    } else if group_override.is_some() {
        return Err(SpecError::invalid(
            format!("{sc_field}.run_as_group"),
            "run_as_group needs run_as_user or run_as_username",
        ));
    } else {
        image_primary(image_user, &mut db)?
    };

    let gid = group_override.unwrap_or(primary.gid);
    let mut additional = Vec::new();
    let strict = sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32;
    // The primary group first, as login(1) and containerd do.
    add_unique(&mut additional, gid);
    if !strict {
        if let Some(name) = &primary.name {
            for g in db.groups_of(name)? {
                add_unique(&mut additional, g);
            }
        }
    }
    for (i, g) in sc.supplemental_groups.iter().enumerate() {
        let g = id_from_request(*g, &format!("{sc_field}.supplemental_groups[{i}]"))?;
        add_unique(&mut additional, g);
    }

    let mut user = User::default();
    user.set_uid(primary.uid);
    user.set_gid(gid);
    user.set_additional_gids(Some(additional));
    user.set_username(None);
    Ok(user)
}

/// The image's `USER`: `""`, `name`, `uid`, `name:group`, `uid:gid`, ...
fn image_primary(image_user: &str, db: &mut Databases) -> Result<Primary, SpecError> {
    const FIELD: &str = "image.config.user";
    let (user_part, group_part) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let mut primary = if user_part.is_empty() {
        let entry = db.user_by_uid(0)?;
        Primary {
            uid: 0,
            gid: 0,
            name: Some(entry.map(|e| e.name).unwrap_or_else(|| "root".into())),
        }
    } else if let Ok(uid) = user_part.parse::<u32>() {
        let entry = db.user_by_uid(uid)?;
        Primary {
            uid,
            gid: entry.as_ref().map(|e| e.gid).unwrap_or(0),
            name: entry.map(|e| e.name),
        }
    } else {
        validate_username(user_part).map_err(|r| SpecError::invalid(FIELD, r))?;
        let entry = db.user_by_name(user_part)?.ok_or_else(|| {
            SpecError::not_found(
                FIELD,
                format!("image user {user_part:?} not found in the image's /etc/passwd"),
            )
        })?;
        Primary {
            uid: entry.uid,
            gid: entry.gid,
            name: Some(entry.name),
        }
    };
    match group_part {
        None | Some("") => {}
        Some(g) => {
            primary.gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    db.group_by_name(g)?
                        .ok_or_else(|| {
                            SpecError::not_found(
                                FIELD,
                                format!("image group {g:?} not found in the image's /etc/group"),
                            )
                        })?
                        .gid
                }
            }
        }
    }
    Ok(primary)
}

/// The pause container's user: the pod's `run_as_user`/`run_as_group`, or
/// 65535:65535. A pod uid without a group runs with gid 0, as containerd
/// does when the uid is not in the (passwd-less) pause image.
pub(crate) fn sandbox_user(
    sc: &cri::LinuxSandboxSecurityContext,
    sc_field: &str,
) -> Result<User, SpecError> {
    let group = sc
        .run_as_group
        .map(|g| id_from_request(g.value, &format!("{sc_field}.run_as_group.value")))
        .transpose()?;
    let (uid, gid) = match sc.run_as_user {
        Some(u) => (
            id_from_request(u.value, &format!("{sc_field}.run_as_user.value"))?,
            group.unwrap_or(0),
        ),
        None if group.is_some() => {
            return Err(SpecError::invalid(
                format!("{sc_field}.run_as_group"),
                "run_as_group needs run_as_user",
            ))
        }
        None => (PAUSE_UID, PAUSE_UID),
    };
    let mut additional = vec![gid];
    for (i, g) in sc.supplemental_groups.iter().enumerate() {
        let g = id_from_request(*g, &format!("{sc_field}.supplemental_groups[{i}]"))?;
        add_unique(&mut additional, g);
    }
    let mut user = User::default();
    user.set_uid(uid);
    user.set_gid(gid);
    user.set_additional_gids(Some(additional));
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1::/:/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
web:x:33:33::/var/www:/bin/false
broken line
nogid:x:1001:
";
    const GROUP: &str = "\
root:x:0:
wheel:x:10:root,app
app:x:1000:app
audio:x:29:app, web
www-data:x:33:
staff:x:50:web
";

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        dir
    }

    fn sc() -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext::default()
    }

    fn id(v: i64) -> Option<cri::Int64Value> {
        Some(cri::Int64Value { value: v })
    }

    #[test]
    fn parses_databases() {
        let users = parse_passwd(PASSWD);
        assert_eq!(users.len(), 4, "{users:?}");
        assert_eq!(
            users[2],
            PasswdEntry {
                name: "app".into(),
                uid: 1000,
                gid: 1000
            }
        );
        let groups = parse_group(GROUP);
        assert_eq!(
            groups[3].members,
            vec!["app".to_string(), "web".to_string()]
        );
    }

    #[test]
    #[allow(clippy::type_complexity)] // one tuple per table row
    fn resolution_table() {
        let root = rootfs();
        let cases: Vec<(
            &str,
            cri::LinuxContainerSecurityContext,
            &str,
            (u32, u32, Vec<u32>),
        )> = vec![
            ("nothing: root", sc(), "", (0, 0, vec![0, 10])),
            ("image name", sc(), "app", (1000, 1000, vec![1000, 10, 29])),
            (
                "image uid known",
                sc(),
                "1000",
                (1000, 1000, vec![1000, 10, 29]),
            ),
            ("image uid unknown", sc(), "4242", (4242, 0, vec![0])),
            ("image uid:gid", sc(), "4242:4343", (4242, 4343, vec![4343])),
            (
                "image name:group",
                sc(),
                "app:www-data",
                (1000, 33, vec![33, 10, 29]),
            ),
            ("image uid:group", sc(), "33:staff", (33, 50, vec![50, 29])),
            ("image name:", sc(), "web:", (33, 33, vec![33, 29, 50])),
            (
                "run_as_username beats run_as_user and image",
                cri::LinuxContainerSecurityContext {
                    run_as_username: "web".into(),
                    run_as_user: id(7),
                    ..sc()
                },
                "app",
                (33, 33, vec![33, 29, 50]),
            ),
            (
                "run_as_user known",
                cri::LinuxContainerSecurityContext {
                    run_as_user: id(1000),
                    ..sc()
                },
                "web",
                (1000, 1000, vec![1000, 10, 29]),
            ),
            (
                "run_as_user unknown: gid 0",
                cri::LinuxContainerSecurityContext {
                    run_as_user: id(5000),
                    ..sc()
                },
                "app",
                (5000, 0, vec![0]),
            ),
            (
                "run_as_group overrides",
                cri::LinuxContainerSecurityContext {
                    run_as_user: id(1000),
                    run_as_group: id(3000),
                    ..sc()
                },
                "",
                (1000, 3000, vec![3000, 10, 29]),
            ),
            (
                "supplemental groups appended, deduplicated",
                cri::LinuxContainerSecurityContext {
                    run_as_user: id(1000),
                    supplemental_groups: vec![2000, 10, 2000],
                    ..sc()
                },
                "",
                (1000, 1000, vec![1000, 10, 29, 2000]),
            ),
            (
                "strict: no /etc/group memberships",
                cri::LinuxContainerSecurityContext {
                    run_as_user: id(1000),
                    supplemental_groups: vec![2000],
                    supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict as i32,
                    ..sc()
                },
                "",
                (1000, 1000, vec![1000, 2000]),
            ),
        ];
        for (name, sc, image_user, (uid, gid, groups)) in cases {
            let user = container_user(&sc, image_user, root.path(), "sc")
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (
                    user.uid(),
                    user.gid(),
                    user.additional_gids().clone().unwrap()
                ),
                (uid, gid, groups),
                "{name}"
            );
        }
    }

    #[test]
    fn error_table() {
        let root = rootfs();
        let cases: Vec<(&str, cri::LinuxContainerSecurityContext, &str, &str, bool)> = vec![
            (
                "malformed name",
                cri::LinuxContainerSecurityContext {
                    run_as_username: "bad:name".into(),
                    ..sc()
                },
                "",
                "sc.run_as_username",
                true,
            ),
            (
                "path-like name",
                cri::LinuxContainerSecurityContext {
                    run_as_username: "../etc".into(),
                    ..sc()
                },
                "",
                "sc.run_as_username",
                true,
            ),
            (
                "numeric name",
                cri::LinuxContainerSecurityContext {
                    run_as_username: "1000".into(),
                    ..sc()
                },
                "",
                "sc.run_as_username",
                true,
            ),
            (
                "unknown name",
                cri::LinuxContainerSecurityContext {
                    run_as_username: "ghost".into(),
                    ..sc()
                },
                "",
                "sc.run_as_username",
                false,
            ),
            (
                "group without user",
                cri::LinuxContainerSecurityContext {
                    run_as_group: id(5),
                    ..sc()
                },
                "app",
                "sc.run_as_group",
                true,
            ),
            (
                "negative uid",
                cri::LinuxContainerSecurityContext {
                    run_as_user: id(-1),
                    ..sc()
                },
                "",
                "sc.run_as_user.value",
                true,
            ),
            (
                "huge gid",
                cri::LinuxContainerSecurityContext {
                    run_as_user: id(1),
                    run_as_group: id(1 << 40),
                    ..sc()
                },
                "",
                "sc.run_as_group.value",
                true,
            ),
            (
                "bad supplemental group",
                cri::LinuxContainerSecurityContext {
                    run_as_user: id(1),
                    supplemental_groups: vec![1, -2],
                    ..sc()
                },
                "",
                "sc.supplemental_groups[1]",
                true,
            ),
            (
                "unknown image user",
                sc(),
                "ghost",
                "image.config.user",
                false,
            ),
            (
                "unknown image group",
                sc(),
                "app:ghosts",
                "image.config.user",
                false,
            ),
            (
                "malformed image user",
                sc(),
                "a b",
                "image.config.user",
                true,
            ),
        ];
        for (name, sc, image_user, field, invalid) in cases {
            let err = container_user(&sc, image_user, root.path(), "sc").unwrap_err();
            assert_eq!(err.field(), Some(field), "{name}: {err}");
            assert_eq!(
                matches!(err, SpecError::InvalidArgument { .. }),
                invalid,
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn usernames() {
        for ok in ["app", "www-data", "a.b", "_svc", "host$", "User1"] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "123",
            "a:b",
            "a/b",
            "a b",
            "a\nb",
            "ä",
            "a$b",
            &"x".repeat(300),
        ] {
            assert!(validate_username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_passwd_file() {
        let dir = tempfile::tempdir().unwrap();
        let user = container_user(&sc(), "", dir.path(), "sc").unwrap();
        assert_eq!((user.uid(), user.gid()), (0, 0));
        let user = container_user(&sc(), "7:8", dir.path(), "sc").unwrap();
        assert_eq!((user.uid(), user.gid()), (7, 8));
        let err = container_user(&sc(), "app", dir.path(), "sc").unwrap_err();
        assert!(matches!(err, SpecError::NotFound { .. }));
    }

    #[test]
    fn hostile_symlinks_stay_in_the_rootfs() {
        // A file outside the rootfs that must never be read.
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("passwd");
        std::fs::write(&secret, "evil:x:0:0::/:/bin/sh\n").unwrap();

        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        // Absolute symlink: resolves against the rootfs, where it is missing.
        symlink(&secret, root.path().join("etc/passwd")).unwrap();
        // Relative escape through ..: clamped at the rootfs root.
        let depth = root.path().components().count();
        let up = "../".repeat(depth + 2);
        let rel = format!("{up}{}", outside.path().join("passwd").display());
        symlink(&rel, root.path().join("etc/group")).unwrap();

        assert_eq!(read_in_rootfs(root.path(), "/etc/passwd").unwrap(), None);
        assert_eq!(read_in_rootfs(root.path(), "/etc/group").unwrap(), None);
        let sc = cri::LinuxContainerSecurityContext {
            run_as_username: "evil".into(),
            ..sc()
        };
        let err = container_user(&sc, "", root.path(), "sc").unwrap_err();
        assert!(matches!(err, SpecError::NotFound { .. }), "{err}");

        // The same path inside the rootfs is what the link really names.
        let inside = root.path().join(secret.strip_prefix("/").unwrap());
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        std::fs::write(&inside, "inner:x:5:6::/:/bin/sh\n").unwrap();
        let sc = cri::LinuxContainerSecurityContext {
            run_as_username: "inner".into(),
            ..super::tests::sc()
        };
        let user = container_user(&sc, "", root.path(), "sc").unwrap();
        assert_eq!((user.uid(), user.gid()), (5, 6));
    }

    #[test]
    fn fifo_and_directories_are_ignored() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/passwd")).unwrap();
        nix::unistd::mkfifo(
            &root.path().join("etc/group"),
            Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert_eq!(read_in_rootfs(root.path(), "/etc/passwd").unwrap(), None);
        assert_eq!(read_in_rootfs(root.path(), "/etc/group").unwrap(), None);
    }

    #[test]
    fn sandbox_users() {
        let base = cri::LinuxSandboxSecurityContext::default();
        let user = sandbox_user(&base, "sc").unwrap();
        assert_eq!((user.uid(), user.gid()), (65535, 65535));
        let with_user = cri::LinuxSandboxSecurityContext {
            run_as_user: id(1000),
            supplemental_groups: vec![5],
            ..base.clone()
        };
        let user = sandbox_user(&with_user, "sc").unwrap();
        assert_eq!((user.uid(), user.gid()), (1000, 0));
        assert_eq!(user.additional_gids().clone().unwrap(), vec![0, 5]);
        let both = cri::LinuxSandboxSecurityContext {
            run_as_group: id(2000),
            ..with_user
        };
        assert_eq!(sandbox_user(&both, "sc").unwrap().gid(), 2000);
        let group_only = cri::LinuxSandboxSecurityContext {
            run_as_group: id(1),
            ..base
        };
        assert_eq!(
            sandbox_user(&group_only, "sc").unwrap_err().field(),
            Some("sc.run_as_group")
        );
    }
}
