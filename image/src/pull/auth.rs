//! Registry credentials, as a CRI `AuthConfig` or the config gives them.

use std::fmt;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;

use crate::error::{ImageError, Result};

/// Credentials for one registry. `Debug` never shows the secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// A bearer token for the registry itself (CRI `registry_token`, or the
    /// `identity_token` as CRI-O and containerd forward it).
    pub bearer_token: String,
}

impl Credentials {
    /// From CRI's `AuthConfig` fields: `username`/`password`, or `auth`
    /// (base64 of `username:password`), or a token. `identity_token` and
    /// `registry_token` are sent as bearer tokens.
    pub fn new(
        username: &str,
        password: &str,
        auth: &str,
        identity_token: &str,
        registry_token: &str,
    ) -> Result<Credentials> {
        let bad = |reason: String| ImageError::Malformed {
            what: "registry credentials".into(),
            reason,
        };
        let (mut username, mut password) = (username.to_string(), password.to_string());
        if username.is_empty() && password.is_empty() && !auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| bad(format!("auth is not base64: {e}")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| bad("auth does not decode to UTF-8".into()))?;
            let (u, p) = decoded
                .split_once(':')
                .ok_or_else(|| bad("auth does not decode to username:password".into()))?;
            (username, password) = (u.to_string(), p.to_string());
        }
        if username.is_empty() != password.is_empty() {
            return Err(bad(
                "a username needs a password and a password needs a username".into(),
            ));
        }
        let bearer_token = if !registry_token.is_empty() {
            registry_token
        } else {
            identity_token
        };
        Ok(Credentials {
            username,
            password,
            bearer_token: bearer_token.to_string(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.username.is_empty() && self.bearer_token.is_empty()
    }

    /// What oci-client sends: a token as `Bearer`, a username and password
    /// as Basic (or through the registry's token service when it asks for
    /// bearer auth), else nothing.
    pub(crate) fn registry_auth(&self) -> RegistryAuth {
        if !self.bearer_token.is_empty() {
            RegistryAuth::Bearer(self.bearer_token.clone())
        } else if !self.username.is_empty() {
            RegistryAuth::Basic(self.username.clone(), self.password.clone())
        } else {
            RegistryAuth::Anonymous
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if !self.bearer_token.is_empty() {
            "bearer token"
        } else if !self.username.is_empty() {
            "username and password"
        } else {
            "anonymous"
        };
        write!(f, "Credentials({kind}")?;
        if !self.username.is_empty() {
            write!(f, ", user {:?}", self.username)?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_cri_auth_config() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3:cret");
        let no_colon = base64::engine::general_purpose::STANDARD.encode("nocolon");
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            Option<(&'a str, &'a str, &'a str)>,
        );
        let cases: Vec<Case> = vec![
            ("", "", "", "", "", Some(("", "", ""))),
            ("bob", "pw", "", "", "", Some(("bob", "pw", ""))),
            ("", "", &b64, "", "", Some(("alice", "s3:cret", ""))),
            // Explicit username/password win over `auth`.
            ("bob", "pw", &b64, "", "", Some(("bob", "pw", ""))),
            ("", "", "", "idtok", "", Some(("", "", "idtok"))),
            ("", "", "", "idtok", "regtok", Some(("", "", "regtok"))),
            ("bob", "", "", "", "", None),
            ("", "pw", "", "", "", None),
            ("", "", "not base64!", "", "", None),
            ("", "", &no_colon, "", "", None),
        ];
        for (u, p, a, i, r, want) in cases {
            let got = Credentials::new(u, p, a, i, r);
            match want {
                Some((wu, wp, wt)) => {
                    let c = got.unwrap_or_else(|e| panic!("{u:?} {p:?} {a:?}: {e}"));
                    assert_eq!(
                        (
                            c.username.as_str(),
                            c.password.as_str(),
                            c.bearer_token.as_str()
                        ),
                        (wu, wp, wt)
                    );
                }
                None => assert!(got.is_err(), "{u:?} {p:?} {a:?} should fail"),
            }
        }
    }

    #[test]
    fn debug_hides_secrets_and_auth_kinds() {
        let c = Credentials::new("bob", "hunter2", "", "", "").unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("bob"),
            "{shown}"
        );
        assert!(matches!(c.registry_auth(), RegistryAuth::Basic(..)));
        let t = Credentials::new("", "", "", "", "tok").unwrap();
        assert!(!format!("{t:?}").contains("tok\""));
        assert!(matches!(t.registry_auth(), RegistryAuth::Bearer(..)));
        assert!(matches!(
            Credentials::default().registry_auth(),
            RegistryAuth::Anonymous
        ));
    }
}
