//! Image references, normalized the way Kubernetes and containerd do it
//! (docker's reference grammar): `busybox` → `docker.io/library/busybox:latest`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{ImageError, Result};

/// Registry used when a reference names none.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A fully normalized reference: registry domain, repository path, and a tag
/// and/or digest (a reference with neither gets the tag `latest`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// `docker.io/library/busybox`: domain and path, no tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `repository:tag`, when the reference has a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|t| format!("{}:{}", self.repository(), t))
    }

    /// `repository@digest` for the given digest (a repo digest as CRI reports it).
    pub fn with_digest(&self, digest: &Digest) -> String {
        format!("{}@{}", self.repository(), digest)
    }

    /// Same repository, another tag.
    pub fn with_tag(&self, tag: &str) -> Result<Reference> {
        validate_tag(tag, tag)?;
        Ok(Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        })
    }
}

impl FromStr for Reference {
    type Err = ImageError;

    fn from_str(input: &str) -> Result<Reference> {
        let bad = |reason: &str| ImageError::InvalidReference {
            reference: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(bad("reference is empty"));
        }
        let (name_and_tag, digest) = match input.split_once('@') {
            Some((n, d)) => (
                n,
                Some(d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?),
            ),
            None => (input, None),
        };
        // A ':' after the last '/' starts the tag; before it, it is a port.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].find(':') {
            Some(i) => {
                let (n, t) = name_and_tag.split_at(last_slash + i);
                (n, Some(&t[1..]))
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            validate_tag(input, tag)?;
        }
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "a 64-character hexadecimal string is an image id, not a repository name",
            ));
        }
        let (domain, path) = split_domain(name);
        validate_domain(input, &domain)?;
        validate_path(input, &path)?;
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(bad("repository name is longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }
}

/// Docker's rule: the first component is a registry when it looks like a host
/// (has a '.' or ':', is `localhost`, or has uppercase letters).
fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN.to_string()
    } else {
        domain
    };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{path}")
    } else {
        path
    };
    (domain, path)
}

fn invalid(input: &str, reason: impl Into<String>) -> ImageError {
    ImageError::InvalidReference {
        reference: input.to_string(),
        reason: reason.into(),
    }
}

fn validate_tag(input: &str, tag: &str) -> Result<()> {
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !first_ok || !rest_ok || tag.len() > MAX_TAG_LEN {
        return Err(invalid(input, format!("invalid tag {tag:?}")));
    }
    Ok(())
}

fn validate_domain(input: &str, domain: &str) -> Result<()> {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        // IPv6 literal: [addr]:port
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid(input, "unterminated IPv6 address"))?;
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(invalid(
                input,
                format!("invalid IPv6 registry address {addr:?}"),
            ));
        }
        (None, after.strip_prefix(':'))
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        let ok = host.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        });
        if !ok {
            return Err(invalid(input, format!("invalid registry host {host:?}")));
        }
    }
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(input, format!("invalid registry port {port:?}")));
        }
    }
    Ok(())
}

/// Path components: `[a-z0-9]+` runs joined by one '.', one '_', "__", or '-'s.
fn validate_path(input: &str, path: &str) -> Result<()> {
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid(input, "repository name must be lowercase"));
    }
    for component in path.split('/') {
        if !valid_component(component) {
            return Err(invalid(
                input,
                format!("invalid repository name component {component:?}"),
            ));
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalizes_like_kubernetes() {
        let cases: Vec<(String, String)> = vec![
            ("busybox".into(), "docker.io/library/busybox:latest".into()),
            (
                "busybox:1.36".into(),
                "docker.io/library/busybox:1.36".into(),
            ),
            (
                "library/busybox".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "docker.io/busybox".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "index.docker.io/library/busybox:1".into(),
                "docker.io/library/busybox:1".into(),
            ),
            ("user/app".into(), "docker.io/user/app:latest".into()),
            ("localhost/x".into(), "localhost/x:latest".into()),
            ("localhost:5000/x:v1".into(), "localhost:5000/x:v1".into()),
            (
                "127.0.0.1:5000/a/b/c:t".into(),
                "127.0.0.1:5000/a/b/c:t".into(),
            ),
            (
                "registry.k8s.io/pause:3.10".into(),
                "registry.k8s.io/pause:3.10".into(),
            ),
            (
                "quay.io/a_b/c.d__e---f".into(),
                "quay.io/a_b/c.d__e---f:latest".into(),
            ),
            ("[::1]:5000/x".into(), "[::1]:5000/x:latest".into()),
            (
                format!("busybox@{D}"),
                format!("docker.io/library/busybox@{D}"),
            ),
            (
                format!("busybox:1.36@{D}"),
                format!("docker.io/library/busybox:1.36@{D}"),
            ),
            (
                "Registry.Example/x".into(),
                "Registry.Example/x:latest".into(),
            ),
        ];
        for (input, want) in cases {
            let r: Reference = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), want, "{input}");
        }
    }

    #[test]
    fn rejects_bad_references() {
        let cases = [
            "",
            "Busybox",
            "docker.io/Library/busybox",
            "busybox:",
            "busybox:-bad",
            "busybox@sha256:short",
            "busybox@md5:abc",
            "a//b",
            "-a/b",
            "a/b-",
            "a..b",
            "host:port/x",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ];
        for input in cases {
            assert!(
                input.parse::<Reference>().is_err(),
                "{input:?} should be rejected"
            );
        }
        let long = format!("x/{}", "a".repeat(300));
        assert!(long.parse::<Reference>().is_err());
    }

    #[test]
    fn parts() {
        let r: Reference = "localhost:5000/team/app:v2".parse().unwrap();
        assert_eq!(r.domain(), "localhost:5000");
        assert_eq!(r.path(), "team/app");
        assert_eq!(r.tag(), Some("v2"));
        assert_eq!(r.repository(), "localhost:5000/team/app");
        assert_eq!(r.tagged().unwrap(), "localhost:5000/team/app:v2");
        let d: Digest = D.parse().unwrap();
        assert_eq!(r.with_digest(&d), format!("localhost:5000/team/app@{D}"));
    }
}
